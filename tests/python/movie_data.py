"""Helpers for the movie and micrograph tests: a small particle map, reading STAR loops, numpy's CTF."""
import os
import subprocess

import gemmi
import mrcfile
import numpy as np


def blob_map(path, n=48, angpix=1.0, seed=0):
    """A particle-like map: 30 Gaussian blobs (sigma 2-4 Å) inside a radius of n/3, at angpix."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    v = np.zeros((n, n, n), np.float32)
    for _ in range(30):
        c = rng.normal(size=3)
        c *= n / 3 * rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(c)
        s = rng.uniform(2, 4) / angpix
        v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(v)
        m.voxel_size = angpix
    return path


def star_loop(path, block):
    """A loop of a STAR file as a dict of columns (strings)."""
    doc = gemmi.cif.read_file(str(path))
    b = doc.find_block(block)
    table = None
    for item in b:
        if item.loop is not None:
            table = item.loop
    cols = {}
    for j, tag in enumerate(table.tags):
        cols[tag[1:]] = [table.val(i, j) for i in range(table.length())]
    return cols


def ctf2(shape, angpix, du, dv, angle_deg, kv=300.0, cs=2.7, q0=0.1):
    """CTF^2 on a centred grid (origin at n/2), RELION's formula written out independently."""
    ny, nx = shape
    ky, kx = np.meshgrid((np.arange(ny) - ny // 2) / (ny * angpix), (np.arange(nx) - nx // 2) / (nx * angpix),
                         indexing="ij")
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    k2 = kx ** 2 + ky ** 2
    phi = np.arctan2(ky, kx)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (phi - np.radians(angle_deg)))
    gamma = -np.pi * lam * df * k2 + np.pi / 2 * cs * 1e7 * lam ** 3 * k2 ** 2 - np.arctan(q0 / np.sqrt(1 - q0 * q0))
    return np.sin(gamma) ** 2, np.sqrt(k2)


def run(cmd, cwd=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    return r


def write_truth_particles(d, mc_dir, box, image="none.mrcs"):
    """d/particles.star for polishing: the simulator's true coordinates, poses and CTF of every particle
    (d/sim/truth_particles.star), rlnMicrographName the micrograph motion correction (d/mc_dir) made of its
    movie (the way RELION links particles to the per-movie STAR files), origins the sub-pixel part of the
    coordinates (what extraction at the truncated coordinate leaves), rlnRandomSubset alternating."""
    t = star_loop(d / "sim" / "truth_particles.star", "particles")
    mics = star_loop(d / mc_dir / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    by_stem = {os.path.splitext(os.path.basename(m))[0]: m for m in mics}
    labels = ["rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup",
              "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU",
              "rlnDefocusV", "rlnDefocusAngle", "rlnRandomSubset"]
    optics = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
              "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
              "rlnImageDimensionality"]
    out = ["# version 30001", "", "data_optics", "", "loop_"] + [f"_{l} #{i + 1}" for i, l in enumerate(optics)]
    out += [f"opticsGroup1 1 1.0 300 2.7 0.1 1.0 {box} 2", "", "data_particles", "", "loop_"]
    out += [f"_{l} #{i + 1}" for i, l in enumerate(labels)]
    for k in range(len(t["rlnCoordinateX"])):
        x, y = float(t["rlnCoordinateX"][k]), float(t["rlnCoordinateY"][k])
        mic = by_stem[os.path.splitext(os.path.basename(t["rlnMicrographMovieName"][k]))[0]]
        out.append(" ".join([str(x), str(y), f"{k + 1:06d}@{image}", mic, "1", t["rlnAngleRot"][k],
                             t["rlnAngleTilt"][k], t["rlnAnglePsi"][k], f"{-(x - int(x)):.4f}", f"{-(y - int(y)):.4f}",
                             t["rlnDefocusU"][k], t["rlnDefocusV"][k], t["rlnDefocusAngle"][k], str(k % 2 + 1)]))
    (d / "particles.star").write_text("\n".join(out) + "\n\n")

"""Helpers for the picking and extraction tests: simulated micrographs (one-frame movies of the scene simulator)
with a micrographs STAR file carrying the true CTF, the true positions per micrograph, and picks scored against
them."""
import os

import numpy as np

from movie_data import run, star_loop


def simulate(regula, out, maps, n, size, particles, seed, extra=()):
    """One-frame movies of 40 e/Å² (a dose-summed micrograph's counting noise): micrographs with known truth."""
    r = run([regula, "simulate_movies", *sum((["--i", m] for m in maps), []), "--o", out, "--n", n, "--size", size,
             "--frames", 1, "--dose_per_frame", 40, "--particles", particles, "--drift_min", 0, "--drift_max", 0,
             "--local_max", 0, "--seed", seed, "--no_ideal", "--j", 2, "--quiet", *extra])
    assert r.returncode == 0, r.stderr
    return out


def micrographs_star(sim, path, angpix, kv=300, cs=2.7, q0=0.1):
    """micrographs_ctf.star (RELION 3.1) for the simulated micrographs with their true CTF."""
    t = star_loop(os.path.join(sim, "truth_micrographs.star"), "micrographs")
    lines = ["# version 30001", "", "data_optics", "", "loop_", "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2",
             "_rlnMicrographOriginalPixelSize #3", "_rlnVoltage #4", "_rlnSphericalAberration #5",
             "_rlnAmplitudeContrast #6", "_rlnMicrographPixelSize #7", f"opticsGroup1 1 {angpix} {kv} {cs} {q0} {angpix}",
             "", "# version 30001", "", "data_micrographs", "", "loop_", "_rlnMicrographName #1", "_rlnOpticsGroup #2",
             "_rlnDefocusU #3", "_rlnDefocusV #4", "_rlnCtfAstigmatism #5", "_rlnDefocusAngle #6",
             "_rlnCtfFigureOfMerit #7", "_rlnCtfMaxResolution #8"]
    for i, name in enumerate(t["rlnMicrographMovieName"]):
        du, dv, da = (float(t[c][i]) for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))
        lines.append(f"{name} 1 {du:.2f} {dv:.2f} {abs(du - dv):.2f} {da:.3f} 0.5 4.0")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return t["rlnMicrographMovieName"]


def truth(sim):
    """{micrograph: (xy array (n, 2), class array (n,))} of the particles (not the junk)."""
    p = star_loop(os.path.join(sim, "truth_particles.star"), "particles")
    out = {}
    for name, x, y, c in zip(p["rlnMicrographMovieName"], p["rlnCoordinateX"], p["rlnCoordinateY"],
                             p["rlnClassNumber"]):
        xy, cl = out.setdefault(name, ([], []))
        xy.append((float(x), float(y)))
        cl.append(int(c))
    return {k: (np.array(v[0]), np.array(v[1])) for k, v in out.items()}


def read_picks(path):
    """Picks of a RELION coordinate file: xy (n, 2) and figure of merit (n,)."""
    if not os.path.exists(path):
        return np.zeros((0, 2)), np.zeros(0)
    import gemmi
    doc = gemmi.cif.read_file(str(path))
    for b in doc:
        t = b.find(["_rlnCoordinateX", "_rlnCoordinateY"])
        if t is not None and len(t):
            xy = np.array([[float(r[0]), float(r[1])] for r in t])
            f = b.find_values("_rlnAutopickFigureOfMerit")
            fom = np.array([float(v) for v in f]) if len(f) else np.zeros(len(xy))
            return xy, fom
    return np.zeros((0, 2)), np.zeros(0)


def match(picks, true_xy, radius):
    """One-to-one matching of picks to true particles within `radius` (px, per true particle), closest pairs first.
    Returns the number of matched pairs."""
    if len(picks) == 0 or len(true_xy) == 0:
        return 0
    d = np.sqrt(((picks[:, None, :] - true_xy[None, :, :]) ** 2).sum(-1))
    ok = d <= np.asarray(radius)[None, :]
    pi, ti = np.nonzero(ok)
    order = np.argsort(d[pi, ti], kind="stable")
    used_p, used_t, m = set(), set(), 0
    for k in order:
        a, b = pi[k], ti[k]
        if a in used_p or b in used_t:
            continue
        used_p.add(a)
        used_t.add(b)
        m += 1
    return m


def globular_map(path, diameter, angpix, seed=0):
    """A globular particle of `diameter` Å: a ball with a soft edge (2 Å) and a lumpy interior (40 Gaussian blobs
    of 3 Å at 40% of its density), centred at the box's n/2, in a box 1.5 diameters wide, at angpix."""
    import mrcfile
    rng = np.random.default_rng(seed)
    n = int(np.ceil(1.5 * diameter / angpix / 2)) * 2
    z, y, x = (np.mgrid[:n, :n, :n] - n // 2) * angpix
    r = np.sqrt(x * x + y * y + z * z)
    v = 1.0 / (1.0 + np.exp((r - diameter / 2) / 2.0))
    lumps = np.zeros_like(v)
    for _ in range(40):
        c = rng.normal(size=3)
        c *= diameter / 2 * rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(c)
        lumps += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 3.0 ** 2))
    v *= 0.6 + 0.4 * lumps / lumps.max()
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(v.astype(np.float32))
        m.voxel_size = angpix
    return path

"""Particle sets with known CTF errors for `regula ctf_refine` (tests and bench/ctf_refine_vs_relion.sh).

A pseudo-atomic map (atoms on the voxel grid, Gaussian of 0.7 px made in Fourier space: signal to
Nyquist), then per optics group one `regula simulate` run with that group's beam tilt and
magnification matrix (its images and CTFs made through the image model), merged into one file of
several optics groups; rlnRandomSubset drawn at random. Micrographs of 50 particles share a defocus
and astigmatism, each particle at its own height in the ice (uniform over `spread` Å, so an RMS of
spread / sqrt(12) around the micrograph's value). The half maps are `regula reconstruct --ctf` of each
half set with the true values (what a refinement would give with perfect poses). The input file is the
truth with: beam tilt 0, the identity magnification, and each particle's defocus the micrograph's (the
mean over its particles), re-expressed in image pixels as CTFFIND measures it on a micrograph
(Q_img = M^T Q M for the astigmatic defocus form Q).
"""
import copy
import pathlib
import shutil
import subprocess

import numpy as np
import mrcfile

MAG_LABELS = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")
# ctf_refine's reference options on a data set made here with soft_sphere_mask's mask.mrc.
HALVES = ["--m1", "half1.mrc", "--m2", "half2.mrc", "--mask", "mask.mrc"]


def atoms_map(path, n=64, angpix=1.0, seed=5, atoms=3000, radius=0.3, sigma=0.7):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-radius * n, radius * n, (atoms * 3, 3))
    pts = pts[np.linalg.norm(pts, axis=1) < radius * n][:atoms]
    grid = np.zeros((n, n, n))
    idx = np.rint(pts).astype(int) + n // 2
    np.add.at(grid, (idx[:, 0], idx[:, 1], idx[:, 2]), 1.0)
    k = np.fft.fftfreq(n)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.fft.rfftfreq(n)[None, None, :] ** 2
    m = np.fft.irfftn(np.fft.rfftn(grid) * np.exp(-2 * np.pi ** 2 * sigma ** 2 * k2), s=grid.shape)
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(m.astype(np.float32))
        f.voxel_size = angpix


def soft_sphere_mask(path, n, angpix):
    """The correction jobs' mask in tests and benches: 1 inside radius 0.4 n - 5 px, a raised-cosine edge
    of 5 px."""
    z, y, x = np.mgrid[0:n, 0:n, 0:n] - n // 2
    m = np.clip((0.4 * n - np.sqrt(x * x + y * y + z * z)) / 5, 0, 1)
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data((0.5 - 0.5 * np.cos(np.pi * m)).astype(np.float32))
        f.voxel_size = angpix


def read_star(path):
    blocks, cur = {}, None
    for line in pathlib.Path(path).read_text().splitlines():
        s = line.strip()
        if s.startswith("data_"):
            cur = s[5:]
            blocks[cur] = {"labels": [], "rows": []}
        elif s.startswith("_rln") and cur is not None:
            blocks[cur]["labels"].append(s.split()[0][1:])
        elif s and not s.startswith("#") and s != "loop_" and cur is not None:
            blocks[cur]["rows"].append(s.split())
    return blocks


def write_star(path, blocks):
    with open(path, "w") as f:
        for name, b in blocks.items():
            f.write(f"\n# version 30001\n\ndata_{name}\n\nloop_\n")
            for j, label in enumerate(b["labels"]):
                f.write(f"_{label} #{j + 1}\n")
            for r in b["rows"]:
                f.write(" ".join(r) + "\n")


def column(block, label, kind=float):
    j = block["labels"].index(label)
    return np.array([kind(r[j]) for r in block["rows"]])


def set_column(block, label, values):
    if label not in block["labels"]:
        block["labels"].append(label)
        for r in block["rows"]:
            r.append("0")
    j = block["labels"].index(label)
    for r, v in zip(block["rows"], values):
        r[j] = str(v)


def defocus_matrices(particles):
    """Astigmatic defocus forms Q (N x 2 x 2) of a particles block."""
    u, v = column(particles, "rlnDefocusU"), column(particles, "rlnDefocusV")
    a = np.radians(column(particles, "rlnDefocusAngle"))
    d, r = (u + v) / 2, (u - v) / 2
    return np.array([[d + r * np.cos(2 * a), r * np.sin(2 * a)], [r * np.sin(2 * a), d - r * np.cos(2 * a)]]).transpose(2, 0, 1)


def set_defocus_matrices(particles, Q):
    w, V = np.linalg.eigh(Q)
    set_column(particles, "rlnDefocusU", [f"{x:.3f}" for x in w[:, 1]])
    set_column(particles, "rlnDefocusV", [f"{x:.3f}" for x in w[:, 0]])
    set_column(particles, "rlnDefocusAngle", [f"{x:.4f}" for x in np.degrees(np.arctan2(V[:, 1, 1], V[:, 0, 1]))])


def make(regula, d, groups, n=1500, snr=0.3, seed=11, spread=1000.0, box=64, angpix=1.0, map_seed=5, map_path=None):
    """groups: list of dicts with 'tilt' (tx, ty) mrad and 'mag' (4 values); map_path: a map to use instead
    of the pseudo-atomic one (its own box and pixel size). Returns a dict of paths."""
    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    mp = d / "truth_map.mrc"
    if map_path:
        shutil.copyfile(map_path, mp)
    else:
        atoms_map(mp, box, angpix, map_seed)
    merged = None
    for g, grp in enumerate(groups):
        sd = d / f"og{g + 1}"
        subprocess.run([regula, "--quiet", "simulate", "--i", mp.name, "--o", sd.name, "--n", str(n), "--snr", str(snr),
                        "--seed", str(seed + 101 * g), "--defocus_min", "5000", "--defocus_max", "20000",
                        "--max_shift", "2", "--beamtilt_x", str(grp["tilt"][0]), "--beamtilt_y", str(grp["tilt"][1]),
                        "--mag", *map(str, grp["mag"]), "--micrographs", str(n // 50), "--defocus_spread", str(spread),
                        "--j", "2"], check=True, cwd=d)
        b = read_star(sd / "truth.star")
        set_column(b["optics"], "rlnOpticsGroup", [g + 1])
        set_column(b["optics"], "rlnOpticsGroupName", [f"opticsGroup{g + 1}"])
        set_column(b["particles"], "rlnOpticsGroup", [g + 1] * len(b["particles"]["rows"]))
        set_column(b["particles"], "rlnMicrographName",
                   [f"og{g + 1}_{m}" for m in column(b["particles"], "rlnMicrographName", str)])
        if merged is None:
            merged = b
        else:
            merged["optics"]["rows"] += b["optics"]["rows"]
            merged["particles"]["rows"] += b["particles"]["rows"]
    p = merged["particles"]
    count = len(p["rows"])
    rng = np.random.default_rng(seed)
    subset = rng.permutation(np.arange(count) % 2) + 1
    set_column(p, "rlnRandomSubset", subset)
    out = {"truth": d / "truth.star", "input": d / "input.star", "map": mp}
    write_star(out["truth"], merged)
    for h in (1, 2):
        bh = copy.deepcopy(merged)
        bh["particles"]["rows"] = [r for r, s in zip(bh["particles"]["rows"], subset) if s == h]
        write_star(d / f"half{h}.star", bh)
        out[f"m{h}"] = d / f"half{h}.mrc"
        subprocess.run([regula, "--quiet", "reconstruct", "--i", f"half{h}.star", "--o", f"half{h}.mrc", "--ctf",
                        "--j", "2"], check=True, cwd=d)
    inp = copy.deepcopy(merged)
    o, p = inp["optics"], inp["particles"]
    og = column(p, "rlnOpticsGroup", int)
    Q = defocus_matrices(p)
    for g, grp in enumerate(groups):
        M = np.array(grp["mag"], float).reshape(2, 2)
        sel = og == g + 1
        Q[sel] = np.einsum("ji,njk,kl->nil", M, Q[sel], M)
    mics = column(p, "rlnMicrographName", str)
    for m in np.unique(mics):
        Q[mics == m] = Q[mics == m].mean(axis=0)
    set_defocus_matrices(p, Q)
    set_column(o, "rlnBeamTiltX", [0] * len(groups))
    set_column(o, "rlnBeamTiltY", [0] * len(groups))
    for label, v in zip(MAG_LABELS, (1, 0, 0, 1)):
        set_column(o, label, [v] * len(groups))
    write_star(out["input"], inp)
    return out


def defocus_errors(star, truth):
    """Per particle: error of the mean defocus (Å) and of the astigmatism form (Å, norm of (a1, a2))."""
    a, t = read_star(star)["particles"], read_star(truth)["particles"]
    Qa, Qt = defocus_matrices(a), defocus_matrices(t)
    dm = (np.trace(Qa, axis1=1, axis2=2) - np.trace(Qt, axis1=1, axis2=2)) / 2
    D = Qa - Qt
    astig = np.hypot((D[:, 0, 0] - D[:, 1, 1]) / 2, D[:, 0, 1])
    return dm, astig


def optics_values(star):
    o = read_star(star)["optics"]
    out = []
    for r in o["rows"]:
        get = lambda label, default=0.0: float(r[o["labels"].index(label)]) if label in o["labels"] else default
        out.append({"tilt": (get("rlnBeamTiltX"), get("rlnBeamTiltY")),
                    "mag": tuple(get(label, 1.0 if label in ("rlnMagMat00", "rlnMagMat11") else 0.0)
                                 for label in MAG_LABELS)})
    return out


def make_envelopes(regula, d, n=1500, snr=0.3, seed=21, per_micrograph=False, b_range=(0.0, 200.0),
                   scale_range=(0.6, 1.4), box=64, map_seed=5, phase_range=None, phase_error=0.0, map_path=None):
    """Particles whose CTFs have known envelopes (rlnCtfBfactor, rlnCtfScalefactor): poses and CTFs from
    `regula simulate` (micrographs of 50 particles), then each particle's B-factor and scale drawn uniformly
    from the ranges (one draw per micrograph with `per_micrograph`; b_range None: B 0 and scale 1), the images
    `regula project --ctf` of the map with those values plus white Gaussian noise of variance (mean signal
    variance without envelope) / snr (numpy, seeded). With `phase_range` (degrees), a phase-plate shift
    (rlnPhaseShift) per micrograph drawn uniformly from it, and in the input file the true value plus a
    normal error of `phase_error` degrees per micrograph (as a CTFFIND estimate). Half maps reconstructed
    with the true values. The input file: the truth with B 0 and scale 1 (and the phase errors). Returns a
    dict of paths and the true values per particle. map_path: a map to use instead of the pseudo-atomic one
    (its own box and pixel size)."""
    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if map_path:
        shutil.copyfile(map_path, d / "truth_map.mrc")
    else:
        atoms_map(d / "truth_map.mrc", box, 1.0, map_seed)
    subprocess.run([regula, "--quiet", "simulate", "--i", "truth_map.mrc", "--o", "sim", "--n", str(n), "--snr", "1",
                    "--seed", str(seed), "--defocus_min", "5000", "--defocus_max", "20000", "--max_shift", "2",
                    "--micrographs", str(n // 50), "--defocus_spread", "1000", "--j", "2"], check=True, cwd=d)
    b = read_star(d / "sim" / "truth.star")
    p = b["particles"]
    rng = np.random.default_rng(seed)
    mics = column(p, "rlnMicrographName", str)
    names, inv = np.unique(mics, return_inverse=True)
    if b_range is None:
        bf, sc = np.zeros(len(mics)), np.ones(len(mics))
    elif per_micrograph:
        bf = rng.uniform(*b_range, len(names))[inv]
        sc = rng.uniform(*scale_range, len(names))[inv]
    else:
        bf = rng.uniform(*b_range, len(mics))
        sc = rng.uniform(*scale_range, len(mics))
    set_column(p, "rlnCtfBfactor", [f"{x:.3f}" for x in bf])
    set_column(p, "rlnCtfScalefactor", [f"{x:.5f}" for x in sc])
    phase = phase_in = None
    if phase_range is not None:
        phase = rng.uniform(*phase_range, len(names))[inv]
        phase_in = phase + rng.normal(0.0, phase_error, len(names))[inv]
        set_column(p, "rlnPhaseShift", [f"{x:.4f}" for x in phase])
    write_star(d / "poses.star", b)
    flat = copy.deepcopy(b)
    set_column(flat["particles"], "rlnCtfBfactor", ["0"] * len(mics))
    set_column(flat["particles"], "rlnCtfScalefactor", ["1"] * len(mics))
    write_star(d / "flat_poses.star", flat)
    for name, star in (("clean", "poses.star"), ("flat", "flat_poses.star")):
        subprocess.run([regula, "--quiet", "project", "--i", "truth_map.mrc", "--ang", star, "--ctf", "--o", name,
                        "--j", "2"], check=True, cwd=d)
    clean = mrcfile.read(d / "clean.mrcs").astype(np.float64)
    sigma = np.sqrt(mrcfile.read(d / "flat.mrcs").astype(np.float64).var(axis=(1, 2)).mean() / snr)
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    with mrcfile.new(d / "particles.mrcs", overwrite=True) as f:
        f.set_data(noisy.astype(np.float32))
        f.voxel_size = mrcfile.open(d / "truth_map.mrc", header_only=True).voxel_size.x
    subset = rng.permutation(np.arange(len(mics)) % 2) + 1
    set_column(p, "rlnRandomSubset", subset)
    set_column(p, "rlnImageName", [f"{i + 1:06d}@particles.mrcs" for i in range(len(mics))])
    write_star(d / "truth.star", b)
    for h in (1, 2):
        bh = copy.deepcopy(b)
        bh["particles"]["rows"] = [r for r, s in zip(bh["particles"]["rows"], subset) if s == h]
        write_star(d / f"half{h}.star", bh)
        subprocess.run([regula, "--quiet", "reconstruct", "--i", f"half{h}.star", "--o", f"half{h}.mrc", "--ctf",
                        "--j", "2"], check=True, cwd=d)
    inp = copy.deepcopy(b)
    set_column(inp["particles"], "rlnCtfBfactor", ["0"] * len(mics))
    set_column(inp["particles"], "rlnCtfScalefactor", ["1"] * len(mics))
    if phase is not None:
        set_column(inp["particles"], "rlnPhaseShift", [f"{x:.4f}" for x in phase_in])
    write_star(d / "input.star", inp)
    return {"truth": d / "truth.star", "input": d / "input.star", "bfactor": bf, "scale": sc, "micrograph": mics,
            "phase": phase, "phase_input": phase_in}

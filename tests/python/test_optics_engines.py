"""The likelihood engines model the optics labels they accept (imaging/optics_model.hpp's
engine_optics): beam tilt and odd Zernikes (the images' aberration phase removed once, RELION's
demodulatePhase), even Zernikes (in the CTF), CTF-premultiplied data (CTF^2 in the likelihood, data
X with weight CTF^2 in the sums), phase-flipped data (|CTF|) and, in the 3D engines, anisotropic
magnification and optics groups of different pixel and box sizes (references projected and sums
inserted at T k, translations searched in each image's own pixels, noise per group at its own box);
class2d keeps its classes in the first optics group's image frame (its magnification included, the
CTF at the magnified frequencies) and resamples the groups of another pixel size, box size or
magnification there.

Each case is a pair of data sets simulated with the same seed, so with the same poses, defoci and
noise: the plain set and the set with the label. Run on the labelled set, an engine must do as
well as on the plain set (the label modelled), and clearly better than on the same images with the
label removed from the STAR file (so each check can fail). The map is a pseudo-atomic one made here
(400 Gaussian atoms of 0.8 px in a 48 px box at 1.2 Å/px), whose signal reaches Nyquist, where the
aberrations matter. About 25 s on 2 cores; no ../shared data.
"""
import pathlib
import re

import numpy as np
import pytest

mrcfile = pytest.importorskip("mrcfile")

from conftest import fsc, run_regula

N, ANGPIX = 48, 1.2
SIM = ["--n", 300, "--snr", 1, "--defocus_min", 5000, "--defocus_max", 15000, "--seed", 3, "--j", 2]
EVEN = "0,8,0,-6,30,0,-20,0,15"
LABELLED = {  # set: simulate options
    "plain": [],
    "beam_tilt": ["--beamtilt_x", 2, "--beamtilt_y", -1],
    "even_zernike": ["--even_zernike", EVEN],
    "premultiplied": ["--premultiply"],
    "magnification": ["--mag", 1.02, 0.01, -0.005, 0.985],
    "mixed_sampling": ["--og2_fraction", 0.5, "--og2_angpix", 1.0, "--og2_box", 56],
    "mixed_pixel": ["--og2_fraction", 0.5, "--og2_angpix", 1.0],
}
HIDDEN = {  # case: data_optics values of the copy without the label
    "beam_tilt": {"rlnBeamTiltX": 0, "rlnBeamTiltY": 0},
    "even_zernike": {"rlnEvenZernike": "[" + ",".join("0" for _ in EVEN.split(",")) + "]"},
    "premultiplied": {"rlnCtfDataAreCtfPremultiplied": 0},
    "phase_flipped": {"rlnCtfDataArePhaseFlipped": 0},
    "magnification": {"rlnMagMat00": 1, "rlnMagMat01": 0, "rlnMagMat10": 0, "rlnMagMat11": 1},
    "mixed_pixel": {"rlnImagePixelSize": ANGPIX},  # group 2 said to be at group 1's pixel size
    "mixed_sampling": {"rlnImagePixelSize": ANGPIX},  # group 2 (56 px) said to be at 1.2 Å/px
}


def atoms_map(path):
    rng = np.random.default_rng(7)
    pts = rng.uniform(-15, 15, (4000, 3))
    pts = pts[np.linalg.norm(pts, axis=1) < 15][:400]
    z, y, x = np.mgrid[0:N, 0:N, 0:N] - N // 2
    m = np.zeros((N, N, N))
    for p in pts:
        m += np.exp(-((x - p[2]) ** 2 + (y - p[1]) ** 2 + (z - p[0]) ** 2) / (2 * 0.8 ** 2))
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(m.astype(np.float32))
        f.voxel_size = ANGPIX


def set_optics(src, dst, values):
    """Copy of a STAR file with data_optics columns set on every group's row (added when absent)."""
    lines = pathlib.Path(src).read_text().splitlines()
    start = lines.index("data_optics")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("data_"))
    labels = [l.split()[0][1:] for l in lines[start:end] if l.startswith("_")]
    rows = [i for i in range(start, end) if lines[i].strip() and not lines[i].startswith(("_", "loop_", "data_", "#"))]
    table = [lines[r].split() for r in rows]
    for k, v in values.items():
        if k not in labels:
            lines.insert(rows[0], f"_{k}")
            rows = [r + 1 for r in rows]
            labels.append(k)
            for cells in table:
                cells.append(str(v))
        for cells in table:
            cells[labels.index(k)] = str(v)
    for r, cells in zip(rows, table):
        lines[r] = " ".join(cells)
    pathlib.Path(dst).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("optics_engines")
    atoms_map(d / "atoms.mrc")
    for name, opts in LABELLED.items():
        run_regula("simulate", "--i", d / "atoms.mrc", "--o", d / name, *SIM, *opts)
    # Phase-flipped images: the plain ones times sign(CTF). The premultiplied set is the plain one
    # times a * CTF in Fourier space (same seed; a > 0 from the normalisation), so the sign of their
    # ratio is the CTF's.
    plain = mrcfile.read(d / "plain/particles.mrcs")
    pre = mrcfile.read(d / "premultiplied/particles.mrcs")
    P = np.fft.rfft2(plain)
    flip = np.fft.irfft2(P * np.sign((np.fft.rfft2(pre) / P).real), s=plain.shape[1:]).astype(np.float32)
    (d / "phase_flipped").mkdir()
    mrcfile.new(d / "phase_flipped/particles.mrcs", data=flip, overwrite=True).close()
    for f in ("particles.star", "truth.star"):
        text = (d / "plain" / f).read_text().replace("plain/particles.mrcs", "phase_flipped/particles.mrcs")
        (d / "phase_flipped" / f).write_text(text)
        set_optics(d / "phase_flipped" / f, d / "phase_flipped" / f, {"rlnCtfDataArePhaseFlipped": 1})
    for case, values in HIDDEN.items():
        for f in ("particles.star", "truth.star"):
            set_optics(d / case / f, d / case / f"hidden_{f}", values)
    return d


def class3d_fsc(d, star, tag):
    """class3d at the true poses (--skip_align, K 1, 2 iterations): FSC of its map with the truth."""
    run_regula("class3d", "--i", star, "--ref", d / "plain/truth_map1.mrc", "--o", d / tag / "c3", "--K", 1, "--iter",
               2, "--ctf", "--skip_align", "--ini_high", 10, "--j", 2)
    return fsc(mrcfile.read(d / tag / "c3_it002_class001.mrc"), mrcfile.read(d / "plain/truth_map1.mrc"))


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_class3d_models_the_label(sets, case):
    """The E-step and sums of the 3D engines (estep/search3d, shared by refine3d, class3d and
    initial_model) at the true poses: FSC with the truth over shells 4-14 (5.5 down to 4.1 Å here,
    where the two iterations have reached; 4-16 now, below) at least the plain set's minus 0.03 per shell
    on average and at every shell minus 0.06, and the hidden label's mean over the outer shells at least
    0.05 lower than the modelled one (an unmodelled label's error grows with frequency).
    Measured 2026-12-04 (seed 3, the unmasked particles back-projected): mean over 4-14 plain 0.853;
    modelled 0.852 (beam tilt), 0.665 (even Zernikes: the aberrations take information), 0.855
    (magnification), 0.830 (phase-flipped), 0.881 (premultiplied: their noise, C times the plain
    noise, looks smaller to the model, as in RELION); hidden 0.752, 0.258, 0.807, -0.089, -0.085.
    Over shells 9-14 the magnification case is 0.758 modelled against 0.672 hidden.
    Optics groups of different pixel sizes (group 2 at 1.0 Å/px, box 48, compared with the 1.2 Å/px
    reference through T_g): the data carry the plain set's information (reconstruct at the true poses:
    FSC 0.977 against the plain set's 0.979 over 4-14), but simulate normalises every image, so group 2's
    images are 1.17x brighter against the reference than group 1's (measured on noise-free images), a
    per-group scale that the two iterations cannot correct (both groups share one micrograph). RELION
    3.1.3 on the same sets (relion_refine --skip_align, K 1, 2 iterations) drops from 0.727 to 0.693 over
    4-14 and from 0.566 to 0.508 over 9-14; Regula 0.854 to 0.800 and 0.755 to 0.662, hidden (group 2
    said to be at 1.2 Å/px) 0.597. So this case allows 0.08 below the plain set on average and 0.2 per
    shell; refine3d below checks the pixel sizes with alignment.
    Optics groups of different pixel and box sizes (group 2 at 1.0 Å/px in a 56 px box, the reference at
    48 px): measured 2026-12-04 (seed 3) 0.850 modelled, 0.589 hidden (group 2 said to be at 1.2 Å/px);
    the same allowance as the pixel sizes alone (group 2's images, normalised at their own sampling,
    are brighter or darker against the reference than group 1's).
    Since class3d's first frequency limit is RELION's (the --ini_high shell 6 + 10, 2026-12-06) the two
    iterations reach shell 16 with FSCs of 0.91-0.99 over 4-15 (plain 0.979 on average), so the shells
    are 4-16 and the outer ones 9-16: magnification modelled 0.936 there, hidden 0.863 (over 9-14 the
    difference was 0.036 only)."""
    d = sets
    shells = slice(4, 17)
    plain = class3d_fsc(d, d / "plain/truth.star", "plain")[shells]
    good = class3d_fsc(d, d / case / "truth.star", case)[shells]
    bad = class3d_fsc(d, d / case / "hidden_truth.star", case + "/hidden")[shells]
    print(f"\n{case}: plain {plain.mean():.3f} modelled {good.mean():.3f} hidden {bad.mean():.3f}")
    if case in ("mixed_pixel", "mixed_sampling"):
        assert good.mean() >= plain.mean() - 0.08 and (good - plain).min() >= -0.2, (case, plain, good)
    elif case != "even_zernike":  # the other labels leave the images' information as it is
        assert good.mean() >= plain.mean() - 0.03 and (good - plain).min() >= -0.06, (case, plain, good)
    assert bad[5:].mean() < good[5:].mean() - 0.05, (case, good, bad)


def model_general(path):
    text = pathlib.Path(path).read_text()
    return {k: float(re.search(rf"_{k}\s+(\S+)", text).group(1)) for k in ("rlnLogLikelihood", "rlnCurrentResolution")}


def read_particles(path):
    """data_particles of a STAR file as {label: [strings]} (one loop, as Regula and simulate write it)."""
    lines = pathlib.Path(path).read_text().splitlines()
    start = lines.index("data_particles")
    labels, rows = [], []
    for l in lines[start + 1:]:
        if l.startswith("_"):
            labels.append(l.split()[0][1:])
        elif l.strip() and not l.startswith(("loop_", "#", "data_")):
            rows.append(l.split())
    return {lab: [r[k] for r in rows] for k, lab in enumerate(labels)}


def psi_deviation(truth_star, data_star):
    """Per particle (data_star's order): its psi minus the truth's, less the circular mean of that difference
    (class2d's class frame is arbitrary), in degrees; and its optics group."""
    t, e = read_particles(truth_star), read_particles(data_star)
    row = {name: k for k, name in enumerate(t["rlnImageName"])}
    tp = np.array([float(t["rlnAnglePsi"][row[n]]) for n in e["rlnImageName"]])
    z = np.exp(1j * np.deg2rad(np.array([float(v) for v in e["rlnAnglePsi"]]) - tp))
    dev = np.rad2deg(np.angle(z * np.exp(-1j * np.angle(z.mean()))))
    return dev, np.array([int(v) for v in e["rlnOpticsGroup"]])


@pytest.mark.parametrize("seed", [3, 4])
def test_class2d_resamples_optics_groups_of_other_sampling(tmp_path, seed):
    """class2d on one view (random psi) of the map, half the particles in an optics group of 1.0 Å/px and
    56 px (the first group: 1.2 Å/px, 48 px), K 1, 8 iterations: the second group's particles, resampled
    at the classes' Fourier grid, get the psi of the first group's frame as accurately as when they are
    classified alone at their own sampling (median error within 2x and under 2 degrees, none off by
    10 degrees); with the group said to be at 1.2 Å/px (its images then scaled wrongly) they do not
    (median error over 5 degrees). --j 1 and 2 write the same files. Defocus 0.3-0.8 µm: in this 56 Å
    box larger defoci alias the CTF (over pi per Fourier pixel near Nyquist), and resampled images then
    lose accuracy (docs/class2d.md). Measured 2026-12-05 (seeds 3 / 4): median error 0.80 / 0.90 degrees
    resampled, 0.63 / 0.70 alone, 15 / 89 said to be at 1.2 Å/px; RELION 3.1.3 on the same sets: see
    docs/class2d.md."""
    d = tmp_path
    atoms_map(d / "atoms.mrc")
    run_regula("simulate", "--i", d / "atoms.mrc", "--o", d / "sim", "--n", 300, "--snr", 1, "--defocus_min", 3000,
               "--defocus_max", 8000, "--seed", seed, "--j", 2, "--views", 1, "--og2_fraction", 0.5, "--og2_angpix",
               1.0, "--og2_box", 64)
    set_optics(d / "sim/particles.star", d / "sim/hidden.star", HIDDEN["mixed_sampling"])
    # The second group alone (its own sampling is then the classes').
    lines = (d / "sim/particles.star").read_text().splitlines()
    alone = [l for l in lines if not l.startswith("1 opticsGroup1")
             and not (len(l.split()) == 6 and l.split()[0].endswith("particles.mrcs") and l.split()[2] == "1")]
    (d / "sim/alone.star").write_text("\n".join(alone) + "\n")
    med = {}
    for tag, star in (("mixed", "particles.star"), ("hidden", "hidden.star"), ("alone", "alone.star")):
        run_regula("class2d", "--i", d / "sim" / star, "--o", d / tag / "run", "--K", 1, "--iter", 8, "--ctf", "--no_norm",
                   "--j", 2)
        dev, group = psi_deviation(d / "sim/truth.star", d / tag / "run_it008_data.star")
        med[tag] = (np.median(np.abs(dev[group == 2])), np.mean(np.abs(dev[group == 2]) > 10))
        if tag == "mixed":
            med["first group"] = np.median(np.abs(dev[group == 1]))
    print(med)
    assert med["mixed"][0] < 2.0 and med["mixed"][0] < 2 * med["alone"][0] and med["mixed"][1] == 0, med
    assert med["first group"] < 2.0, med
    assert med["hidden"][0] > 5.0, med
    run_regula("class2d", "--i", d / "sim/particles.star", "--o", d / "j1/run", "--K", 1, "--iter", 8, "--ctf", "--no_norm",
               "--j", 1)
    for f in ("run_it008_data.star", "run_it008_classes.mrcs"):
        a, b = (d / "mixed" / f).read_bytes(), (d / "j1" / f).read_bytes()
        assert a.replace(b"mixed/run", b"j1/run") == b, f


def test_class2d_models_anisotropic_magnification(sets):
    """class2d on one view (random psi) of the map with anisotropic magnification (1.02, 0.01, -0.005,
    0.985), K 1, 8 iterations: the classes are in the optics group's own image frame, so the images are
    not resampled, and the CTF is evaluated at the magnified frequencies: the plain set's resolution and
    psi accuracy; with the magnification removed from the STAR file (the CTF then at the wrong
    frequencies) a worse resolution and psi. Measured 2026-12-07 (seeds 3 / 4 of this set): resolution
    2.62 / 2.74 Å plain and modelled, 3.39 / 3.39 Å hidden; median psi error 0.70 / 0.75 degrees modelled,
    0.94 / 1.01 hidden."""
    d = sets
    for name, opts in (("plain", []), ("magnified", LABELLED["magnification"])):
        if not (d / f"view_{name}").exists():
            run_regula("simulate", "--i", d / "atoms.mrc", "--o", d / f"view_{name}", *SIM, "--views", 1, *opts)
    set_optics(d / "view_magnified/particles.star", d / "view_magnified/hidden.star", HIDDEN["magnification"])
    res, psi = {}, {}
    for tag, star, truth in (("plain", "view_plain/particles.star", "view_plain/truth.star"),
                             ("modelled", "view_magnified/particles.star", "view_magnified/truth.star"),
                             ("hidden", "view_magnified/hidden.star", "view_magnified/truth.star")):
        run_regula("class2d", "--i", d / star, "--o", d / f"c2m_{tag}/run", "--K", 1, "--iter", 8, "--ctf", "--no_norm",
                   "--j", 2)
        res[tag] = model_general(d / f"c2m_{tag}/run_it008_model.star")["rlnCurrentResolution"]
        dev, _ = psi_deviation(d / truth, d / f"c2m_{tag}/run_it008_data.star")
        psi[tag] = float(np.median(np.abs(dev)))
    print(res, psi)
    assert res["modelled"] <= res["plain"] * 1.02, res
    assert res["hidden"] > res["modelled"] * 1.1, res
    assert psi["modelled"] < 1.1 * psi["plain"] and psi["modelled"] < 0.9 * psi["hidden"], psi


def test_class2d_models_beam_tilt(sets):
    """class2d (its own 2D E-step, estep/) on one view (simulate --views 1, random psi) of the map with
    beam tilt, K 1, 8 iterations: modelled, it reaches the plain set's resolution and a
    log-likelihood within 0.1% of its total change; with the tilt removed from the STAR file the
    same images give a worse resolution and a clearly lower log-likelihood (the same images, so
    the likelihoods compare: the aberration phase is a unitary change of the data; --no_norm keeps it so). Measured
    2026-12-04 (seed 3): resolution 2.50 / 2.50 / 3.03 Å (plain / modelled / hidden), log-likelihood
    modelled minus plain +1,050, hidden minus modelled -5,700."""
    d = sets
    res = {}
    for name, opts in (("plain", []), ("tilted", LABELLED["beam_tilt"])):
        if not (d / f"view_{name}").exists():
            run_regula("simulate", "--i", d / "atoms.mrc", "--o", d / f"view_{name}", *SIM, "--views", 1, *opts)
    set_optics(d / "view_tilted/particles.star", d / "view_tilted/hidden.star", HIDDEN["beam_tilt"])
    for tag, star in (("plain", "view_plain/particles.star"), ("modelled", "view_tilted/particles.star"),
                      ("hidden", "view_tilted/hidden.star")):
        # --no_norm: the norm correction rescales each image by its residual level, so the runs would no
        # longer score the same images and their likelihoods would not compare.
        run_regula("class2d", "--i", d / star, "--o", d / f"c2_{tag}/run", "--K", 1, "--iter", 8, "--ctf", "--no_norm",
                   "--j", 2)
        res[tag] = model_general(d / f"c2_{tag}/run_it008_model.star")
    print(res)
    ll = {k: v["rlnLogLikelihood"] for k, v in res.items()}
    assert res["modelled"]["rlnCurrentResolution"] <= res["plain"]["rlnCurrentResolution"] * 1.02, res
    assert res["hidden"]["rlnCurrentResolution"] > res["modelled"]["rlnCurrentResolution"] * 1.05, res
    assert ll["modelled"] - ll["hidden"] > 5 * abs(ll["modelled"] - ll["plain"]), ll


@pytest.mark.parametrize("command", ["refine3d", "class3d", "class2d", "initial_model"])
def test_engines_take_the_modelled_labels_and_refuse_the_rest(sets, command):
    """Every engine runs on beam-tilted, premultiplied and phase-flipped data and on optics groups of
    different pixel and box sizes with --ctf, the 3D engines also on anisotropically magnified data. It
    stops with one line naming the label, the file and the command, and no output, for class2d on
    anisotropic magnification, and every engine for the labels without --ctf."""
    d = sets
    fast = {"refine3d": ["--ref", d / "plain/truth_map1.mrc", "--healpix_order", 0, "--offset_range", 1,
                         "--offset_step", 1, "--iter", 1, "--ini_high", 10],
            "class3d": ["--ref", d / "plain/truth_map1.mrc", "--K", 1, "--healpix_order", 0, "--iter", 1,
                        "--offset_range", 1, "--offset_step", 1],
            "class2d": ["--K", 2, "--iter", 1, "--offset_range", 1, "--offset_step", 1],
            "initial_model": ["--iter", 1]}[command]
    geometry = ("magnification", "mixed_pixel", "mixed_sampling")
    for case in ("beam_tilt", "premultiplied", "phase_flipped") + geometry:
        run_regula(command, "--i", d / case / "particles.star", "--o", d / case / command / "run", "--ctf", "--j", 2,
                   *fast)
        r = run_regula(command, "--i", d / case / "particles.star", "--o", d / case / f"{command}_noctf" / "run",
                       *fast, check=False)
        assert r.returncode == 1 and f"not yet supported by {command} without --ctf" in r.stderr, r.stderr
        assert str(d / case / "particles.star") in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (d / case / f"{command}_noctf").exists() or not any((d / case / f"{command}_noctf").iterdir())


def pose_errors(truth, est):
    """Median angular (degrees) and origin (Å) errors per optics group of est against truth (STAR paths)."""
    import gemmi
    from conftest import euler

    def read(path):
        b = gemmi.cif.read(str(path)).find_block("particles")
        t = b.find("_rln", ["ImageName", "AngleRot", "AngleTilt", "AnglePsi", "OriginXAngst", "OriginYAngst",
                            "OpticsGroup"])
        return {r[0]: np.array([float(r[i]) for i in range(1, 7)]) for r in t}

    t, e = read(truth), read(est)
    out = {}
    for g in sorted({int(v[5]) for v in t.values()}):
        names = [k for k, v in t.items() if int(v[5]) == g]
        ang = [np.degrees(np.arccos(np.clip((np.trace(euler(*t[k][:3]).T @ euler(*e[k][:3])) - 1) / 2, -1, 1)))
               for k in names]
        org = [np.hypot(*(t[k][3:5] - e[k][3:5])) for k in names]
        out[g] = (float(np.median(ang)), float(np.median(org)))
    return out


def test_refine3d_with_optics_groups_of_different_pixel_and_box_sizes(sets):
    """refine3d with alignment (coarse and fine passes, translations in each image's own pixels, noise
    at each group's own box) on the set whose group 2 is at 1.0 Å/px in a 56 px box (the reference at
    group 1's 1.2 Å/px and 48 px), from the truth low-passed to 10 Å: group 2's poses are found as well
    as the plain set's (its finer pixels carry more signal: the medians are lower), its origins within a
    fraction of a pixel, and the map's FSC with the truth over shells 4-14 no worse than the plain set's
    minus 0.03. Measured 2026-12-04 (seed 3): plain 4.25 degrees, 0.20 Å, FSC 0.896; mixed group 1 4.08
    degrees, group 2 2.90 degrees and 0.15 Å, FSC 0.909. By hand: group 2 at 1.2 Å/px in a 64 px box
    (only the box differs) 4.52 / 3.52 degrees, FSC 0.914; group 2 at 1.0 Å/px in group 1's box (only
    the pixel size) 3.12 / 2.16 degrees, FSC 0.931, and said to be at 1.2 Å/px 120 degrees; at 1.4 Å/px
    (coarser than the reference) 3.10 degrees, FSC 0.927; seed 5: plain 3.84, pixel only 3.61 / 2.12
    degrees. About 100 s."""
    d = sets
    opts = ["--ref", d / "plain/truth_map1.mrc", "--ctf", "--ini_high", 10, "--healpix_order", 2,
            "--auto_local_healpix_order", 4, "--offset_range", 3, "--offset_step", 1, "--particle_diameter", 45,
            "--flatten_solvent", "--zero_mask", "--j", 2]
    res = {}
    for case in ("plain", "mixed_sampling"):
        run_regula("refine3d", "--i", d / case / "particles.star", "--o", d / case / "r3d" / "run", *opts, timeout=600)
        f = fsc(mrcfile.read(d / case / "r3d/run_class001.mrc"), mrcfile.read(d / "plain/truth_map1.mrc"))
        res[case] = (pose_errors(d / case / "truth.star", d / case / "r3d/run_data.star"), f[4:15].mean())
    print(res)
    (plain_err, plain_fsc), (mixed_err, mixed_fsc) = res["plain"], res["mixed_sampling"]
    assert mixed_err[2][0] <= 1.25 * plain_err[1][0], res
    assert mixed_err[1][0] <= 1.25 * plain_err[1][0], res
    assert mixed_err[2][1] < 0.5, res  # Å; half a pixel is 0.5 Å in group 2
    assert mixed_fsc >= plain_fsc - 0.03, res

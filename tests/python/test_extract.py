"""regula extract against relion_preprocess --extract (RELION 3.1.3) on the same micrographs, coordinates and
options: the same particles kept, per-particle correlation >= 0.999 (the algorithms are the same; what is left is
float32 against RELION's double arithmetic, ~1e-6), the same STAR columns and CTF values; particles partly outside a
micrograph (edge pixels repeated, as RELION) and entirely outside (RELION stops the job, Regula skips them); the
per-micrograph outputs and --only_do_unfinished; bad micrographs skipped."""
import os
import shutil

import mrcfile
import numpy as np
import pytest

from movie_data import run, star_loop

RELION = shutil.which("relion_preprocess")
needs_relion = pytest.mark.skipif(RELION is None, reason="relion_preprocess (RELION 3.1.3) is not installed")

OPTICS = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnMicrographPixelSize #7
opticsGroup1 1 1.5 300 2.7 0.1 1.5
opticsGroup2 2 1.5 200 2.0 0.07 1.5

# version 30001

data_micrographs

loop_
_rlnMicrographName #1
_rlnOpticsGroup #2
_rlnCtfImage #3
_rlnDefocusU #4
_rlnDefocusV #5
_rlnCtfAstigmatism #6
_rlnDefocusAngle #7
_rlnCtfFigureOfMerit #8
_rlnCtfMaxResolution #9
"""

# Coordinates per micrograph: inside, near every edge, partly outside on every side, fractional and negative.
COORDS = {
    "Movies/mic_a.mrc": [(200.3, 150.7), (10, 10), (395.6, 5.2), (-5, 150), (399, 299), (420, 100), (200, -30),
                         (50.9, 290.99), (123.5, 77.25), (300, 200)],
    "Movies/mic_b.mrc": [(64, 64), (256.7, 300.2), (500, 500), (511, 0), (30.5, 480.5), (260, 130), (-20.7, 256)],
}
SHAPES = {"Movies/mic_a.mrc": (300, 400), "Movies/mic_b.mrc": (512, 512)}


def make_micrographs(d, seed=3):
    """Two micrographs (ny x nx 300 x 400 and 512 x 512): noise, a ramp, dark blobs at the coordinates."""
    rng = np.random.default_rng(seed)
    (d / "Movies").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, shape) in enumerate(SHAPES.items()):
        ny, nx = shape
        yy, xx = np.mgrid[:ny, :nx]
        mic = rng.normal(100.0, 5.0, shape) + 4.0 * xx / nx - 2.0 * yy / ny
        for (x, y) in COORDS[name]:
            mic -= 6.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 8.0 ** 2))
        with mrcfile.new(d / name, overwrite=True) as m:
            m.set_data(mic.astype(np.float32))
            m.voxel_size = 1.5
        rows.append(f"{name} {k + 1} {name[:-4]}.ctf:mrc {15000 + 1000 * k} {14000 + 1000 * k} 1000 {30 + 10 * k} "
                    f"0.2{k} 5.{k}")
        with open(d / (name[:-4] + "_pick.star"), "w") as f:
            f.write("\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnAutopickFigureOfMerit #3\n")
            for i, (x, y) in enumerate(COORDS[name]):
                f.write(f"{x} {y} {0.5 + 0.01 * i}\n")
    (d / "mics.star").write_text(OPTICS + "\n".join(rows) + "\n")


def stack(path):
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, np.float64), int(m.header.mode), float(m.voxel_size.x)


def images(star):
    """The images of a particles STAR file, in its order, as a float64 array (n, box, box)."""
    p = star_loop(star, "particles")
    out = []
    for name in p["rlnImageName"]:
        i, path = name.split("@")
        data, _, _ = stack(path)
        out.append(data[int(i) - 1])
    return np.array(out), p


def correlations(a, b):
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


OPTION_SETS = {
    "plain": [],
    "norm_invert": ["--norm", "--bg_radius", 24, "--invert_contrast"],
    "scale_norm": ["--scale", 48, "--norm", "--bg_radius", 18],
    "scale_up_noramp": ["--scale", 80, "--norm", "--bg_radius", 30, "--no_ramp", "--invert_contrast"],
    "window": ["--window", 48, "--norm", "--bg_radius", 16],
}


@needs_relion
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_extract_matches_relion(regula, tmp_path, name):
    make_micrographs(tmp_path)
    opts = OPTION_SETS[name]
    r = run([RELION, "--i", "mics.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--part_star",
             "R/particles.star", "--part_dir", "R/", "--extract", "--extract_size", 64, *opts], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([regula, "extract", "--i", "mics.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--o",
             "G/", "--extract_size", 64, *opts, "--j", 2], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rel, pr = images("R/particles.star")
        reg, pg = images("G/particles.star")
        # The same particles in the same order, at the same coordinates.
        assert len(rel) == len(reg) == sum(len(c) for c in COORDS.values())
        for lab in ("rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                    "rlnCtfFigureOfMerit", "rlnCtfMaxResolution", "rlnOpticsGroup", "rlnAutopickFigureOfMerit"):
            np.testing.assert_allclose(np.array(pr[lab], float), np.array(pg[lab], float), rtol=1e-6, err_msg=lab)
        assert pr["rlnMicrographName"] == pg["rlnMicrographName"]
        assert set(pr) == set(pg), set(pr) ^ set(pg)
        c = correlations(rel, reg)
        assert c.min() >= 0.999, c
        # Same values, not only correlated: float32 against double.
        scale = np.abs(rel).max()
        assert np.abs(rel - reg).max() <= 2e-4 * scale, np.abs(rel - reg).max() / scale
        orl, org = star_loop("R/particles.star", "optics"), star_loop("G/particles.star", "optics")
        assert set(orl) == set(org), set(orl) ^ set(org)
        for lab in ("rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality", "rlnVoltage"):
            np.testing.assert_allclose(np.array(orl[lab], float), np.array(org[lab], float), rtol=1e-6, err_msg=lab)
        # Per-micrograph stacks with RELION's names, pixel size in the header.
        for mic in COORDS:
            data, mode, px = stack(os.path.join("G", mic[:-4] + ".mrcs"))
            assert mode == 2 and len(data) == len(COORDS[mic])
            assert px == pytest.approx(float(org["rlnImagePixelSize"][0]), rel=1e-5)
            assert os.path.exists(os.path.join("G", mic[:-4] + "_extract.star"))
    finally:
        os.chdir(cwd)


@needs_relion
def test_float16_and_dust(regula, tmp_path):
    """--float16 (RELION 4's option; RELION 3.1.3 writes float32) keeps correlation >= 0.999 with RELION's float32;
    --white_dust/--black_dust replace the same outlier pixels as RELION (with other random values)."""
    make_micrographs(tmp_path)
    mic = tmp_path / "Movies" / "mic_b.mrc"
    with mrcfile.open(mic, "r+") as m:
        d = m.data.copy()
        d[64, 60] += 200.0  # white dust in the box at (64, 64)
        d[300, 250] -= 200.0  # black dust in the box at (256.7, 300.2)
        m.set_data(d)
    opts = ["--extract_size", 64, "--norm", "--bg_radius", 24, "--white_dust", 5, "--black_dust", 5]
    r = run([RELION, "--i", "mics.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--part_star",
             "R/particles.star", "--part_dir", "R/", "--extract", *opts], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([regula, "extract", "--i", "mics.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--o",
             "G/", *opts, "--float16"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rel, _ = images("R/particles.star")
        reg, _ = images("G/particles.star")
        assert stack("G/Movies/mic_b.mrcs")[1] == 12
        c = correlations(rel, reg)
        assert c.min() >= 0.999, c
        # The dust pixels: far from the rest in neither output.
        for img in (rel, reg):
            assert np.abs(img).max() < 6, np.abs(img).max()
    finally:
        os.chdir(cwd)


def test_outside_particles_skipped_and_continue(regula, tmp_path):
    """A box entirely outside the micrograph: relion_preprocess 3.1.3 stops the whole job ("lies completely
    outside micrograph"); Regula skips that particle with a message and extracts the rest. A missing micrograph is
    skipped; --only_do_unfinished keeps finished micrographs."""
    make_micrographs(tmp_path)
    with open(tmp_path / "Movies" / "mic_a_pick.star", "a") as f:
        f.write("-40 100 0.1\n")
    star = (tmp_path / "mics.star").read_text() + "Movies/missing.mrc 1 x.ctf:mrc 1 1 0 0 0 5\n"
    (tmp_path / "mics.star").write_text(star)
    (tmp_path / "Movies" / "missing_pick.star").write_text("\ndata_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n5 5\n")
    args = [regula, "extract", "--i", "mics.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--o",
            "G/", "--extract_size", 64, "--norm", "--bg_radius", 24]
    r = run(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "entirely outside" in r.stderr and "missing.mrc" in r.stderr
    p = star_loop(tmp_path / "G" / "particles.star", "particles")
    assert len(p["rlnImageName"]) == sum(len(c) for c in COORDS.values())
    assert not os.path.exists(tmp_path / "G" / "Movies" / "missing.mrcs")
    # Continue: finished micrographs are kept as they are (their files untouched).
    st = os.stat(tmp_path / "G" / "Movies" / "mic_a.mrcs").st_mtime_ns
    r = run(args + ["--only_do_unfinished"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.stat(tmp_path / "G" / "Movies" / "mic_a.mrcs").st_mtime_ns == st
    assert star_loop(tmp_path / "G" / "particles.star", "particles")["rlnImageName"] == p["rlnImageName"]


def test_bad_options(regula, tmp_path):
    make_micrographs(tmp_path)
    base = [regula, "extract", "--i", "mics.star", "--o", "G/"]
    for extra, msg in [(["--coord_suffix", "_pick.star", "--extract_size", 63], "even"),
                       (["--extract_size", 64], "exactly one of"),
                       (["--coord_suffix", "_pick.star", "--extract_size", 64, "--bg_radius", 10], "--norm"),
                       (["--coord_suffix", "_pick.star", "--extract_size", 64, "--norm", "--bg_radius", 40], "half"),
                       (["--coord_suffix", "_pick.star", "--extract_size", 64, "--recenter"], "reextract"),
                       (["--coord_suffix", "_pick.star", "--extract_size", 64, "--phase_flip"],
                        "--phase_flip: not implemented yet"),
                       (["--coord_suffix", "_pick.star", "--extract_size", 64, "--helical_outer_diameter", 100],
                        "--helical_outer_diameter: not implemented yet")]:
        r = run(base + extra, cwd=tmp_path)
        assert r.returncode == 1 and msg in r.stderr, (extra, r.stderr)
        assert not os.path.exists(tmp_path / "G" / "particles.star")


def write_run_data(path, offsets, angpix=1.5, box=64):
    """A refinement's run_data.star (RELION 3.1) for the particles of COORDS picked off-centre by `offsets` (px):
    coordinates = truth + offset, refined origins = the offsets in Å (RELION: the centre is at coordinate - origin),
    the optics groups of mics.star with the particles' pixel size and box."""
    lines = ["# version 30001", "", "data_optics", "", "loop_"]
    cols = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
            "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
            "rlnImageDimensionality"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(cols)]
    lines += [f"opticsGroup1 1 1.5 300 2.7 0.1 {angpix} {box} 2", f"opticsGroup2 2 1.5 200 2.0 0.07 {angpix} {box} 2"]
    lines += ["", "# version 30001", "", "data_particles", "", "loop_"]
    cols = ["rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup",
            "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
            "rlnOriginXAngst", "rlnOriginYAngst", "rlnClassNumber"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(cols)]
    k = 0
    for g, (mic, coords) in enumerate(COORDS.items()):
        for i, (x, y) in enumerate(coords):
            dx, dy = offsets[k]
            k += 1
            lines.append(f"{x + dx:.4f} {y + dy:.4f} {i + 1:06d}@Old/{mic[:-4]}.mrcs {mic} {g + 1} 15000 14000 30 "
                         f"{10 * i} {5 * i} {3 * i} {dx * angpix:.6f} {dy * angpix:.6f} 1")
    path.write_text("\n".join(lines) + "\n")


@needs_relion
def test_reextract_recenter(regula, tmp_path):
    """--reextract_data_star --recenter: the refined origins are folded into the coordinates as relion_preprocess
    3.1.3 does (coordinate -= round(origin), the remainder stays as the origin); the new coordinate minus the new
    origin is the true centre; the images are RELION's; with --scale the origins are in the new pixels."""
    make_micrographs(tmp_path)
    rng = np.random.default_rng(7)
    n = sum(len(c) for c in COORDS.values())
    offsets = rng.uniform(-6, 6, size=(n, 2))
    write_run_data(tmp_path / "run_data.star", offsets)
    truth = np.array([xy for c in COORDS.values() for xy in c], float)
    for extra in ([], ["--scale", 48]):
        opts = ["--reextract_data_star", "run_data.star", "--recenter", "--extract_size", 64, "--norm", "--bg_radius",
                16 if extra else 24, *extra]
        r = run([RELION, "--i", "mics.star", "--part_star", "R/particles.star", "--part_dir", "R/", "--extract",
                 *opts], cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run([regula, "extract", "--i", "mics.star", "--o", "G/", *opts], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            rel, pr = images("R/particles.star")
            reg, pg = images("G/particles.star")
            for lab in ("rlnCoordinateX", "rlnCoordinateY", "rlnOriginXAngst", "rlnOriginYAngst", "rlnAngleRot",
                        "rlnDefocusU"):
                np.testing.assert_allclose(np.array(pg[lab], float), np.array(pr[lab], float), atol=1e-4,
                                           err_msg=lab)
            px = float(star_loop("G/particles.star", "optics")["rlnImagePixelSize"][0])
            assert px == pytest.approx(1.5 * 64 / (48 if extra else 64))
            xy = np.array([pg["rlnCoordinateX"], pg["rlnCoordinateY"]], float).T
            org = np.array([pg["rlnOriginXAngst"], pg["rlnOriginYAngst"]], float).T
            # Centre = coordinate - origin (origin in micrograph pixels = Å / micrograph pixel size).
            np.testing.assert_allclose(xy - org / 1.5, truth, atol=1e-3)
            # What is left of the origin is below half a micrograph pixel.
            assert np.abs(org / 1.5).max() <= 0.5 + 1e-4, np.abs(org / 1.5).max()
            c = correlations(rel, reg)
            assert c.min() >= 0.999, c
        finally:
            os.chdir(cwd)
        shutil.rmtree(tmp_path / "R")
        shutil.rmtree(tmp_path / "G")


@pytest.mark.skipif(shutil.which("relion_refine") is None, reason="relion_refine (RELION 3.1.3) is not installed")
def test_particles_star_readable_by_relion_refine(regula, tmp_path):
    """particles.star and its stacks as relion_refine reads them: one iteration of 2D classification (K 1) on the
    extracted particles runs and keeps every particle with its optics group and CTF."""
    make_micrographs(tmp_path)
    r = run([regula, "extract", "--i", "mics.star", "--coord_dir", "./", "--coord_suffix", "_pick.star", "--o", "G/",
             "--extract_size", 64, "--scale", 48, "--norm", "--bg_radius", 18, "--invert_contrast"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "C").mkdir()
    r = run([shutil.which("relion_refine"), "--i", "G/particles.star", "--o", "C/run", "--K", 1, "--iter", 1,
             "--tau2_fudge", 2, "--particle_diameter", 80, "--ctf", "--zero_mask", "--oversampling", 1, "--psi_step",
             30, "--offset_range", 3, "--offset_step", 3, "--norm", "--scale", "--j", 1], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = star_loop(tmp_path / "C" / "run_it001_data.star", "particles")
    src = star_loop(tmp_path / "G" / "particles.star", "particles")
    assert out["rlnImageName"] == src["rlnImageName"]
    np.testing.assert_allclose(np.array(out["rlnDefocusU"], float), np.array(src["rlnDefocusU"], float))
    assert [int(g) for g in out["rlnOpticsGroup"]] == [int(g) for g in src["rlnOpticsGroup"]]

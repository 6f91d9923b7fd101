"""regula particle_subtract against relion_particle_subtract (RELION 3.1.3) on the same inputs.

The inputs are made here: 120 particles simulated from the 48-px 70S crop (4 Å/px, CTF, SNR 0.5, shifts up
to 2 px, `regula simulate`), one iteration of relion_refine without alignment (K=1, --skip_align --ctf
--norm --scale) gives a RELION optimiser/model/data set with its map, norm corrections and group scales;
a soft sphere off the centre is the mask of the density to keep. A copy of that optimiser marked as a
gold-standard refinement (rlnDoSplitRandomHalves, a second model whose map is the ground truth, particles
split by rlnRandomSubset) checks that each particle is subtracted with the map of its half; RELION needs
two MPI processes for it (relion_particle_subtract_mpi).

Each case compares, particle by particle (matched by rlnImageOriginalName), the subtracted images
(correlation >= 0.999, the acceptance of issue 19), the subtracted signal (input - output, which isolates
the projection: correlation >= 0.999 as well) and the STAR values (origins after re-centring to 1e-3 Å,
image sizes). The whole file takes about 20 s here (relion_refine about 5 s)."""
import re
import shutil
import subprocess

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, run_regula as run

MAP = DATA / "proj" / "clean70S_crop48.mrc"
ANGPIX = 4.0
N = 48
RELION_REFINE = shutil.which("relion_refine")
RELION_SUBTRACT = shutil.which("relion_particle_subtract")
RELION_SUBTRACT_MPI = shutil.which("relion_particle_subtract_mpi")
need_relion = pytest.mark.skipif(RELION_SUBTRACT is None or RELION_REFINE is None,
                                 reason="relion_refine / relion_particle_subtract not installed")


def particles(path):
    b = gemmi.cif.read(str(path)).find_block("particles")
    loop = b[0].loop
    return [{tag[1:]: loop.val(r, c) for c, tag in enumerate(loop.tags)} for r in range(loop.length())]


def image(cwd, name):
    idx, stack = name.split("@")
    with mrcfile.mmap(str(cwd / stack), permissive=True) as m:
        d = m.data
        return np.array(d[int(idx) - 1] if d.ndim == 3 else d, dtype=np.float64)


def corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def soft_sphere(n, centre, radius, edge):
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    m = np.where(r <= radius, 1.0, np.where(r >= radius + edge, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - radius) / edge)))
    return m.astype(np.float32)


def add_columns(src, dst, columns):
    """The STAR file `src` with columns added at the end of data_particles (values per row)."""
    out, in_particles, header, row = [], False, 0, 0
    for line in src.read_text().splitlines():
        t = line.strip()
        if t.startswith("data_"):
            in_particles = t == "data_particles"
        elif in_particles and t.startswith("_"):
            header += 1
        elif in_particles and t and not t.startswith(("loop_", "#")):
            if row == 0:
                out += [f"_{k} #{header + i + 1}" for i, k in enumerate(columns)]
            line = line + " " + " ".join(v[row] for v in columns.values())
            row += 1
        out.append(line)
    dst.write_text("\n".join(out) + "\n")


def truncate_particles(src, dst, keep):
    """The STAR file `src` with only the first `keep` rows of data_particles."""
    out, in_particles, rows = [], False, 0
    for line in src.read_text().splitlines():
        t = line.strip()
        if t.startswith("data_"):
            in_particles = t == "data_particles"
        elif in_particles and t and not t.startswith(("_", "loop_", "#")):
            rows += 1
            if rows > keep:
                continue
        out.append(line)
    dst.write_text("\n".join(out) + "\n")


def write_map(path, data):
    with mrcfile.new(str(path), overwrite=True) as o:
        o.set_data(np.asarray(data, dtype=np.float32))
        o.voxel_size = ANGPIX


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("subtract")
    run("simulate", "--i", MAP, "--o", "sim", "--n", 120, "--angpix", ANGPIX, "--snr", 0.5, "--max_shift", 2,
        "--seed", 3, "--defocus_min", 8000, "--defocus_max", 20000, cwd=d)
    # Two groups (two scale corrections) and the half sets.
    n = len(particles(d / "sim/truth.star"))
    add_columns(d / "sim/truth.star", d / "sim/input.star",
                {"rlnGroupName": [f"group{1 + r % 2}" for r in range(n)],
                 "rlnRandomSubset": [str(1 + r % 2) for r in range(n)]})
    write_map(d / "mask.mrc", soft_sphere(N, (6, -4, 3), 8, 4))
    write_map(d / "keep_all.mrc", np.ones((N, N, N)))
    if RELION_REFINE:
        (d / "rl").mkdir()
        subprocess.run([RELION_REFINE, "--i", "sim/input.star", "--o", "rl/run", "--ref", "sim/truth_map1.mrc",
                        "--iter", "1", "--K", "1", "--skip_align", "--ctf", "--particle_diameter", "170",
                        "--tau2_fudge", "4", "--flatten_solvent", "--zero_mask", "--norm", "--scale", "--pad", "2",
                        "--random_seed", "1", "--j", "1", "--ini_high", "12", "--dont_combine_weights_via_disc"],
                       cwd=d, check=True, capture_output=True, timeout=300)
        # A gold-standard copy: the second half's map is the ground truth.
        opt = gemmi.cif.read(str(d / "rl/run_it001_optimiser.star"))
        g = opt.find_block("optimiser_general")
        g.set_pair("_rlnDoSplitRandomHalves", "1")
        g.set_pair("_rlnModelStarFile2", "rl/run_half2_model.star")
        opt.write_file(str(d / "rl/gold_optimiser.star"))
        text = (d / "rl/run_it001_model.star").read_text()
        assert text.count("rl/run_it001_class001.mrc") == 1
        (d / "rl/run_half2_model.star").write_text(text.replace("rl/run_it001_class001.mrc", "sim/truth_map1.mrc"))
        # The model of an earlier iteration, when only frequencies up to 12 px were used: RELION projects up
        # to rlnCurrentImageSize / 2.
        text = (d / "rl/run_it001_model.star").read_text()
        (d / "rl/window_model.star").write_text(re.sub(r"_rlnCurrentImageSize\s+48", "_rlnCurrentImageSize 24", text))
        opt = gemmi.cif.read(str(d / "rl/run_it001_optimiser.star"))
        opt.find_block("optimiser_general").set_pair("_rlnModelStarFile", "rl/window_model.star")
        opt.write_file(str(d / "rl/window_optimiser.star"))
        # A subset of 50 particles for --data.
        truncate_particles(d / "rl/run_it001_data.star", d / "rl/subset.star", 50)
    return d


def compare(d, relion_dir, regula_dir, data_star, min_corr=0.999):
    """Per-particle comparison of the two subtractions; returns the correlations."""
    ours = {p["rlnImageOriginalName"]: p for p in particles(d / regula_dir / "particles_subtracted.star")}
    theirs = {p["rlnImageOriginalName"]: p for p in particles(d / relion_dir / "particles_subtracted.star")}
    assert set(ours) == set(theirs)
    assert len(ours) == len(particles(d / data_star))
    c_img, c_sig = [], []
    for name, t in theirs.items():
        o = ours[name]
        a, b = image(d, o["rlnImageName"]), image(d, t["rlnImageName"])
        assert a.shape == b.shape
        c_img.append(corr(a, b))
        src = image(d, name)
        if src.shape == a.shape and "rlnOriginXPriorAngst" not in t:
            c_sig.append(corr(src - a, src - b))
        for col in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
            assert abs(float(o[col]) - float(t[col])) < 1e-3, (name, col, o[col], t[col])
    c_img, c_sig = np.array(c_img), np.array(c_sig)
    print(f"{regula_dir}: image correlation min {c_img.min():.6f} mean {c_img.mean():.6f}; "
          f"subtracted signal min {c_sig.min() if len(c_sig) else float('nan'):.6f}")
    assert c_img.min() >= min_corr
    return c_img, c_sig


@need_relion
@pytest.mark.parametrize("case,args", [
    ("mask", ["--mask", "mask.mrc"]),
    ("window", ["--mask", "mask.mrc", "--i", "rl/window_optimiser.star"]),
    ("nomask", []),
    ("recentre", ["--mask", "mask.mrc", "--recenter_on_mask", "--new_box", "32"]),
    ("centre_xyz", ["--mask", "mask.mrc", "--center_x", "5", "--center_y", "-3", "--center_z", "2", "--new_box", "37",
                    "--data", "rl/subset.star"]),
])
def test_matches_relion(work, case, args):
    if "--i" not in args:
        args = ["--i", "rl/run_it001_optimiser.star", *args]
    subprocess.run([RELION_SUBTRACT, "--o", f"rls_{case}/", *args], cwd=work, check=True, capture_output=True,
                   timeout=300)
    run("particle_subtract", "--o", f"rgs_{case}", "--j", 2, *args, cwd=work)
    data = "rl/subset.star" if "--data" in args else "rl/run_it001_data.star"
    c_img, c_sig = compare(work, f"rls_{case}", f"rgs_{case}", data)
    if len(c_sig):
        assert c_sig.min() >= 0.999
    if "--new_box" in args:
        box = int(args[args.index("--new_box") + 1]) // 2 * 2
        optics = gemmi.cif.read(str(work / f"rgs_{case}/particles_subtracted.star")).find_block("optics")
        assert set(optics.find_loop("_rlnImageSize")) == {str(box)}


@need_relion
@pytest.mark.skipif(RELION_SUBTRACT_MPI is None or shutil.which("mpirun") is None, reason="needs MPI RELION")
def test_gold_standard_halves_match_relion(work):
    subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", RELION_SUBTRACT_MPI, "--i",
                    "rl/gold_optimiser.star", "--o", "rls_gold/", "--mask", "mask.mrc"],
                   cwd=work, check=True, capture_output=True, timeout=300)
    run("particle_subtract", "--i", "rl/gold_optimiser.star", "--o", "rgs_gold", "--mask", "mask.mrc", cwd=work)
    compare(work, "rls_gold", "rgs_gold", "rl/run_it001_data.star")
    # Half 2 used the truth map, half 1 the reconstruction: the subtracted signals differ between halves
    # in the way the maps do (checked against the single-map subtraction above).
    ours = {p["rlnImageOriginalName"]: p for p in particles(work / "rgs_gold/particles_subtracted.star")}
    one = {p["rlnImageOriginalName"]: p for p in particles(work / "rgs_mask/particles_subtracted.star")} \
        if (work / "rgs_mask").exists() else None
    if one:
        for name, p in ours.items():
            same = np.allclose(image(work, p["rlnImageName"]), image(work, one[name]["rlnImageName"]), atol=1e-5)
            assert same == (p["rlnRandomSubset"] == "1"), name


@need_relion
def test_revert_matches_relion(work):
    if not (work / "rgs_mask").exists():
        run("particle_subtract", "--i", "rl/run_it001_optimiser.star", "--o", "rgs_mask", "--mask", "mask.mrc",
            cwd=work)
    (work / "rlr").mkdir(exist_ok=True)  # relion_particle_subtract --revert does not make it
    subprocess.run([RELION_SUBTRACT, "--revert", "rgs_mask/particles_subtracted.star", "--o", "rlr/"], cwd=work,
                   check=True, capture_output=True)
    run("particle_subtract", "--revert", "rgs_mask/particles_subtracted.star", "--o", "rgr", cwd=work)
    a, b = particles(work / "rgr/original.star"), particles(work / "rlr/original.star")
    assert [p["rlnImageName"] for p in a] == [p["rlnImageName"] for p in b]
    assert [p["rlnImageOriginalName"] for p in a] == [p["rlnImageOriginalName"] for p in b]


@need_relion
def test_keep_everything_returns_the_input(work):
    """A mask of ones keeps the whole map: the subtracted images are the (norm-corrected) inputs."""
    run("particle_subtract", "--i", "rl/run_it001_optimiser.star", "--o", "rgs_all", "--mask", "keep_all.mrc",
        cwd=work)
    for p in particles(work / "rgs_all/particles_subtracted.star")[:20]:
        out, src = image(work, p["rlnImageName"]), image(work, p["rlnImageOriginalName"])
        # The image is scaled by rlnNormCorrectionAverage / rlnNormCorrection (--norm in the refinement).
        assert corr(out, src) > 0.99999
        np.testing.assert_allclose(out, src * (out * src).sum() / (src * src).sum(), atol=1e-4 * np.abs(src).max())


def test_bad_input(tmp_path):
    r = run("particle_subtract", "--o", "x", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "--revert" in r.stderr
    r = run("particle_subtract", "--i", "missing_optimiser.star", "--o", "x", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "missing_optimiser.star" in r.stderr
    r = run("particle_subtract", "--i", "a.star", "--o", "x", "--recenter_on_mask", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "--recenter_on_mask needs --mask" in r.stderr
    r = run("particle_subtract", "--i", "a.star", "--o", "x", "--center_x", "3", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "go together" in r.stderr
    (tmp_path / "multi_optimiser.star").write_text(
        "data_optimiser_general\n_rlnExperimentalDataStarFile d.star\n_rlnModelStarFile m.star\n"
        "_rlnBodyStarFile bodies.star\n")
    (tmp_path / "m.star").write_text("data_model_general\n_rlnOriginalImageSize 48\n_rlnPixelSize 4\n"
                                     "data_model_classes\nloop_\n_rlnReferenceImage\nmap.mrc\n")
    r = run("particle_subtract", "--i", "multi_optimiser.star", "--o", "x", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "multi-body" in r.stderr
    assert not (tmp_path / "x" / "particles_subtracted.star").exists()


def test_regula_class3d_output_and_project_job(work):
    """The optimiser of `regula class3d` (its own model and data files) is read as RELION's, and a subtraction runs
    as a job of a project: Subtract/jobNNN/ with particles_subtracted.star a particles node (3) and the optimiser
    an optimiser node (9). Keeping the whole map leaves each image scaled by rlnNormCorrectionAverage /
    rlnNormCorrection, the average being the mean of the data file's norm corrections (as RELION writes it; when
    the model lacked it, 1 was taken and the images came out about 1.5 times too bright)."""
    run("class3d", "--i", "sim/input.star", "--o", "rc/run", "--ref", "sim/truth_map1.mrc", "--K", 1, "--iter", 1,
        "--skip_align", "--ctf", "--particle_diameter", 170, cwd=work)
    run("--project", ".", "particle_subtract", "--i", "rc/run_it001_optimiser.star", "--mask", "keep_all.mrc",
        cwd=work)
    jobs = sorted((work / "Subtract").iterdir())
    star = jobs[-1] / "particles_subtracted.star"
    rows = particles(star)
    assert len(rows) == 120
    norm = {p["rlnImageName"]: float(p["rlnNormCorrection"]) for p in particles(work / "rc/run_it001_data.star")}
    general = gemmi.cif.read(str(work / "rc/run_it001_model.star")).find_block("model_general")
    average = float(general.find_value("_rlnNormCorrectionAverage"))
    assert average == pytest.approx(np.mean(list(norm.values())), rel=1e-5)
    for p in rows[:10]:
        out, src = image(work, p["rlnImageName"]), image(work, p["rlnImageOriginalName"])
        np.testing.assert_allclose(out, src * average / norm[p["rlnImageOriginalName"]], atol=1e-4 * np.abs(src).max())
    b = gemmi.cif.read(str(work / "default_pipeline.star")).find_block("pipeline_nodes")
    nodes = dict(zip(b.find_loop("_rlnPipeLineNodeName"), b.find_loop("_rlnPipeLineNodeType")))
    assert nodes[str(star.relative_to(work))] == "3"
    assert nodes["rc/run_it001_optimiser.star"] == "9"
    procs = gemmi.cif.read(str(work / "default_pipeline.star")).find_block("pipeline_processes")
    assert "14" in list(procs.find_loop("_rlnPipeLineProcessType"))

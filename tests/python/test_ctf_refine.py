"""`regula ctf_refine` (jobs/ctf_refine.hpp) on simulated particles with known errors
(tests/python/ctf_refine_data.py): two optics groups, each with its own beam tilt (0.5-1 mrad) and
anisotropic magnification (1-1.5%), per-particle defocus errors of 300 Å; the half maps reconstructed
with the true values. The estimates are compared with the truth; the output is read by RELION's own
reconstruction and must give the map Regula's reconstruction gives from it; the result does not
depend on --j; bad input stops with one message and no output. About 40 s on 2 cores, no ../shared data.

Tolerances from measured errors on this data (seeds 11 and 12, 1,500 particles per group at box 64,
SNR 0.3, no mask): beam tilt within 0.05 mrad of the truth (largest error seen 0.011), magnification
matrix entries within 0.004 (largest seen 0.0017; the input identity is 0.015 away), defocus RMS error
under a fifth of the input's (seen: 30-32 Å from 290 Å).
"""
import filecmp
import shutil
import subprocess

import numpy as np
import pytest

mrcfile = pytest.importorskip("mrcfile")

import ctf_refine_data as cd
from conftest import fsc, regula_binary, run_regula

GROUPS = [{"tilt": (1.0, -0.6), "mag": (1.015, 0.004, 0.004, 0.99)},
          {"tilt": (-0.5, 0.8), "mag": (0.988, -0.003, -0.003, 1.008)}]
FIT = ["--fit_beamtilt", "--fit_aniso", "--fit_defocus"]  # defocus per particle, astigmatism per micrograph


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctf_refine")
    paths = cd.make(regula_binary(), d, GROUPS, n=1500, seed=11, spread=1000.0)
    run_regula("ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", "out", *FIT, "--j", 2,
               cwd=d)
    return d, paths


def test_estimates_against_the_truth(data):
    d, paths = data
    est = cd.optics_values(d / "out" / "particles_ctf_refine.star")
    assert len(est) == 2
    for g, truth in enumerate(GROUPS):
        assert np.allclose(est[g]["tilt"], truth["tilt"], atol=0.05), (g, est[g]["tilt"], truth["tilt"])
        assert np.allclose(est[g]["mag"], truth["mag"], atol=0.004), (g, est[g]["mag"], truth["mag"])
    before, _ = cd.defocus_errors(paths["input"], paths["truth"])
    after, _ = cd.defocus_errors(d / "out" / "particles_ctf_refine.star", paths["truth"])
    rms_before, rms_after = np.sqrt(np.mean(before ** 2)), np.sqrt(np.mean(after ** 2))
    assert rms_before > 250
    assert rms_after < rms_before / 5, (rms_before, rms_after)
    # The diagnostic images of the odd phase, per optics group.
    for g in (1, 2):
        assert (d / "out" / f"beamtilt_delta-phase_per-pixel_optics-group_{g}.png").stat().st_size > 100


def test_simulated_micrographs_share_their_defocus(data):
    """simulate --micrographs/--defocus_spread: a micrograph's particles share astigmatism and angle, and
    their defoci spread over at most --defocus_spread (1,000 Å here), nearly all of it."""
    _, paths = data
    p = cd.read_star(paths["truth"])["particles"]
    mics = cd.column(p, "rlnMicrographName", str)
    u, v = cd.column(p, "rlnDefocusU"), cd.column(p, "rlnDefocusV")
    angle = cd.column(p, "rlnDefocusAngle")
    assert len(np.unique(mics)) == 60  # 30 per optics group
    spans = []
    for m in np.unique(mics):
        sel = mics == m
        assert np.ptp(angle[sel]) < 0.02 and np.ptp(u[sel] - v[sel]) < 0.1
        spans.append(np.ptp(u[sel]))
    assert max(spans) <= 1000.1 and min(spans) > 800


def test_same_result_with_one_thread(data):
    d, _ = data
    run_regula("ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", "out_j1", *FIT,
               "--j", 1, cwd=d)
    assert filecmp.cmp(d / "out" / "particles_ctf_refine.star", d / "out_j1" / "particles_ctf_refine.star",
                       shallow=False)


ALL = ["--fit_beamtilt", "--fit_aniso", "--fit_defocus", "--fit_aberr", "--fit_bfacs", "--fit_mode", "mpmff"]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI not installed")
@pytest.mark.parametrize("ranks,threads", [(2, 1), (3, 2)])
def test_mpirun_gives_the_bytes_of_one_process(data, ranks, threads):
    """Under mpirun the ranks fit alternate blocks of micrographs and exchange their sums and per-particle
    results: every pass (noise, beam tilt, magnification, even aberrations, defocus with a per-micrograph
    phase shift, B-factors) gives the bytes of one process, whatever the ranks and threads; one set of
    images (rank 0's)."""
    d, _ = data
    if not (d / "all_one").exists():
        run_regula("ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", "all_one", *ALL,
                   "--j", 2, cwd=d)
    out = f"all_mpi{ranks}"
    r = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), regula_binary(),
                        "ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", out, *ALL,
                        "--j", str(threads)], cwd=d, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one = sorted(p.name for p in (d / "all_one").iterdir())
    assert sorted(p.name for p in (d / out).iterdir()) == one and len(one) == 9, one
    for name in one:
        assert filecmp.cmp(d / "all_one" / name, d / out / name, shallow=False), name


def with_missing_stack(d, name, first, last):
    """A copy of input.star whose particle rows first..last-1 name a stack that does not exist."""
    lines = (d / "input.star").read_text().splitlines()
    rows = [k for k, l in enumerate(lines) if l.split() and "@" in l.split()[0]]
    for k in rows[first:last]:
        cells = lines[k].split()
        cells[0] = cells[0].split("@")[0] + "@og1/missing.mrcs"
        lines[k] = " ".join(cells)
    (d / name).write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI not installed")
def test_mpirun_stops_every_rank_on_a_bad_image(data):
    """A missing image stack in one rank's share under mpirun: that rank's error stops all ranks (mpirun
    exits with status 1 within the timeout instead of the other ranks waiting forever in the exchange of
    sums), the message names the file and row, no particles file is written."""
    d, _ = data
    with_missing_stack(d, "bad_mpi.star", 800, 900)
    r = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", regula_binary(), "ctf_refine",
                        "--i", "bad_mpi.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", "bad_mpi",
                        "--fit_defocus", "--j", "1"], cwd=d, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "missing.mrcs" in r.stderr and "bad_mpi.star:" in r.stderr, r.stderr[-2000:]
    assert not (d / "bad_mpi" / "particles_ctf_refine.star").exists()


def test_refined_values_improve_the_reconstruction(data):
    """The refined file, reconstructed, is closer to the true map than the input file (the values are used
    by reconstruct), and relion_reconstruct reads the file to the same map as Regula's reconstruct."""
    d, paths = data
    with mrcfile.open(paths["map"]) as f:
        truth = f.data.astype(float)
    score = {}
    for name, star in (("input", "input.star"), ("refined", "out/particles_ctf_refine.star")):
        run_regula("reconstruct", "--i", star, "--o", f"rec_{name}.mrc", "--ctf", "--j", 2, cwd=d)
        with mrcfile.open(d / f"rec_{name}.mrc") as f:
            score[name] = fsc(f.data.astype(float), truth)[16:30].mean()
    assert score["refined"] > score["input"] + 0.05, score
    if shutil.which("relion_reconstruct") is None:
        pytest.skip("relion_reconstruct is not installed (scripts/setup with REGULA_WITH_RELION=1)")
    r = subprocess.run(["relion_reconstruct", "--i", "out/particles_ctf_refine.star", "--o", "rec_relion.mrc", "--ctf",
                        "--j", "2"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with mrcfile.open(d / "rec_relion.mrc") as f:
        relion = f.data.astype(float)
    with mrcfile.open(d / "rec_refined.mrc") as f:
        ours = f.data.astype(float)
    assert fsc(relion, ours)[1:30].min() > 0.99


def test_only_do_unfinished(data):
    """--only_do_unfinished (RELION's continue): a finished job is left as it is (the file not rewritten);
    without its output the job runs from the start."""
    d, _ = data
    out = d / "out" / "particles_ctf_refine.star"
    stamp = out.stat().st_mtime_ns
    run_regula("ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", "out", *FIT,
               "--only_do_unfinished", "--j", 2, cwd=d)
    assert out.stat().st_mtime_ns == stamp
    shutil.copytree(d / "out", d / "out_again")
    (d / "out_again" / "particles_ctf_refine.star").unlink()
    run_regula("ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--o", "out_again", *FIT,
               "--only_do_unfinished", "--j", 2, cwd=d)
    assert filecmp.cmp(out, d / "out_again" / "particles_ctf_refine.star", shallow=False)


def test_project_job(data):
    """As a job of a project: CtfRefine/jobNNN/ (RELION's process type 21) with particles_ctf_refine.star a
    particles node (3) in default_pipeline.star."""
    d, _ = data
    run_regula("--project", ".", "ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc",
               "--fit_beamtilt", "--j", 2, cwd=d)
    jobs = sorted((d / "CtfRefine").iterdir())
    star = jobs[-1] / "particles_ctf_refine.star"
    assert star.is_file() and (jobs[-1] / "RELION_JOB_EXIT_SUCCESS").exists()
    text = (d / "default_pipeline.star").read_text()
    assert f"{star.relative_to(d)} 3" in " ".join(text.split())
    procs = [line.split() for line in text.splitlines() if line.startswith("CtfRefine/")]
    assert procs and procs[0][2] == "21", procs


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI not installed")
def test_project_job_under_mpirun(data):
    """`mpirun -np 2 regula --project . ctf_refine ...` is one job (rank 0 makes it and keeps its records) with the
    bytes of the job run in one process; with a missing stack in rank 1's share (micrographs 5-8: block 1) the
    job is marked failed (RELION_JOB_EXIT_FAILURE, pipeline status 3) by the rank that failed, and mpirun
    exits with status 1."""
    d, _ = data
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", regula_binary(), "--project", "."]
    args = ["ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--fit_beamtilt", "--j", "1"]
    before = set((d / "CtfRefine").iterdir()) if (d / "CtfRefine").exists() else set()
    r = subprocess.run(mpirun + args, cwd=d, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (job,) = set((d / "CtfRefine").iterdir()) - before
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    run_regula("--project", ".", *args, cwd=d)
    (alone,) = set((d / "CtfRefine").iterdir()) - before - {job}
    assert (job / "particles_ctf_refine.star").read_bytes() == (alone / "particles_ctf_refine.star").read_bytes()
    with_missing_stack(d, "bad_rank1.star", 200, 400)
    bad = ["ctf_refine", "--i", "bad_rank1.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--fit_beamtilt",
           "--j", "1"]
    known = set((d / "CtfRefine").iterdir())
    r = subprocess.run(mpirun + bad, cwd=d, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "missing.mrcs" in r.stderr, r.stderr[-3000:]
    (failed,) = set((d / "CtfRefine").iterdir()) - known
    assert (failed / "RELION_JOB_EXIT_FAILURE").exists() and not (failed / "particles_ctf_refine.star").exists()
    procs = [l.split() for l in (d / "default_pipeline.star").read_text().splitlines()
             if l.startswith(f"CtfRefine/{failed.name}/ ")]
    assert len(procs) == 1 and procs[0][3] == "3", procs


@pytest.mark.parametrize("case", ["no_subset", "no_poses", "bad_mode", "nothing", "missing_map"])
def test_bad_input_stops_with_a_message(data, case):
    d, _ = data
    b = cd.read_star(d / "input.star")
    args = ["--m1", "half1.mrc", "--m2", "half2.mrc", "--fit_defocus"]
    p = b["particles"]
    if case in ("no_subset", "no_poses"):
        word = "rlnRandomSubset" if case == "no_subset" else "rlnAngleTilt"
        j = p["labels"].index(word)
        p["labels"].pop(j)
        for r in p["rows"]:
            r.pop(j)
    elif case == "bad_mode":
        args += ["--fit_mode", "fpmpf"]
        word = "Cs"
    elif case == "nothing":
        args = ["--m1", "half1.mrc", "--m2", "half2.mrc"]
        word = "nothing to do"
    else:
        args = ["--m1", "half1.mrc", "--m2", "absent.mrc", "--fit_defocus"]
        word = "absent.mrc"
    cd.write_star(d / f"bad_{case}.star", b)
    r = run_regula("ctf_refine", "--i", f"bad_{case}.star", "--o", f"bad_{case}", *args, cwd=d, check=False)
    assert r.returncode == 1
    assert word in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (d / f"bad_{case}" / "particles_ctf_refine.star").exists()


@pytest.mark.skipif(shutil.which("relion_refine") is None, reason="relion_refine (RELION 3.1.3) is not installed")
def test_output_read_by_relion_refine(data):
    """relion_refine reads the refined file: one iteration of 2D classification (K 1) on 40 particles of each
    optics group keeps every particle's defocus and every group's beam tilt and magnification."""
    d, _ = data
    b = cd.read_star(d / "out" / "particles_ctf_refine.star")
    og = cd.column(b["particles"], "rlnOpticsGroup", int)
    keep = np.concatenate([np.flatnonzero(og == 1)[:40], np.flatnonzero(og == 2)[:40]])
    b["particles"]["rows"] = [b["particles"]["rows"][i] for i in keep]
    cd.write_star(d / "subset.star", b)
    (d / "R").mkdir(exist_ok=True)
    r = subprocess.run(["relion_refine", "--i", "subset.star", "--o", "R/run", "--K", "1", "--iter", "1",
                        "--tau2_fudge", "2", "--particle_diameter", "50", "--ctf", "--zero_mask", "--psi_step", "30",
                        "--offset_range", "2", "--offset_step", "2", "--j", "1"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    out = cd.read_star(d / "R" / "run_it001_data.star")
    assert len(out["particles"]["rows"]) == 80
    np.testing.assert_allclose(cd.column(out["particles"], "rlnDefocusU"), cd.column(b["particles"], "rlnDefocusU"),
                               atol=1e-3)
    ours, theirs = cd.optics_values(d / "subset.star"), cd.optics_values(d / "R" / "run_it001_data.star")
    for a, e in zip(ours, theirs):
        np.testing.assert_allclose(a["tilt"], e["tilt"], atol=1e-5)
        np.testing.assert_allclose(a["mag"], e["mag"], atol=1e-5)

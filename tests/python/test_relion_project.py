"""A project made by RELION 3.1.3's own programs, continued by Regula: RELION's pipeliner schedules and runs its
Import and MotionCorr jobs (its own motion correction), Regula's motioncorr and ctffind run in the same project on
RELION's outputs, and RELION's pipeliner reads the record Regula wrote and adds a job after Regula's. Skipped where
RELION is not installed (the part of the empty-record test that needs no RELION runs anyway)."""
import shutil
import subprocess

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary
from conftest import run_regula as rg
from movie_data import star_loop

NEEDED = ["relion_pipeliner", "relion_import", "relion_run_motioncorr", "relion_star_handler"]
MISSING = [p for p in NEEDED if not shutil.which(p)]
NO_RELION = f"RELION 3.1 is not installed (missing: {', '.join(MISSING)})"
MOVIES = ["movie_001", "movie_002"]


def relion(proj, *args):
    """Runs a RELION program in the project directory; asserts exit status 0."""
    r = subprocess.run([str(a) for a in args], cwd=proj, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def add_job(proj, kind, **options):
    """relion_pipeliner --addJob KIND with RELION 3.1's job options (the names of its job.star); the job is
    scheduled (status 1) under the next job number."""
    opts = "".join(f"{k} == {v};" for k, v in options.items())
    relion(proj, "relion_pipeliner", "--addJob", kind, "--addJobOptions", opts)


def run_job(proj, job):
    """RELION's pipeliner runs one scheduled job (its own command, its own exit marker); no wait afterwards."""
    relion(proj, "relion_pipeliner", "--RunJobs", job, "--sec_wait_after", 0)
    assert (proj / job / "RELION_JOB_EXIT_SUCCESS").exists(), (proj / job / "run.err").read_text()


def record(proj):
    """default_pipeline.star read with gemmi: job counter, {process: (alias, type, status)}, {node: type},
    input edges {(node, process)}, output edges {(process, node)}."""
    doc = gemmi.cif.read(str(proj / "default_pipeline.star"))

    def rows(block, prefix, tags):
        b = doc.find_block(block)
        if b is None:
            return []
        t = b.find(prefix, tags)
        return [[t[i][j] for j in range(len(tags))] for i in range(len(t))]

    counter = int(doc.find_block("pipeline_general").find_value("_rlnPipeLineJobCounter"))
    procs = {r[0]: (r[1], int(r[2]), int(r[3]))
             for r in rows("pipeline_processes", "_rlnPipeLineProcess", ["Name", "Alias", "Type", "Status"])}
    nodes = {r[0]: int(r[1]) for r in rows("pipeline_nodes", "_rlnPipeLineNode", ["Name", "Type"])}
    inputs = {tuple(r) for r in rows("pipeline_input_edges", "_rlnPipeLineEdge", ["FromNode", "Process"])}
    outputs = {tuple(r) for r in rows("pipeline_output_edges", "_rlnPipeLineEdge", ["Process", "ToNode"])}
    return counter, procs, nodes, inputs, outputs


def mrc(path):
    with mrcfile.open(path) as m:
        return m.data.astype(np.float64)


@pytest.fixture
def movies_project(tmp_path):
    """A project directory holding only Movies/movie_00[12].mrc (256 x 256, 4 frames of 10 e/Å², 1 Å/px, defocus
    33829/32546 and 12678/12161 Å; no ice crystal, aggregate or carbon edge, whose spectrum would dominate micrographs
    this small), simulated outside the project (no Regula job), and an empty default_pipeline.star (RELION's pipeliner
    needs the file to exist)."""
    args = [regula_binary(), "--quiet", "simulate_movies", "--i", DATA / "proj/clean70SRibosome_vol_65p.mrc", "--o",
            tmp_path / "sim", "--n", 2, "--size", 256, "--frames", 4, "--dose_per_frame", 10, "--particles", 5,
            "--drift_min", 2, "--drift_max", 5, "--ice_crystals", 0, "--aggregates", 0, "--carbon", 0, "--no_ideal",
            "--j", 2]
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copytree(tmp_path / "sim" / "Movies", proj / "Movies")
    (proj / "default_pipeline.star").touch()
    return proj


@pytest.mark.skipif(bool(MISSING), reason=NO_RELION)
def test_regula_continues_a_relion_project(movies_project):
    """RELION's Import and MotionCorr (own implementation) jobs made and run by its pipeliner; Regula's motioncorr
    (job003, while RELION's job002 is scheduled) and ctffind (job004, on RELION's micrographs) in the same project;
    RELION's pipeliner checks the record and runs a Select job (job005) on Regula's output."""
    proj = movies_project
    # RELION schedules its Import (job001) and its own motion correction (job002), and runs the import only.
    add_job(proj, "Import", fn_in_raw="Movies/*.mrc", is_multiframe="Yes", angpix=1.0, kV=300, Cs=2.7, Q0=0.1)
    add_job(proj, "MotionCorr", input_star_mics="Import/job001/movies.star", do_own_motioncor="Yes",
            dose_per_frame=10, do_dose_weighting="Yes", patch_x=1, patch_y=1, nr_threads=2)
    run_job(proj, "Import/job001/")
    assert star_loop(proj / "Import/job001/movies.star", "movies")["rlnMicrographMovieName"] == \
        [f"Movies/{m}.mrc" for m in MOVIES]
    counter, procs, _, _, _ = record(proj)
    assert counter == 3 and procs["Import/job001/"][2] == 2 and procs["MotionCorr/job002/"][2] == 1

    # Regula's motion correction of RELION's movies.star while RELION's is still scheduled: job003.
    rg("--project", proj, "motioncorr", "--i", "Import/job001/movies.star", "--o", "MC/", "--dose_weighting",
       "--dose_per_frame", 10, "--j", 2)
    assert (proj / "MotionCorr/job003/RELION_JOB_EXIT_SUCCESS").exists()
    ours = star_loop(proj / "MotionCorr/job003/corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    assert ours == [f"MotionCorr/job003/Movies/{m}.mrc" for m in MOVIES]
    counter, procs, _, _, _ = record(proj)
    assert counter == 4 and procs["MotionCorr/job002/"] == ("None", 1, 1)  # RELION's scheduled job untouched

    # RELION then runs its scheduled job from the record Regula rewrote; Regula's ctffind takes its output: job004.
    run_job(proj, "MotionCorr/job002/")
    assert "--use_own" in (proj / "MotionCorr/job002/note.txt").read_text()
    theirs = star_loop(proj / "MotionCorr/job002/corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    assert theirs == [f"MotionCorr/job002/Movies/{m}.mrc" for m in MOVIES]
    rg("--project", proj, "ctffind", "--i", "MotionCorr/job002/corrected_micrographs.star", "--o", "CF/",
       "--Box", 256, "--j", 2)
    assert (proj / "CtfFind/job004/RELION_JOB_EXIT_SUCCESS").exists()
    ctf = star_loop(proj / "CtfFind/job004/micrographs_ctf.star", "micrographs")
    assert ctf["rlnMicrographName"] == theirs
    truth = star_loop(proj.parent / "sim/truth_micrographs.star", "micrographs")
    for k in range(2):  # the simulation's mean defocus (found within 40 Å here)
        mean = (float(ctf["rlnDefocusU"][k]) + float(ctf["rlnDefocusV"][k])) / 2
        true = (float(truth["rlnDefocusU"][k]) + float(truth["rlnDefocusV"][k])) / 2
        assert abs(mean - true) < 1000, (k, mean, true)

    # Both corrections made a 256 x 256 micrograph of each movie: each of Regula's is correlated with RELION's of the
    # same movie (the same counts, aligned; 0.91 here) and not with the other movie's.
    frames = mrc(proj / "Movies/movie_001.mrc")
    assert frames.shape == (4, 256, 256)
    a = [mrc(proj / f"MotionCorr/job003/Movies/{m}.mrc") for m in MOVIES]
    b = [mrc(proj / f"MotionCorr/job002/Movies/{m}.mrc") for m in MOVIES]
    cc = np.array([[np.corrcoef(x.ravel(), y.ravel())[0, 1] for y in b] for x in a])
    assert all(x.shape == (256, 256) and np.isfinite(x).all() for x in a)
    assert cc[0, 0] > 0.7 and cc[1, 1] > 0.7 and abs(cc[0, 1]) < 0.1 and abs(cc[1, 0]) < 0.1, cc

    # The record: RELION's jobs and Regula's, RELION's process and node types, edges from RELION's outputs.
    expected_procs = {"Import/job001/": ("None", 0, 2), "MotionCorr/job002/": ("None", 1, 2),
                      "MotionCorr/job003/": ("None", 1, 2), "CtfFind/job004/": ("None", 2, 2)}
    expected_nodes = {"Import/job001/movies.star": 0, "MotionCorr/job002/corrected_micrographs.star": 1,
                      "MotionCorr/job002/logfile.pdf": 13, "MotionCorr/job003/corrected_micrographs.star": 1,
                      "CtfFind/job004/micrographs_ctf.star": 1}
    expected_inputs = {("Import/job001/movies.star", "MotionCorr/job002/"),
                       ("Import/job001/movies.star", "MotionCorr/job003/"),
                       ("MotionCorr/job002/corrected_micrographs.star", "CtfFind/job004/")}
    expected_outputs = {("Import/job001/", "Import/job001/movies.star"),
                        ("MotionCorr/job002/", "MotionCorr/job002/corrected_micrographs.star"),
                        ("MotionCorr/job002/", "MotionCorr/job002/logfile.pdf"),
                        ("MotionCorr/job003/", "MotionCorr/job003/corrected_micrographs.star"),
                        ("CtfFind/job004/", "CtfFind/job004/micrographs_ctf.star")}
    expected = (5, expected_procs, expected_nodes, expected_inputs, expected_outputs)
    assert record(proj) == expected

    # RELION's pipeliner reads and rewrites Regula's record, losing nothing.
    relion(proj, "relion_pipeliner", "--check_job_completion")
    assert record(proj) == expected

    # RELION goes on after Regula: its Select job (job005) keeps the micrographs of Regula's CtfFind output whose
    # defocus is 20000-50000 Å: the first only.
    add_job(proj, "Select", fn_mic="CtfFind/job004/micrographs_ctf.star", do_select_values="Yes",
            select_label="rlnDefocusU", select_minval=20000, select_maxval=50000)
    run_job(proj, "Select/job005/")
    sel = star_loop(proj / "Select/job005/micrographs.star", "micrographs")
    assert sel["rlnMicrographName"] == theirs[:1] and sel["rlnDefocusU"] == ctf["rlnDefocusU"][:1]
    counter, procs, nodes, inputs, _ = record(proj)
    assert counter == 6 and procs["Select/job005/"] == ("None", 7, 2) and len(procs) == 5
    assert nodes["Select/job005/micrographs.star"] == 1
    assert ("CtfFind/job004/micrographs_ctf.star", "Select/job005/") in inputs

    # And Regula lists every job, RELION's and its own, as finished.
    r = rg("--project", proj, "pipeline")
    listed = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line and not line[0].isspace()}
    assert listed == {p: "finished" for p in procs}, r.stdout


def test_regula_starts_from_an_empty_record(movies_project):
    """An empty default_pipeline.star (as `touch` makes for relion_pipeliner, which reads it as a project without
    jobs) is a project without jobs for Regula too: its import is job001, and RELION numbers its next job 002."""
    proj = movies_project
    rg("--project", proj, "import", "--do_movies", "--i", "Movies/*.mrc", "--angpix", 1.0)
    assert (proj / "Import/job001/RELION_JOB_EXIT_SUCCESS").exists()
    counter, procs, nodes, _, _ = record(proj)
    assert counter == 2 and procs == {"Import/job001/": ("None", 0, 2)}
    assert nodes == {"Import/job001/movies.star": 0}
    if MISSING:
        pytest.skip(NO_RELION + ": the record was checked by Regula's side only")
    add_job(proj, "MotionCorr", input_star_mics="Import/job001/movies.star", do_own_motioncor="Yes",
            dose_per_frame=10, patch_x=1, patch_y=1, nr_threads=2)
    run_job(proj, "MotionCorr/job002/")
    counter, procs, _, inputs, _ = record(proj)
    assert counter == 3 and procs["MotionCorr/job002/"] == ("None", 1, 2)
    assert ("Import/job001/movies.star", "MotionCorr/job002/") in inputs
    mics = star_loop(proj / "MotionCorr/job002/corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    assert len(mics) == 2

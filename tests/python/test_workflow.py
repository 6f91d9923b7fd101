"""regula workflow: the steps of a workflow file run as jobs of a project; killed with SIGKILL in the
middle of a job and started again, it finishes with the same bytes as an uninterrupted run."""
import glob
import json
import os
import shutil
import signal
import subprocess
import time

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary, run_regula
from movie_data import star_loop

MAP = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"

# 2D classification of simulated particles, then the automatic class selection. The class2d step is long
# enough (12 iterations) to be killed in its middle.
WORKFLOW = f"""# a small project: particles, 2D classes, selection
sim:  simulate --i {MAP} --o sim --n 300 --box 64 --angpix 4 --snr 0.1 --seed 3   # simulated images
c2d:  class2d --i {{sim}}particles.star --o run --K 3 --iter 12 --ctf \\
      --psi_step 10 --offset_range 4 --offset_step 2 --particle_diameter 230 --j 1 --seed 2
good: select --i {{c2d}}run_it012_data.star --o selected.star --auto
"""
OUTPUTS = ["Class2D/job002/run_it012_classes.mrcs", "Class2D/job002/run_it012_data.star", "Select/job003/selected.star"]


def workflow(project, *extra, **kw):
    return subprocess.run([regula_binary(), "--quiet", "--project", str(project), "workflow", *extra],
                          capture_output=True, text=True, timeout=600, **kw)


def logged_workflow(project):
    """The workflow of w.txt run (again) with its log, which names what it does with each step; returns the log."""
    r = subprocess.run([regula_binary(), "--project", str(project), "workflow", "--i", "w.txt"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def statuses(project):
    doc = gemmi.cif.read(str(project / "default_pipeline.star"))
    rows = doc.find_block("pipeline_processes").find("_rlnPipeLineProcess", ["Name", "Alias", "Status"])
    return {r[0]: (r[1], int(r[2])) for r in rows}


def listed(project):
    r = subprocess.run([regula_binary(), "--project", str(project), "pipeline"], capture_output=True, text=True)
    return r.stdout


def test_workflow_resumes_after_sigkill_with_the_same_result(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for p in (whole, killed):
        p.mkdir()
        (p / "workflow.txt").write_text(WORKFLOW)
    r = workflow(whole, "--i", "workflow.txt")
    assert r.returncode == 0, r.stderr
    assert statuses(whole) == {"Simulate/job001/": ("Simulate/sim/", 2), "Class2D/job002/": ("Class2D/c2d/", 2),
                               "Select/job003/": ("Select/good/", 2)}
    # Again: nothing left to do, nothing new made.
    r = workflow(whole, "--i", "workflow.txt")
    assert r.returncode == 0, r.stderr
    assert len(statuses(whole)) == 3

    # The same workflow killed (runner and job, one process group) once class2d has written iteration 3.
    proc = subprocess.Popen([regula_binary(), "--quiet", "--project", str(killed), "workflow", "--i", "workflow.txt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not glob.glob(str(killed / "Class2D/job002/run_it003_optimiser.star")):
        assert proc.poll() is None and time.time() < deadline, "the workflow ended before class2d's iteration 3"
        time.sleep(0.02)
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "Class2D/job002/run_it012_optimiser.star").exists(), "killed too late to test resuming"
    assert "Class2D/job002/" in listed(killed) and "failed" in listed(killed).split("Class2D/job002/")[1].split("\n")[0]
    r = workflow(killed, "--i", "workflow.txt")
    assert r.returncode == 0, r.stderr
    assert statuses(killed) == statuses(whole)
    for f in OUTPUTS:
        assert (killed / f).read_bytes() == (whole / f).read_bytes(), f
    # The resumed job continued from its last optimiser file: its first iterations were not made again.
    assert os.path.getmtime(killed / "Class2D/job002/run_it001_data.star") < killed_at


def test_a_job_that_outlived_its_runner_is_waited_for(tmp_path):
    """Only the runner killed: its class2d job goes on; the workflow started again waits for that job to
    end, then goes on from there, with the bytes of an uninterrupted run (made in another project)."""
    whole, p = tmp_path / "whole", tmp_path / "p"
    for d in (whole, p):
        d.mkdir()
        (d / "workflow.txt").write_text(WORKFLOW)
    assert workflow(whole, "--i", "workflow.txt").returncode == 0
    proc = subprocess.Popen([regula_binary(), "--project", str(p), "workflow", "--i", "workflow.txt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (p / "Class2D/job002/run_it002_optimiser.star").exists():
        assert proc.poll() is None and time.time() < deadline, "the workflow ended before class2d's iteration 2"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the runner only
    proc.wait(timeout=60)
    assert not (p / "Class2D/job002/RELION_JOB_EXIT_SUCCESS").exists(), "class2d ended before the runner was killed"
    r = workflow(p, "--i", "workflow.txt")
    assert r.returncode == 0, r.stderr
    assert statuses(p) == statuses(whole)
    for f in OUTPUTS:
        assert (p / f).read_bytes() == (whole / f).read_bytes(), f


@pytest.mark.parametrize("text, message", [
    ("a: simulate --i m.mrc --o s\nb: class2d --i {c}x.star --o r\n", "line 2: {c} names no earlier step"),
    ("a: info --i m.mrc\n", "line 1: 'info' is not a subcommand that runs as a job"),
    ("a simulate --i m.mrc\n", "line 1: expected 'NAME: SUBCOMMAND ARGS...'"),
    ("a: simulate --o s\na: simulate --o t\n", "line 2: a second step named 'a'"),
    ("# only a comment\n", "no steps"),
    ("a: simulate --alias x --o s\n", "line 1: --alias is set by the workflow"),
    ("a: simulate --i 'm.mrc --o s\n", "line 1: a quote (') is not closed"),
    ("a: simulate --o s \\\n", "the file ends after a continuation"),
])
def test_bad_workflow_files_are_refused_before_any_job(tmp_path, text, message):
    p = tmp_path / "p"
    p.mkdir()
    (p / "w.txt").write_text(text)
    r = workflow(p, "--i", "w.txt")
    assert r.returncode == 1
    assert f"w.txt" in r.stderr and message in r.stderr, r.stderr
    assert not (p / "default_pipeline.star").exists()


def test_a_new_project_is_not_made_for_a_bad_workflow_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a simulate --i m.mrc\n")
    for f, message in (("missing.txt", "new/missing.txt: cannot read the workflow file"),
                       (str(bad), "bad.txt, line 1: expected")):
        r = workflow(tmp_path / "new", "--i", f)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert not (tmp_path / "new").exists()


def test_a_failed_step_stops_the_workflow_and_a_changed_step_is_refused(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "w.txt").write_text(f"sim: simulate --i {MAP} --o sim --n 4 --box 64 --angpix 4 --seed 1\n"
                             "rec: reconstruct --i missing.star --o rec.mrc\n"
                             "after: reconstruct --i {sim}particles.star --o rec.mrc\n")
    r = workflow(p, "--i", "w.txt")
    assert r.returncode == 1
    assert "step 'rec' (line 2): Reconstruct/job002/ ended with status 1" in r.stderr, r.stderr
    assert "missing.star" in r.stderr  # the job's own message, printed as it ran
    assert sorted(statuses(p)) == ["Reconstruct/job002/", "Simulate/job001/"]
    # The finished step with other arguments in the file: refused, naming what it was run with.
    (p / "w.txt").write_text(f"sim: simulate --i {MAP} --o sim --n 5 --box 64 --angpix 4 --seed 1\n")
    r = workflow(p, "--i", "w.txt")
    assert r.returncode == 1 and "its job Simulate/job001/ was made with other arguments" in r.stderr, r.stderr


def test_a_failed_import_step_is_continued(tmp_path):
    """An import step whose job failed (its `run --continue`, as a watching runner makes it, met an EER movie) is
    continued when the workflow is started again: the movies it had listed stay, even one moved out of the folder
    since (archived), and the new one is added; run again from its start, it would have lost the moved one."""
    p = tmp_path / "p"
    (p / "watch").mkdir(parents=True)
    (p / "w.txt").write_text('imp: import --do_movies --i "watch/*" --angpix 4\n')
    for name in ("a.mrc", "b.mrc"):
        (p / "watch" / name).write_bytes(b"x")  # import does not read the movies
    assert workflow(p, "--i", "w.txt").returncode == 0
    (p / "watch" / "x.eer").write_bytes(b"x")
    r = run_regula("--project", p, "run", "--job", "Import/job001/", "--continue", check=False)
    assert r.returncode == 1 and "EER" in r.stderr, r.stderr
    assert statuses(p) == {"Import/job001/": ("Import/imp/", 3)}
    (p / "watch" / "x.eer").unlink()
    (p / "watch" / "a.mrc").rename(tmp_path / "a.mrc")
    (p / "watch" / "c.mrc").write_bytes(b"x")
    log = logged_workflow(p)
    assert "resuming Import/job001/ (failed)" in log, log
    assert statuses(p) == {"Import/job001/": ("Import/imp/", 2)}
    movies = star_loop(p / "Import/job001/movies.star", "movies")["rlnMicrographMovieName"]
    assert movies == ["watch/a.mrc", "watch/b.mrc", "watch/c.mrc"]


def test_a_failed_import_of_particles_is_run_again(tmp_path):
    """Only an import of movies or micrographs continues: a failed import of particles runs again from its start,
    and `run --continue` refuses it, saying why, before it runs."""
    p = tmp_path / "p"
    p.mkdir()
    (p / "w.txt").write_text("imp: import --do_particles --i p.star\n")
    r = workflow(p, "--i", "w.txt")
    assert r.returncode == 1 and "p.star" in r.stderr, r.stderr
    shutil.copy(DATA / "relion31_small.star", p / "p.star")
    r = run_regula("--project", p, "run", "--job", "Import/job001/", "--continue", check=False)
    assert r.returncode == 1 and "Import/job001/ imports its files once" in r.stderr, r.stderr
    log = logged_workflow(p)
    assert "running again Import/job001/ (failed)" in log, log
    assert statuses(p) == {"Import/job001/": ("Import/imp/", 2)}


# The front end of a project on movies that arrive while it runs (--watch).
WATCHED = """imp:  import --do_movies --i "watch/*.mrc" --angpix 4 --kV 300 --Cs 2.7 --Q0 0.1
mc:   motioncorr --i {imp}movies.star --o mc --dose_weighting --dose_per_frame 4 --patch_x 1 --patch_y 1 --j 2
ctf:  ctffind --i {mc}corrected_micrographs.star --o ctf --ResMin 40 --ResMax 10 --dFMin 5000 --dFMax 50000 \\
      --FStep 500 --j 2
pick: autopick --i {ctf}micrographs_ctf.star --o pick --LoG --LoG_diam_min 200 --LoG_diam_max 280 --j 2
ext:  extract --i {ctf}micrographs_ctf.star --coord_list {pick}autopick.star --o ext --extract_size 64 --norm \\
      --bg_radius 24 --invert_contrast --j 2
c2d:  class2d --i {ext}particles.star --o run --K 2 --iter 2 --ctf --particle_diameter 230 --j 2 --seed 1 \\
      --reseed_until=12
"""
WATCHED_OUTPUTS = ["Import/job001/movies.star", "MotionCorr/job002/corrected_micrographs.star",
                   "CtfFind/job003/micrographs_ctf.star", "AutoPick/job004/autopick.star",
                   "Extract/job005/particles.star", "Extract/job005/watch/movie_004.mrcs",
                   "Class2D/job006/run_it002_classes.mrcs", "Class2D/job006/run_it002_data.star"]


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    d = tmp_path_factory.mktemp("movies")
    subprocess.run([regula_binary(), "--quiet", "simulate_movies", "--i", str(MAP), "--o", str(d), "--n", "4",
                    "--size", "512", "--angpix", "4", "--frames", "8", "--dose_per_frame", "4", "--particles", "30",
                    "--defocus_min", "10000", "--defocus_max", "30000", "--seed", "2", "--j", "2"], check=True)
    return sorted((d / "Movies").glob("*.mrc"))


def arrive(movie, folder):
    """As a microscope's copy should: written under another name, then renamed into the watched folder."""
    tmp = folder / ("." + movie.name + ".part")
    tmp.write_bytes(movie.read_bytes())
    tmp.rename(folder / movie.name)


def once_and_watched(tmp_path, movies):
    """Two projects of the WATCHED workflow: `once` run with all four movies there, `watched` with the first two
    (its runner started by the caller)."""
    once, watched = tmp_path / "once", tmp_path / "watched"
    for p in (once, watched):
        (p / "watch").mkdir(parents=True)
        (p / "workflow.txt").write_text(WATCHED)
    for m in movies:
        arrive(m, once / "watch")
    r = workflow(once, "--i", "workflow.txt")
    assert r.returncode == 0, r.stderr
    for m in movies[:2]:
        arrive(m, watched / "watch")
    return once, watched


def start_watching(project, *options, until, timeout=120):
    """Starts the WATCHED workflow's runner on `project` with --watch 0.5 and `options`; returns it once the
    file `until` (relative to the project) exists."""
    proc = subprocess.Popen([regula_binary(), "--project", str(project), "workflow", "--i", "workflow.txt",
                             "--watch", "0.5", *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while not (project / until).exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    return proc


def test_watch_mode_follows_new_movies_then_runs_the_rest(tmp_path, movies):
    """--watch: two movies at the start, two more while it watches; the front steps go on with the new ones,
    the rest runs once after --watch_idle seconds without new movies. Every file equals that of the workflow
    run once with all four movies there from the start."""
    once, watched = once_and_watched(tmp_path, movies)
    proc = start_watching(watched, "--watch_idle", "5", until="Extract/job005/RELION_JOB_EXIT_SUCCESS")
    assert not (watched / "Class2D").exists()  # the rest waits for the end of the watching
    first = (watched / "Extract/job005/particles.star").read_text()
    for m in movies[2:]:
        arrive(m, watched / "watch")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "new files in Import/job001/movies.star" in out and "no new files for 5 s: watching ends" in out, out
    assert "movie_004" not in first and "movie_004" in (watched / "Extract/job005/particles.star").read_text()
    for f in WATCHED_OUTPUTS:
        assert (watched / f).read_bytes() == (once / f).read_bytes(), f
    # The same jobs, each once, all finished.
    assert statuses(watched) == statuses(once)


def test_stop_watching_ends_the_watch_after_a_last_look(tmp_path, movies):
    """workflow --stop_watching: the runner, watching with a long --watch_idle, takes one more look (the movies
    that arrived since the last one are processed), removes the signal and runs the rest: the same files as
    the workflow run once with all four movies. A signal left from before is removed when watching starts;
    --stop_watching needs an existing project."""
    once, watched = once_and_watched(tmp_path, movies)
    (watched / "STOP_WATCHING").write_text("old\n")
    proc = start_watching(watched, "--watch_idle", "3600", until="Extract/job005/RELION_JOB_EXIT_SUCCESS")
    assert not (watched / "STOP_WATCHING").exists()
    # The last two movies arrive just before the signal: the last look takes them.
    for m in movies[2:]:
        arrive(m, watched / "watch")
    r = subprocess.run([regula_binary(), "--project", str(watched), "workflow", "--stop_watching"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "STOP_WATCHING written" in r.stdout, r.stderr
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "an earlier STOP_WATCHING removed" in out and "stop signal (STOP_WATCHING)" in out, out
    assert "watching ends" not in out, out  # not by --watch_idle
    assert not (watched / "STOP_WATCHING").exists()
    for f in WATCHED_OUTPUTS:
        assert (watched / f).read_bytes() == (once / f).read_bytes(), f
    assert statuses(watched) == statuses(once)
    r = subprocess.run([regula_binary(), "--project", str(tmp_path / "none"), "workflow", "--stop_watching"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no such directory" in r.stderr and not (tmp_path / "none").exists(), r.stderr
    (tmp_path / "plain").mkdir()
    r = subprocess.run([regula_binary(), "--project", str(tmp_path / "plain"), "workflow", "--stop_watching"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a project" in r.stderr, r.stderr


def test_watch_class2d_classifies_the_particles_so_far(tmp_path, movies):
    """--watch_class2d N: while watching, the first class2d step runs as the job c2d_live on the particles
    extracted so far, again when N more have come (RELION's on-the-fly 2D classification); the class2d step
    itself runs once at the end, on everything, as without the option (the same files as the workflow run
    once)."""
    once, watched = once_and_watched(tmp_path, movies)
    proc = start_watching(watched, "--watch_idle", "5", "--watch_class2d", "5",
                          until="Class2D/job006/RELION_JOB_EXIT_SUCCESS", timeout=180)
    live = watched / "Class2D/job006"
    first = (live / "run_it002_data.star").read_text()
    first_classes = mrcfile.read(live / "run_it002_classes.mrcs")
    assert not (live / "live_start_classes.mrcs").exists()  # the first run starts from random subsets
    for m in movies[2:]:
        arrive(m, watched / "watch")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert out.count("live 2D classification of") == 2, out
    assert "movie_004" not in first and "movie_004" in (live / "run_it002_data.star").read_text()
    # The second run went on from the classes the first ended with (class2d --ref, every class kept).
    args = json.loads((live / "command.json").read_text())["args"]
    assert args[-4:] == ["--ref", "Class2D/job006/live_start_classes.mrcs", "--reseed_until", "0"], args
    assert not [a for a in args if a.startswith("--reseed_until=")], args  # the step's own value replaced
    assert np.array_equal(mrcfile.read(live / "live_start_classes.mrcs"), first_classes)
    assert np.array_equal(mrcfile.read(live / "run_it000_classes.mrcs"), first_classes)
    assert "c2d_live" in (live / "job.star").read_text() or "c2d_live" in (watched / "default_pipeline.star").read_text()
    # The step itself: job007, the files of the workflow run once (its job006).
    for name in ("run_it002_classes.mrcs", "run_it002_data.star"):
        assert (watched / "Class2D/job007" / name).read_bytes() == (once / "Class2D/job006" / name).read_bytes().replace(
            b"Class2D/job006", b"Class2D/job007"), name
    # Without a class2d step after the front the option is an error.
    (watched / "front.txt").write_text("\n".join(WATCHED.splitlines()[:4]) + "\n")
    r = workflow(watched, "--i", "front.txt", "--watch", "0.5", "--watch_class2d", "5")
    assert r.returncode == 1 and "no class2d step after the per-micrograph steps" in r.stderr, r.stderr


def test_watch_needs_an_import_first(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "w.txt").write_text(f"sim: simulate --i {MAP} --o sim --n 4 --box 64 --angpix 4 --seed 1\n")
    r = workflow(p, "--i", "w.txt", "--watch", "1")
    assert r.returncode == 1 and "first step ('sim', line 1) must import movies or micrographs" in r.stderr, r.stderr
    for args, message in ((["--watch", "0"], "--watch 0: expected seconds > 0"),
                          (["--watch_idle", "3"], "only with --watch")):
        r = workflow(p, "--i", "w.txt", *args)
        assert r.returncode == 1 and message in r.stderr, r.stderr
    # Nothing arrives: an error after --watch_idle seconds, naming the pattern.
    (p / "w.txt").write_text('imp: import --do_movies --i "watch/*.mrc" --angpix 4\n')
    r = workflow(p, "--i", "w.txt", "--watch", "0.2", "--watch_idle", "1")
    assert r.returncode == 1 and "nothing matched watch/*.mrc in 1 s" in r.stderr, r.stderr

"""Jobs of a project submitted to a cluster queue with a RELION-style template (pipeline/queue.hpp), with stand-ins
for sbatch: one that runs the script at once, one that only queues it, one that fails."""
import os
import shutil
import time
import subprocess

import pytest


from conftest import DATA, ROOT, SMALL_WORKFLOW_OUTPUTS, regula_binary, small_workflow
from conftest import run_regula as regula

MAP = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"
SIM = ["simulate", "--i", MAP, "--o", "sim", "--n", 20, "--angpix", 4, "--box", 64, "--seed", 1, "--j", 2]


def stand_in(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def listed(project):
    r = regula("--project", project, "pipeline")
    return r.stdout


def test_template_is_filled_and_the_job_runs(tmp_path):
    """The stand-in keeps the script, says what sbatch says and runs it: the job ends as if run directly."""
    qsub = stand_in(tmp_path, "sbatch", 'cp "$1" "$(dirname "$1")/seen.script"\necho "Submitted batch job 4242"\n'
                                        'sh "$1"\n')
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\n# name XXXnameXXX queue XXXqueueXXX mpi XXXmpinodesXXX threads XXXthreadsXXX cores "
                    "XXXcoresXXX dedicated XXXdedicatedXXX nodes XXXnodesXXX out XXXoutfileXXX err XXXerrfileXXX "
                    "extra XXXextra1XXX\nXXXcommandXXX\n")
    p = tmp_path / "P"
    r = regula("--project", p, "--queue", "short", "--qsub", qsub, "--qsubscript", tmpl, "--min_dedicated", 1,
               "--qsub_extra1", "acct7", *SIM)
    assert "Simulate/job001/: submitted" in r.stdout and "Submitted batch job 4242" in r.stdout, r.stdout
    job = p / "Simulate" / "job001"
    seen = (job / "seen.script").read_text().splitlines()
    assert seen[1] == ("# name Simulate/job001/ queue short mpi 1 threads 2 cores 2 dedicated 1 nodes 2 out "
                       "Simulate/job001/run_queue.out err Simulate/job001/run_queue.err extra acct7")
    cmd = seen[2].split()
    assert os.path.samefile(cmd[0], regula_binary())
    assert cmd[1:] == ["--project", str(p.resolve()), "--quiet", "run", "--job", "Simulate/job001/"]
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists() and (job / "particles.star").exists()
    assert not (job / "REGULA_JOB_QUEUED").exists() and not (job / "REGULA_JOB_RUNNING").exists()
    # The job's recorded command has no queue options: `run` replays the job itself.
    assert "--queue" not in (job / "note.txt").read_text()
    # The same data as the job run directly.
    q = tmp_path / "Q"
    regula("--project", q, *SIM)
    assert (job / "particles.mrcs").read_bytes() == (q / "Simulate/job001/particles.mrcs").read_bytes()


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI not installed")
def test_mpi_job_through_the_queue(tmp_path):
    """--nr_mpi 2 fills XXXmpinodesXXX; a template that starts `mpirun -n XXXmpinodesXXX XXXcommandXXX` (RELION's
    form) runs the job as two ranks: one job in the pipeline (rank 0 keeps the records), its map the bytes of the
    same job run in one process. A command that does not split its work is refused under mpirun, and through the
    queue it gets XXXmpinodesXXX 1."""
    qsub = stand_in(tmp_path, "sbatch", 'cp "$1" "$(dirname "$1")/seen.script"\necho "Submitted batch job 7"\n'
                                        'sh "$1"\n')
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\n# mpi XXXmpinodesXXX threads XXXthreadsXXX\n"
                    "mpirun --allow-run-as-root --oversubscribe -n XXXmpinodesXXX XXXcommandXXX\n")
    p = tmp_path / "P"
    regula("--project", p, *SIM)
    rec = ["reconstruct", "--i", "Simulate/job001/particles.star", "--o", "rec.mrc", "--j", 1]
    r = regula("--project", p, "--queue", "q", "--qsub", qsub, "--qsubscript", tmpl, "--nr_mpi", 2, *rec)
    assert "Reconstruct/job002/: submitted" in r.stdout, r.stdout
    job = p / "Reconstruct" / "job002"
    assert (job / "seen.script").read_text().splitlines()[1] == "# mpi 2 threads 1"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists(), (job / "run_queue.err").read_text()[-2000:]
    procs = [l.split() for l in (p / "default_pipeline.star").read_text().splitlines()
             if l.startswith("Reconstruct/job002/ None")]
    assert len(procs) == 1 and procs[0][3] == "2", procs  # one process, finished (RELION's status 2)
    regula("--project", p, *rec)
    assert (job / "rec.mrc").read_bytes() == (p / "Reconstruct/job003/rec.mrc").read_bytes()
    assert sorted(d.name for d in (p / "Reconstruct").iterdir()) == ["job002", "job003"]
    # Under mpirun a command that would run whole on every rank is refused (one job is not made).
    r = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", regula_binary(), "--project",
                        str(p), "mask", "--i", "Reconstruct/job003/rec.mrc", "--o", "m.mrc"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "does not split its work over MPI ranks" in r.stderr, r.stderr[-2000:]
    assert not (p / "MaskCreate").exists()
    # Through the queue such a command gets XXXmpinodesXXX 1 (the template's mpirun then starts one rank).
    r = regula("--project", p, "--queue", "q", "--qsub", qsub, "--qsubscript", tmpl, "--nr_mpi", 2, "mask", "--i",
               "Reconstruct/job003/rec.mrc", "--o", "m.mrc", "--ini_threshold", 0.01)
    mask = next((p / "MaskCreate").iterdir())
    assert (mask / "seen.script").read_text().splitlines()[1] == "# mpi 1 threads 1"
    assert (mask / "RELION_JOB_EXIT_SUCCESS").exists(), (mask / "run_queue.err").read_text()[-2000:]


def test_queued_job_is_listed_running_then_runs(tmp_path):
    """A queue that has not started the job: listed as running with the queue's words, not as failed (the
    submitting process has ended); when the queue runs it, it succeeds."""
    qsub = stand_in(tmp_path, "sbatch", 'echo "$1" > "$(dirname "$0")/queued"\necho "Submitted batch job 7"\n')
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\nXXXcommandXXX\n")
    p = tmp_path / "P"
    regula("--project", p, "--queue", "q", "--qsub", qsub, "--qsubscript", tmpl, *SIM)
    out = listed(p)
    assert "Simulate/job001/" in out and "running" in out.lower() and "Submitted batch job 7" in out, out
    assert "failed" not in out.lower()
    script = (tmp_path / "queued").read_text().strip()
    subprocess.run(["sh", script], cwd=p, check=True, capture_output=True)
    out = listed(p)
    assert "Simulate/job001/         finished" in out, out


def test_failed_submission_and_bad_templates(tmp_path):
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\nXXXcommandXXX\n")
    qsub = stand_in(tmp_path, "sbatch", 'echo "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n')
    p = tmp_path / "P"
    r = regula("--project", p, "--queue", "nope", "--qsub", qsub, "--qsubscript", tmpl, *SIM, check=False)
    assert r.returncode == 1 and "invalid partition" in r.stderr, r.stderr
    assert (p / "Simulate/job001/RELION_JOB_EXIT_FAILURE").exists()
    assert not (p / "Simulate/job001/particles.star").exists()
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\n#SBATCH -p XXXqeueXXX\nXXXcommandXXX\n")
    r = regula("--project", p, "--queue", "q", "--qsub", qsub, "--qsubscript", bad, *SIM, check=False)
    assert r.returncode == 1 and "bad.sh:2" in r.stderr and "XXXqeueXXX" in r.stderr, r.stderr
    r = regula("--project", p, "--queue", "q", "--qsubscript", tmp_path / "none.sh", *SIM, check=False)
    assert r.returncode == 1 and "none.sh" in r.stderr
    r = regula("--queue", "q", "--qsubscript", tmpl, *SIM, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "--project" in r.stderr


def test_example_slurm_template_has_only_known_variables(tmp_path):
    """scripts/queue/slurm.sh fills without error (a stand-in sbatch that only prints)."""
    qsub = stand_in(tmp_path, "sbatch", 'cat "$1"\n')
    p = tmp_path / "P"
    r = regula("--project", p, "--queue", "cpu", "--qsub", qsub, "--qsubscript", ROOT / "scripts/queue/slurm.sh",
               *SIM)
    assert "#SBATCH --partition=cpu" in r.stdout and "#SBATCH --cpus-per-task=2" in r.stdout, r.stdout


QWORKFLOW = small_workflow()
QOUTPUTS = SMALL_WORKFLOW_OUTPUTS


def later_queue(tmp_path):
    """A stand-in for sbatch that starts the script a moment later in the background and returns at once,
    as a queue does."""
    return stand_in(tmp_path, "sbatch", '(sleep 1; sh "$1") > /dev/null 2>&1 < /dev/null &\n'
                                        'echo "Submitted batch job $$"\n')


def run_workflow(project, *extra, check=True):
    r = subprocess.run([regula_binary(), "--project", str(project), *map(str, extra), "workflow", "--i",
                        "workflow.txt"], capture_output=True, text=True, timeout=600)
    assert not check or r.returncode == 0, r.stderr
    return r


def test_workflow_steps_go_through_the_queue(tmp_path):
    """workflow --queue: each step submitted with the template, the runner waits for its exit marker before the
    next; the bytes are those of the same workflow run directly."""
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\nXXXcommandXXX\n")
    direct, queued = tmp_path / "direct", tmp_path / "queued"
    for p in (direct, queued):
        p.mkdir()
        (p / "workflow.txt").write_text(QWORKFLOW)
    run_workflow(direct)
    r = run_workflow(queued, "--queue", "q", "--qsub", later_queue(tmp_path), "--qsubscript", tmpl)
    assert r.stderr.count(" submitted (") == 3 and "all 3 steps finished" in r.stderr, r.stderr
    for job in ("Simulate/job001", "Class2D/job002", "Select/job003"):
        assert (queued / job / "run_submit.script").exists(), job
        assert (queued / job / "RELION_JOB_EXIT_SUCCESS").exists(), job
    for f in QOUTPUTS:
        assert (queued / f).read_bytes() == (direct / f).read_bytes(), f
    # Nothing left: started again, nothing is submitted.
    r = run_workflow(queued, "--queue", "q", "--qsub", later_queue(tmp_path), "--qsubscript", tmpl)
    assert "submitted" not in r.stderr and len(list(queued.glob("*/job00*"))) == 3, r.stderr


def test_a_queued_step_is_waited_for_after_the_runner_was_killed(tmp_path):
    """The runner killed while its first job waits in the queue: started again, it waits for that job (it does
    not submit it twice nor call it failed), then goes on."""
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\nXXXcommandXXX\n")
    hold = stand_in(tmp_path, "hold", 'echo "$1" >> "$(dirname "$0")/held"\necho "Submitted batch job 1"\n')
    p = tmp_path / "P"
    p.mkdir()
    (p / "workflow.txt").write_text(QWORKFLOW)
    proc = subprocess.Popen([regula_binary(), "--project", str(p), "--queue", "q", "--qsub", str(hold),
                             "--qsubscript", str(tmpl), "workflow", "--i", "workflow.txt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "held").exists() or not (p / "Simulate/job001/REGULA_JOB_QUEUED").exists():
        assert proc.poll() is None and time.time() < deadline, "the runner ended before its first job was queued"
        time.sleep(0.05)
    time.sleep(1.5)  # the runner is waiting for the queue
    assert proc.poll() is None, "the runner did not wait for the queued job"
    proc.kill()
    proc.wait(timeout=30)
    assert "queued" in listed(p) and "failed" not in listed(p)
    # The queue starts the held job 2 s from now; the runner, started again, waits for it.
    script = (tmp_path / "held").read_text().split()[0]
    later = subprocess.Popen(["sh", "-c", f'sleep 2; sh "{script}"'], cwd=p, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    r = run_workflow(p, "--queue", "q", "--qsub", later_queue(tmp_path), "--qsubscript", tmpl)
    later.wait(timeout=60)
    assert "sim is still queued" in r.stderr and "all 3 steps finished" in r.stderr, r.stderr
    assert len((tmp_path / "held").read_text().split()) == 1  # submitted once
    assert sorted(x.parent.name + "/" + x.name for x in p.glob("*/job00*")) == [
        "Class2D/job002", "Select/job003", "Simulate/job001"]


def test_a_step_failing_in_the_queue_stops_the_workflow(tmp_path):
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\nXXXcommandXXX\n")
    p = tmp_path / "P"
    p.mkdir()
    (p / "workflow.txt").write_text("bad: select --i missing.star --o selected.star --classes 1\n"
                                    f"sim: simulate --i {MAP} --o sim --n 5 --box 64 --angpix 4 --seed 3\n")
    r = run_workflow(p, "--queue", "q", "--qsub", later_queue(tmp_path), "--qsubscript", tmpl, check=False)
    assert r.returncode == 1, r.stderr
    assert "Select/job001/ failed" in r.stderr and "run_queue.out" in r.stderr, r.stderr
    assert not (p / "Simulate").exists()


def test_an_ended_job_is_submitted_again(tmp_path):
    """run --job DIR with --queue: a job whose submission failed is submitted again and runs; a job still
    queued is not submitted twice."""
    tmpl = tmp_path / "tmpl.sh"
    tmpl.write_text("#!/bin/sh\nXXXcommandXXX\n")
    fail = stand_in(tmp_path, "fail", 'echo "sbatch: error: queue full" >&2\nexit 1\n')
    run_now = stand_in(tmp_path, "run_now", 'sh "$1" > /dev/null 2>&1\necho "Submitted batch job 3"\n')
    hold = stand_in(tmp_path, "hold", 'echo "Submitted batch job 4"\n')
    p = tmp_path / "P"
    r = regula("--project", p, "--queue", "q", "--qsub", fail, "--qsubscript", tmpl, *SIM, check=False)
    assert r.returncode == 1 and "queue full" in r.stderr
    r = regula("--project", p, "--queue", "q", "--qsub", run_now, "--qsubscript", tmpl, "run", "--job",
               "Simulate/job001/")
    assert "Simulate/job001/: submitted" in r.stdout, r.stdout
    assert (p / "Simulate/job001/RELION_JOB_EXIT_SUCCESS").exists() and (p / "Simulate/job001/particles.star").exists()
    assert not (p / "Simulate/job001/RELION_JOB_EXIT_FAILURE").exists()
    assert "Simulate/job001/         finished" in listed(p)
    # Queued (held) and submitted again: refused, the job stays queued.
    regula("--project", p, "--queue", "q", "--qsub", hold, "--qsubscript", tmpl, *SIM)
    r = regula("--project", p, "--queue", "q", "--qsub", hold, "--qsubscript", tmpl, "run", "--job",
               "Simulate/job002/", check=False)
    assert r.returncode == 1 and "queued" in r.stderr, r.stderr
    # --continue of a job with nothing to continue from: refused before anything is submitted.
    r = regula("--project", p, "--queue", "q", "--qsub", run_now, "--qsubscript", tmpl, "run", "--job",
               "Simulate/job001/", "--continue", check=False)
    assert r.returncode == 1 and "optimiser" in r.stderr, r.stderr


@pytest.mark.parametrize("extra, message", [
    ([], "--nr_mpi 2: the MPI processes of a job submitted to a queue"),  # no queue template
    (["--queue", "q", "--qsubscript", "t.sh"], "--nr_mpi two: expected an integer"),
])
def test_nr_mpi_without_a_template_or_a_number_is_refused(tmp_path, extra, message):
    """--nr_mpi is for a queue's template (run here under mpirun instead); refused before any job is made."""
    n = "two" if "expected an integer" in message else 2
    p = tmp_path / "P"
    r = regula("--project", p, *extra, "--nr_mpi", n, *SIM, cwd=tmp_path, check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (p / "Simulate").exists()

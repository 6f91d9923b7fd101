"""Jobs of a project submitted to a cluster queue with a RELION-style template (pipeline/queue.hpp), with stand-ins
for sbatch: one that runs the script at once, one that only queues it, one that fails."""
import os
import subprocess


from conftest import DATA, ROOT, regula_binary
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

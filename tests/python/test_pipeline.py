"""Job directories and the pipeline record (default_pipeline.star), checked with gemmi."""
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary

MAP = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"
MAP48 = DATA / "proj" / "clean70S_crop48.mrc"


def regula(*args, cwd=None, check=True):
    r = subprocess.run([regula_binary(), "--quiet", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def record(project):
    doc = gemmi.cif.read(str(project / "default_pipeline.star"))
    procs = doc.find_block("pipeline_processes").find("_rlnPipeLineProcess", ["Name", "Type", "Status"])
    out = doc.find_block("pipeline_output_edges").find("_rlnPipeLineEdge", ["Process", "ToNode"])
    inp = doc.find_block("pipeline_input_edges").find("_rlnPipeLineEdge", ["FromNode", "Process"])
    return ({r[0]: int(r[2]) for r in procs}, [(r[0], r[1]) for r in out], [(r[0], r[1]) for r in inp])


def node_types(project):
    doc = gemmi.cif.read(str(project / "default_pipeline.star"))
    return {r[0]: int(r[1]) for r in doc.find_block("pipeline_nodes").find("_rlnPipeLineNode", ["Name", "Type"])}


def listed_status(project):
    """Status per job as `regula pipeline` prints it."""
    r = regula("--project", project, "pipeline")
    return {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line and not line.startswith(" ")}


@contextlib.contextmanager
def served(project):
    """/api/jobs of `regula serve` on the project, as {dir: job}."""
    proc = subprocess.Popen([regula_binary(), "serve", "--dir", str(project), "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        url = proc.stdout.readline().split()[2]
        with urllib.request.urlopen(url + "api/jobs", timeout=30) as r:
            yield {j["dir"]: j for j in json.loads(r.read())}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def start_time(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot); the command name may hold spaces."""
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def boot_id():
    return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def start_slow_job(p):
    """A simulate job long enough to be interrupted, once its running marker exists."""
    proc = subprocess.Popen([regula_binary(), "--quiet", "--project", str(p), "simulate", "--i", str(MAP), "--o",
                             "sim", "--n", "200000", "--angpix", "4", "--box", "96", "--seed", "1", "--j", "1"])
    job = p / "Simulate" / "job001"
    deadline = time.time() + 60
    while not (job / "REGULA_JOB_RUNNING").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, job


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "project"
    regula("--project", p, "simulate", "--i", MAP, "--o", "sim", "--n", 40, "--angpix", 4, "--box", 64, "--seed", 1)
    return p


def test_job_directory_contents(project):
    job = project / "Simulate" / "job001"
    for f in ["note.txt", "job.star", "command.json", "run.out", "RELION_JOB_EXIT_SUCCESS", "particles.star",
              "particles.mrcs", "truth.star"]:
        assert (job / f).is_file(), f
    assert not (job / "REGULA_JOB_RUNNING").exists()
    opts = gemmi.cif.read(str(job / "job.star")).find_block("joboptions_values")
    table = {r[0]: r[1] for r in opts.find("_rlnJobOption", ["Variable", "Value"])}
    assert table["n"] == "40" and table["angpix"] == "4"
    status, outputs, _ = record(project)
    assert status == {"Simulate/job001/": 2}
    assert ("Simulate/job001/", "Simulate/job001/particles.star") in outputs


def test_two_jobs_finishing_together(project):
    args = ["--project", str(project), "reconstruct", "--i", "Simulate/job001/truth.star", "--o", "rec.mrc", "--ctf"]
    procs = [subprocess.Popen([regula_binary(), "--quiet", *args]) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    status, outputs, inputs = record(project)  # gemmi parses it: still valid STAR
    assert status == {"Simulate/job001/": 2, "Reconstruct/job002/": 2, "Reconstruct/job003/": 2}
    for j in ("Reconstruct/job002/", "Reconstruct/job003/"):
        assert (j, j + "rec.mrc") in outputs
        assert ("Simulate/job001/truth.star", j) in inputs


def test_failed_job_is_marked_failed(project):
    r = regula("--project", project, "reconstruct", "--i", "missing.star", "--o", "rec.mrc", check=False)
    assert r.returncode == 1 and "missing.star" in r.stderr
    status, _, _ = record(project)
    assert status["Reconstruct/job002/"] == 3
    assert (project / "Reconstruct" / "job002" / "RELION_JOB_EXIT_FAILURE").is_file()
    assert not (project / "Reconstruct" / "job002" / "rec.mrc").exists()


def test_run_reruns_a_job(project):
    job = project / "Simulate" / "job001"
    before = (job / "particles.mrcs").read_bytes()
    (job / "particles.mrcs").unlink()
    regula("--project", project, "run", "--job", "Simulate/job001")
    assert (job / "particles.mrcs").read_bytes() == before  # same seed, same data
    status, _, _ = record(project)
    assert status["Simulate/job001/"] == 2


def test_sigint_marks_job_aborted_without_partial_output(tmp_path):
    p = tmp_path / "project"
    proc, job = start_slow_job(p)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 1
    status, _, _ = record(p)
    assert status["Simulate/job001/"] == 4
    assert (job / "RELION_JOB_EXIT_ABORTED").is_file()
    leftovers = [f.name for f in job.iterdir() if f.suffix in (".mrcs",) or ".tmp" in f.name]
    assert leftovers == []


def test_sigkilled_job_is_reported_failed(tmp_path):
    """A job killed with SIGKILL writes no exit marker: its recorded process is gone, so it is failed."""
    p = tmp_path / "project"
    proc, job = start_slow_job(p)
    marker = json.loads((job / "REGULA_JOB_RUNNING").read_text())
    assert marker == {"pid": proc.pid, "host": socket.gethostname(), "start_time": start_time(proc.pid),
                      "boot_id": boot_id()}
    assert listed_status(p) == {"Simulate/job001/": "running"}
    with served(p) as jobs:
        assert jobs["Simulate/job001/"]["status"] == "running" and "detail" not in jobs["Simulate/job001/"]
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert sorted(f.name for f in job.iterdir() if "JOB" in f.name) == ["REGULA_JOB_RUNNING"]
    assert listed_status(p) == {"Simulate/job001/": "failed"}
    assert f"process {proc.pid} on {socket.gethostname()}" in regula("--project", p, "pipeline").stdout
    with served(p) as jobs:
        j = jobs["Simulate/job001/"]
        assert j["status"] == "failed" and str(proc.pid) in j["detail"] and j["end"] >= j["start"] > 0
    assert record(p)[0] == {"Simulate/job001/": 0}  # reading never rewrites the record
    # The next job brings the record up to date: the dead job is failed (3) there too, for RELION's GUI.
    regula("--project", p, "simulate", "--i", MAP, "--o", "sim", "--n", 4, "--angpix", 4, "--box", 64, "--seed", 1)
    assert record(p)[0] == {"Simulate/job001/": 3, "Simulate/job002/": 2}


def test_status_from_the_running_marker(project):
    """Liveness is the recorded process's: pid and start time on this host (a reused pid is not the
    job), a restart of the machine ends it, another host's job stays running (it cannot be known)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": start_time(os.getpid()), "boot_id": boot_id()}
    cases = {
        "job011": (me, "running"),
        "job012": (dict(me, start_time=me["start_time"] + 1), "failed"),   # the pid now names another process
        "job013": (dict(me, pid=dead.pid, start_time=1), "failed"),        # no such process
        "job014": (dict(me, pid=dead.pid, host="elsewhere.invalid"), "running"),
        "job015": (dict(me, boot_id="00000000-0000-0000-0000-000000000000"), "failed"),  # restarted since
        "job016": (str(dead.pid), "running"),                              # a bare pid (older versions)
        "job017": (dict(me, pid=dead.pid, start_time=1), "aborted"),       # an exit marker wins (below)
    }
    for name, (marker, _) in cases.items():
        d = project / "Reconstruct" / name
        d.mkdir(parents=True)
        (d / "note.txt").write_text("a job\n")
        (d / "REGULA_JOB_RUNNING").write_text((json.dumps(marker) if isinstance(marker, dict) else marker) + "\n")
    (project / "Reconstruct/job017/RELION_JOB_EXIT_ABORTED").write_text("")
    with served(project) as jobs:
        got = {n: jobs[f"Reconstruct/{n}/"]["status"] for n in cases}
    assert got == {n: want for n, (_, want) in cases.items()}


def test_missing_project_is_not_created(tmp_path):
    """Only a command run as a job creates its project: a mistyped one is an error naming it."""
    missing = tmp_path / "nonexistent_typo"
    for args in (["pipeline"], ["run", "--job", "Simulate/job001"]):
        r = regula("--project", missing, *args, check=False)
        assert r.returncode == 1 and r.stderr.startswith("regula: error: ") and str(missing) in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not missing.exists()


def test_postprocess_outputs_have_relion_node_types(tmp_path):
    """As RELION 3.1's post-processing job: both maps are final maps (11, the masked one is no mask), the
    STAR file the post-processing node (14), the plots log files (13); inputs half map (10) and mask (7)."""
    p = tmp_path / "project"
    (p / "Halves").mkdir(parents=True)
    m = mrcfile.read(MAP48).astype(np.float64)
    rng = np.random.default_rng(2)
    for i in (1, 2):
        with mrcfile.new(p / f"Halves/run_half{i}_class001_unfil.mrc") as o:
            o.set_data((m + rng.normal(size=m.shape) * m.std() * 0.3).astype(np.float32))
            o.voxel_size = 6.0
    regula("--project", p, "mask", "--i", MAP48, "--o", "mask.mrc", "--ini_threshold", float(m.mean() + m.std()),
           "--extend_inimask", 2, "--width_soft_edge", 4)
    regula("--project", p, "postprocess", "--i", "Halves/run_half1_class001_unfil.mrc", "--o", "postprocess",
           "--mask", "MaskCreate/job001/mask.mrc", "--auto_bfac", "--autob_lowres", 30)
    status, outputs, inputs = record(p)
    assert status == {"MaskCreate/job001/": 2, "PostProcess/job002/": 2}
    job = "PostProcess/job002/"
    want = {job + "postprocess.mrc": 11, job + "postprocess_masked.mrc": 11, job + "postprocess.star": 14,
            job + "postprocess_fsc.png": 13, job + "postprocess_guinier.png": 13}
    assert sorted(t for f, t in outputs if f == job) == sorted(want)
    types = node_types(p)
    assert {n: types[n] for n in want} == want
    assert types["Halves/run_half1_class001_unfil.mrc"] == 10 and types["MaskCreate/job001/mask.mrc"] == 7
    assert sorted(f for f, to in inputs if to == job) == ["Halves/run_half1_class001_unfil.mrc",
                                                         "MaskCreate/job001/mask.mrc"]

"""The project layer in Python (python/src/bind_project.cpp): regula.workflow runs a workflow file as the command
line does (same jobs, same bytes), raises regula.Error naming the failed step, and regula.project_jobs lists the
jobs as `regula pipeline` does. Skipped when the module was not built."""
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_WORKFLOW_OUTPUTS, regula_binary, small_workflow

BUILD = pathlib.Path(os.environ.get("REGULA_BUILD", str(ROOT / "build")))
if not list((BUILD / "python").glob("regula*.so")):
    pytest.skip(f"the Python module was not built in {BUILD}/python (pybind11 missing?)", allow_module_level=True)
sys.path.insert(0, str(BUILD / "python"))
import regula  # noqa: E402

WORKFLOW = small_workflow()
OUTPUTS = SMALL_WORKFLOW_OUTPUTS


def test_workflow_as_the_command_line_and_its_jobs(tmp_path):
    cli, py = tmp_path / "cli", tmp_path / "py"
    for p in (cli, py):
        p.mkdir()
        (p / "workflow.txt").write_text(WORKFLOW)
    subprocess.run([regula_binary(), "--quiet", "--project", str(cli), "workflow", "--i", "workflow.txt"], check=True,
                   capture_output=True)
    jobs = regula.workflow(str(py), "workflow.txt", quiet=True)
    for f in OUTPUTS:
        assert (py / f).read_bytes() == (cli / f).read_bytes(), f
    assert [(j["job"], j["alias"], j["status"], j["command"]) for j in jobs] == [
        ("Simulate/job001/", "Simulate/sim/", "finished", "simulate"),
        ("Class2D/job002/", "Class2D/c2d/", "finished", "class2d"),
        ("Select/job003/", "Select/good/", "finished", "select")]
    assert jobs[1]["args"][:2] == ["--i", "Simulate/job001/particles.star"]
    assert "Simulate/job001/particles.star" in jobs[1]["inputs"]
    assert "Select/job003/selected.star" in jobs[2]["outputs"]
    assert regula.project_jobs(str(py)) == jobs
    # Run again (the executable given explicitly): nothing to do, the same jobs.
    assert regula.workflow(str(py), "workflow.txt", regula=regula_binary(), quiet=True) == jobs


def test_workflow_errors(tmp_path):
    p = tmp_path / "P"
    p.mkdir()
    (p / "workflow.txt").write_text("bad: select --i missing.star --o selected.star --classes 1\n")
    with pytest.raises(regula.Error, match=r"step 'bad' \(line 1\): Select/job001/ ended"):
        regula.workflow(str(p), "workflow.txt")
    assert [(j["job"], j["status"]) for j in regula.project_jobs(str(p))] == [("Select/job001/", "failed")]
    (p / "malformed.txt").write_text("no colon here\n")
    with pytest.raises(regula.Error, match=r"malformed.txt, line 1"):
        regula.workflow(str(p), "malformed.txt")
    with pytest.raises(regula.InputError, match="queue option 'queue_name' unknown"):
        regula.workflow(str(p), "workflow.txt", queue={"queue_name": "cpu"})
    with pytest.raises(regula.InputError, match="no such project"):
        regula.project_jobs(str(tmp_path / "none"))


def test_workflow_watch_options_reach_the_runner(tmp_path):
    p = tmp_path / "P"
    p.mkdir()
    (p / "workflow.txt").write_text(WORKFLOW)
    with pytest.raises(regula.Error, match=r"first step \('sim', line 1\) must import movies or micrographs"):
        regula.workflow(str(p), "workflow.txt", watch=1, watch_idle=2)
    with pytest.raises(regula.InputError, match="watch=-1"):
        regula.workflow(str(p), "workflow.txt", watch=-1)
    with pytest.raises(regula.InputError, match="watch_class2d=-1"):
        regula.workflow(str(p), "workflow.txt", watch=1, watch_class2d=-1)
    with pytest.raises(regula.InputError, match="watch_class2d=5: only with watch"):
        regula.workflow(str(p), "workflow.txt", watch_class2d=5)


def test_stop_watching_writes_the_signal(tmp_path):
    """regula.stop_watching as `workflow --stop_watching` (the runner's side: test_workflow.py)."""
    with pytest.raises(regula.InputError, match="not a project"):
        regula.stop_watching(str(tmp_path))
    (tmp_path / "default_pipeline.star").write_text("data_pipeline_general\n\n_rlnPipeLineJobCounter 1\n")
    assert regula.stop_watching(str(tmp_path)) is None
    assert (tmp_path / "STOP_WATCHING").exists()

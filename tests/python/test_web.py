"""`regula serve`: the JSON API and its refusals without a browser, and the page end to end in
headless Chromium (tests/web/e2e.mjs with playwright-core from npm; skipped when chromium, node or
the npm packages are absent)."""
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import DATA, ROOT, regula_binary

BUILD = pathlib.Path(os.environ.get("REGULA_BUILD", str(ROOT / "build")))
MAP = DATA / "proj" / "clean70S_crop48.mrc"


def run(*args, cwd=None):
    r = subprocess.run([regula_binary(), "--quiet", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = tmp_path_factory.mktemp("web") / "project"
    run("--project", p, "simulate", "--i", MAP, "--o", "sim", "--n", 200, "--angpix", 6, "--snr", 0.1,
        "--max_shift", 1, "--seed", 5)
    run("--project", p, "class2d", "--i", "Simulate/job001/particles.star", "--o", "run", "--K", 3, "--iter", 3, "--ctf")
    run("--project", p, "refine3d", "--i", "Simulate/job001/particles.star", "--ref", "Simulate/job001/truth_map1.mrc",
        "--o", "run", "--ini_high", 40, "--ctf", "--firstiter_cc", "--auto_local_healpix_order", 3, "--offset_range", 2,
        "--offset_step", 1, "--j", 2)
    run("--project", p, "mask", "--i", "Refine3D/job003/run_class001.mrc", "--o", "mask.mrc", "--ini_threshold", 0.002,
        "--extend_inimask", 2, "--width_soft_edge", 4)
    run("--project", p, "postprocess", "--i", "Refine3D/job003/run_half1_class001_unfil.mrc", "--o", "postprocess",
        "--mask", "MaskCreate/job004/mask.mrc", "--auto_bfac", "--autob_lowres", 30)
    run("--project", p, "locres", "--i", "Refine3D/job003/run_half1_class001_unfil.mrc", "--mask",
        "MaskCreate/job004/mask.mrc", "--locres_sampling", 30, "--locres_minres", 80)
    # A running job whose progress file grows while the tests run.
    r = p / "Running" / "job099"
    r.mkdir(parents=True)
    (r / "note.txt").write_text("a running job\n")
    (r / "progress.jsonl").write_text(json.dumps({"task": "iteration 1/5", "done": 1, "total": 100, "elapsed": 1}) + "\n")
    # A job directory with a malformed model.star.
    bad = p / "Class2D" / "job098"
    bad.mkdir()
    (bad / "run_it001_model.star").write_text("data_model_classes\nloop_\n_rlnClassDistribution\n'unterminated\n")
    # A symbolic link out of the project.
    (p / "escape").symlink_to("/etc")
    # A link inside a job directory to a file outside the project: never read by the directory scans.
    (p / "Refine3D/job003/leak.star").symlink_to("/etc/passwd")
    return p


@pytest.fixture(scope="module")
def server(project):
    proc = subprocess.Popen([regula_binary(), "serve", "--dir", str(project), "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.startswith("regula serve: http://127.0.0.1:"), line
    url = line.split()[2]
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize("how", ["dir", "project"])
def test_serve_refuses_a_missing_project(tmp_path, how):
    """A mistyped project directory is an error naming it (one line, exit 1); nothing is created."""
    missing = tmp_path / "nonexistent_typo"
    args = ["serve", "--dir", missing] if how == "dir" else ["--project", missing, "serve"]
    # Serving (the defect) would block: the timeout makes that a failure.
    r = subprocess.run([regula_binary(), *map(str, args), "--port", "0"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regula: error: ") and str(missing) in lines[0], r.stderr
    assert "no such" in lines[0], r.stderr  # not "not a directory": it does not exist
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw_get(url, path):
    """GET with the path sent exactly as given (no client-side normalisation of '..')."""
    import http.client
    host = url.split("//")[1].rstrip("/")
    c = http.client.HTTPConnection(host, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def test_api(server, project):
    s, _, body = get(server + "api/jobs")
    jobs = {j["dir"]: j for j in json.loads(body)}
    assert s == 200
    assert jobs["Class2D/job002/"]["status"] == "finished" and jobs["Refine3D/job003/"]["type"] == "Refine3D"
    assert jobs["Running/job099/"]["status"] == "running" and jobs["Running/job099/"]["progress"]["total"] == 100
    s, _, body = get(server + "api/class2d?dir=Class2D/job002/")
    c = json.loads(body)
    assert s == 200 and c["iteration"] == 3 and len(c["classes"]) == 3
    assert sum(x["count"] for x in c["classes"]) == 200
    s, h, png = get(server + "api/class_image?dir=Class2D/job002/&iter=3&k=1")
    assert s == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    s, h, data = get(server + "api/map?dir=Refine3D/job003/&file=run_class001.mrc&size=48")
    assert s == 200 and int(h["X-Box-Size"]) == 48 and len(data) == 48 ** 3 * 4
    s, _, body = get(server + "api/fsc?dir=Refine3D/job003/")
    f = json.loads(body)
    assert s == 200 and f["curves"]["rlnGoldStandardFsc"][0] == 1.0 and f["final_resolution"] > 0
    s, _, body = get(server + "files/Refine3D/job003/run_class001.mrc")
    assert s == 200 and body == (project / "Refine3D/job003/run_class001.mrc").read_bytes()
    # A local-resolution map (0 where undefined) downsampled by the mean of its positive voxels: no block
    # mixes in the zeros, so no value is below the smallest resolution of the map.
    import mrcfile
    import numpy as np
    lr = next((project / "LocalRes").iterdir()) / "relion_locres.mrc"
    full = mrcfile.read(lr)
    rel = lr.relative_to(project).parent
    s, h, data = get(server + f"api/map?dir={rel}/&file=relion_locres.mrc&size=16&positive=1")
    pos = np.frombuffer(data, np.float32)
    s2, _, data2 = get(server + f"api/map?dir={rel}/&file=relion_locres.mrc&size=16")
    plain = np.frombuffer(data2, np.float32)
    assert s == s2 == 200 and int(h["X-Box-Size"]) == 16
    assert pos[pos > 0].min() >= full[full > 0].min() - 1e-4
    assert plain[plain > 0].min() < full[full > 0].min()  # the plain mean mixes the zeros in at the edge


def test_refusals(server, project):
    before = sorted(str(p) for p in project.rglob("*"))
    for path in ["/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/escape/passwd",
                 "/api/job?dir=../", "/api/job?dir=%2e%2e%2f"]:
        s, body = raw_get(server, path)
        assert s in (403, 404), (path, s)
        assert b"root:" not in body
        assert "error" in json.loads(body)
    s, body = raw_get(server, "/api/fsc?dir=Refine3D/job003/")
    assert s == 200 and b"root:" not in body
    s, body = raw_get(server, "/files/Refine3D/job003/leak.star")
    assert s == 403 and b"root:" not in body
    s, body = raw_get(server, "/api/job?dir=Nope/job001/")
    assert s == 404 and "Nope" in json.loads(body)["error"]
    s, body = raw_get(server, "/api/class2d?dir=Class2D/job098/")
    assert s == 422 and "model.star" in json.loads(body)["error"]
    s, body = raw_get(server, "/api/class_image?dir=Class2D/job002/&iter=x&k=1")
    assert s == 400
    # The server wrote nothing into the project.
    assert sorted(str(p) for p in project.rglob("*")) == before


@pytest.mark.skipif(shutil.which("node") is None or not pathlib.Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")).exists()
                    or not (BUILD / "web/node_modules/playwright-core").is_dir(),
                    reason="node, chromium or the npm packages (build/web/node_modules) are missing")
def test_page_in_headless_chromium(server, project, tmp_path):
    prog = project / "Running/job099/progress.jsonl"
    stop = threading.Event()

    def grow():
        done = 1
        while not stop.is_set():
            done += 3
            with open(prog, "a") as f:
                f.write(json.dumps({"task": "iteration 1/5", "done": done, "total": 100, "elapsed": done}) + "\n")
            time.sleep(0.3)

    t = threading.Thread(target=grow)
    t.start()
    try:
        pp = "PostProcess/" + sorted((project / "PostProcess").iterdir())[0].name + "/"
        lr = "LocalRes/" + sorted((project / "LocalRes").iterdir())[0].name + "/"
        env = dict(os.environ)
        r = subprocess.run(["node", str(ROOT / "tests/web/e2e.mjs"), server, str(tmp_path), str(BUILD / "web/node_modules"),
                            pp, lr], capture_output=True, text=True, timeout=180, env=env)
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["gallery_images"] == 3
    assert res["fsc_colours"] > 3                          # the curve, the axes and the 0.143 line
    assert res["view3d_drawn"] > 0.02 * res["view3d_pixels"]  # the isosurface covers part of the canvas
    assert res["has_slices"] and res["has_guinier"]
    assert res["progress_later"] != res["progress_first"]
    assert res["page_errors"] == []
    assert (tmp_path / "refine3d.png").stat().st_size > 10000
    # Local resolution: the surface covers part of the canvas and is coloured by the local resolution: at
    # least two hue bins (of 30 degrees) each hold 2% of the drawn pixels (the plain surface is one blue).
    hues = res["locres_hues"]
    assert hues["drawn"] > 0.02 * res["view3d_pixels"]
    assert sum(b > 0.02 * hues["drawn"] for b in hues["bins"]) >= 2, hues

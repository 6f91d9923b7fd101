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

import numpy as np
import pytest

import picking_data as pdd
from conftest import DATA, ROOT, SHARED, SHARED_ABSENT, regula_binary

BUILD = pathlib.Path(os.environ.get("REGULA_BUILD", str(ROOT / "build")))
MAP = DATA / "proj" / "clean70S_crop48.mrc"
REAL = SHARED / "micrographs" / "mce" / "Ucsf_stack_1142_DW.mrc"
# The picking jobs of the project (fixture order): LoG picks on two simulated micrographs, their extraction, and
# LoG picks on the real micrograph of ../shared/data/micrographs when it is there.
AUTOPICK, EXTRACT, AUTOPICK_REAL, BAD_PICKS = "AutoPick/job007/", "Extract/job008/", "AutoPick/job009/", "AutoPick/job097/"
LIVE_JOB = "CtfFind/job095/"


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
    add_picking_jobs(p)
    # Selections of the 2D classes: automatic (scores) and by hand.
    run("--project", p, "select", "--i", "Class2D/job002/run_it003_data.star", "--o", "auto.star", "--auto",
        "--particle_diameter", 240)
    run("--project", p, "select", "--i", "Class2D/job002/run_it003_data.star", "--o", "one.star", "--classes", 2)
    # Movies -> motion correction -> CTF estimation (the micrograph views and the pipeline graph).
    run("--project", p, "simulate_movies", "--i", DATA / "proj" / "clean70SRibosome_vol_65p.mrc", "--o", "mov", "--n", 2,
        "--size", 384, "--angpix", 4,
        "--frames", 6, "--dose_per_frame", 5, "--particles", 10, "--defocus_min", 10000, "--defocus_max", 30000,
        "--seed", 4)
    movies = job_of(p, "SimulateMovies")
    run("--project", p, "motioncorr", "--i", movies + "movies.star", "--o", "mc", "--dose_weighting",
        "--dose_per_frame", 5, "--patch_x", 1, "--patch_y", 1)
    run("--project", p, "ctffind", "--i", job_of(p, "MotionCorr") + "corrected_micrographs.star", "--o", "ctf",
        "--ResMin", 40, "--ResMax", 10, "--dFMin", 5000, "--dFMax", 50000, "--FStep", 500)
    # A running CtfFind job (no exit marker) with one micrograph so far; the page test adds the second one (LIVE_JOB).
    full = (p / job_of(p, "CtfFind") / "micrographs_ctf.star").read_text()
    live = p / LIVE_JOB
    live.mkdir(parents=True)
    (live / "micrographs_ctf.star").write_text(full.rstrip("\n").rsplit("\n", 1)[0] + "\n")
    (p.parent / "live_full.star").write_text(full)
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


def job_of(p, kind):
    """The (one) job directory of that type, e.g. 'MotionCorr/job011/'."""
    (d,) = [d for d in (p / kind).iterdir() if f"{kind}/{d.name}/" != LIVE_JOB]
    return f"{kind}/{d.name}/"


def test_graph_and_micrograph_lists(server, project):
    """/api/graph: the recorded jobs and an edge per file one job wrote and another read (as default_pipeline.star
    says, read with gemmi); /api/mics: a MotionCorr and a CtfFind job's values per micrograph as their STAR files
    have them, the trajectory of a micrograph as its metadata file has it, and the diagnostic pictures."""
    import gemmi
    g = json.loads(get(server + "api/graph")[2])
    doc = gemmi.cif.read(str(project / "default_pipeline.star"))
    procs = [r[0] for r in doc.find_block("pipeline_processes").find("_rlnPipeLineProcess", ["Name"])]
    outs = {r[1]: r[0] for r in doc.find_block("pipeline_output_edges").find("_rlnPipeLineEdge", ["Process", "ToNode"])}
    ins = [(r[0], r[1]) for r in doc.find_block("pipeline_input_edges").find("_rlnPipeLineEdge", ["FromNode", "Process"])]
    assert [j["dir"] for j in g["jobs"]] == procs and all(j["status"] == "finished" for j in g["jobs"])
    want = sorted((outs[f], p, f) for f, p in ins if f in outs and outs[f] != p)
    assert sorted((e["from"], e["to"], e["file"]) for e in g["edges"]) == want and len(want) >= 8, g["edges"]
    mc, ctf = job_of(project, "MotionCorr"), job_of(project, "CtfFind")
    from movie_data import star_loop
    for job, star in ((mc, "corrected_micrographs.star"), (ctf, "micrographs_ctf.star")):
        info = json.loads(get(server + f"api/mics?dir={job}")[2])
        rows = star_loop(project / job / star, "micrographs")
        assert [m["micrograph"] for m in info["micrographs"]] == rows["rlnMicrographName"] and len(rows["rlnMicrographName"]) == 2
        for m, total in zip(info["micrographs"], rows["rlnAccumMotionTotal"]):
            assert m["motion_total"] == pytest.approx(float(total)) and m["shifts_png"].endswith("_shifts.png")
        if job == ctf:
            for m, du, ci in zip(info["micrographs"], rows["rlnDefocusU"], rows["rlnCtfImage"]):
                assert m["defocus_u"] == pytest.approx(float(du)) and m["ctf_png"] == ci.split(":")[0][:-4] + ".png"
        d = json.loads(get(server + f"api/mics?dir={job}&mic=1")[2])
        shifts = star_loop(project / rows["rlnMicrographMetadata"][1], "global_shift")
        assert d["shift_x"] == pytest.approx([float(v) for v in shifts["rlnMicrographShiftX"]]) and len(d["frame"]) == 6
        s, h, png = get(server + f"api/micrograph?dir={job}&mic=1&size=256")
        assert s == 200 and png_rgb(png).shape[:2] == (192, 192) and int(h["X-Bin"]) == 2
    for path, status in [(f"api/mics?dir={mc}&mic=2", 404), (f"api/mics?dir={mc}&mic=x", 400),
                         (f"api/mics?dir={AUTOPICK}", 404), ("api/mics?dir=../", 403), (f"api/micrograph?dir={ctf}&mic=5", 404)]:
        s, _, body = get(server + path)
        assert s == status and "error" in json.loads(body), (path, s, body)


def test_selection_of_classes(server, project):
    """/api/selection: per class of the classification's iteration the particles in the input and in the Select job's
    output (counted here from the STAR files), kept or not, and select --auto's scores as its scores file has them."""
    from movie_data import star_loop
    before = star_loop(project / "Class2D/job002/run_it003_data.star", "particles")["rlnClassNumber"]
    sel_dirs = sorted(f"Select/{d.name}/" for d in (project / "Select").iterdir())
    for job, out in zip(sel_dirs, ("auto.star", "one.star")):
        s, _, body = get(server + f"api/selection?dir={job}")
        info = json.loads(body)
        after = star_loop(project / job / out, "particles")["rlnClassNumber"]
        assert s == 200 and info["classification"] == "Class2D/job002/" and info["iteration"] == 3
        assert [c["count"] for c in info["classes"]] == [before.count(str(k)) for k in (1, 2, 3)]
        assert [c["kept_count"] for c in info["classes"]] == [after.count(str(k)) for k in (1, 2, 3)]
        assert info["kept"] == len(after) and info["total"] == len(before) and info["auto"] == (out == "auto.star")
        if out == "auto.star":
            sc = star_loop(project / job / "auto_class_scores.star", "class_scores")
            assert [c["kept"] for c in info["classes"]] == [v == "1" for v in sc["regulaClassSelected"]]
            assert [c["edge_ratio"] for c in info["classes"]] == pytest.approx([float(v) for v in sc["regulaClassEdgeRatio"]])
        else:
            assert [c["kept"] for c in info["classes"]] == [False, True, False]
    for path, status in [("api/selection?dir=Class2D/job002/", 404), ("api/selection?dir=../", 403),
                         ("api/selection", 400)]:
        s, _, body = get(server + path)
        assert s == status and "error" in json.loads(body), (path, s, body)


def add_picking_jobs(p):
    """AutoPick (LoG) on two simulated 512 x 512 micrographs at 2 Å (one-frame movies, as test_autopick.py), Extract
    of those picks, LoG on a copy of the real micrograph when ../shared is there (a link out of the project would be
    refused), and a forged AutoPick job whose list names files outside the project, missing or malformed."""
    maps = [str(pdd.globular_map(p / f"type{c}.mrc", d, 2.0, seed=c)) for c, d in ((1, 100.0), (2, 160.0))]
    pdd.simulate(regula_binary(), str(p / "sim"), maps, 2, 512, 35, 6,
                 extra=["--angpix", 2.0, "--defocus_min", 15000, "--defocus_max", 35000])
    names = pdd.micrographs_star(p / "sim", p / "mics.star", 2.0)
    (p / "mics.star").write_text((p / "mics.star").read_text().replace(f"{p}/", ""))
    run("--project", p, "autopick", "--i", "mics.star", "--o", "x", "--LoG", "--LoG_diam_min", 90, "--LoG_diam_max", 170)
    run("--project", p, "extract", "--i", "mics.star", "--coord_list", AUTOPICK + "autopick.star", "--o", "x",
        "--extract_size", 96, "--norm", "--invert_contrast")
    if REAL.exists():
        (p / "Real").mkdir()
        shutil.copy(REAL, p / "Real" / REAL.name)
        (p / "real_mics.star").write_text(
            "data_optics\nloop_\n_rlnOpticsGroupName\n_rlnOpticsGroup\n_rlnMicrographOriginalPixelSize\n_rlnVoltage\n"
            "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnMicrographPixelSize\nopticsGroup1 1 1.0 300 2.7 0.1 1.0\n\n"
            f"data_micrographs\nloop_\n_rlnMicrographName\n_rlnOpticsGroup\nReal/{REAL.name} 1\n")
        run("--project", p, "autopick", "--i", "real_mics.star", "--o", "x", "--LoG", "--LoG_diam_min", 150,
            "--LoG_diam_max", 250, "--LoG_adjust_threshold", -0.5)
    import mrcfile
    with mrcfile.new(p.parent / "outside.mrc", overwrite=True) as m:
        m.set_data(np.ones((64, 64), np.float32))
    bad = p / BAD_PICKS
    bad.mkdir(parents=True)
    mic0 = os.path.relpath(names[0], p)
    good = AUTOPICK + os.path.splitext(mic0)[0] + "_autopick.star"
    (bad / "bad_autopick.star").write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 'unterminated\n")
    rows = [("../outside.mrc", good), (mic0, "/etc/passwd"), (mic0, BAD_PICKS + "bad_autopick.star"),
            ("missing.mrc", good), ("escape/passwd", good), ("mics.star", good)]
    (bad / "autopick.star").write_text("data_coordinate_files\nloop_\n_rlnMicrographName\n_rlnMicrographCoordinates\n"
                                       + "".join(f"{m} {c}\n" for m, c in rows))


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


def png_rgb(data):
    """An 8-bit RGB PNG (what the server writes) as an array (height, width, 3): chunks, zlib, row filters."""
    import struct
    import zlib
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw, stride = zlib.decompress(idat), 3 * w
    out, prev = bytearray(), bytearray(stride)
    for y in range(h):
        f, row = raw[y * (stride + 1)], raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        if f == 0:
            cur = bytearray(row)
        elif f == 2:
            cur = bytearray(((np.frombuffer(row, np.uint8).astype(np.int32) + np.frombuffer(prev, np.uint8)) & 255)
                            .astype(np.uint8).tobytes())
        else:
            cur = bytearray(stride)
            for i in range(stride):
                a, b, c = (cur[i - 3] if i >= 3 else 0), prev[i], (prev[i - 3] if i >= 3 else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (row[i] + pred) & 255
        out += cur
        prev = cur
    return np.frombuffer(bytes(out), np.uint8).reshape(h, w, 3)


def test_picks_api(server, project):
    """An AutoPick job: its micrographs with the rows of their coordinate files, the picks of one, the micrograph
    binned to the size asked for, with the picks on its dark particles; an Extract job: its particles per
    micrograph."""
    s, _, body = get(server + f"api/picks?dir={AUTOPICK}")
    info = json.loads(body)
    assert s == 200 and info["kind"] == "autopick" and info["source"] == AUTOPICK + "autopick.star"
    assert len(info["micrographs"]) == 2
    for m in info["micrographs"]:
        xy, _ = pdd.read_picks(project / m["coordinates"])
        assert m["count"] == len(xy) >= 10, m
        assert (m["width"], m["height"]) == (512, 512) and m["pixel_size"] == pytest.approx(2.0)
    assert info["total"] == sum(m["count"] for m in info["micrographs"])
    assert info["diameter"] == pytest.approx(130) and "LoG_diam" in info["diameter_from"]
    m = info["micrographs"][1]
    s, _, body = get(server + f"api/picks?dir={AUTOPICK}&mic=1")
    picks = json.loads(body)
    xy, fom = pdd.read_picks(project / m["coordinates"])
    assert s == 200 and picks["micrograph"] == m["micrograph"]
    np.testing.assert_allclose(np.c_[picks["x"], picks["y"]], xy)
    np.testing.assert_allclose(picks["fom"], fom)
    # Binned to at most `size` pixels a side, whole blocks of bin x bin micrograph pixels (the last one partial).
    for size, n, b in ((None, 512, 1), (128, 128, 4), (100, 86, 6), (5000, 512, 1)):
        s, h, png = get(server + f"api/micrograph?dir={AUTOPICK}&mic=1" + (f"&size={size}" if size else ""))
        img = png_rgb(png)
        assert s == 200 and h["Content-Type"] == "image/png" and img.shape == (n, n, 3), (size, img.shape)
        assert int(h["X-Bin"]) == b and int(h["X-Micrograph-Width"]) == int(h["X-Micrograph-Height"]) == 512
        assert img.std() > 20  # contrast-stretched, not blank
    # Row 0 is y = 0, as the coordinates count: the preview at 128 px follows the micrograph's 4 x 4 block means (less
    # than 1 as the contrast stretch clips the ice), not their mirror image; and LoG picks dark blobs, so the preview is darker at the picks than in the median.
    import mrcfile
    img = png_rgb(get(server + f"api/micrograph?dir={AUTOPICK}&mic=1&size=128")[2])[..., 0].astype(float)
    blocks = mrcfile.read(project / m["micrograph"]).astype(float).reshape(128, 4, 128, 4).mean((1, 3))
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr(img, blocks) > 0.7 and corr(img, blocks[::-1]) < 0.3 and corr(img, blocks[:, ::-1]) < 0.3  # 0.84, -0.05, -0.07
    at = img[(xy[:, 1] // 4).astype(int), (xy[:, 0] // 4).astype(int)]
    q25, q50, q75 = np.percentile(img, [25, 50, 75])
    assert np.median(at) < q50 - 0.25 * (q75 - q25), (np.median(at), q25, q50, q75)

    # Extract: the particles of particles.star per micrograph, circles of 75% of the box (RELION's background circle).
    from movie_data import star_loop
    parts = star_loop(project / EXTRACT / "particles.star", "particles")
    s, _, body = get(server + f"api/picks?dir={EXTRACT}")
    e = json.loads(body)
    assert s == 200 and e["kind"] == "extract" and e["diameter"] == pytest.approx(0.75 * 96 * 2.0)
    assert [(m["micrograph"], m["count"]) for m in e["micrographs"]] == \
        [(n, parts["rlnMicrographName"].count(n)) for n in dict.fromkeys(parts["rlnMicrographName"])]
    assert e["total"] == len(parts["rlnMicrographName"]) == info["total"]
    s, _, body = get(server + f"api/picks?dir={EXTRACT}&mic=0")
    rows = [i for i, n in enumerate(parts["rlnMicrographName"]) if n == e["micrographs"][0]["micrograph"]]
    np.testing.assert_allclose(json.loads(body)["x"], [float(parts["rlnCoordinateX"][i]) for i in rows])
    s, _, png = get(server + f"api/micrograph?dir={EXTRACT}&mic=0&size=256")
    assert s == 200 and png_rgb(png).shape == (256, 256, 3)


def test_fom_histogram_and_particle_sample(server, project):
    """The figures of merit of all a job's picks: range and 40 equal bins (the last closed), as numpy counts them
    from the coordinate files; a sample of an Extract job's particles as one PNG: n images at even steps through
    particles.star, each its particle scaled from mean - 3 sd to mean + 3 sd, row 0 at the top."""
    info = json.loads(get(server + f"api/picks?dir={AUTOPICK}")[2])
    foms = np.concatenate([pdd.read_picks(project / m["coordinates"])[1] for m in info["micrographs"]])
    h = info["fom"]
    assert h["min"] == pytest.approx(foms.min()) and h["max"] == pytest.approx(foms.max()) and foms.max() > foms.min()
    k = np.clip(np.floor((foms - foms.min()) / (foms.max() - foms.min()) * 40).astype(int), 0, 39)
    assert h["counts"] == np.bincount(k, minlength=40).tolist() and sum(h["counts"]) == info["total"]

    import mrcfile
    from movie_data import star_loop
    parts = star_loop(project / EXTRACT / "particles.star", "particles")
    rows = len(parts["rlnImageName"])
    for n in (10, 1, 48):
        s, hd, png = get(server + f"api/particles?dir={EXTRACT}&n={n}")
        img = png_rgb(png)[..., 0].astype(float)
        n = min(n, rows)
        cols = int(np.ceil(np.sqrt(n)))
        nr = (n + cols - 1) // cols
        assert s == 200 and int(hd["X-Particles"]) == n and int(hd["X-Columns"]) == cols and int(hd["X-Box"]) == 96
        assert img.shape == (nr * 96 + (nr - 1) * 2, cols * 96 + (cols - 1) * 2)
        for t in range(n):
            idx, stack = parts["rlnImageName"][t * rows // n].split("@")
            want = mrcfile.read(project / stack)[int(idx) - 1].astype(float)
            want = np.clip((want - want.mean()) / (6 * want.std()) * 255 + 127.5, 0, 255)
            y0, x0 = (t // cols) * 98, (t % cols) * 98
            tile = img[y0:y0 + 96, x0:x0 + 96]
            assert np.abs(tile - want).max() <= 1.0, t  # 8-bit rounding
    for path, status in [(f"api/particles?dir={EXTRACT}&n=0", 400), (f"api/particles?dir={EXTRACT}&n=101", 400),
                         (f"api/particles?dir={EXTRACT}&n=x", 400), (f"api/particles?dir={AUTOPICK}", 404),
                         ("api/particles?dir=../", 403)]:
        s, _, body = get(server + path)
        assert s == status and "error" in json.loads(body), (path, s, body)


def test_picks_refusals(server, project):
    """Bad parameters 400, unknown micrographs and missing files 404, files outside the project 403 (the listed
    micrograph, the coordinate file, through a symbolic link), malformed files 422: JSON errors, nothing written."""
    before = sorted(str(p) for p in project.rglob("*"))
    for path, status in [(f"api/picks?dir={AUTOPICK}&mic=x", 400), (f"api/picks?dir={AUTOPICK}&mic=1.5", 400),
                         (f"api/picks?dir={AUTOPICK}&mic=", 400), (f"api/picks?dir={AUTOPICK}&mic=99999999999999999999", 400),
                         (f"api/picks?dir={AUTOPICK}&mic=2", 404), (f"api/picks?dir={AUTOPICK}&mic=-1", 404),
                         (f"api/micrograph?dir={AUTOPICK}", 400), (f"api/micrograph?dir={AUTOPICK}&mic=0&size=big", 400),
                         (f"api/micrograph?dir={AUTOPICK}&mic=0&lowpass=-1", 400),
                         (f"api/micrograph?dir={AUTOPICK}&mic=0&lowpass=nan", 400),
                         ("api/picks?dir=Class2D/job002/", 404), ("api/picks?dir=Nope/job001/", 404),
                         ("api/picks?dir=../", 403), ("api/picks", 400),
                         (f"api/micrograph?dir={BAD_PICKS}&mic=0", 403),  # ../outside.mrc
                         (f"api/picks?dir={BAD_PICKS}&mic=1", 403),       # coordinates /etc/passwd
                         (f"api/picks?dir={BAD_PICKS}&mic=2", 422),       # a malformed coordinate file
                         (f"api/micrograph?dir={BAD_PICKS}&mic=3", 404),  # missing.mrc
                         (f"api/micrograph?dir={BAD_PICKS}&mic=4", 403),  # escape/passwd: a link to /etc
                         (f"api/micrograph?dir={BAD_PICKS}&mic=5", 422)]: # mics.star is no MRC file
        s, _, body = get(server + path)
        assert s == status, (path, s, body)
        assert b"root:" not in body and "error" in json.loads(body), path
    # The list of the forged job: each bad row says what is wrong with it; the others are counted.
    s, _, body = get(server + f"api/picks?dir={BAD_PICKS}")
    rows = json.loads(body)["micrographs"]
    assert s == 200 and len(rows) == 6 and b"root:" not in body
    assert rows[0]["count"] >= 10 and "outside the project" in rows[0]["micrograph_error"]
    assert rows[1]["count"] is None and "outside the project" in rows[1]["error"]
    assert rows[2]["count"] is None and "bad_autopick.star" in rows[2]["error"]
    assert "missing.mrc" in rows[3]["micrograph_error"] and "outside the project" in rows[4]["micrograph_error"]
    assert sorted(str(p) for p in project.rglob("*")) == before


def test_picks_real_micrograph(server, project):
    """The real micrograph of ../shared/data/micrographs (959 x 927 at 1 Å) picked by LoG: counted, and binned to the
    size asked for (the last block of a row or column partial)."""
    if not REAL.exists():
        pytest.skip(SHARED_ABSENT if not SHARED.is_dir() else f"{REAL} is absent")
    s, _, body = get(server + f"api/picks?dir={AUTOPICK_REAL}")
    info = json.loads(body)
    m = info["micrographs"][0]
    xy, _ = pdd.read_picks(project / m["coordinates"])
    assert s == 200 and len(info["micrographs"]) == 1 and m["count"] == len(xy) >= 10
    assert (m["width"], m["height"]) == (959, 927) and info["diameter"] == pytest.approx(200)
    for size, shape, b in ((None, (927, 959), 1), (512, (464, 480), 2), (300, (232, 240), 4)):
        s, h, png = get(server + f"api/micrograph?dir={AUTOPICK_REAL}&mic=0" + (f"&size={size}" if size else ""))
        img = png_rgb(png)
        assert s == 200 and img.shape[:2] == shape and int(h["X-Bin"]) == b and img.std() > 20, (size, img.shape)


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
        picking = [AUTOPICK, EXTRACT] + ([AUTOPICK_REAL] if REAL.exists() else [])
        env["MIC_JOBS"] = job_of(project, "MotionCorr") + "," + job_of(project, "CtfFind")
        env["LIVE_JOB"], env["LIVE_JOB_NEXT"] = LIVE_JOB, str(project.parent / "live_full.star")
        env["LIVE_PROJECT"] = str(project)
        env["SELECT_JOBS"] = ",".join(sorted(f"Select/{d.name}/" for d in (project / "Select").iterdir()))
        r = subprocess.run(["node", str(ROOT / "tests/web/e2e.mjs"), server, str(tmp_path), str(BUILD / "web/node_modules"),
                            pp, lr, *picking], capture_output=True, text=True, timeout=300, env=env)
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
    # Picking jobs: each micrograph's image loads and is not blank, with one circle per pick of its coordinate file
    # (per particle of particles.star for Extract), drawn over the picture; no console errors (failed requests
    # included). The real micrograph is shown when ../shared is there.
    expected = []
    for job in picking:
        info = json.loads(get(server + f"api/picks?dir={job}")[2])
        expected += [(m["micrograph"], m["count"], (m["width"], m["height"])) for m in info["micrographs"]]
    assert len(res["picks"]) == len(expected) == 4 + REAL.exists()
    for shown, (name, count, size) in zip(res["picks"], expected):
        assert shown["micrograph"] == name and shown["circles"] == shown["listed"] == count > 0, shown
        assert shown["circles_inside"] == count and shown["overlay_matches"], shown
        assert f": {count} " in shown["caption"] and shown["grey_std"] > 20, shown
        assert (shown["width"], shown["height"]) == size  # at most 1024 a side: not binned here
    assert res["picks_console_errors"] == []
    # The pipeline graph: a box per recorded job, a curve per edge of /api/graph.
    g = json.loads(get(server + "api/graph")[2])
    assert res["graph"]["nodes"] == [j["dir"] for j in g["jobs"]]
    assert sorted(map(tuple, res["graph"]["edges"])) == sorted((e["from"], e["to"]) for e in g["edges"])
    # MotionCorr and CtfFind opened from the graph: each micrograph's picture, its trajectory with a dot per frame,
    # and for CtfFind the diagnostic picture, loaded.
    mics = res["mics"]
    assert [(m["dir"], m["micrograph"]) for m in mics] == [
        (job, m["micrograph"]) for job in env["MIC_JOBS"].split(",")
        for m in json.loads(get(server + f"api/mics?dir={job}")[2])["micrographs"]]
    for m in mics:
        assert m["heading"].startswith(m["dir"]) and m["width"] == 384 and m["frames"] == 6, m
        assert m["trajectory_width"] >= 200 and "motion" in m["caption"], m
        assert (m["ctf_width"] > 100) == m["dir"].startswith("CtfFind"), m
    # Selections: every class of the iteration shown with its image loaded, marked kept or rejected as the API says.
    for job, shown in zip(env["SELECT_JOBS"].split(","), res["selections"]):
        info = json.loads(get(server + f"api/selection?dir={job}")[2])
        assert shown["loaded"] == len(info["classes"]) == 3, shown
        assert sorted(shown["kept"]) == sorted(c["class"] for c in info["classes"] if c["kept"]), shown
        assert sorted(shown["rejected"]) == sorted(c["class"] for c in info["classes"] if not c["kept"]), shown
    assert len(res["selections"]) == 2
    # A running job's view follows its results: the second micrograph appears without a click, the first stays chosen.
    assert res["live"] == {"before": 1, "after": 2, "selected_after": "0", "image_after": True}, res["live"]
    # The figure-of-merit histogram (one bar per bin of /api/picks) and circles coloured by figure of merit (LoG
    # picks have one), and the sample of extracted particles, loaded.
    assert len(res["picks_jobs"]) == len(picking)
    for job, shown in zip(picking, res["picks_jobs"]):
        info = json.loads(get(server + f"api/picks?dir={job}")[2])
        if "fom" in info:
            assert shown["bars"] == len(info["fom"]["counts"]) and shown["circle_colours"] >= 2, (job, shown)
            # drawn as bars: heights (screen px) in proportion to the counts, the tallest at least 50 px, side by side
            counts, heights = np.array(info["fom"]["counts"], float), np.array(shown["bar_heights"])
            assert heights.max() >= 50 and np.abs(heights / heights.max() - counts / counts.max()).max() < 0.02, shown
            assert max(shown["bar_widths"]) < 400 / len(counts), shown
        else:
            assert shown["bars"] == 0, (job, shown)
        if info["kind"] == "extract":  # min(48, total) particles in ceil(sqrt(n)) columns of 96 px and 2 px gaps
            cols = int(np.ceil(np.sqrt(min(48, info["total"]))))
            assert shown["sample_width"] == cols * 96 + (cols - 1) * 2, (job, shown)
        else:
            assert shown["sample_width"] == 0, (job, shown)

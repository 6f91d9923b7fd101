"""`regula polish` (jobs/polish.hpp, Bayesian polishing) on simulated movies with a known motion per
particle: two 1024 px movies of 12 frames of 3 e/Å² with a global drift and a smooth local deformation
of up to 8 px that motion correction's global alignment does not follow; the particles' true coordinates, poses
and CTF; the true map as both half maps. The tracks are compared with the truth, the outputs with
RELION's formats (relion_reconstruct reads the shiny particles), results do not depend on --j, the
project job is recorded as RELION's Polish (type 20), the training mode fits the prior, and bad input is
reported. About 60 s on 2 cores, no ../shared data.

Tolerances from measured errors on this data (seeds 31-33): the tracks' RMS error after removing each
particle's mean was 0.75-0.92 px per movie against 0.78-1.32 px for motion correction's global tracks
(means over the two movies: 74-92% of the global tracks'); asserted: below 1 px and below 95% of the
global tracks' error (a sign error or a broken data term gives errors well above the global tracks').
At this signal (particles of box 96, 40 per movie) the per-frame data are weak; docs/polish.md gives
the errors on larger particles and side by side with relion_motion_refine.
"""
import filecmp
import os
import shutil
import subprocess

import numpy as np
import pytest

gemmi = pytest.importorskip("gemmi")
mrcfile = pytest.importorskip("mrcfile")

from conftest import fsc, regula_binary, run_regula
from ctf_refine_data import atoms_map
from movie_data import star_loop, write_truth_particles

RELION_RECONSTRUCT = shutil.which("relion_reconstruct")
BOX = 96


def tracks(path):
    doc = gemmi.cif.read_file(str(path))
    return np.array([[[float(v) for v in row] for row in b.find(["_rlnOriginXAngst", "_rlnOriginYAngst"])]
                     for b in doc if b.name.isdigit()])


def errors(d, out):
    """Per movie: the RMS error of the tracks after removing each particle's mean, and the same for
    motion correction's global tracks."""
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    ours, glob = [], []
    for i, m in enumerate(mics):
        est = tracks(d / out / (os.path.splitext(m)[0] + "_tracks.star"))
        tru = tracks(d / "sim" / "Truth" / f"movie_{i + 1:03d}_tracks.star")
        meta = star_loop(d / (os.path.splitext(m)[0] + ".star"), "global_shift")
        g = -np.stack([np.array(meta["rlnMicrographShiftX"], float), np.array(meta["rlnMicrographShiftY"], float)], 1)
        b = tru - tru.mean(axis=1, keepdims=True)
        ours.append(np.sqrt(np.mean(np.sum((est - est.mean(axis=1, keepdims=True) - b) ** 2, axis=2))))
        glob.append(np.sqrt(np.mean(np.sum((g - g.mean(axis=0) - b) ** 2, axis=2))))
    return np.array(ours), np.array(glob)


POLISH = ["--i", "particles.star", "--m1", "map.mrc", "--m2", "map.mrc", "--corr_mic", "MC/corrected_micrographs.star"]


@pytest.fixture(scope="module", params=[31])
def data(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"polish{request.param}")
    atoms_map(d / "map.mrc", n=BOX, atoms=15000, radius=0.35)
    r = subprocess.run([regula_binary(), "simulate_movies", "--i", "map.mrc", "--o", "sim", "--n", "2", "--size",
                        "1024", "--frames", "12", "--dose_per_frame", "3", "--particles", "40", "--local_max", "8",
                        "--carbon", "0", "--no_ideal", "--seed", str(request.param), "--j", "2", "--quiet"],
                       cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run_regula("motioncorr", "--i", "sim/movies.star", "--o", "MC/", "--dose_weighting", "--dose_per_frame", "3",
               "--j", "2", cwd=d)
    write_truth_particles(d, "MC", BOX)
    run_regula("polish", *POLISH, "--o", "Polish/", "--combine_frames", "--j", "2", cwd=d)
    return d


def test_tracks_against_the_truth(data):
    ours, glob = errors(data, "Polish")
    assert ours.mean() < 1.0 and ours.mean() < 0.95 * glob.mean(), (ours, glob)


def test_output_files(data):
    d = data
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    parts = star_loop(d / "particles.star", "particles")
    shiny = star_loop(d / "Polish" / "shiny.star", "particles")
    assert len(shiny["rlnImageName"]) == len(parts["rlnImageName"])
    # Only the image names change (origins, coordinates, poses are the input's).
    for label in ("rlnCoordinateX", "rlnOriginXAngst", "rlnAngleRot", "rlnMicrographName"):
        assert [float(v) if label != "rlnMicrographName" else v for v in shiny[label]] == \
               [float(v) if label != "rlnMicrographName" else v for v in parts[label]], label
    for i, m in enumerate(mics):
        root = d / "Polish" / os.path.splitext(m)[0]
        doc = gemmi.cif.read_file(str(root) + "_tracks.star")
        count = int(doc.find_block("general").find_value("_rlnParticleNumber"))
        t = tracks(str(root) + "_tracks.star")
        assert t.shape == (count, 12, 2)
        with mrcfile.open(str(root) + "_shiny.mrcs") as s:
            assert s.data.shape == (count, BOX, BOX)
            # normalised as extracted particles: background mean 0, s.d. 1
            yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
            bg = s.data[:, np.hypot(xx, yy) > 0.75 * BOX / 2]
            assert abs(bg.mean()) < 0.05 and abs(bg.std() - 1) < 0.05
    b = star_loop(d / "Polish" / "bfactors.star", "perframe_bfactors")
    assert b["rlnMovieFrameNumber"] == [str(i) for i in range(12)]
    bf = np.array(b["rlnBfactorUsedForSharpening"], float)
    assert bf.max() == 0 and bf.min() < 0
    # B-factors smooth in the frame number: a quadratic, whose third differences vanish
    assert np.abs(np.diff(bf, 3)).max() < 1e-6 * np.abs(bf).max(), bf
    assert (d / "Polish" / "bfactors.png").stat().st_size > 0


def test_bfac_per_frame_fits_each_frame(data):
    d = data
    run_regula("polish", *POLISH, "--o", "PolishPF/", "--bfac_per_frame", "--j", "2", cwd=d)
    bf = np.array(star_loop(d / "PolishPF" / "bfactors.star", "perframe_bfactors")["rlnBfactorUsedForSharpening"],
                  float)
    assert len(bf) == 12 and bf.max() == 0 and bf.min() < 0
    # fitted frame by frame: not a quadratic in the frame number
    assert np.abs(np.diff(bf, 3)).max() > 1.0, bf
    # the tracks do not depend on the B-factor model (they are fitted before it)
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    for m in mics:
        stem = os.path.splitext(m)[0] + "_tracks.star"
        assert np.array_equal(tracks(d / "Polish" / stem), tracks(d / "PolishPF" / stem))


@pytest.mark.skipif(RELION_RECONSTRUCT is None, reason="relion_reconstruct (RELION 3.1) not installed")
def test_relion_reads_shiny_particles(data):
    """RELION's reconstruction reads shiny.star and its map of the 80 shiny particles is the particle: FSC against
    the true map above 0.5 over shells 2-8 (seen: 0.92-0.99 to shell 3, 0.4-0.5 at shells 5-7; particles
    with the wrong contrast or centre give FSCs near 0 or negative)."""
    d = data
    r = subprocess.run([RELION_RECONSTRUCT, "--i", "Polish/shiny.star", "--o", "rec.mrc", "--ctf"], cwd=d,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    with mrcfile.open(d / "rec.mrc") as a, mrcfile.open(d / "map.mrc") as b:
        f = fsc(a.data.astype(float), b.data.astype(float))
    assert f[2:9].mean() > 0.5, f[:12]


def test_threads_do_not_change_results(data):
    d = data
    run_regula("polish", *POLISH, "--o", "PolishJ1/", "--j", "1", cwd=d)
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    for m in mics:
        root = os.path.splitext(m)[0] + "_tracks.star"
        assert filecmp.cmp(d / "Polish" / root, d / "PolishJ1" / root, shallow=False), root
    assert filecmp.cmp(d / "Polish" / "bfactors.star", d / "PolishJ1" / "bfactors.star", shallow=False)


def test_project_job(data):
    """As a job of a project: Polish/jobNNN/ (RELION's process type 20) with shiny.star a particles node (3)."""
    d = data
    run_regula("--project", ".", "polish", *POLISH, "--combine_frames", "--j", "2", cwd=d)
    jobs = sorted(p for p in (d / "Polish").iterdir() if p.name.startswith("job"))
    star = jobs[-1] / "shiny.star"
    assert star.is_file() and (jobs[-1] / "RELION_JOB_EXIT_SUCCESS").exists()
    text = (d / "default_pipeline.star").read_text()
    assert f"{star.relative_to(d)} 3" in " ".join(text.split())
    assert "bfactors.star" not in text
    procs = [line.split() for line in text.splitlines() if line.startswith("Polish/job")]
    assert procs and procs[0][2] == "20", procs


def test_a_bad_movie_is_skipped(data):
    """A micrograph missing from --corr_mic, and one whose movie cannot be read, are skipped with a message and a
    count; the other goes on."""
    d = data
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")
    text = (d / "MC" / "corrected_micrographs.star").read_text()
    meta0 = mics["rlnMicrographMetadata"][0]
    broken = d / "broken_meta.star"
    broken.write_text((d / meta0).read_text().replace("sim/Movies/movie_001.mrc", "sim/Movies/missing.mrc"))
    (d / "corr_broken.star").write_text(text.replace(meta0, "broken_meta.star"))
    r = polish(d, *POLISH[:-1], "corr_broken.star", "--o", "PolishBad/")
    assert "skipped" in r.stderr and "missing.mrc" in r.stderr, r.stderr[-2000:]
    assert (d / "PolishBad" / (os.path.splitext(mics["rlnMicrographName"][1])[0] + "_tracks.star")).exists()
    assert not (d / "PolishBad" / (os.path.splitext(mics["rlnMicrographName"][0])[0] + "_tracks.star")).exists()
    # A micrograph not listed at all.
    lines = [l for l in text.splitlines() if mics["rlnMicrographName"][0] not in l]
    (d / "corr_short.star").write_text("\n".join(lines) + "\n")
    r = polish(d, *POLISH[:-1], "corr_short.star", "--o", "PolishShort/")
    assert "is not in corr_short.star" in r.stderr and "particles are skipped" in r.stderr, r.stderr[-2000:]


def polish(d, *args):
    """regula polish with its messages (run_regula passes --quiet, which keeps only errors)."""
    r = subprocess.run([regula_binary(), "polish", *args, "--j", "2"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("case", ["no_corr_mic", "missing_map", "no_subset", "params_both", "fractions_overlap",
                                  "training_and_shiny", "par_group"])
def test_bad_input_stops_with_a_message(data, case):
    d = data
    args = list(POLISH)
    if case == "no_corr_mic":
        args = args[:-2]
    elif case == "params_both":
        args += ["--params2", "--params3"]
    elif case == "fractions_overlap":
        args += ["--params3", "--align_frac", "0.7", "--eval_frac", "0.5"]
    elif case == "training_and_shiny":
        args += ["--params3", "--combine_frames"]
    elif case == "par_group":
        args += ["--params3", "--par_group", "3"]
    elif case == "missing_map":
        args[3] = "nothing.mrc"
    else:
        text = (d / "particles.star").read_text().splitlines()
        out = []
        for l in text:
            if l.startswith("_rlnRandomSubset"):
                continue
            if "@none.mrcs" in l:
                l = " ".join(l.split()[:-1])
            out.append(l)
        (d / "nosubset.star").write_text("\n".join(out) + "\n")
        args[1] = "nosubset.star"
    r = run_regula("polish", *args, "--o", f"Bad_{case}/", cwd=d, check=False)
    assert r.returncode == 1, r.stderr
    assert "error" in r.stderr and "Traceback" not in r.stderr
    msg = {"no_corr_mic": "--corr_mic", "missing_map": "nothing.mrc", "no_subset": "rlnRandomSubset",
           "params_both": "not both", "fractions_overlap": "overlap",
           "training_and_shiny": "training estimates parameters only", "par_group": "--par_group 3"}[case]
    assert msg in r.stderr, r.stderr
    assert not any((d / f"Bad_{case}").glob("**/*.star")) if (d / f"Bad_{case}").exists() else True
    assert not any((d / f"Bad_{case}").glob("*.txt")) if (d / f"Bad_{case}").exists() else True


def trained(r, out):
    """(s_vel, s_div, s_acc) of the file and (score at the end, at the start) of the log."""
    line = [l for l in r.stderr.splitlines() if "good parameters" in l]
    assert len(line) == 1, r.stderr[-2000:]
    words = line[0].split()
    end, start = float(words[words.index("(score") + 1]), float(words[words.index("from") + 1].rstrip(";"))
    return [float(v) for v in out.read_text().split()], end, start


def test_training_mode_fits_the_prior(data):
    """--params3 (RELION's parameter training): micrographs drawn until --min_p particles, tracks fitted
    with the lower frequencies, scored by the correlation of the moved frames with the other half map's
    prediction at the higher ones; Nelder-Mead over (s_vel, s_div, s_acc). Started from s_vel 0.01 px,
    a prior that pins the tracks to motion correction's global tracks, which miss this data's local
    deformation of up to 8 px, the training raises s_vel (measured: 0.01 -> 0.2-0.3; with the sign of the
    score's shift reversed it went to 0.006) and the score. The file is RELION's (three numbers) and
    `--params_file` reads it; --j does not change it; --params2 keeps s_acc at --s_acc_0."""
    d = data
    common = [*POLISH, "--min_p", "50", "--par_iters", "25"]
    r = polish(d, *common, "--o", "Train/", "--params3", "--s_vel_0", "0.01")
    (s_vel, s_div, s_acc), end, start = trained(r, d / "Train/opt_params_all_groups.txt")
    assert s_vel > 0.05 and s_div > 0 and end > start, (s_vel, s_div, s_acc, end, start)
    assert r.stderr.count("training on micrograph") == 2, r.stderr[-2000:]
    r1 = subprocess.run([regula_binary(), "polish", *common, "--o", "TrainJ1/", "--params3", "--s_vel_0", "0.01",
                         "--j", "1"], cwd=d, capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    assert (d / "TrainJ1/opt_params_all_groups.txt").read_bytes() == (d / "Train/opt_params_all_groups.txt").read_bytes()
    r = polish(d, *POLISH, "--min_p", "50", "--par_iters", "5", "--o", "Train2/", "--params2", "--s_acc_0", "2.5")
    values, end, start = trained(r, d / "Train2/opt_params_all_groups.txt")
    assert values[2] == 2.5 and end >= start, values
    # One optics group's particles (--par_group): the file named after the group.
    r = polish(d, *POLISH, "--min_p", "50", "--par_iters", "2", "--o", "TrainG/", "--params2", "--par_group", "1")
    name = star_loop(d / "particles.star", "optics").get("rlnOpticsGroupName", ["opticsGroup1"])[0]
    assert len(trained(r, d / f"TrainG/opt_params_group_{name}.txt")[0]) == 3
    # --only_do_unfinished (a project job's --continue): a finished training is kept (the file not
    # rewritten); without its file the training runs again, to the same bytes.
    out = d / f"TrainG/opt_params_group_{name}.txt"
    stamp, first = out.stat().st_mtime_ns, out.read_bytes()
    again = [*POLISH, "--min_p", "50", "--par_iters", "2", "--o", "TrainG/", "--params2", "--par_group", "1",
             "--only_do_unfinished"]
    r = polish(d, *again)
    assert "trained before (--only_do_unfinished)" in r.stderr and out.stat().st_mtime_ns == stamp, r.stderr[-2000:]
    out.unlink()
    r = polish(d, *again)
    assert "trained before" not in r.stderr and out.read_bytes() == first, r.stderr[-2000:]
    polish(d, *POLISH, "--o", "PolishTrained/", "--params_file", "Train/opt_params_all_groups.txt")
    ours, glob = errors(d, "PolishTrained")
    assert ours.mean() < 1.5 * glob.mean(), (ours, glob)


def test_only_do_unfinished_gives_the_uninterrupted_bytes(data):
    """A run stopped after its first micrograph (the second's tracks removed, as if killed while fitting it)
    and started again with --only_do_unfinished keeps the first micrograph (not fitted again: its message),
    fits the second, and writes every file of the uninterrupted run byte for byte (tracks, B-factors, shiny
    stacks and STAR file); a run with every micrograph done fits none. The project job's `run --continue`
    adds the flag (tests/cpp/test_pipeline.cpp)."""
    d = data
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    roots = [os.path.splitext(m)[0] for m in mics]
    shutil.copytree(d / "Polish", d / "PolishCont")
    for suffix in ("_tracks.star", "_polish_sums.bin", "_shiny.mrcs"):
        (d / "PolishCont" / (roots[1] + suffix)).unlink()
    for name in ("bfactors.star", "bfactors.png", "shiny.star"):
        (d / "PolishCont" / name).unlink()
    # A damaged file of sums: that micrograph is fitted again, with a message.
    sums0 = d / "PolishCont" / (roots[0] + "_polish_sums.bin")
    good = sums0.read_bytes()
    sums0.write_bytes(good[:100])
    r = polish(d, *POLISH, "--o", "PolishCont/", "--combine_frames", "--only_do_unfinished")
    assert "truncated" in r.stderr and "done before" not in r.stderr, r.stderr[-2000:]
    assert sums0.read_bytes() == good
    (d / "PolishCont" / (roots[1] + "_tracks.star")).unlink()
    r = polish(d, *POLISH, "--o", "PolishCont/", "--combine_frames", "--only_do_unfinished")
    assert r.stderr.count("done before (--only_do_unfinished)") == 1 and mics[0] in r.stderr, r.stderr[-2000:]
    files = [root + s for root in roots for s in ("_tracks.star", "_polish_sums.bin", "_shiny.mrcs")]
    for f in files + ["bfactors.star"]:
        assert filecmp.cmp(d / "Polish" / f, d / "PolishCont" / f, shallow=False), f
    # The image names name the output folder.
    assert (d / "PolishCont/shiny.star").read_text() == (d / "Polish/shiny.star").read_text().replace(
        "Polish/", "PolishCont/")
    r = polish(d, *POLISH, "--o", "PolishCont/", "--combine_frames", "--only_do_unfinished")
    assert r.stderr.count("done before (--only_do_unfinished)") == 2, r.stderr[-2000:]
    for f in files + ["bfactors.star"]:
        assert filecmp.cmp(d / "Polish" / f, d / "PolishCont" / f, shallow=False), f


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI not installed")
def test_mpirun_splits_the_micrographs(data):
    """Under mpirun -np 2 each rank fits one of the two micrographs and writes its shiny stack; the B-factors,
    tracks, sums and stacks are the bytes of one process, shiny.star the same text (its folder aside)."""
    d = data
    r = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", regula_binary(), "polish",
                        *POLISH, "--o", "PolishMPI/", "--combine_frames", "--j", "1"], cwd=d, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    mics = star_loop(d / "MC" / "corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    files = [os.path.splitext(m)[0] + s for m in mics for s in ("_tracks.star", "_polish_sums.bin", "_shiny.mrcs")]
    for f in files + ["bfactors.star"]:
        assert filecmp.cmp(d / "Polish" / f, d / "PolishMPI" / f, shallow=False), f
    assert (d / "PolishMPI/shiny.star").read_text() == (d / "Polish/shiny.star").read_text().replace(
        "Polish/", "PolishMPI/")

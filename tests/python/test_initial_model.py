"""regula initial_model mechanics on a tiny data set (outputs, poses, determinism for --j, K > 1).
The de novo accuracy on the acceptance data (2,000 particles, box 96) is measured by
bench/initial_model_check.sh (minutes, not a CI test): docs/initial_model.md."""
import shutil
import subprocess

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary
from test_refine3d import run

MAP = DATA / "proj" / "clean70S_crop48.mrc"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("im")
    run("simulate", "--i", MAP, "--o", d / "sim", "--n", 120, "--angpix", 6, "--snr", 0.5, "--seed", 2)
    return d


def test_outputs_and_thread_independence(sim, tmp_path):
    for j in (1, 2):
        run("initial_model", "--i", sim / "sim/particles.star", "--o", tmp_path / f"j{j}/run", "--iter", 3, "--ctf",
            "--j", j)
    a = mrcfile.read(tmp_path / "j1/run_initial_model.mrc")
    assert a.shape == (48, 48, 48) and np.isfinite(a).all() and a.std() > 0
    assert np.array_equal(a, mrcfile.read(tmp_path / "j2/run_initial_model.mrc"))
    with mrcfile.open(tmp_path / "j1/run_initial_model.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(6.0)
    # The start was a sphere: the result is not (its central slices differ from a radial profile).
    c = a[24]
    yy, xx = np.mgrid[:48, :48] - 24
    r = np.rint(np.hypot(xx, yy)).astype(int)
    radial = np.bincount(r.ravel(), c.ravel()) / np.bincount(r.ravel())
    assert np.abs(c - radial[r]).max() > 0.2 * np.abs(c).max()
    b = gemmi.cif.read(str(tmp_path / "j1/run_data.star")).find_block("particles")
    assert len(b.find_loop("_rlnAngleRot")) == 120
    assert (tmp_path / "j1/run_em_it003_optimiser.star").is_file()


def test_several_classes(sim, tmp_path):
    run("initial_model", "--i", sim / "sim/particles.star", "--o", tmp_path / "run", "--iter", 2, "--K", 2, "--ctf")
    for f in ["run_initial_model.mrc", "run_class001.mrc", "run_class002.mrc", "run_data.star"]:
        assert (tmp_path / f).is_file(), f


def test_mini_batches_deterministic_and_resumed(sim, tmp_path):
    """The mini-batch iterations (random subsets, forgetting sums): the same bytes for --j 1 and 2, and
    when continued from a checkpoint of the mini-batch phase; files every --grad_write_iter iterations."""
    common = ["--ctf", "--grad_em_iters", 2, "--grad_ini_subset", 30, "--grad_fin_subset", 60, "--grad_write_iter", 2]
    for j in (1, 2):
        run("initial_model", "--i", sim / "sim/particles.star", "--o", tmp_path / f"j{j}/run", "--iter", 6, "--j", j,
            *common)
    a = mrcfile.read(tmp_path / "j1/run_initial_model.mrc")
    assert np.isfinite(a).all() and a.std() > 0
    assert np.array_equal(a, mrcfile.read(tmp_path / "j2/run_initial_model.mrc"))
    root = tmp_path / "j1/run_em"
    for it in range(7):  # mini-batch iterations 1-4 write at 2 and 4; the EM ones (5, 6) every iteration
        assert (tmp_path / f"j1/run_em_it{it:03d}_optimiser.star").is_file() == (it in (0, 2, 4, 5, 6)), it
    assert (tmp_path / "j1/run_em_it002_batch_sums.bin").is_file()  # the next iteration (3) is a mini-batch one
    assert not (tmp_path / "j1/run_em_it004_batch_sums.bin").exists()  # iteration 5 is full-batch EM
    log = (tmp_path / "j1/run_em_it002_optimiser.star").read_text()
    assert "regulaBatchSums" in log
    # Stopped after iteration 2 and continued: the same map as the uninterrupted run.
    run("initial_model", "--i", sim / "sim/particles.star", "--o", tmp_path / "c/run", "--iter", 6, "--j", 2, *common)
    (tmp_path / "c/run_initial_model.mrc").unlink()
    run("initial_model", "--o", tmp_path / "c/run", "--continue", tmp_path / "c/run_em_it002_optimiser.star", "--j", 1)
    assert np.array_equal(a, mrcfile.read(tmp_path / "c/run_initial_model.mrc"))


def test_strict_highres_exp_bounds_every_iteration(sim, tmp_path):
    """--strict_highres_exp 30 at 6 Å/px in a 48-px box: the frequency limit stays at shell 9 (288 / 30 Å), so
    the image size the model files record is at most 2 (9 + 1) in every iteration; without it, it grows past."""
    def sizes(root, iters):
        return [int(gemmi.cif.read(str(tmp_path / f"{root}_em_it{i:03d}_model.star")).find_block("model_general")
                    .find_value("_rlnCurrentImageSize")) for i in iters]
    common = ["--i", sim / "sim/particles.star", "--ctf", "--iter", 4, "--grad_em_iters", 4, "--ini_high", 40]
    run("initial_model", "--o", tmp_path / "lim", "--strict_highres_exp", 30, *common)
    run("initial_model", "--o", tmp_path / "free", "--strict_highres_exp", -1, *common)
    assert max(sizes("lim", range(1, 5))) <= 20
    assert max(sizes("free", range(1, 5))) > 20


def test_mini_batches_do_not_depend_on_ranks(sim, tmp_path):
    """The subsets are drawn from the seed alone and the sums are exact: mpirun -np 2 and 3 write the same map as
    one process (and every rank finds the files rank 0 wrote)."""
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed")
    common = ["--i", sim / "sim/particles.star", "--ctf", "--iter", 6, "--grad_em_iters", 2, "--grad_ini_subset", 30,
              "--grad_fin_subset", 60, "--grad_write_iter", 2, "--j", 1]
    run("initial_model", "--o", tmp_path / "one/run", *common)
    one = mrcfile.read(tmp_path / "one/run_initial_model.mrc")
    for n in (2, 3):
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(n), str(regula_binary()), "--quiet",
               "initial_model", "--o", str(tmp_path / f"np{n}/run"), *map(str, common)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert np.array_equal(one, mrcfile.read(tmp_path / f"np{n}/run_initial_model.mrc")), n


def test_tau2_fudge_scheme(sim, tmp_path):
    """--tau2_fudge_scheme (RELION 4/5's): "plain" is the default (the same map without the option); "4-step"
    regularises the mini-batches' initial phase with T = 1 (another map, its log says T 1.00); a scheme that is
    not "plain" or "D-step" is refused before any output."""
    # 7 mini-batch iterations: 2 in the initial phase (T 1), 4 in the middle (T 4 from its second), 1 final.
    common = ["--i", sim / "sim/particles.star", "--ctf", "--iter", 8, "--grad_em_iters", 1, "--grad_ini_subset", 30,
              "--grad_fin_subset", 60]
    run("initial_model", "--o", tmp_path / "default/run", *common)
    run("initial_model", "--o", tmp_path / "plain/run", "--tau2_fudge_scheme", "plain", *common)
    r = subprocess.run([regula_binary(), "initial_model", "--o", str(tmp_path / "step/run"), "--tau2_fudge_scheme",
                        "4-step", *map(str, common)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "iteration 2 (mini-batch of 30, step 0.90, T 1.00)" in r.stderr
    assert "iteration 5 (mini-batch of 45, step 0.70, T 4.00)" in r.stderr
    a = mrcfile.read(tmp_path / "default/run_initial_model.mrc")
    assert np.array_equal(a, mrcfile.read(tmp_path / "plain/run_initial_model.mrc"))
    assert not np.array_equal(a, mrcfile.read(tmp_path / "step/run_initial_model.mrc"))
    for bad in ["4-steps", "0-step", "T-step"]:
        r = run("initial_model", "--o", tmp_path / f"bad/{bad}", "--tau2_fudge_scheme", bad, *common, check=False)
        assert r.returncode == 1 and "--tau2_fudge_scheme" in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()

"""class2d --ref (RELION's option): the initial classes from a stack instead of random-subset averages, so
that a classification can go on from an earlier run's classes (with more particles, say) keeping their
numbers; and the errors of a stack that does not fit."""
import subprocess
import warnings

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary
from test_refine3d import run

MAP = DATA / "proj" / "clean70S_crop48.mrc"
OPTS = ["--ctf", "--j", 2]


def classes_of(path):
    return np.array([int(v) for v in gemmi.cif.read(str(path)).find_block("particles").find_loop("_rlnClassNumber")])


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """Four views at SNR 0.1 classified from random subsets (10 iterations)."""
    d = tmp_path_factory.mktemp("class2d_ref")
    run("simulate", "--i", MAP, "--o", d / "sim", "--n", 300, "--angpix", 6, "--snr", 0.1, "--max_shift", 1,
        "--views", 4, "--seed", 3)
    run("class2d", "--i", d / "sim/particles.star", "--o", d / "a/run", "--K", 4, "--iter", 10, *OPTS)
    return d


@pytest.mark.parametrize("seed", [1, 2])
def test_classes_and_their_numbers_go_on_from_the_references(earlier, tmp_path, seed):
    """Started from the earlier run's last classes, the first iteration already puts nearly every particle in
    the class of the same number it ended in (a random start numbers its classes arbitrarily), and its
    classes correlate with the references; --K is taken from the stack. Two seeds (the solvent's noise)."""
    d = earlier
    refs = d / "a/run_it010_classes.mrcs"
    run("class2d", "--i", d / "sim/particles.star", "--o", tmp_path / "run", "--ref", refs, "--iter", 2,
        "--reseed_until", 0, "--seed", seed, *OPTS)
    before = classes_of(d / "a/run_it010_data.star")
    after = classes_of(tmp_path / "run_it001_data.star")
    assert np.mean(after == before) >= 0.95, np.mean(after == before)
    a = mrcfile.read(refs).astype(np.float64)
    b = mrcfile.read(tmp_path / "run_it001_classes.mrcs").astype(np.float64)
    assert a.shape == b.shape == (4, 48, 48)
    for k in range(4):
        c = np.corrcoef(a[k].ravel(), b[k].ravel())[0, 1]
        assert c > 0.8, (k, c)
    # Iteration 0 holds the references themselves (masked as class averages; no --flatten_solvent here).
    assert np.allclose(mrcfile.read(tmp_path / "run_it000_classes.mrcs"), a, atol=1e-6 * np.abs(a).max())


def refused(d, out, refs, *extra):
    """class2d with --ref refs on the earlier set: its stderr, after checking exit status 1."""
    r = run("class2d", "--i", d / "sim/particles.star", "--o", out, "--ref", refs, *extra, *OPTS, check=False)
    assert r.returncode == 1, r.stderr
    return r.stderr


def stack(path, shape, apix, value=0.0):
    with warnings.catch_warnings():  # mrcfile warns about the NaN stack, which is the point
        warnings.simplefilter("ignore", RuntimeWarning)
        write_stack(path, shape, apix, value)
    return path


def write_stack(path, shape, apix, value):
    with mrcfile.new(path) as m:
        m.set_data(np.full(shape, value, np.float32))
        m.voxel_size = apix


def test_stacks_that_do_not_fit_are_refused(earlier, tmp_path):
    d = earlier
    refs = d / "a/run_it010_classes.mrcs"
    err = refused(d, tmp_path / "k/run", refs, "--K", 3)
    assert "--K 3" in err and "holds 4 reference images" in err, err
    err = refused(d, tmp_path / "s/run", stack(tmp_path / "small.mrcs", (4, 32, 32), 6.0))
    assert "32x32 px" in err and "48 px" in err, err
    err = refused(d, tmp_path / "p/run", stack(tmp_path / "other.mrcs", (4, 48, 48), 4.0))
    assert "pixel size 4.0000" in err, err
    err = refused(d, tmp_path / "n/run", stack(tmp_path / "nan.mrcs", (4, 48, 48), 6.0, np.nan))
    assert "image 1 holds a value that is not finite" in err, err
    vol = tmp_path / "map.mrc"  # a volume of the box's size is not 48 references
    with mrcfile.new(vol) as m:
        m.set_data(np.zeros((48, 48, 48), np.float32))
        m.voxel_size = 6.0
    err = refused(d, tmp_path / "v/run", vol)
    assert "a 3D map (48x48x48" in err and "not a stack of 2D references" in err, err
    err = refused(d, tmp_path / "m/run", tmp_path / "none.mrcs")
    assert "none.mrcs" in err, err
    assert not list(tmp_path.glob("*/run_it*"))  # refused before any output


def test_continue_takes_the_checkpoints_classes(earlier, tmp_path):
    """With --continue the classes are the checkpoint's, as every option of the run (`regula run --job DIR
    --continue` keeps the job's --ref): the result is the uninterrupted run's."""
    d = earlier
    r = subprocess.run([regula_binary(), "class2d", "--continue", str(d / "a/run_it005_optimiser.star"), "--o",
                        str(tmp_path / "run"), "--ref", str(tmp_path / "absent.mrcs"), "--j", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "is not read" in r.stdout + r.stderr
    assert np.array_equal(mrcfile.read(tmp_path / "run_it010_classes.mrcs"),
                          mrcfile.read(d / "a/run_it010_classes.mrcs"))

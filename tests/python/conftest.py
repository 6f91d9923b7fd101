import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "data"
SHARED_ABSENT = f"{SHARED} is absent (the steering repository's data, beside a checkout; CI has it)"


def shared_params(paths):
    """pytest parameters for files under ../shared/data, named by their path there; when the folder is
    absent (a fresh clone on its own), one parameter that skips with a message saying so, instead of an
    empty parameter set."""
    if not SHARED.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=SHARED_ABSENT), id="shared-data-absent")]
    return [pytest.param(p, id=str(p.relative_to(SHARED))) for p in paths]


def need_shared():
    """Skips the calling test, with a message, when ../shared/data is absent."""
    if not SHARED.is_dir():
        pytest.skip(SHARED_ABSENT)


def regula_binary():
    build = os.environ.get("REGULA_BUILD", str(ROOT / "build"))
    return str(pathlib.Path(build) / "bin" / "regula")


@pytest.fixture
def regula():
    return regula_binary()


def run_regula(*args, cwd=None, check=True, timeout=300):
    """Runs `regula --quiet ARGS` (arguments converted to str); asserts exit status 0 unless check=False."""
    r = subprocess.run([regula_binary(), "--quiet", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def euler(rot, tilt, psi):
    """RELION's Euler matrix (docs/conventions.md), vectorised over arrays of angles: shape (..., 3, 3)."""
    a, b, g = np.radians(rot), np.radians(tilt), np.radians(psi)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.moveaxis(np.array([[cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
                                 [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
                                 [sb * ca, sb * sa, cb]]), (0, 1), (-2, -1))


def fsc(a, b):
    """numpy's FSC of two cubic maps per shell round(|k|), shells 0..n/2."""
    A, B = np.fft.rfftn(a), np.fft.rfftn(b)
    n = a.shape[0]
    k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2)
    s = np.rint(r).astype(int).ravel()
    num = np.bincount(s, (A * np.conj(B)).real.ravel())
    den = np.sqrt(np.bincount(s, (abs(A) ** 2).ravel()) * np.bincount(s, (abs(B) ** 2).ravel()))
    return (num / den)[: n // 2 + 1]


# A small workflow (docs/pipeline.md#workflows) for the tests of its runners: particles, a short 2D
# classification, a selection; and the files it makes in a new project.
def small_workflow():
    m = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"
    return (f"sim:  simulate --i {m} --o sim --n 60 --box 64 --angpix 4 --snr 0.1 --seed 3\n"
            "c2d:  class2d --i {sim}particles.star --o run --K 2 --iter 3 --ctf --psi_step 10 --offset_range 4 \\\n"
            "      --offset_step 2 --particle_diameter 230 --j 1 --seed 2\n"
            "good: select --i {c2d}run_it003_data.star --o selected.star --classes 1\n")


SMALL_WORKFLOW_OUTPUTS = ["Simulate/job001/particles.mrcs", "Class2D/job002/run_it003_classes.mrcs",
                          "Class2D/job002/run_it003_data.star", "Select/job003/selected.star"]

"""The `regula` Python module (pybind11): arrays and tables against mrcfile, gemmi and numpy, and a
whole pipeline (simulate -> class2d -> refine3d -> postprocess) through the API alone."""
import importlib
import math
import os
import pathlib
import sys

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, ROOT

BUILD = pathlib.Path(os.environ.get("REGULA_BUILD", str(ROOT / "build")))
sys.path.insert(0, str(BUILD / "python"))
regula = pytest.importorskip("regula", reason="the Python module was not built (pybind11 missing?)")

MAP = DATA / "proj" / "clean70S_crop48.mrc"


def test_mrc_arrays_and_headers_equal_mrcfile(tmp_path):
    for f in [DATA / "proj" / "clean70SRibosome_vol_65p.mrc", DATA / "proj" / "rln_proj_48.mrcs"]:
        a, h = regula.read_mrc(str(f))
        with mrcfile.open(f, permissive=True) as m:
            assert a.shape == m.data.shape and a.dtype == np.float32
            assert np.array_equal(a, m.data)
            assert h["pixel_size"] == pytest.approx(float(m.voxel_size.x), rel=1e-6)
    v = np.random.default_rng(1).normal(size=(16, 20, 24)).astype(np.float32)
    regula.write_mrc(str(tmp_path / "v.mrc"), v, pixel_size=2.5)
    with mrcfile.open(tmp_path / "v.mrc") as m:
        assert np.array_equal(m.data, v) and float(m.voxel_size.x) == pytest.approx(2.5)
    s = regula.StackReader(str(DATA / "proj" / "rln_proj_48.mrcs"))
    stack = mrcfile.read(DATA / "proj" / "rln_proj_48.mrcs")
    assert len(s) == stack.shape[0]
    assert np.array_equal(s[1], stack[1]) and np.array_equal(s[-1], stack[-1])
    with pytest.raises(IndexError):
        s[len(s)]


def test_star_tables_equal_gemmi(tmp_path):
    path = DATA / "proj" / "rln_proj_48.star"
    t = regula.read_star(str(path))
    doc = gemmi.cif.read(str(path))
    for block in doc:
        cols = t[block.name]
        for item in block:
            if item.loop is None:
                continue
            for j, tag in enumerate(item.loop.tags):
                ours = cols[tag[1:]]
                theirs = [item.loop.val(r, j) for r in range(item.loop.length())]
                if isinstance(ours, np.ndarray):
                    assert np.allclose(ours, [float(x) for x in theirs])
                else:
                    assert ours == [gemmi.cif.as_string(x) for x in theirs]
    regula.write_star(str(tmp_path / "o.star"), {"general": {"rlnFinalResolution": [3.5]},
                                                  "fsc": {"rlnSpectralIndex": [0, 1, 2],
                                                          "rlnResolution": [0.0, 0.1, 0.2]}}, pairs=["general"])
    d = gemmi.cif.read(str(tmp_path / "o.star"))
    assert float(d.find_block("general").find_value("_rlnFinalResolution")) == 3.5
    assert [float(x) for x in d.find_block("fsc").find_loop("_rlnResolution")] == [0.0, 0.1, 0.2]


def test_ctf_against_numpy():
    # RELION's CTF written out in numpy (docs/conventions.md): -sin(gamma) with amplitude contrast.
    n, apix, du, dv, ang, kv, cs, q0 = 64, 1.5, 15000.0, 13000.0, 30.0, 300.0, 2.7, 0.1
    c = regula.ctf(n, apix, du, dv, ang, voltage=kv, cs=cs, amplitude_contrast=q0)
    assert c.shape == (n, n // 2 + 1)
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    ky = np.fft.fftfreq(n)[:, None] / apix
    ky[n // 2] = 0.5 / apix  # row n/2 is +Nyquist in Regula's half-complex layout (core/fft.hpp), -0.5 in numpy
    kx = np.fft.rfftfreq(n)[None, :] / apix
    k2 = kx ** 2 + ky ** 2
    a = np.arctan2(ky, kx)
    df = du * np.cos(a - np.radians(ang)) ** 2 + dv * np.sin(a - np.radians(ang)) ** 2
    gamma = -math.pi * lam * df * k2 + math.pi / 2 * cs * 1e7 * lam ** 3 * k2 ** 2 - math.atan(q0 / math.sqrt(1 - q0 ** 2))
    assert np.allclose(c, -np.sin(gamma), atol=1e-5)


def test_fsc_and_projection():
    v, _ = regula.read_mrc(str(MAP))
    f = np.array(regula.fsc(v, v))
    assert np.allclose(f, 1.0)
    rng = np.random.default_rng(2)
    a = rng.normal(size=v.shape).astype(np.float32)
    b = (a + rng.normal(size=v.shape)).astype(np.float32)
    A, B = np.fft.rfftn(a), np.fft.rfftn(b)
    n = v.shape[0]
    k = np.fft.fftfreq(n) * n
    s = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1) ** 2)).astype(int).ravel()
    ref = np.bincount(s, (A * np.conj(B)).real.ravel()) / np.sqrt(
        np.bincount(s, (abs(A) ** 2).ravel()) * np.bincount(s, (abs(B) ** 2).ravel()))
    assert np.allclose(np.array(regula.fsc(a, b))[1:], ref[1 : n // 2 + 1], atol=1e-6)
    # A projection at tilt 0 is the sum along z (RELION's convention for rot = tilt = psi = 0), up to
    # the Fourier interpolation of a map with density up to its box edge (measured correlation 0.9989);
    # tilt 90 sums along another axis.
    p = regula.project(v, 0, 0, 0)
    assert np.corrcoef(p.ravel(), v.sum(axis=0).ravel())[0, 1] > 0.995
    assert np.corrcoef(regula.project(v, 0, 90, 0).ravel(), v.sum(axis=0).ravel())[0, 1] < 0.9


def test_errors_are_python_exceptions(tmp_path):
    with pytest.raises(regula.InputError, match="nothere.mrc"):
        regula.read_mrc(str(tmp_path / "nothere.mrc"))
    with pytest.raises(TypeError, match="bogus"):
        regula.refine3d(bogus=1)
    assert issubclass(regula.InputError, ValueError)


def test_pipeline_through_the_api(tmp_path):
    events = []
    sim = regula.simulate(map=str(MAP), out_dir=str(tmp_path / "sim"), n=300, angpix=6.0, snr=0.1, max_shift=1.0,
                          seed=3, threads=2, progress=events.append)
    assert events and events[-1]["done"] == events[-1]["total"]
    c2 = regula.class2d(input=sim["particles_star"], out_root=str(tmp_path / "c2/run"), classes=2, iterations=2,
                        ctf=True, threads=2, seed=1)
    files = mrcfile.read(c2["classes_mrcs"])
    assert len(c2["classes"]) == 2 and np.array_equal(np.stack(c2["classes"]), files)
    assert sum(c2["class_fraction"]) == pytest.approx(1.0)
    r3 = regula.refine3d(input=sim["particles_star"], out_root=str(tmp_path / "r3/run"),
                         reference=str(tmp_path / "sim/truth_map1.mrc"), ini_high=40.0, firstiter_cc=True, ctf=True,
                         flatten_solvent=True, zero_mask=True, auto_local_healpix_order=3, offset_range=2.0,
                         offset_step=1.0, threads=2)
    assert r3["resolution"] < 40
    h1, _ = regula.read_mrc(r3["half1_unfil"])
    assert np.array_equal(h1, mrcfile.read(r3["half1_unfil"]))
    mask = regula.mask(0.5 * float(mrcfile.read(r3["map"]).max()) * 0.05, map=r3["map"],
                       out=str(tmp_path / "mask.mrc"), extend_px=2, soft_edge_px=4)
    assert mask.min() >= 0 and mask.max() <= 1
    pp = regula.postprocess(half1=r3["half1_unfil"], out_root=str(tmp_path / "pp/post"), mask=str(tmp_path / "mask.mrc"),
                            auto_bfac=True, autob_lowres=30.0)
    # The corrected FSC of post-processing and the refinement's gold-standard resolution agree within a
    # few shells (the mask raises the FSC), and the STAR file says the same as the returned value.
    assert pp["resolution"] <= r3["resolution"] + 1e-9
    assert pp["resolution"] > 48 * 6 / 24 - 1e-9  # not beyond Nyquist
    g = gemmi.cif.read(pp["star"]).find_block("general")
    assert float(g.find_value("_rlnFinalResolution")) == pytest.approx(pp["resolution"])

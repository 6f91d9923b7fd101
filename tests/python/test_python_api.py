"""The `regula` Python module (python/, docs/python.md) against independent references: arrays and
headers against mrcfile, tables against gemmi, the CTF/FSC/masks/filters against numpy, projections
against relion_project output, and a small simulate -> class2d -> select/reconstruct/refine3d/
postprocess run through the API alone whose returned arrays equal the files written.

Skipped when the module was not built (no pybind11); an existing module that fails to import fails."""
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, ROOT

BUILD = pathlib.Path(os.environ.get("REGULA_BUILD", str(ROOT / "build")))
if not list((BUILD / "python").glob("regula*.so")):
    pytest.skip(f"the Python module was not built in {BUILD}/python (pybind11 missing?)", allow_module_level=True)
sys.path.insert(0, str(BUILD / "python"))
import regula  # noqa: E402

MAP = DATA / "proj" / "clean70S_crop48.mrc"


def numpy_order(m):
    """mrcfile's data (file order: sections, rows, columns) permuted to (z, y, x) as Regula returns it."""
    axes = (int(m.header.maps), int(m.header.mapr), int(m.header.mapc))
    data = m.data if m.data.ndim == 3 else m.data[None]
    out = data.transpose([axes.index(a) for a in (3, 2, 1)])
    return out if m.data.ndim == 3 else out[0]


# ---- MRC ----

@pytest.mark.parametrize("name", ["mrc/czi_signed_ints.mrc", "mrc/gemmi_5i55_tiny.ccp4", "mrc/relion_float16.mrc",
                                  "mrc/rsciio_DE_20241021_00405_movie.mrc", "proj/clean70SRibosome_vol_65p.mrc",
                                  "proj/rln_proj_48.mrcs"])
def test_read_mrc_equals_mrcfile(name):
    a, h = regula.read_mrc(str(DATA / name))
    with mrcfile.open(DATA / name, permissive=True) as m:
        ref = numpy_order(m).astype(np.float32)  # int8/uint16/float16 are exact in float32
        assert a.dtype == np.float32 and a.shape == ref.shape
        assert np.array_equal(a, ref)
        for ours, theirs in zip(h["voxel_size"], (m.voxel_size.x, m.voxel_size.y, m.voxel_size.z)):
            # Regula reports 0 for an unset (zero or negative) cell; mrcfile the raw quotient.
            assert ours == pytest.approx(float(theirs) if theirs > 0 else 0.0, rel=1e-6)
        assert h["origin"] == pytest.approx((float(m.header.origin.x), float(m.header.origin.y),
                                             float(m.header.origin.z)))
        assert h["mode"] == int(m.header.mode)
    assert regula.read_mrc_header(str(DATA / name))["nx"] == a.shape[-1]


def test_write_mrc_read_by_mrcfile(tmp_path):
    v = np.random.default_rng(1).normal(size=(16, 20, 24)).astype(np.float32)
    regula.write_mrc(str(tmp_path / "v.mrc"), v, angpix=2.5, origin=(1.0, 2.0, 3.0))
    with mrcfile.open(tmp_path / "v.mrc") as m:
        assert np.array_equal(m.data, v) and m.is_volume()
        assert float(m.voxel_size.x) == pytest.approx(2.5) and float(m.voxel_size.z) == pytest.approx(2.5)
        assert (float(m.header.origin.x), float(m.header.origin.z)) == (1.0, 3.0)
    # A stack of float64 images written as float16: mrcfile sees a stack with the float16-rounded values.
    s = np.random.default_rng(2).normal(size=(3, 8, 10))
    regula.write_mrc(str(tmp_path / "s.mrcs"), s, angpix=1.5, stack=True, float16=True)
    with mrcfile.open(tmp_path / "s.mrcs") as m:
        assert m.is_image_stack() and m.data.dtype == np.float16
        assert np.array_equal(m.data, s.astype(np.float16))
    back, h = regula.read_mrc(str(tmp_path / "s.mrcs"))
    assert h["is_stack"] and np.array_equal(back, s.astype(np.float16).astype(np.float32))
    # Non-contiguous input is accepted (copied).
    regula.write_mrc(str(tmp_path / "t.mrc"), v[:, ::2, :].transpose(0, 2, 1))
    assert np.array_equal(mrcfile.read(tmp_path / "t.mrc"), v[:, ::2, :].transpose(0, 2, 1))


def test_stack_reader_is_lazy_and_equals_mrcfile():
    path = DATA / "proj" / "rln_proj_48.mrcs"
    s = regula.StackReader(str(path))
    ref = mrcfile.read(path)
    assert len(s) == ref.shape[0] and s.shape == ref.shape
    assert np.array_equal(s[1], ref[1]) and np.array_equal(s[-1], ref[-1])
    assert np.array_equal(s[1:4:2], ref[1:4:2]) and np.array_equal(s[:], ref)
    assert np.array_equal(np.stack(list(s)), ref)  # iteration stops at IndexError
    with pytest.raises(IndexError):
        s[len(s)]


# ---- STAR ----

def gemmi_tables(path):
    out = {}
    for block in gemmi.cif.read(str(path)):
        cols = {}
        for item in block:
            if item.loop is not None:
                for j, tag in enumerate(item.loop.tags):
                    cols[tag[1:]] = [gemmi.cif.as_string(item.loop.val(r, j)) for r in range(item.loop.length())]
            elif item.pair is not None:
                cols[item.pair[0][1:]] = gemmi.cif.as_string(item.pair[1])
        out["" if block.name == "#" else block.name] = cols  # gemmi calls a bare "data_" block "#"
    return out


def same_values(ours, theirs):
    if isinstance(ours, np.ndarray):
        return ours.shape == (len(theirs),) and np.array_equal(ours, np.array([float(x) for x in theirs]))
    if isinstance(ours, (int, float)):
        return ours == float(theirs)
    return ours == theirs


@pytest.mark.parametrize("name", ["star/sample_particles_relion31.star", "star/loop_double_quote.star",
                                  "proj/rln_proj_48.star"])
def test_read_star_equals_gemmi(name):
    ours, theirs = regula.read_star(str(DATA / name)), gemmi_tables(DATA / name)
    assert list(ours) == list(theirs)
    for block, cols in theirs.items():
        assert list(ours[block]) == list(cols)
        for label, values in cols.items():
            assert same_values(ours[block][label], values), (block, label)
    t = regula.read_star(str(DATA / "star" / "sample_particles_relion31.star"))
    assert t["particles"]["rlnClassNumber"].dtype == np.int64  # integer columns are integer arrays


def test_write_star_read_by_gemmi(tmp_path):
    blocks = {"general": {"rlnFinalResolution": 3.5, "rlnMaskName": "mask.mrc", "rlnNrClasses": 2},
              "fsc": {"rlnSpectralIndex": np.arange(3), "rlnResolution": np.array([0.0, 0.1, 0.2]),
                      "rlnNote": ["a b", "", "c"]}}
    regula.write_star(str(tmp_path / "o.star"), blocks)
    g = gemmi_tables(tmp_path / "o.star")
    assert g["general"] == {"rlnFinalResolution": "3.5", "rlnMaskName": "mask.mrc", "rlnNrClasses": "2"}
    assert g["fsc"] == {"rlnSpectralIndex": ["0", "1", "2"], "rlnResolution": ["0", "0.1", "0.2"],
                        "rlnNote": ["a b", "", "c"]}
    back = regula.read_star(str(tmp_path / "o.star"))
    assert back["general"] == {"rlnFinalResolution": 3.5, "rlnMaskName": "mask.mrc", "rlnNrClasses": 2}
    # float32 values keep the float's digits (0.1, not 0.10000000149011612).
    regula.write_star(str(tmp_path / "f.star"), {"x": {"v": np.array([0.1], np.float32)}})
    assert gemmi_tables(tmp_path / "f.star")["x"]["v"] == ["0.1"]
    with pytest.raises(ValueError, match="column 'b' has 1 values"):
        regula.write_star(str(tmp_path / "bad.star"), {"x": {"a": [1, 2], "b": [1]}})


def test_particles_table_equals_gemmi(tmp_path):
    path = DATA / "star" / "sample_particles_relion31.star"
    p = regula.Particles(str(path))
    g = gemmi_tables(path)["particles"]
    assert len(p) == len(g["rlnAngleRot"])
    for attr, label in [("rot", "rlnAngleRot"), ("defocus_u", "rlnDefocusU"), ("origin_x", "rlnOriginXAngst"),
                        ("class_number", "rlnClassNumber"), ("psi", "rlnAnglePsi")]:
        assert np.allclose(getattr(p, attr), [float(x) for x in g[label]]), attr
    assert [o["pixel_size"] for o in p.optics] == [1.4, 1.4] and p.optics[1]["voltage"] == 200.0
    keep = np.where(p.class_number == p.class_number[0])[0][::-1]
    rot = p.rot
    rot[:] = 12.5
    p.rot = rot
    p.select(keep)
    p.write(str(tmp_path / "sel.star"))
    h = gemmi_tables(tmp_path / "sel.star")["particles"]
    assert h["rlnImageName"] == [g["rlnImageName"][i] for i in keep]
    assert all(float(x) == 12.5 for x in h["rlnAngleRot"])


# ---- imaging ----

def relion_ctf(n, apix, du, dv, ang, kv, cs, q0, phase=0.0, bfac=0.0):
    """RELION 3.1's CTF formula (docs/conventions.md) in numpy on numpy.fft.rfft2's grid, row n/2 at +Nyquist."""
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    ky = np.fft.fftfreq(n)[:, None] / apix
    ky[n // 2] = 0.5 / apix
    kx = np.fft.rfftfreq(n)[None, :] / apix
    k2 = kx ** 2 + ky ** 2
    a = np.arctan2(ky, kx)
    df = du * np.cos(a - np.radians(ang)) ** 2 + dv * np.sin(a - np.radians(ang)) ** 2
    gamma = (-math.pi * lam * df * k2 + math.pi / 2 * cs * 1e7 * lam ** 3 * k2 ** 2 - np.radians(phase)
             - math.atan(q0 / math.sqrt(1 - q0 ** 2)))
    return -np.sin(gamma) * np.exp(-bfac * k2 / 4)


def test_ctf_against_numpy():
    n, apix = 64, 1.5
    for du, dv, ang, kv, cs, q0, phase, bfac in [(15000.0, 13000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0),
                                                 (8000.0, 8500.0, 125.0, 200.0, 1.4, 0.07, 45.0, 80.0)]:
        c = regula.ctf(n, apix, du, dv, ang, voltage=kv, cs=cs, amplitude_contrast=q0, phase_shift=phase,
                       bfactor=bfac)
        assert c.shape == (n, n // 2 + 1)
        # float32 values of a function bounded by 1: 1e-5 absolute.
        assert np.allclose(c, relion_ctf(n, apix, du, dv, ang, kv, cs, q0, phase, bfac), atol=1e-5)
    assert regula.ctf(8, 1.0, 10000.0)[0, 0] == pytest.approx(0.1, abs=1e-6)  # +Q0 at k = 0
    assert regula.electron_wavelength(300.0) == pytest.approx(0.019687, abs=1e-6)  # 1.97 pm at 300 kV


def numpy_fsc(a, b):
    A, B = np.fft.rfftn(a), np.fft.rfftn(b)
    n = a.shape[0]
    k = np.fft.fftfreq(n) * n
    s = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1) ** 2)).astype(int).ravel()
    return np.bincount(s, (A * np.conj(B)).real.ravel()) / np.sqrt(
        np.bincount(s, (abs(A) ** 2).ravel()) * np.bincount(s, (abs(B) ** 2).ravel()))


def test_fsc_and_resolution():
    v, _ = regula.read_mrc(str(MAP))
    assert np.allclose(regula.fsc(v, v), 1.0)
    rng = np.random.default_rng(2)
    a = rng.normal(size=v.shape).astype(np.float32)
    b = (a + rng.normal(size=v.shape)).astype(np.float32)
    n = v.shape[0]
    # Shell 0 is 1 by convention; the others are the numpy FSC (double sums over float32 maps: 1e-6).
    assert np.allclose(regula.fsc(a, b)[1:], numpy_fsc(a, b)[1 : n // 2 + 1], atol=1e-6)
    # Last shell before the first drop below 0.143 is 2: n * angpix / 2 = 8 Å.
    assert regula.resolution_at([1, 0.9, 0.5, 0.1, 0.05], 0.143, 2.0, 8) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="different shapes"):
        regula.fsc(a, b[:-1])


def test_project_equals_relion_project():
    # relion_project of the same map (tests/data/proj/make_proj48.sh): a particle is the projection moved by
    # minus its origin offset (1 Å/px). Tolerances as tests/cpp/test_projector.cpp (trilinear vs RELION's
    # interpolation): correlation >= 0.99, norm within 2%.
    v, _ = regula.read_mrc(str(MAP))
    ref = mrcfile.read(DATA / "proj" / "rln_proj_48.mrcs")
    rows = regula.read_star(str(DATA / "proj" / "rln_proj_48.star"))["particles"]
    for i in range(ref.shape[0]):
        p = regula.project(v, rows["rlnAngleRot"][i], rows["rlnAngleTilt"][i], rows["rlnAnglePsi"][i],
                           shift_x=-rows["rlnOriginXAngst"][i], shift_y=-rows["rlnOriginYAngst"][i])
        assert p.shape == (48, 48)
        assert np.corrcoef(p.ravel(), ref[i].ravel())[0, 1] >= 0.99
        assert np.linalg.norm(p) / np.linalg.norm(ref[i]) == pytest.approx(1.0, abs=0.02)


def test_masks_and_filters_against_numpy():
    n, radius, edge = 32, 9.0, 4.0
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2,) * 3, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    ref = np.where(r <= radius, 1.0, np.where(r < radius + edge, 0.5 + 0.5 * np.cos(np.pi * (r - radius) / edge), 0.0))
    m = regula.spherical_mask((n, n, n), radius, edge)
    assert m.shape == (n, n, n) and np.allclose(m, ref, atol=1e-6)
    img = np.random.default_rng(3).normal(size=(n, n)).astype(np.float32)
    assert np.allclose(regula.apply_spherical_mask(img, radius, edge), img * ref[n // 2], atol=1e-6)
    # Moved by (dx, dy) = (3, -2) px, with an array blended in outside.
    yy, xx = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    rs = np.hypot(xx - 3, yy + 2)
    ms = np.where(rs <= radius, 1.0, np.where(rs < radius + edge, 0.5 + 0.5 * np.cos(np.pi * (rs - radius) / edge), 0.0))
    bg = np.full((n, n), 5.0, np.float32)
    assert np.allclose(regula.apply_spherical_mask(img, radius, edge, fill=bg, centre_shift=(3, -2)),
                       img * ms + 5.0 * (1 - ms), atol=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        regula.apply_spherical_mask(img, radius, edge, fill=bg[:8])
    # Coloured noise: numpy's rfft2 of 200 draws has mean |F|^2 / 2 = sigma2 per shell (relative standard
    # error <= 1/sqrt(200 * 6) in shells 1-10 for the off-axis coefficients; 4 of them).
    sigma2 = 20.0 * np.exp(-np.arange(11) / 4.0)
    ky, kx = np.fft.fftfreq(n)[:, None] * n, np.fft.rfftfreq(n)[None, :] * n
    shell = np.rint(np.hypot(ky, kx)).astype(int)
    off_axis = np.broadcast_to(kx > 0, shell.shape)
    p2 = sum(np.abs(np.fft.rfft2(regula.coloured_noise(n, sigma2, seed=2, stream=d))) ** 2 / 2 for d in range(200)) / 200
    for s in range(1, 11):
        sel = (shell == s) & off_axis
        assert p2[sel].mean() / sigma2[s] == pytest.approx(1.0, abs=4 / np.sqrt(200 * sel.sum()))
    assert p2[shell > 10].max() < 1e-6 * sigma2[0]
    # B-factor: the rfft2 coefficients times exp(-B s^2 / 4), s = |k| / (n angpix).
    B, apix = 150.0, 2.0
    k2 = (np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2) / apix ** 2
    want = np.fft.irfft2(np.fft.rfft2(img) * np.exp(-B * k2 / 4), s=img.shape)
    assert np.allclose(regula.apply_bfactor(img, B, apix), want, atol=1e-5)
    # Background normalisation as relion_preprocess --norm: pixels farther than bg_radius from n/2.
    out, st = regula.normalise_background(img * 3 + 1, 10.0)
    bg = (img * 3 + 1)[np.hypot(*np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2)) > 10.0]
    assert st["mean"] == pytest.approx(bg.mean(), rel=1e-5) and st["stddev"] == pytest.approx(bg.std(), rel=1e-5)
    assert np.allclose(out, (img * 3 + 1 - bg.mean()) / bg.std(), atol=1e-5)
    assert np.array_equal(regula.window(img, 16), img[8:24, 8:24])
    # Low-pass to 8 Å at 2 Å/px: filter shell 32 * 2 / 8 = 8, edge 2: Fourier coefficients at |k| < 7 kept, > 9
    # removed; the high-pass is the complement. A constant stays that constant after Fourier re-scaling.
    kr = np.hypot(np.fft.fftfreq(n)[:, None] * n, np.fft.rfftfreq(n)[None, :] * n)
    F = np.fft.rfft2(img)
    lo, hi = np.fft.rfft2(regula.low_pass(img, 8.0, 2.0)), np.fft.rfft2(regula.high_pass(img, 8.0, 2.0))
    scale = abs(F).max()
    assert np.allclose(lo[kr < 7], F[kr < 7], atol=1e-5 * scale) and np.allclose(lo[kr > 9], 0, atol=1e-5 * scale)
    assert np.allclose(hi[kr > 9], F[kr > 9], atol=1e-5 * scale) and np.allclose(hi[kr < 7], 0, atol=1e-5 * scale)
    assert np.allclose(regula.rescale(np.full((n, n), 2.5, np.float32), 20), 2.5, atol=1e-5)
    # A map made of a constant inside a sphere gives, thresholded at half, that sphere.
    sphere = (r <= 6).astype(np.float32)
    assert np.array_equal(regula.mask(sphere, 0.5), sphere)


# ---- jobs ----

def header_fields(header, struct):
    """(name, default text or None) of the data members of `struct` in a src/regula header."""
    text = (ROOT / "src" / "regula" / header).read_text()
    body = re.search(r"struct %s \{(.*?)\n\};" % struct, text, re.S).group(1)
    out = []
    for line in body.splitlines():
        line = line.split("//")[0].strip()
        mm = re.match(r"^([\w:<>]+)\s+(.+);$", line)
        if not mm or "(" in line or mm.group(1) in ("using", "return"):
            continue
        # Declarators separated by commas outside braces and quotes: `int a = 1, b = 2;`, `std::string x, y;`.
        parts, depth, cur, quote = [], 0, "", False
        for ch in mm.group(2):
            quote ^= ch == '"'
            depth += (ch == "{") - (ch == "}")
            if ch == "," and depth == 0 and not quote:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        for part in parts:
            pm = re.match(r"^(\w+)\s*(?:=\s*(.+?)|\{.*\})?$", part.strip())
            if pm:
                out.append((pm.group(1), pm.group(2)))
    return out


JOBS = {"simulate": ("jobs/simulate.hpp", "SimulateOptions"), "preprocess": ("jobs/preprocess.hpp", "PreprocessOptions"),
        "project": ("jobs/project.hpp", "ProjectOptions"), "reconstruct": ("jobs/reconstruct.hpp", "ReconstructJobOptions"),
        "mask": ("jobs/mask.hpp", "MaskJobOptions"), "fsc": ("jobs/fsc.hpp", "FscJobOptions"),
        "class2d": ("jobs/class2d.hpp", "Class2DOptions"), "select": ("jobs/class2d.hpp", "SelectOptions"),
        "class3d": ("jobs/class3d.hpp", "Class3DOptions"), "refine3d": ("jobs/refine3d.hpp", "Refine3DOptions"),
        "initial_model": ("jobs/initial_model.hpp", "InitialModelOptions"),
        "postprocess": ("jobs/postprocess.hpp", "PostprocessOptions"),
        "symmetry_expand": ("jobs/symmetry_expand.hpp", "SymmetryExpandOptions"),
        "particle_subtract": ("jobs/particle_subtract.hpp", "ParticleSubtractOptions"),
        "locres": ("jobs/locres.hpp", "LocresOptions"), "ctf_refine": ("jobs/ctf_refine.hpp", "CtfRefineOptions"),
        "polish": ("jobs/polish.hpp", "PolishOptions"), "import_": ("jobs/import.hpp", "ImportOptions"),
        "motioncorr": ("jobs/motioncorr.hpp", "MotioncorrOptions"), "ctffind": ("jobs/ctffind.hpp", "CtffindOptions"),
        "autopick": ("jobs/autopick.hpp", "AutopickOptions"), "extract": ("jobs/extract.hpp", "ExtractOptions"),
        "simulate_movies": ("jobs/simulate_movies.hpp", "SimulateMoviesOptions"),
        "multibody": ("jobs/multibody.hpp", "MultibodyOptions"),
        "flex_analyse": ("jobs/flex_analyse.hpp", "FlexAnalyseOptions")}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_option_field_is_a_keyword(job):
    """The keyword table of each job lists every field of its option struct, with the struct's default."""
    assert sorted(regula.jobs()) == sorted(JOBS)
    fields = header_fields(*JOBS[job])
    opts = regula.job_options(job)
    # Implied by another keyword: mask's threshold_given (ini_threshold), iterations_given (iterations).
    # Not options of the command: class3d's relion_prior and batches (set by initial_model only).
    names = [f for f, _ in fields if f not in ("threshold_given", "iterations_given", "relion_prior", "batches")]
    assert sorted(opts) == sorted(names)
    for name, default in fields:
        if default is None or name not in opts:
            continue
        if default in ("true", "false"):
            assert opts[name] == (default == "true"), name
        elif default.startswith('"'):
            assert opts[name] == default.strip('"'), name
        elif re.fullmatch(r"-?[\d.e+]+", default):
            assert opts[name] == pytest.approx(float(default)), name


def test_keyword_and_input_errors(tmp_path):
    with pytest.raises(regula.InputError, match="nothere.mrc"):
        regula.read_mrc(str(tmp_path / "nothere.mrc"))
    bad = tmp_path / "bad.star"
    bad.write_text("data_x\nloop_\n_a\n_b\n1 2\n3\n")
    with pytest.raises(regula.InputError, match=r"bad\.star:6"):
        regula.read_star(str(bad))
    with pytest.raises(regula.InputError, match="nothere.star"):
        regula.class2d(input=str(tmp_path / "nothere.star"), out_root=str(tmp_path / "c"), classes=2)
    with pytest.raises(TypeError, match="'bogus'"):
        regula.refine3d(bogus=1)
    with pytest.raises(TypeError, match="'classes' expects an int, got str"):
        regula.class2d(classes="2")
    with pytest.raises(TypeError, match="'ctf' expects a bool"):
        regula.class2d(ctf=1)
    assert issubclass(regula.InputError, ValueError) and issubclass(regula.InputError, regula.Error)
    assert issubclass(regula.Error, RuntimeError)


def test_exception_in_progress_callback_stops_the_job(tmp_path):
    def stop(event):
        raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):
        regula.simulate(map=MAP, out_dir=tmp_path / "a", n=2000, box=32, angpix=6.0, threads=2, progress=stop)
    assert not (tmp_path / "a" / "particles.star").exists()
    # A job run from another Python thread: the callback takes the GIL from the library's threads.
    events, done = [], []
    t = threading.Thread(target=lambda: done.append(regula.simulate(
        map=MAP, out_dir=tmp_path / "b", n=50, box=32, angpix=6.0, threads=2, progress=events.append)))
    t.start()
    t.join(60)
    assert done and events and events[-1]["done"] == events[-1]["total"]


def run_python(code, timeout=120):
    """Runs `code` in a fresh interpreter that imports the module from the build."""
    script = f"import sys\nsys.path.insert(0, {str(BUILD / 'python')!r})\nimport regula\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def test_log_lines_go_to_stderr(tmp_path, capfd):
    """The library's log lines go to stderr, never to stdout: in a fresh interpreter that imports the
    module and runs a job (nothing there calls set_verbosity), and in this one."""
    r = run_python(f"regula.simulate(map={str(MAP)!r}, out_dir={str(tmp_path / 'a')!r}, n=3, box=24, angpix=6.0)")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "info] simulate: 3 particles" in r.stderr
    capfd.readouterr()
    regula.simulate(map=MAP, out_dir=tmp_path / "b", n=3, box=24, angpix=6.0)
    out, err = capfd.readouterr()
    assert out == ""
    assert "info] simulate: 3 particles" in err


def test_consecutive_jobs_report_to_their_own_callback_only(tmp_path):
    a, b = [], []
    regula.simulate(map=MAP, out_dir=tmp_path / "a", n=20, box=24, angpix=6.0, progress=a.append)
    seen_by_a = len(a)
    regula.simulate(map=MAP, out_dir=tmp_path / "b", n=20, box=24, angpix=6.0, progress=b.append)
    regula.simulate(map=MAP, out_dir=tmp_path / "c", n=20, box=24, angpix=6.0)
    assert seen_by_a > 0 and len(a) == seen_by_a
    assert b and b[-1]["done"] == b[-1]["total"]


def test_a_job_inside_a_progress_callback_raises_and_the_next_job_runs(tmp_path):
    """A job started from a progress callback would wait for the job calling it: it raises
    RuntimeError (which stops the outer job), and the next job runs with its own callback. In a
    subprocess, so that a hang fails the test instead of stopping the run."""
    r = run_python(f"""
        def nested(event):
            regula.simulate(map={str(MAP)!r}, out_dir={str(tmp_path / 'inner')!r}, n=2, box=24, angpix=6.0)
        try:
            regula.simulate(map={str(MAP)!r}, out_dir={str(tmp_path / 'outer')!r}, n=20, box=24, angpix=6.0,
                            progress=nested)
        except RuntimeError as e:
            print("RuntimeError:", e)
        events = []
        regula.simulate(map={str(MAP)!r}, out_dir={str(tmp_path / 'after')!r}, n=5, box=24, angpix=6.0,
                        progress=events.append)
        print("after:", bool(events) and events[-1]["done"] == events[-1]["total"])
        """, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "RuntimeError: a regula job cannot be started from inside another job's progress callback" in r.stdout
    assert "after: True" in r.stdout
    assert not (tmp_path / "inner").exists()


def test_ctrl_c_stops_a_job_at_its_next_safe_point(tmp_path):
    sim = regula.simulate(map=MAP, out_dir=tmp_path / "sim", n=100, angpix=6.0, box=32, seed=2, threads=2)
    # Python's own SIGINT handler must be in place for a Ctrl-C to reach the job. A process started in the
    # background by a non-interactive shell (`cmd &`, e.g. `nohup scripts/test &`) inherits SIGINT as
    # ignored and Python then installs no handler: the cause of this test's failures in some whole-suite
    # runs on 2026-12-03 (found 2026-12-03, fifth session). The test installs Python's own handler, as an
    # interactive session has it, and puts back what it found.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_class2d(tmp_path, sim)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_class2d(tmp_path, sim):
    # Ctrl-C once the job is under way (its first progress event), from the reporting thread, as a user's
    # would arrive at any time.
    sent = []

    def interrupt(event):
        if not sent:
            sent.append(event)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        regula.class2d(input=sim["particles_star"], out_root=tmp_path / "c2/run", classes=2, iterations=60,
                       threads=2, progress=interrupt)
    assert sent
    # Stopped after a complete iteration, long before the last (60 iterations take ~15 s here).
    done = sorted((tmp_path / "c2").glob("run_it*_optimiser.star"))
    assert done and not (tmp_path / "c2" / "run_it060_optimiser.star").exists()


def test_simulate_class2d_pipeline_through_the_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # image names in the STAR files are relative to the working directory
    sim = regula.simulate(map=MAP, out_dir="sim", n=200, angpix=6.0, box=32, snr=0.1, max_shift=1.0,
                          seed=3, threads=2)
    events = []
    c2 = regula.class2d(input=sim["particles_star"], out_root="c2/run", classes=2, iterations=2, ctf=True, threads=2,
                        seed=1, progress=events.append)
    assert events and all(set(e) == {"task", "done", "total", "elapsed_s", "eta_s"} for e in events)
    assert any(e["done"] == e["total"] > 0 for e in events)
    # Returned arrays equal the files written.
    assert c2["classes"].shape == (2, 32, 32)
    assert np.array_equal(c2["classes"], mrcfile.read(c2["classes_mrcs"]))
    data = gemmi_tables(c2["data_star"])["particles"]
    assert np.array_equal(c2["particle_class"], [int(x) for x in data["rlnClassNumber"]])
    assert np.allclose(c2["particle_psi"], [float(x) for x in data["rlnAnglePsi"]], atol=1e-5)
    model = gemmi_tables(c2["model_star"])["model_classes"]
    assert np.allclose(c2["class_fraction"], [float(x) for x in model["rlnClassDistribution"]], atol=1e-5)
    assert c2["class_fraction"].sum() == pytest.approx(1.0) and c2["last_iteration"] == 2
    # Particles reads the images lazily from the stack.
    parts = regula.Particles(sim["particles_star"])
    stack = mrcfile.read(sim["stack"])
    assert len(parts) == 200 and np.array_equal(parts.image(7), stack[7]) and np.array_equal(parts.image(-1), stack[-1])
    # select: the particles of class 1, as many as class2d assigned to it.
    sel = regula.select(input=c2["data_star"], output="sel.star", classes=[1])
    assert sel["count"] == int((c2["particle_class"] == 1).sum()) == len(regula.Particles("sel.star"))
    # reconstruct from the true poses: the map is the simulated object (not transposed or mirrored): FSC with
    # the truth map above 0.75 in shells 1-5 (measured 0.79-0.92 at this SNR; the reconstruction itself is
    # checked against relion_reconstruct in test_relion_imaging.py).
    rec = regula.reconstruct(star=sim["truth_star"], out_map="rec.mrc", ctf=True, threads=2)
    truth, _ = regula.read_mrc("sim/truth_map1.mrc")
    assert np.array_equal(rec["map"], mrcfile.read("rec.mrc")) and rec["particles"] == 200
    assert min(regula.fsc(rec["map"], truth)[1:6]) > 0.75
    # One refine3d iteration (by cross-correlation, --firstiter_cc) and post-processing of its half maps:
    # results equal the files.
    r3 = regula.refine3d(input=sim["truth_star"], out_root="r3/run", reference="sim/truth_map1.mrc", ini_high=30.0,
                         ctf=True, firstiter_cc=True, offset_range=1.0, threads=2, stop_after=1)
    assert r3["last_iteration"] == 1
    d3 = gemmi_tables("r3/run_it001_data.star")["particles"]
    assert np.allclose(r3["rot"], [float(x) for x in d3["rlnAngleRot"]], atol=1e-4)
    pp = regula.postprocess(half1="r3/run_it001_half1_class001.mrc", out_root="pp/post", angpix=6.0)
    assert float(gemmi_tables(pp["star"])["general"]["rlnFinalResolution"]) == pytest.approx(pp["resolution"])
    assert np.array_equal(regula.read_mrc(pp["map"])[0], mrcfile.read(pp["map"]))


def test_front_end_through_the_api_equals_the_command_line(tmp_path, monkeypatch):
    """simulate_movies -> motioncorr -> ctffind -> autopick (LoG) -> extract through the API and through the
    command line, with the same options: the same movies, micrographs, defocus values, picks and particles."""
    monkeypatch.chdir(tmp_path)
    movie_map = str(DATA / "proj" / "clean70SRibosome_vol_65p.mrc")
    sim = dict(movies=2, nx=256, ny=256, frames=4, dose_per_frame=10.0, particles=5, drift_min=2.0, drift_max=5.0,
               ice_crystals=0, aggregates=0, carbon=0.0, ideal=False, threads=2)
    cli = ["--n", 2, "--size", 256, "--frames", 4, "--dose_per_frame", 10, "--particles", 5, "--drift_min", 2,
           "--drift_max", 5, "--ice_crystals", 0, "--aggregates", 0, "--carbon", 0, "--no_ideal", "--j", 2]

    def rg(*args):
        r = subprocess.run([str(BUILD / "bin" / "regula"), "--quiet", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr

    s = regula.simulate_movies(maps=[movie_map], out_dir="py/sim", **sim)
    rg("simulate_movies", "--i", movie_map, "--o", "cli/sim", *cli)
    assert s["particles"] == 10 and len(s["movie_files"]) == 2
    for f in s["movie_files"]:
        assert np.array_equal(mrcfile.read(f), mrcfile.read(f.replace("py/", "cli/"))), f
    mc = regula.motioncorr(input=s["movies_star"], out_dir="py/mc", dose_weighting=True, dose_per_frame=10.0,
                           threads=2)
    rg("motioncorr", "--i", "cli/sim/movies.star", "--o", "cli/mc", "--dose_weighting", "--dose_per_frame", 10,
       "--j", 2)
    assert mc["done"] == 2 and mc["failed"] == 0
    mics = [r["rlnMicrographName"] for r in star_rows(mc["star"], "micrographs")]
    for f in mics:
        assert np.array_equal(mrcfile.read(f), mrcfile.read(f.replace("py/", "cli/"))), f
    cf = regula.ctffind(input=mc["star"], out_dir="py/ctf", res_min=40.0, res_max=6.0, threads=2)
    rg("ctffind", "--i", "cli/mc/corrected_micrographs.star", "--o", "cli/ctf", "--ResMin", 40, "--ResMax", 6,
       "--j", 2)
    a, b = star_rows(cf["star"], "micrographs"), star_rows("cli/ctf/micrographs_ctf.star", "micrographs")
    assert cf["done"] == 2 and [r["rlnDefocusU"] for r in a] == [r["rlnDefocusU"] for r in b]
    ap = regula.autopick(input=cf["star"], out_dir="py/pick", log=True, log_diam_min=150.0, log_diam_max=250.0,
                         threads=2)
    rg("autopick", "--i", "cli/ctf/micrographs_ctf.star", "--o", "cli/pick", "--LoG", "--LoG_diam_min", 150,
       "--LoG_diam_max", 250, "--j", 2)
    assert ap["done"] == 2 and ap["picks"] > 0
    for f in ap["pick_files"]:
        assert (tmp_path / f).read_text() == (tmp_path / f.replace("py/", "cli/")).read_text(), f
    ex = regula.extract(input=cf["star"], coord_list=ap["list_star"], out_dir="py/ext", extract_size=64, norm=True,
                        invert_contrast=True, threads=2)
    rg("extract", "--i", "cli/ctf/micrographs_ctf.star", "--coord_list", "cli/pick/autopick.star", "--o", "cli/ext",
       "--extract_size", 64, "--norm", "--invert_contrast", "--j", 2)
    assert ex["particles"] > 0 and ex["failed"] == 0
    py_rows, cli_rows = star_rows(ex["star"], "particles"), star_rows("cli/ext/particles.star", "particles")
    assert len(py_rows) == len(cli_rows) == ex["particles"]
    for p, c in zip(py_rows, cli_rows):
        ip, sp = p["rlnImageName"].split("@")
        ic, sc = c["rlnImageName"].split("@")
        assert ip == ic and np.array_equal(mrcfile.read(sp)[int(ip) - 1], mrcfile.read(sc)[int(ic) - 1])


def star_rows(path, block):
    """The rows of a STAR block's loop as dicts (gemmi_tables)."""
    cols = {k: v for k, v in gemmi_tables(path)[block].items() if isinstance(v, list)}
    n = len(next(iter(cols.values())))
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]

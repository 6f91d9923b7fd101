"""MRC I/O cross-checked against mrcfile + numpy (run with /usr/bin/python3 -m pytest).

1. Files of every mode mrcfile writes (0, 1, 2, 6, 12; both byte orders; image, stack,
   volume) go through `regula convert`; the output equals mrcfile's array exactly.
2. Files written by Regula (float32 and float16; image, stack, volume) pass
   mrcfile.validate() and read back bit-exact; float16 rounding equals numpy's.
3. Every MRC file in ../shared/data converts to the values mrcfile reads (axes
   permuted to x, y, z), or fails with exit status 1 and a one-line message where
   mrcfile cannot read the data (truncated, compressed).
"""
import bz2
import io
import subprocess
import warnings

import mrcfile
import numpy as np
import pytest

from conftest import DATA, SHARED, need_shared, regula_binary, shared_params

MRC_EXT = {".mrc", ".mrcs", ".map", ".ccp4", ".st"}


def convert(src, dst, *extra):
    return subprocess.run([regula_binary(), "convert", "--i", str(src), "--o", str(dst), *map(str, extra)],
                          capture_output=True, text=True, timeout=300)


def read_mrc(path):
    """mrcfile's data as a 3D array in file order (sections, rows, columns) plus the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(str(path), permissive=True) as m:
            h = m.header.copy()
            data = None if m.data is None else np.array(m.data)
            voxel = m.voxel_size.copy()
    if data is not None:
        data = data.reshape(int(h.nz), int(h.ny), int(h.nx))
    return data, h, voxel


def to_zyx(data, h):
    """Permute file-order data (s, r, c) to (z, y, x) using MAPC/MAPR/MAPS; an axis order
    that is not a permutation of 1,2,3 is taken as 1,2,3 (what mrcfile does)."""
    labels = [int(h.maps), int(h.mapr), int(h.mapc)]  # axis label of array axes 0, 1, 2
    if sorted(labels) != [1, 2, 3]:
        labels = [3, 2, 1]
    return np.transpose(data, [labels.index(3), labels.index(2), labels.index(1)])


def validate(path):
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = mrcfile.validate(str(path), print_file=out)
    return ok, out.getvalue()


def write_mrcfile(path, data, stack=False, voxel=1.0):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data)
        if stack:
            m.set_image_stack()
        m.voxel_size = voxel
        m.update_header_stats()


RNG_SEED = 20140
SHAPES = {"image": (13, 17), "stack": (5, 12, 10), "volume": (9, 8, 7)}


def random_data(dtype, shape, rng):
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return (rng.normal(0.3, 20.0, size=shape)).astype(dtype)


# ---------------------------------------------------------------------- 1. modes


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.float32, np.uint16, np.float16])
def test_convert_matches_mrcfile_for_every_mode(tmp_path, dtype, byteorder, kind):
    rng = np.random.default_rng([RNG_SEED, np.dtype(dtype).num, ord(byteorder), len(kind)])
    data = random_data(dtype, SHAPES[kind], rng).astype(np.dtype(dtype).newbyteorder(byteorder))
    src = tmp_path / ("in.mrcs" if kind == "stack" else "in.mrc")
    write_mrcfile(src, data, stack=kind == "stack", voxel=1.75)
    dst = tmp_path / ("out.mrcs" if kind == "stack" else "out.mrc")
    r = convert(src, dst)
    assert r.returncode == 0, r.stderr
    out, h, voxel = read_mrc(dst)
    assert int(h.mode) == 2
    expect = data.astype(np.float32).reshape(out.shape)
    assert np.array_equal(out, expect)
    assert np.isclose(voxel.x, 1.75, rtol=1e-6)
    assert int(h.ispg) == (0 if kind != "volume" else 1)
    ok, msg = validate(dst)
    assert ok, msg


def test_every_float16_bit_pattern(tmp_path):
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    src = tmp_path / "all_halves.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_mrcfile(src, halves)
    r = convert(src, tmp_path / "out.mrc")
    assert r.returncode == 0, r.stderr
    out, _, _ = read_mrc(tmp_path / "out.mrc")
    assert np.array_equal(out[0], halves.astype(np.float32), equal_nan=True)


def test_float16_rounding_equals_numpy(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    # Magnitudes from far below the smallest subnormal (2^-24) to beyond the largest half (65504),
    # plus exact ties halfway between neighbouring halves (round to even).
    mags = np.exp2(rng.uniform(-27, 17, size=4000))
    vals = (mags * rng.choice([-1, 1], size=mags.size)).astype(np.float32)
    codes = np.arange(0, 0x7bff, dtype=np.uint16)
    lo = codes.view(np.float16).astype(np.float64)
    hi = (codes + 1).view(np.float16).astype(np.float64)
    exact_ties = ((lo + hi) / 2).astype(np.float32)[::5]
    allv = np.concatenate([vals, exact_ties, -exact_ties, np.float32([0, -0.0, 65504, 65519.99, 65520, 1e6])])
    allv = np.concatenate([allv, np.zeros(-allv.size % 64, np.float32)]).reshape(-1, 64)
    src = tmp_path / "f32.mrc"
    write_mrcfile(src, allv)
    r = convert(src, tmp_path / "f16.mrc", "--mode", 12)
    assert r.returncode == 0, r.stderr
    out, h, _ = read_mrc(tmp_path / "f16.mrc")
    assert int(h.mode) == 12
    with np.errstate(over="ignore"):
        expect = allv.astype(np.float16)
    assert np.array_equal(out[0].view(np.uint16), expect.view(np.uint16))


# ---------------------------------------------------------------------- 2. Regula's files


@pytest.mark.parametrize("mode", [2, 12])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_regula_files_validate_and_read_back(tmp_path, mode, kind):
    rng = np.random.default_rng([RNG_SEED, mode, len(kind)])
    data = random_data(np.float32, SHAPES[kind], rng)
    if mode == 12:
        # mrcfile.validate computes the rms of float16 data in float16, which overflows
        # for sd 20 over a few hundred pixels; normalised images (sd ~1) are the real case.
        data /= 20
    src = tmp_path / ("in.mrcs" if kind == "stack" else "in.mrc")
    write_mrcfile(src, data, stack=kind == "stack", voxel=0.8)
    dst = tmp_path / ("out.mrcs" if kind == "stack" else "out.mrc")
    r = convert(src, dst, "--mode", mode, "--angpix", 1.234)
    assert r.returncode == 0, r.stderr
    ok, msg = validate(dst)
    assert ok, msg
    with mrcfile.open(str(dst)) as m:  # strict mode
        assert m.data.dtype == (np.float32 if mode == 2 else np.float16)
        expect = data if mode == 2 else data.astype(np.float16)
        assert np.array_equal(m.data.view(np.uint32 if mode == 2 else np.uint16),
                              expect.view(np.uint32 if mode == 2 else np.uint16))
        assert np.isclose(m.voxel_size.x, 1.234, rtol=1e-6)
        assert bytes(m.header.map) == b"MAP "
        assert bytes(m.header.machst) == b"\x44\x44\x00\x00"
        assert int(m.header.nversion) == 20140
        assert m.is_image_stack() == (kind == "stack")
        assert m.is_volume() == (kind == "volume")
        assert m.is_single_image() == (kind == "image")
        stored = m.data.astype(np.float64)
        assert float(m.header.dmin) == stored.min() and float(m.header.dmax) == stored.max()
        assert np.isclose(float(m.header.dmean), stored.mean(), rtol=1e-6)
        assert np.isclose(float(m.header.rms), stored.std(), rtol=1e-6)
    # A second conversion of Regula's own file is bit-identical (data and header).
    r = convert(dst, tmp_path / ("again" + dst.suffix), "--mode", mode)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / ("again" + dst.suffix)).read_bytes()[1024:] == dst.read_bytes()[1024:]


def test_bundled_edge_files(tmp_path):
    for path in sorted((DATA / "mrc").iterdir()):
        if path.suffix not in MRC_EXT:
            continue
        check_against_mrcfile(path, tmp_path)


# ---------------------------------------------------------------------- 3. shared data


def mrcfile_data(path):
    """mrcfile's data (file order) or None where mrcfile cannot read it."""
    try:
        data, h, voxel = read_mrc(path)
    except Exception:
        return None, None, None
    return data, h, voxel


def check_against_mrcfile(path, tmp_path):
    dst = tmp_path / ("out.mrcs" if path.suffix == ".mrcs" else "out.mrc")
    if dst.exists():
        dst.unlink()
    r = convert(path, dst)
    data, h, voxel = mrcfile_data(path)
    if data is None:
        assert r.returncode == 1, (path, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], r.stderr
        assert not dst.exists()
        return
    assert r.returncode == 0, (path, r.stderr)
    out, oh, ovoxel = read_mrc(dst)
    expect = to_zyx(data, h).astype(np.float32)
    assert out.shape == expect.shape, path
    assert np.array_equal(out, expect, equal_nan=True), path
    if voxel.x > 0 and int(h.mx) > 0:
        assert np.isclose(ovoxel.x, voxel.x, rtol=1e-6), path
    ok, msg = validate(dst)
    assert ok, (path, msg)


def shared_files():
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.rglob("*") if p.is_file() and (p.suffix in MRC_EXT or p.suffix == ".bz2"))


@pytest.mark.parametrize("path", shared_params(shared_files()))
def test_convert_every_shared_file(path, tmp_path):
    if path.suffix == ".bz2":
        # Regula does not decompress: a one-line error; the decompressed copy converts.
        r = convert(path, tmp_path / "x.mrc")
        assert r.returncode == 1 and "bzip2" in r.stderr and str(path) in r.stderr
        raw = tmp_path / path.stem
        raw.write_bytes(bz2.decompress(path.read_bytes()))
        path = raw
    check_against_mrcfile(path, tmp_path)


def test_shared_data_present():
    need_shared()
    assert len(shared_files()) > 50


def test_convert_rescale_bad_input(tmp_path):
    """--rescale_angpix/--new_box on a non-square image, without any pixel size, or to a box of under
    2 px: exit status 1, the file (or the option) and what was expected named, no output."""
    rect = tmp_path / "rect.mrc"
    with mrcfile.new(str(rect)) as m:
        m.set_data(np.zeros((20, 24), np.float32))
        m.voxel_size = 2.0
    nopix = tmp_path / "nopix.mrc"
    with mrcfile.new(str(nopix)) as m:
        m.set_data(np.zeros((24, 24), np.float32))  # cell 0: no pixel size
    for src, extra, expected in [(rect, ["--rescale_angpix", 3], "need square images"),
                                 (rect, ["--new_box", 16], "need square images"),
                                 (nopix, ["--rescale_angpix", 3], "no pixel size"),
                                 (nopix, ["--angpix", 1, "--rescale_angpix", 100], "would become 0 px")]:
        r = convert(src, tmp_path / "out.mrc", *extra)
        assert r.returncode == 1, r.stderr
        assert expected in r.stderr and (str(src) in r.stderr or "--rescale_angpix" in r.stderr), r.stderr
        assert not (tmp_path / "out.mrc").exists()
    r = convert(nopix, tmp_path / "out.mrc", "--angpix", 1, "--rescale_angpix", 2)
    assert r.returncode == 0, r.stderr
    with mrcfile.open(str(tmp_path / "out.mrc")) as m:
        assert m.data.shape == (12, 12) and float(m.voxel_size.x) == pytest.approx(2.0)

"""Every real STAR file in ../shared/data round-trips through `regula star_handler`.

The reference reader is python3-gemmi (gemmi.cif parses STAR). Generic mode must
keep every block, item order, tag and value (values compared as exact strings);
--particles mode must keep every particles column that is not converted, with the
same values, and write the RELION 3.1 form. RELION 3.0 files are also compared
with RELION's own conversion (relion_star_handler) when it is installed.
"""
import math
import pathlib
import shutil
import subprocess

import pytest

gemmi = pytest.importorskip("gemmi")

from conftest import SHARED, need_shared, shared_params

STAR_FILES = sorted(SHARED.glob("star/*.star")) + sorted(SHARED.glob("particles/**/*.star"))
RELION = shutil.which("relion_star_handler") or (
    "/usr/bin/relion_star_handler" if pathlib.Path("/usr/bin/relion_star_handler").exists() else None)

# Columns that --particles moves or converts (RELION 3.0 -> 3.1).
CONVERTED = {"_rlnVoltage", "_rlnSphericalAberration", "_rlnAmplitudeContrast", "_rlnMagnification",
             "_rlnDetectorPixelSize", "_rlnImagePixelSize", "_rlnImageDimensionality", "_rlnImageSize",
             "_rlnOriginX", "_rlnOriginY", "_rlnOpticsGroup", "_rlnOriginXAngst", "_rlnOriginYAngst",
             "_rlnBeamTiltX", "_rlnBeamTiltY"}
# In a RELION 3.1 file only the origins may change form (pixels -> Å) and the optics group be added.
ORIGINS = {"_rlnOriginX", "_rlnOriginY", "_rlnOriginXAngst", "_rlnOriginYAngst", "_rlnOpticsGroup"}


def gemmi_read(path):
    try:
        return gemmi.cif.read(str(path))
    except Exception as e:  # gemmi rejects it: so must we
        return e


def items(block):
    """Block content in file order: ('pair', tag, value) and ('loop', tags, rows)."""
    out = []
    for item in block:
        if item.pair is not None:
            out.append(("pair", item.pair[0], gemmi.cif.as_string(item.pair[1])))
        elif item.loop is not None:
            loop = item.loop
            w = loop.width()
            vals = [gemmi.cif.as_string(v) for v in loop.values]
            out.append(("loop", list(loop.tags), [vals[i:i + w] for i in range(0, len(vals), w)]))
    return out


def table(block, tags=None):
    """{tag: [values]} of the first loop with _rlnImageName (or the first loop)."""
    loops = [it.loop for it in block if it.loop is not None]
    loop = next((l for l in loops if "_rlnImageName" in l.tags), loops[0] if loops else None)
    if loop is None:
        return {}
    w, vals = loop.width(), [gemmi.cif.as_string(v) for v in loop.values]
    return {t: vals[i::w] for i, t in enumerate(loop.tags)}


def run(regula, *args):
    return subprocess.run([regula, "star_handler", *args], capture_output=True, text=True, timeout=60)


def same_value(a, b):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return x == y or (math.isnan(x) and math.isnan(y))


@pytest.fixture(autouse=True)
def shared_data_present():
    need_shared()


@pytest.mark.parametrize("path", shared_params(STAR_FILES))
def test_generic_round_trip(regula, tmp_path, path):
    ref = gemmi_read(path)
    out = tmp_path / "out.star"
    r = run(regula, "--i", str(path), "--o", str(out))
    if isinstance(ref, Exception):
        # e.g. aspire_generic_sample.star: a row with an extra value.
        assert r.returncode == 1, r.stderr
        assert str(path) in r.stderr and ":" in r.stderr
        assert not out.exists()
        return
    assert r.returncode == 0, r.stderr
    got = gemmi.cif.read(str(out))
    assert [b.name for b in got] == [b.name for b in ref]
    for rb, gb in zip(ref, got):
        assert items(gb) == items(rb), rb.name


@pytest.mark.parametrize("path", shared_params(STAR_FILES))
def test_particles_round_trip(regula, tmp_path, path):
    ref = gemmi_read(path)
    if isinstance(ref, Exception):
        pytest.skip("not valid STAR (tested above)")
    blocks = {b.name: b for b in ref}
    pblock = blocks.get("particles") or next(
        (b for b in ref if any(it.loop is not None and "_rlnImageName" in it.loop.tags for it in b)), None)
    out = tmp_path / "p.star"
    r = run(regula, "--particles", "--i", str(path), "--o", str(out))
    if pblock is None:
        assert r.returncode == 1 and "no particle table" in r.stderr, r.stderr
        assert not out.exists()
        return
    assert r.returncode == 0, r.stderr
    got = gemmi.cif.read(str(out))
    names = [b.name for b in got]
    assert "optics" in names and "particles" in names
    assert names.index("optics") < names.index("particles")
    was31 = "optics" in blocks
    converted = ORIGINS if was31 else CONVERTED
    before, after = table(pblock), table(got["particles"])
    n = len(next(iter(before.values())))
    assert all(len(v) == n for v in after.values())
    for tag, values in before.items():
        if tag in converted:
            continue
        assert tag in after, tag
        assert all(same_value(a, b) for a, b in zip(values, after[tag])), tag
    gone = ("_rlnOriginX", "_rlnOriginY") if was31 else ("_rlnOriginX", "_rlnOriginY", "_rlnVoltage",
                                                          "_rlnMagnification", "_rlnDetectorPixelSize")
    for tag in gone:
        assert tag not in after
    assert "_rlnOpticsGroup" in after
    # Origins: Å columns kept as they were, or pixels times the optics pixel size.
    optics = table(got["optics"])
    pix = dict(zip(optics["_rlnOpticsGroup"], optics.get("_rlnImagePixelSize", ["0"] * len(optics["_rlnOpticsGroup"]))))
    for ax in "XY":
        if f"_rlnOrigin{ax}Angst" in before:
            expect = [float(v) for v in before[f"_rlnOrigin{ax}Angst"]]
        elif f"_rlnOrigin{ax}" in before:
            expect = [float(v) * float(pix[g]) for v, g in zip(before[f"_rlnOrigin{ax}"], after["_rlnOpticsGroup"])]
        else:
            continue
        got_o = [float(v) for v in after[f"_rlnOrigin{ax}Angst"]]
        assert got_o == pytest.approx(expect, rel=1e-12, abs=1e-12)


def relion30_files():
    out = []
    for p in STAR_FILES:
        ref = gemmi_read(p)
        if isinstance(ref, Exception) or "optics" in [b.name for b in ref]:
            continue
        if any(it.loop is not None and "_rlnImageName" in it.loop.tags
               and "_rlnVoltage" in it.loop.tags for b in ref for it in b):
            out.append(p)
    return out


@pytest.mark.skipif(RELION is None, reason="relion_star_handler not installed")
@pytest.mark.parametrize("path", shared_params(relion30_files()))
def test_relion30_conversion_matches_relion(regula, tmp_path, path):
    ours, theirs = tmp_path / "ours.star", tmp_path / "relion.star"
    assert run(regula, "--particles", "--i", str(path), "--o", str(ours)).returncode == 0
    rr = subprocess.run([RELION, "--i", str(path), "--o", str(theirs)], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
    if rr.returncode != 0 or not theirs.exists():
        pytest.skip("relion_star_handler could not convert this file: " + rr.stderr[-200:])
    a, b = gemmi.cif.read(str(ours)), gemmi.cif.read(str(theirs))
    oa, ob = table(a["optics"]), table(b["optics"])
    assert len(oa["_rlnOpticsGroup"]) == len(ob["_rlnOpticsGroup"])
    for tag in ("_rlnVoltage", "_rlnSphericalAberration", "_rlnAmplitudeContrast", "_rlnImagePixelSize"):
        if tag in ob:
            # RELION prints 6 decimals.
            assert [float(v) for v in oa[tag]] == pytest.approx([float(v) for v in ob[tag]], abs=5e-7), tag
    pa, pb = table(a["particles"]), table(b["particles"])
    assert pa["_rlnOpticsGroup"] == pb["_rlnOpticsGroup"]
    for tag in ("_rlnOriginXAngst", "_rlnOriginYAngst"):
        if tag in pb:
            # RELION writes 12-character fields: ~6 significant digits.
            for x, y in zip(pa[tag], pb[tag]):
                assert float(x) == pytest.approx(float(y), rel=1e-5, abs=1e-5), tag

"""`regula info` over every MRC and STAR file in ../shared/data: it prints a summary,
or, for a really malformed file, a one-line error naming the file, with exit status 1.

The files that must fail are the ones mrcfile itself cannot read (truncated data,
compressed files), so the expectation comes from an independent reader."""
import subprocess
import warnings

import mrcfile
import pytest

from conftest import SHARED, need_shared, regula_binary, shared_params

MRC_EXT = {".mrc", ".mrcs", ".map", ".ccp4", ".st", ".bz2"}


def shared_files():
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.rglob("*") if p.is_file() and (p.suffix in MRC_EXT or p.suffix == ".star"))


def gemmi_can_read(path):
    import gemmi
    try:
        doc = gemmi.cif.read(str(path))
        for block in doc:  # gemmi accepts a loop whose value count is off; check it
            for item in block:
                if item.loop is not None and item.loop.length() * item.loop.width() != len(item.loop.values):
                    return False
        return True
    except Exception:
        return False


def mrcfile_can_read(path):
    if path.suffix == ".bz2":
        return False  # Regula does not decompress; it says so
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrcfile.read(str(path))
            return True
    except Exception:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mrcfile.open(str(path), permissive=True) as m:
                    return m.data is not None
        except Exception:
            return False


@pytest.mark.parametrize("path", shared_params(shared_files()))
def test_info_every_shared_file(path):
    r = subprocess.run([regula_binary(), "info", str(path)], capture_output=True, text=True, timeout=120)
    if path.suffix == ".star":
        if gemmi_can_read(path):
            assert r.returncode == 0, r.stderr
            assert "data_" in r.stdout
        else:  # really malformed: a one-line error naming the file and the line
            assert r.returncode == 1
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and f"{path}:" in lines[0], r.stderr
        return
    if mrcfile_can_read(path):
        assert r.returncode == 0, r.stderr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(str(path), permissive=True) as m:
                dims = sorted(int(v) for v in (m.header.nx, m.header.ny, m.header.nz))
                mode = int(m.header.mode)
        size_line = next(l for l in r.stdout.splitlines() if l.strip().startswith("size"))
        got = sorted(int(v) for v in size_line.split("(")[0].split()[1:] if v.isdigit())
        assert got == dims, size_line
        mode_line = next(l for l in r.stdout.splitlines() if l.strip().startswith("mode"))
        assert mode_line.split()[1] == str(mode)
    else:
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert str(path) in lines[0]
        assert not r.stdout.strip()


def test_info_has_shared_files():
    need_shared()
    assert len(shared_files()) > 50

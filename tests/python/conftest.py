import os
import pathlib
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "data"


def regula_binary():
    build = os.environ.get("REGULA_BUILD", str(ROOT / "build"))
    return str(pathlib.Path(build) / "bin" / "regula")


@pytest.fixture
def regula():
    return regula_binary()

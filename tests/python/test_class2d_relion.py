"""A class2d data.star is a RELION file: relion_star_handler selects a class from it and
relion_reconstruct reconstructs from it (RELION 3.1.3; skipped when absent)."""
import shutil
import subprocess

import gemmi
import mrcfile
import pytest

from conftest import DATA
from test_refine3d import run

MAP = DATA / "proj" / "clean70S_crop48.mrc"


@pytest.mark.skipif(shutil.which("relion_star_handler") is None or shutil.which("relion_reconstruct") is None,
                    reason="RELION not installed")
def test_relion_reads_class2d_output(tmp_path):
    run("simulate", "--i", MAP, "--o", tmp_path / "sim", "--n", 120, "--angpix", 6, "--snr", 0.2, "--views", 3,
        "--seed", 4)
    run("class2d", "--i", tmp_path / "sim/particles.star", "--o", tmp_path / "c/run", "--K", 3, "--iter", 3, "--ctf",
        "--j", 2)
    data = tmp_path / "c/run_it003_data.star"
    cls = [int(v) for v in gemmi.cif.read(str(data)).find_block("particles").find_loop("_rlnClassNumber")]
    k = max(set(cls), key=cls.count)
    r = subprocess.run(["relion_star_handler", "--i", str(data), "--o", str(tmp_path / "sel.star"), "--select",
                        "rlnClassNumber", "--minval", str(k), "--maxval", str(k)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    sel = gemmi.cif.read(str(tmp_path / "sel.star")).find_block("particles")
    assert len(sel.find_loop("_rlnImageName")) == cls.count(k)
    # relion_reconstruct uses the poses (only psi and origins were refined; rot/tilt are the input's).
    r = subprocess.run(["relion_reconstruct", "--i", str(data), "--o", str(tmp_path / "rec.mrc"), "--ctf"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with mrcfile.open(tmp_path / "rec.mrc") as m:
        assert m.data.shape == (48, 48, 48)
        assert float(abs(m.data).max()) > 0

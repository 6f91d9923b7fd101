"""Every particle STAR file in ../shared/data/particles (written by RELION 3.0/3.1, ASPIRE, cryoDRGN,
pyem, Warp; files nobody here wrote) goes through reconstruct, class2d and (small boxes) refine3d, or
stops with exit status 1, one message naming what is wrong, and no output. Each command runs from the
STAR file's directory, as RELION resolves relative image names against the working directory.

The expected outcome of each file is written down, so a set that used to work and now stops (or a
refusal that turned into a crash) fails the test. Limits are small (one or two iterations, coarse
sampling): this checks that real files are read and modelled, not the quality of the result."""
import pathlib
import subprocess
import warnings

import mrcfile
import numpy as np
import pytest

from conftest import SHARED, regula_binary, shared_params

PARTICLES = SHARED / "particles"

# file -> (reconstruct, class2d, refine3d): "ok", a fragment of the expected error message, or None
# (not run; refine3d also only on boxes of at most 64 px, to keep the test short).
EXPECTED = {
    "aspire_relion_project_70S/rln_proj_64.star": ("ok", "ok", "ok"),
    "aspire_relion_project_70S/rln_proj_64_shifted.star": ("ok", "ok", "ok"),
    "aspire_relion_project_70S/rln_proj_65.star": ("ok", "ok", "must be square, even"),
    "aspire_relion_project_70S/rln_proj_65_centered.star": ("ok", "ok", "must be square, even"),
    "aspire_relion_project_70S/rln_proj_65_shifted.star": ("ok", "ok", "must be square, even"),
    "aspire_sample/sample_particles_relion30.star": ("ok", "ok", None),
    "aspire_sample/sample_particles_relion31.star": ("ok", "ok", None),
    "cryodrgn_relion31/relion31.star": ("ok", "ok", None),
    "empiar_10076_7/empiar_10076_7.star": ("ok", "ok", None),
    "simplecryoem_relion_project/pyem.star": ("pyem.mrc not found",) * 3,
    "simplecryoem_relion_project/pyem_onerow.star": ("pyem.mrc not found", "pyem.mrc not found",
                                                     "needs at least 2 particles"),
    "simplecryoem_relion_project/relion_proj_batch.star": ("ok", "ok", "ok"),
    # refine3d not run here: its final iteration on these 219 sub-tomogram averages (flat posteriors,
    # <Pmax> 0.02) takes a minute; it ran on 2026-12-03 (docs/formats.md).
    "warp_ay19102021_tilts/sta_testing_bin8.star": ("ok", "ok", None),
    "warptools/warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star": ("rlnTomoTiltSeriesPixelSize",) * 3,
    "warptools/warptools_test_4-tomos_10-ptcls_box-32_angpix-12_optimisation_set.star": ("no particle table",) * 3,
    "warptools/warptools_test_4-tomos_10-ptcls_box-32_angpix-12_tomograms.star": ("no particle table",) * 3,
}


def star_files():
    return sorted(PARTICLES.rglob("*.star")) if PARTICLES.is_dir() else []


def test_every_shared_star_file_has_an_expected_outcome():
    """A particle file added to ../shared must get its line in EXPECTED (else it would go untested)."""
    if not PARTICLES.is_dir():
        pytest.skip(f"{PARTICLES} is absent")
    found = {str(p.relative_to(PARTICLES)) for p in star_files()}
    assert found == set(EXPECTED), (sorted(found - set(EXPECTED)), sorted(set(EXPECTED) - found))


def options(star: pathlib.Path):
    text = star.read_text(errors="replace")
    opts = ["--ctf"] if "_rlnDefocusU" in text else []
    if "_rlnImagePixelSize" not in text and "_rlnDetectorPixelSize" not in text and "_rlnPixelSize" not in text:
        opts += ["--angpix", "2"]  # rln_proj_65 has no pixel size: the message asks for --angpix
    return opts


def box_of(star: pathlib.Path):
    """Box of the first image (None when its stack is absent)."""
    text = star.read_text(errors="replace")
    for line in text.splitlines():
        for tok in line.split():
            if "@" in tok:
                stack = star.parent / tok.split("@", 1)[1]
                if not stack.exists():
                    return None
                with warnings.catch_warnings():  # Warp's stack has no MAP ID: permissive, quietly
                    warnings.simplefilter("ignore")
                    with mrcfile.mmap(stack, permissive=True) as m:
                        return int(m.header.nx)
    return None


def check(cmd, cwd, expected, outputs):
    r = subprocess.run([regula_binary(), "--quiet", *map(str, cmd)], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    if expected == "ok":
        assert r.returncode == 0, r.stderr
        for o in outputs:
            assert o.exists(), o
        maps = [o for o in outputs if o.suffix in (".mrc", ".mrcs")]
        for o in maps:
            a = mrcfile.read(o)
            assert np.isfinite(a).all() and np.abs(a).max() > 0, o
    else:
        # A refusal: status 1 (not a crash), a short message saying what, and no output.
        assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
        assert expected in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) <= 3, r.stderr
        for o in outputs:
            assert not o.exists(), o


@pytest.mark.parametrize("star", shared_params(star_files()))
def test_real_particle_set(star, tmp_path):
    rec_exp, c2_exp, r3_exp = EXPECTED[str(star.relative_to(PARTICLES))]
    opts = options(star)
    rec = tmp_path / "rec.mrc"
    check(["reconstruct", "--i", star, "--o", rec, "--iter", 0, "--j", 2, *opts], star.parent, rec_exp, [rec])
    check(["class2d", "--i", star, "--o", tmp_path / "c2/run", "--K", 1, "--iter", 1, "--psi_step", 30,
           "--offset_range", 2, "--offset_step", 2, "--j", 2, *opts], star.parent, c2_exp,
          [tmp_path / "c2/run_it001_classes.mrcs", tmp_path / "c2/run_it001_data.star"])
    box = box_of(star)
    if r3_exp is None or (r3_exp == "ok" and (box is None or box > 64)):
        return
    ref = rec if rec.exists() else tmp_path / "none.mrc"
    if not ref.exists():  # refusals that come before the reference is read still need a file
        with mrcfile.new(ref) as m:
            m.set_data(np.zeros((8, 8, 8), np.float32))
    check(["refine3d", "--i", star, "--o", tmp_path / "r3/run", "--ref", ref, "--iter", 2, "--firstiter_cc",
           "--healpix_order", 1, "--offset_range", 2, "--offset_step", 2, "--maxsig", 200, "--j", 2, *opts],
          star.parent, r3_exp, [tmp_path / "r3/run_it002_data.star"])

"""regula symmetry_expand against relion_particle_symmetry_expand (RELION 3.1.3) on the same particle STAR
file: point groups C4, D7, O and I (plus T and I3) and helical expansion by whole asymmetric units and by
fractions of the rise. Rows must come in the same order with the same values: angles within 0.01 deg
(compared modulo 360), every other column identical (numbers to RELION's printed precision, text exactly),
the optics table identical. Also bad input, and the expansion run as a job of a project."""
import shutil
import subprocess

import gemmi
import numpy as np
import pytest

from conftest import euler, run_regula as run

RELION = shutil.which("relion_particle_symmetry_expand")
need_relion = pytest.mark.skipif(RELION is None, reason="relion_particle_symmetry_expand not installed")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def write_input(path, n=25, seed=4, origins=True):
    """n particles with poses uniform on the sphere (tilt from arccos, so none at the poles), origins, CTF
    values, a half-set, a class and a column Regula does not interpret."""
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-0.999, 0.999, n)))
    psi = rng.uniform(-180, 180, n)
    cols = ["rlnImageName", "rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    if origins:
        cols += ["rlnOriginXAngst", "rlnOriginYAngst"]
    cols += ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup", "rlnRandomSubset",
             "rlnClassNumber", "rlnAutopickFigureOfMerit"]
    lines = ["", "# version 30001", "", "data_optics", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(
        ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
         "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"])]
    lines += ["1 opticsGroup1 1.35 64 2 300 2.7 0.1", "2 opticsGroup2 1.35 64 2 200 2.7 0.07", "",
              "# version 30001", "", "data_particles", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(cols)]
    for i in range(n):
        row = [f"{i + 1:06d}@Particles/stack.mrcs", f"Micrographs/m{i % 3}.mrc", f"{rot[i]:.4f}", f"{tilt[i]:.4f}",
               f"{psi[i]:.4f}"]
        if origins:
            row += [f"{rng.uniform(-6, 6):.3f}", f"{rng.uniform(-6, 6):.3f}"]
        du = rng.uniform(8000, 25000)
        row += [f"{du:.2f}", f"{du - rng.uniform(0, 500):.2f}", f"{rng.uniform(-180, 180):.2f}", str(1 + i % 2),
                str(1 + i % 2), str(1 + i % 3), f"{rng.normal():.5f}"]
        lines.append(" ".join(row))
    path.write_text("\n".join(lines) + "\n")


def table(path, name):
    block = gemmi.cif.read(str(path)).find_block(name)
    loop = block[0].loop
    return {tag[1:]: [loop.val(r, c) for r in range(loop.length())] for c, tag in enumerate(loop.tags)}


def number(v):
    try:
        return float(v)
    except ValueError:
        return None


def assert_same(ours_path, relion_path):
    for name in ("optics", "particles"):
        ours, theirs = table(ours_path, name), table(relion_path, name)
        assert set(ours) == set(theirs), (name, set(ours) ^ set(theirs))
        rows = len(theirs["rlnOpticsGroup"])
        for col, ref in theirs.items():
            got = ours[col]
            assert len(got) == rows, (name, col)
            a, b = [number(v) for v in got], [number(v) for v in ref]
            if col in ANGLES:
                d = (np.array(a) - np.array(b) + 180) % 360 - 180
                assert np.abs(d).max() < 0.01, (col, np.abs(d).max())
            elif all(x is not None for x in b):
                # RELION prints 6 decimals (5 for negative numbers, in 12 columns): half a unit of the
                # last printed digit is at most 5e-6.
                a, b = np.array(a), np.array(b)
                assert np.all(np.abs(a - b) <= 1e-5 * np.maximum(1, np.abs(b))), (col, np.abs(a - b).max())
            else:
                assert got == ref, col
    return table(ours_path, "particles")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("symexp")
    write_input(d / "in.star")
    write_input(d / "noorigin.star", n=7, seed=9, origins=False)
    return d


@need_relion
@pytest.mark.parametrize("group,order", [("C4", 4), ("D7", 14), ("O", 24), ("I", 60), ("T", 12), ("I3", 60)])
def test_point_group_matches_relion(work, group, order):
    subprocess.run([RELION, "--i", "in.star", "--o", f"rl_{group}.star", "--sym", group], cwd=work, check=True,
                   capture_output=True)
    run("symmetry_expand", "--i", "in.star", "--o", f"rg_{group}.star", "--sym", group, cwd=work)
    t = assert_same(work / f"rg_{group}.star", work / f"rl_{group}.star")
    inp = table(work / "in.star", "particles")
    assert len(t["rlnAngleRot"]) == order * len(inp["rlnAngleRot"])
    # Independent of RELION: the copies of particle i are A_i R for the operators R of the group, each once.
    A = euler(*[np.array(t[c], float) for c in ANGLES]).reshape(-1, order, 3, 3)
    rel = np.einsum("pji,pkjl->pkil", A[:, 0], A)  # A_0^T A_k
    for p in range(A.shape[0]):
        d = np.abs(rel[p][:, None] - rel[p][None, :]).max(axis=(2, 3)) + np.eye(order) * 9
        assert d.min() > 1e-3  # all copies differ
        np.testing.assert_allclose(np.einsum("kij,kil->kjl", rel[p], rel[p]), np.broadcast_to(np.eye(3), rel[p].shape),
                                   atol=1e-5)
    # Rotations about z (the C4 axis) of a copy: R = A_0^T A_k has R[2,2] = 1.
    if group == "C4":
        np.testing.assert_allclose(rel[:, :, 2, 2], 1, atol=1e-6)


@need_relion
@pytest.mark.parametrize("opts", [["--asu", "5"], ["--asu", "4"], ["--frac_sampling", "3"],
                                  ["--frac_sampling", "4", "--frac_range", "0.25"]])
def test_helix_matches_relion(work, opts):
    tag = "_".join(opts).replace("--", "")
    args = ["--helix", "--twist", "-3.52", "--rise", "4.75", *opts]
    for src in ("in", "noorigin"):
        subprocess.run([RELION, "--i", f"{src}.star", "--o", f"rl_{src}_{tag}.star", *args], cwd=work, check=True,
                       capture_output=True)
        run("symmetry_expand", "--i", f"{src}.star", "--o", f"rg_{src}_{tag}.star", *args, cwd=work)
        assert_same(work / f"rg_{src}_{tag}.star", work / f"rl_{src}_{tag}.star")


def test_helix_geometry(work):
    """Without RELION: copy z of a particle has rot - z twist and its origin moved by z rise sin(tilt) along
    (cos psi, -sin psi)."""
    run("symmetry_expand", "--i", "in.star", "--o", "h5.star", "--helix", "--twist", "10", "--rise", "3",
        "--asu", "5", cwd=work)
    t, inp = table(work / "h5.star", "particles"), table(work / "in.star", "particles")
    col = lambda tb, c: np.array(tb[c], float)
    z = np.tile([-2, -1, 0, 1, 2], len(inp["rlnAngleRot"]))
    rep = lambda c: np.repeat(col(inp, c), 5)
    np.testing.assert_allclose(col(t, "rlnAngleRot"), rep("rlnAngleRot") - 10 * z, atol=1e-9)
    d = 3 * z * np.sin(np.radians(rep("rlnAngleTilt")))
    np.testing.assert_allclose(col(t, "rlnOriginXAngst"), rep("rlnOriginXAngst") + np.cos(np.radians(rep("rlnAnglePsi"))) * d,
                               atol=1e-9)
    np.testing.assert_allclose(col(t, "rlnOriginYAngst"), rep("rlnOriginYAngst") - np.sin(np.radians(rep("rlnAnglePsi"))) * d,
                               atol=1e-9)


@pytest.mark.parametrize("args,message", [
    (["--sym", "C1"], "nothing to expand"),
    (["--sym", "X5"], "unknown symmetry group"),
    (["--helix", "--sym", "C2", "--asu", "3"], "either --sym or --helix"),
    (["--helix", "--rise", "4"], "either --asu"),
    (["--helix", "--asu", "3", "--frac_sampling", "2"], "either --asu"),
    (["--helix", "--asu", "0"], "--asu"),
])
def test_bad_options(work, args, message):
    r = run("symmetry_expand", "--i", "in.star", "--o", "bad.star", *args, cwd=work, check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (work / "bad.star").exists()


def test_bad_input(work):
    (work / "noangles.star").write_text("data_particles\nloop_\n_rlnImageName\n1@a.mrcs\n")
    r = run("symmetry_expand", "--i", "noangles.star", "--o", "bad.star", "--sym", "C2", cwd=work, check=False)
    assert r.returncode == 1 and "noangles.star" in r.stderr and "rlnAngleRot" in r.stderr, r.stderr
    r = run("symmetry_expand", "--i", "missing.star", "--o", "bad.star", "--sym", "C2", cwd=work, check=False)
    assert r.returncode == 1 and "missing.star" in r.stderr, r.stderr
    assert not (work / "bad.star").exists()


def test_project_job(work):
    """As a job: SymmetryExpand/job001/expanded.star (the default --o) is a particles node (type 3)."""
    proj = work / "proj"
    proj.mkdir()
    shutil.copy(work / "in.star", proj / "in.star")
    run("--project", proj, "symmetry_expand", "--i", "in.star", "--sym", "C2")
    out = proj / "SymmetryExpand/job001/expanded.star"
    assert len(table(out, "particles")["rlnAngleRot"]) == 50
    nodes = table(proj / "default_pipeline.star", "pipeline_nodes")
    assert nodes["rlnPipeLineNodeType"][nodes["rlnPipeLineNodeName"].index("SymmetryExpand/job001/expanded.star")] == "3"


def test_python_binding(work):
    """regula.symmetry_expand(...) with keywords gives the command line's file."""
    import os
    import pathlib
    import sys
    build = pathlib.Path(os.environ.get("REGULA_BUILD", pathlib.Path(__file__).resolve().parents[2] / "build"))
    if not (build / "python").is_dir() or not list((build / "python").glob("regula*.so")):
        pytest.skip("the Python module was not built")
    sys.path.insert(0, str(build / "python"))
    import regula
    r = regula.symmetry_expand(input=str(work / "in.star"), output=str(work / "py_D2.star"), sym="D2")
    assert r["copies"] == 4 and r["particles_out"] == 4 * r["particles_in"] == 100
    run("symmetry_expand", "--i", "in.star", "--o", "cli_D2.star", "--sym", "D2", cwd=work)
    assert table(work / "py_D2.star", "particles") == table(work / "cli_D2.star", "particles")

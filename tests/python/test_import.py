"""regula import against relion_import 3.1.3 (the same STAR columns, values and rows; skipped where RELION is not
installed) and on its own: --continue over a growing folder, coordinates, half maps, particles (a RELION 3.0 file
converted), bad input, and the import as a job of a project whose pipeline RELION's pipeliner reads."""
import shutil

import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary
from conftest import run_regula as rg
from movie_data import blob_map, run, star_loop

RELION = shutil.which("relion_import")


@pytest.fixture
def folder(tmp_path):
    """A session folder: three movies (two TIFF names, one MRC; import does not read them) and a map."""
    (tmp_path / "Movies").mkdir()
    for n in ["b_002.tiff", "a_001.tiff", "c.mrc"]:
        (tmp_path / "Movies" / n).write_bytes(b"x")
    return tmp_path


def same_star(ours, theirs, block):
    """The same columns in the same order, the same rows; numbers compared as numbers."""
    a, b = star_loop(ours, block), star_loop(theirs, block)
    assert list(a) == list(b), (list(a), list(b))
    for k in a:
        assert len(a[k]) == len(b[k]), k
        for x, y in zip(a[k], b[k]):
            try:
                assert float(x) == pytest.approx(float(y), rel=1e-6), (k, x, y)
            except ValueError:
                assert x.strip('"') == y.strip('"'), (k, x, y)


@pytest.mark.parametrize("kind,extra", [
    ("movies", ["--angpix", 0.885, "--optics_group_mtf", "mtf_k3.star", "--beamtilt_x", 0.1]),
    ("micrographs", ["--angpix", 1.1, "--optics_group_name", "og7", "--kV", 200, "--Cs", 1.4, "--Q0", 0.07]),
    ("movies", []),
])
def test_lists_as_relion_import(folder, kind, extra):
    glob = "Movies/*.tiff"
    rg("import", f"--do_{kind}", "--i", glob, "--odir", "R/job001/", "--ofile", f"{kind}.star", *extra, cwd=folder)
    ours = folder / "R/job001" / f"{kind}.star"
    rows = star_loop(ours, kind)
    name = "rlnMicrographMovieName" if kind == "movies" else "rlnMicrographName"
    assert rows[name] == ["Movies/a_001.tiff", "Movies/b_002.tiff"]  # sorted, as given (relative)
    assert rows["rlnOpticsGroup"] == ["1", "1"]
    if not RELION:
        pytest.skip("relion_import is not installed: compared with the columns written out above only")
    (folder / "Import/job001").mkdir(parents=True)
    r = run(["relion_import", f"--do_{kind}", "--i", glob, "--odir", "Import/job001/", "--ofile", f"{kind}.star",
             *extra], cwd=folder)
    assert r.returncode == 0, r.stderr
    theirs = folder / "Import/job001" / f"{kind}.star"
    same_star(ours, theirs, "optics")
    same_star(ours, theirs, kind)


def test_continue_adds_new_files_in_a_new_group(folder):
    args = ["import", "--do_micrographs", "--odir", "R/"]
    rg(*args, "--i", "Movies/*.mrc", "--angpix", 1.1, cwd=folder)
    rg(*args, "--i", "Movies/*.tiff", "--angpix", 1.3, "--optics_group_name", "og2", "--continue", cwd=folder)
    # Again, as a watch would: nothing new, nothing doubled.
    rg(*args, "--i", "Movies/*", "--angpix", 1.3, "--optics_group_name", "og2", "--continue", cwd=folder)
    out = folder / "R/micrographs.star"
    m = star_loop(out, "micrographs")
    assert m["rlnMicrographName"] == ["Movies/c.mrc", "Movies/a_001.tiff", "Movies/b_002.tiff"]
    assert m["rlnOpticsGroup"] == ["1", "2", "2"]
    o = star_loop(out, "optics")
    assert o["rlnOpticsGroupName"] == ["opticsGroup1", "og2"]
    assert [float(v) for v in o["rlnMicrographPixelSize"]] == [1.1, 1.3]
    # A new file arrives: only it is added.
    (folder / "Movies" / "d_003.tiff").write_bytes(b"x")
    rg(*args, "--i", "Movies/*.tiff", "--angpix", 1.3, "--optics_group_name", "og2", "--continue", cwd=folder)
    assert star_loop(out, "micrographs")["rlnMicrographName"][-1] == "Movies/d_003.tiff"
    assert len(star_loop(out, "micrographs")["rlnMicrographName"]) == 4
    # The same group name with another pixel size is an error naming both; the file is unchanged.
    before = out.read_bytes()
    (folder / "Movies" / "e_004.tiff").write_bytes(b"x")
    r = rg(*args, "--i", "Movies/*.tiff", "--angpix", 1.4, "--optics_group_name", "og2", "--continue", cwd=folder,
           check=False)
    assert r.returncode == 1 and "og2" in r.stderr and "1.4" in r.stderr, r.stderr
    assert out.read_bytes() == before
    if RELION:
        # RELION's --continue gives the same list (its new group has an empty MTF, no beam tilt columns here).
        (folder / "Movies" / "e_004.tiff").unlink()
        (folder / "I").mkdir()
        rargs = ["relion_import", "--do_micrographs", "--odir", "I/", "--ofile", "micrographs.star", "--angpix", 1.1]
        assert run([*rargs, "--i", "Movies/*.mrc"], cwd=folder).returncode == 0
        assert run([*rargs, "--i", "Movies/*.tiff", "--angpix", 1.3, "--optics_group_name", "og2", "--continue"],
                   cwd=folder).returncode == 0
        same_star(out, folder / "I/micrographs.star", "optics")
        same_star(out, folder / "I/micrographs.star", "micrographs")


def test_bad_input_is_refused_without_output(folder):
    r = rg("import", "--do_movies", "--i", "Nothing/*.tiff", "--odir", "R/", cwd=folder, check=False)
    assert r.returncode == 1 and "Nothing/*.tiff" in r.stderr and "no file matches" in r.stderr
    (folder / "Movies" / "x.eer").write_bytes(b"x")
    r = rg("import", "--do_movies", "--i", "Movies/*", "--odir", "R/", cwd=folder, check=False)
    assert r.returncode == 1 and "x.eer" in r.stderr and "EER" in r.stderr
    r = rg("import", "--do_movies", "--do_micrographs", "--i", "Movies/*.tiff", "--odir", "R/", cwd=folder,
           check=False)
    assert r.returncode == 1 and "exactly one" in r.stderr
    r = rg("import", "--do_movies", "--i", "Movies/*.tiff", "--odir", "R/", "--Q0", 1.5, cwd=folder, check=False)
    assert r.returncode == 1 and "--Q0" in r.stderr
    assert not (folder / "R").exists() or not any((folder / "R").iterdir())


def test_coordinates_as_relion_import(folder):
    (folder / "Coords").mkdir()
    for m in ["a_001", "b_002"]:
        (folder / "Coords" / f"{m}_pick.star").write_text(
            "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n10 20\n30.5 40\n")
    rg("import", "--do_coordinates", "--i", "Coords/*_pick.star", "--odir", "R/", "--ofile",
       "coords_suffix_pick.star", cwd=folder)
    for m in ["a_001", "b_002"]:
        assert (folder / "R/Coords" / f"{m}_pick.star").read_text() == (folder / "Coords" / f"{m}_pick.star").read_text()
    assert (folder / "R/coords_suffix_pick.star").read_text().split() == ["Coords/*.mrc"]
    if RELION:
        (folder / "I").mkdir()
        r = run(["relion_import", "--do_coordinates", "--i", "Coords/*_pick.star", "--odir", "I/", "--ofile",
                 "coords_suffix_pick.star"], cwd=folder)
        assert r.returncode == 0, r.stderr
        assert (folder / "I/coords_suffix_pick.star").read_text().split() == ["Coords/*.mrc"]
        assert sorted(p.name for p in (folder / "I/Coords").iterdir()) == ["a_001_pick.star", "b_002_pick.star"]
    # A file without coordinates, or a suffix that does not match, is refused.
    (folder / "Coords" / "c_pick.star").write_text("data_\nloop_\n_rlnAngleRot\n1\n")
    r = rg("import", "--do_coordinates", "--i", "Coords/*_pick.star", "--odir", "R2/", "--ofile",
           "coords_suffix_pick.star", cwd=folder, check=False)
    assert r.returncode == 1 and "c_pick.star" in r.stderr and "rlnCoordinateX" in r.stderr
    r = rg("import", "--do_coordinates", "--i", "Coords/a_*", "--odir", "R2/", "--ofile", "picks.star", cwd=folder,
           check=False)
    assert r.returncode == 1 and "coords_suffix" in r.stderr


def test_halfmaps_particles_other(tmp_path):
    v = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for h in ["run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"]:
        with mrcfile.new(tmp_path / h) as m:
            m.set_data(v)
    rg("import", "--do_halfmaps", "--i", "run_half1_class001_unfil.mrc", "--odir", "H/", cwd=tmp_path)
    for h in ["run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"]:
        with mrcfile.open(tmp_path / "H" / h) as m:
            np.testing.assert_array_equal(m.data, v)
    (tmp_path / "run_half2_class001_unfil.mrc").unlink()
    r = rg("import", "--do_halfmaps", "--i", "run_half1_class001_unfil.mrc", "--odir", "H2/", cwd=tmp_path,
           check=False)
    assert r.returncode == 1 and "run_half2_class001_unfil.mrc" in r.stderr
    # A RELION 3.0 particle file (no optics block) comes out in the 3.1 form with one renamed group.
    shutil.copy(DATA / "relion31_small.star", tmp_path / "p31.star")
    rg("import", "--do_particles", "--i", "p31.star", "--odir", "P/", "--particles_optics_group_name", "grid7",
       cwd=tmp_path)
    o = star_loop(tmp_path / "P/particles.star", "optics")
    p_in, p_out = star_loop(tmp_path / "p31.star", "particles"), star_loop(tmp_path / "P/particles.star", "particles")
    assert p_out["rlnImageName"] == p_in["rlnImageName"]
    if len(star_loop(tmp_path / "p31.star", "optics")["rlnOpticsGroup"]) == 1:
        assert o["rlnOpticsGroupName"] == ["grid7"]
    (tmp_path / "p30.star").write_text(
        "data_\nloop_\n_rlnImageName\n_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n"
        "_rlnDetectorPixelSize\n_rlnMagnification\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
        "1@s.mrcs 300 2.7 0.1 5 50000 10000 9000 10\n2@s.mrcs 300 2.7 0.1 5 50000 12000 11000 20\n")
    rg("import", "--do_particles", "--i", "p30.star", "--odir", "P30/", cwd=tmp_path)
    o = star_loop(tmp_path / "P30/particles.star", "optics")
    assert float(o["rlnImagePixelSize"][0]) == pytest.approx(1.0)  # 5 µm * 1e4 / 50000
    assert star_loop(tmp_path / "P30/particles.star", "particles")["rlnImageName"] == ["1@s.mrcs", "2@s.mrcs"]
    r = rg("import", "--do_particles", "--i", "missing.star", "--odir", "P2/", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "missing.star" in r.stderr
    rg("import", "--do_other", "--i", "run_half1_class001_unfil.mrc", "--odir", "O/", "--ofile", "ref.mrc",
       cwd=tmp_path)
    with mrcfile.open(tmp_path / "O/ref.mrc") as m:
        np.testing.assert_array_equal(m.data, v)


def test_project_import_feeds_motioncorr_and_relion_reads_the_pipeline(tmp_path):
    """Import as job Import/job001 of a project: movies.star a movies node (type 0), no input nodes; motion
    correction takes it; RELION's pipeliner reads and rewrites the record keeping both jobs and their nodes."""
    proj = tmp_path / "proj"
    proj.mkdir()
    mp = blob_map(tmp_path / "map.mrc")
    r = run([regula_binary(), "simulate_movies", "--i", mp, "--o", proj / "sim", "--n", 2, "--size", 96, "--frames",
             3, "--particles", 2, "--no_ideal", "--j", 2])
    assert r.returncode == 0, r.stderr
    rg("--project", proj, "import", "--do_movies", "--i", "sim/Movies/*.mrc", "--angpix", 1.0, cwd=tmp_path)
    movies = proj / "Import/job001/movies.star"
    assert star_loop(movies, "movies")["rlnMicrographMovieName"] == ["sim/Movies/movie_001.mrc",
                                                                     "sim/Movies/movie_002.mrc"]
    rg("--project", proj, "motioncorr", "--i", "Import/job001/movies.star", "--o", "MC/", "--j", 2, cwd=tmp_path)
    mics = star_loop(proj / "MotionCorr/job002/corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    assert len(mics) == 2

    def nodes():
        import gemmi
        doc = gemmi.cif.read(str(proj / "default_pipeline.star"))
        b = doc.find_block("pipeline_nodes")
        t = b.find("_rlnPipeLineNode", ["Name", "Type"])
        inp = doc.find_block("pipeline_input_edges").find("_rlnPipeLineEdge", ["FromNode", "Process"])
        return {r[0]: int(r[1]) for r in t}, [(r[0], r[1]) for r in inp]

    n, inputs = nodes()
    assert n["Import/job001/movies.star"] == 0
    assert not [e for e in inputs if e[1] == "Import/job001/"]
    assert ("Import/job001/movies.star", "MotionCorr/job002/") in inputs
    if shutil.which("relion_pipeliner"):
        r = run(["relion_pipeliner", "--check_job_completion"], cwd=proj)
        assert r.returncode == 0, r.stderr
        n2, inputs2 = nodes()
        assert n2["Import/job001/movies.star"] == 0 and ("Import/job001/movies.star", "MotionCorr/job002/") in inputs2


def test_python_binding(folder):
    """regula.import_(...) writes the command line's file."""
    import os
    import pathlib
    import sys
    build = pathlib.Path(os.environ.get("REGULA_BUILD", pathlib.Path(__file__).resolve().parents[2] / "build"))
    if not (build / "python").is_dir() or not list((build / "python").glob("regula*.so")):
        pytest.skip("the Python module was not built")
    sys.path.insert(0, str(build / "python"))
    import regula
    rg("import", "--do_movies", "--i", "Movies/*.tiff", "--odir", "C/", "--angpix", 0.9, cwd=folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        r = regula.import_(kind="movies", input="Movies/*.tiff", out_dir="P/", angpix=0.9)
        assert r["items"] == 2 and r["new_items"] == 2 and r["output"] == "P/movies.star"
        with pytest.raises(regula.InputError, match="no file matches"):
            regula.import_(kind="movies", input="None/*.tiff", out_dir="P2/")
    finally:
        os.chdir(cwd)
    assert (folder / "P/movies.star").read_text() == (folder / "C/movies.star").read_text()

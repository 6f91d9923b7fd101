"""refine3d, class3d and class2d give byte-identical outputs for any number of threads (--j 1/2/7) and MPI
ranks (mpirun -np 1/3/5): every sum of an iteration is exact (integers), so its value does not depend on
how particles were split over threads and ranks nor on the order the parts were added."""
import filecmp
import shutil
import subprocess

import pytest

from conftest import DATA, regula_binary
from test_refine3d import run

MAP = DATA / "proj" / "clean70S_crop48.mrc"
REFINE = ["--ini_high", 40, "--ctf", "--firstiter_cc", "--flatten_solvent", "--zero_mask", "--healpix_order", 2,
          "--auto_local_healpix_order", 3, "--offset_range", 3, "--offset_step", 1, "--stop_after", 3]
CLASS3D = ["--K", 2, "--iter", 3, "--tau2_fudge", 4, "--ini_high", 40, "--ctf", "--firstiter_cc", "--healpix_order", 1,
           "--offset_range", 2, "--offset_step", 1, "--flatten_solvent", "--random_subsets", "--maxsig", 10]
# (--maxsig: from random subsets the first posteriors are flat and the unbounded fine pass takes minutes
# per run; the bound, which also puts its code path under test, makes each run about 2 s.)
# Local searches (around the input poses) share their windows' slices between threads: the same files too.
CLASS3D_LOCAL = CLASS3D + ["--sigma_ang", 10]
# class2d in batches of 16 particles: 10 work units for 150 particles, so 5 ranks all have work.
CLASS2D = ["--K", 3, "--iter", 3, "--ctf", "--batch", 16, "--psi_step", 10, "--offset_range", 2, "--offset_step", 1]
# Files whose content is the same whatever the split (the optimiser file records the command line).
COMPARED = ["data.star", "model.star", "half1_class001.mrc", "half2_class001.mrc", "class001.mrc", "class002.mrc",
            "classes.mrcs"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("determinism")
    run("simulate", "--i", MAP, "--o", d / "sim", "--n", 150, "--angpix", 6, "--snr", 0.1, "--max_shift", 2,
        "--seed", 11)
    return d


def mpi(n):
    if shutil.which("mpirun") is None:
        pytest.skip("OpenMPI not installed")
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(n)]


def outputs(d, last):
    files = sorted(p for p in d.glob("run_it*") if any(p.name.endswith(s) for s in COMPARED))
    assert any(f"_it{last:03d}_" in p.name for p in files), files
    return files


def same_as(ref, other):
    a, b = outputs(ref, 3), outputs(other, 3)
    assert [p.name for p in a] == [p.name for p in b]
    different = [p.name for p, q in zip(a, b) if not filecmp.cmp(p, q, shallow=False)]
    assert not different, f"{other.name} differs from {ref.name} in {different}"


@pytest.mark.parametrize("job,opts,ref_arg", [("refine3d", REFINE, "truth_map1.mrc"),
                                              ("class3d", CLASS3D, "truth_map1.mrc"),
                                              ("class3d", CLASS3D_LOCAL, "truth_map1.mrc"),
                                              ("class2d", CLASS2D, None)])
def test_threads_and_ranks_give_identical_files(data, tmp_path, job, opts, ref_arg):
    def go(name, prefix=(), j=1):
        out = tmp_path / name
        out.mkdir()
        # Relative output names (the model file names the maps as given), one directory per run.
        ref = ["--ref", data / "sim" / ref_arg] if ref_arg else []
        cmd = [*prefix, regula_binary(), "--quiet", job, "--i", data / "sim/particles.star", *ref, "--o", "run",
               "--j", j, "--seed", 3, *opts]
        r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, cwd=out)
        assert r.returncode == 0, r.stderr
        return out
    ref = go("j1")
    for j in (2, 7):
        same_as(ref, go(f"j{j}", j=j))
    for n in (1, 3, 5):
        same_as(ref, go(f"np{n}", prefix=mpi(n)))
    same_as(ref, go("np3j2", prefix=mpi(3), j=2))


def test_reconstruct_threads_and_ranks_give_identical_maps(data, tmp_path):
    """reconstruct back-projects fixed ranges of particles (their number set by the particle count) and adds
    them in range order: --j 1/2/7 and mpirun -np 3 (with --j 1 and 2) write the same map, byte for byte (it
    used one range per thread and rank, so the float sums changed with them)."""
    def go(name, prefix=(), j=1):
        cmd = [*prefix, regula_binary(), "--quiet", "reconstruct", "--i", data / "sim/particles.star", "--o",
               tmp_path / f"{name}.mrc", "--ctf", "--j", j]
        r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return (tmp_path / f"{name}.mrc").read_bytes()
    ref = go("j1")
    assert go("j2", j=2) == ref and go("j7", j=7) == ref
    assert go("np3", prefix=mpi(3)) == ref and go("np3j2", prefix=mpi(3), j=2) == ref

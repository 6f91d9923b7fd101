"""class2d's per-particle _regulaSignalZ (jobs/class2d_detail.hpp): the matched-filter statistic of the
E-step's whitened likelihood. On simulated particles with junk (truth.star's kinds): at a fixed pose an
image of noise alone scores N(0, 1), but its poses are those that fit the noise best, so images of empty ice
score at most about the largest of T standard normals, sqrt(2 ln T) for the T poses searched (here 4 classes x
36 psi x 25 translations: 4.05); the particles score well above them; two seeds (measured: empty ice medians
2.9 and 3.4, particles 6.8 and 6.9)."""
import gemmi
import numpy as np
import pytest

from conftest import DATA, run_regula

MAP = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"


def column(path, label):
    return np.array([float(v) for v in gemmi.cif.read(str(path)).find_block("particles").find_loop("_" + label)])


@pytest.mark.parametrize("seed", [1, 2])
def test_signal_z_separates_empty_ice_from_particles(tmp_path, seed):
    run_regula("simulate", "--i", MAP, "--o", tmp_path / "s", "--box", 64, "--angpix", 4, "--n", 400, "--snr", 0.05,
               "--micrographs", 4, "--junk_fraction", 0.3, "--defocus_min", 8000, "--defocus_max", 25000,
               "--max_shift", 3, "--seed", seed, "--j", 2)
    run_regula("class2d", "--i", tmp_path / "s/particles.star", "--o", tmp_path / "c/run", "--K", 4, "--iter", 8,
               "--ctf", "--particle_diameter", 230, "--psi_step", 10, "--offset_range", 4, "--offset_step", 2,
               "--zero_mask", "--flatten_solvent", "--seed", seed, "--j", 2)
    kind = column(tmp_path / "s/truth.star", "rlnRegulaTruthKind").astype(int)
    z = column(tmp_path / "c/run_it008_data.star", "regulaSignalZ")
    empty, particles = z[kind == 1], z[kind == 0]
    assert len(empty) >= 15 and len(particles) >= 250
    poses = 4 * 36 * 25
    assert 0 < np.median(empty) < np.sqrt(2 * np.log(poses)), np.median(empty)
    assert np.median(particles) > 1.5 * np.median(empty), (np.median(particles), np.median(empty))
    assert np.mean(particles > np.percentile(empty, 90)) > 0.85

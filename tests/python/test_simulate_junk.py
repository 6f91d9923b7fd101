"""regula simulate --junk_fraction / --junk_map / --noise_spread / --noise_bfactor: the junk kinds and their shares
(truth.star's rlnRegulaTruthKind, binomial tolerances), what each kind's noise-free image holds, per-micrograph noise
levels, the coloured noise's spectrum, determinism, and bad options."""
import subprocess

import gemmi
import mrcfile
import numpy as np
import pytest

from conftest import DATA, regula_binary

MAP = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"


def sim(out, *args, check=True):
    cmd = [regula_binary(), "--quiet", "simulate", "--i", MAP, "--box", 64, "--angpix", 4, "--o", out,
           "--defocus_min", 8000, "--defocus_max", 25000, "--j", 2, *args]
    r = subprocess.run([str(c) for c in cmd],
                       capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def column(path, label):
    b = gemmi.cif.read(str(path)).find_block("particles")
    return list(b.find_loop("_" + label))


@pytest.mark.parametrize("seed", [1, 2])
def test_junk_kinds_shares_and_images(tmp_path, seed):
    n, f = 600, 0.4
    sim(tmp_path / "s", "--n", n, "--snr", 0, "--junk_fraction", f, "--micrographs", 6, "--seed", seed)
    kind = np.array([int(v) for v in column(tmp_path / "s/truth.star", "rlnRegulaTruthKind")])
    assert not any(t == "_rlnRegulaTruthKind" for t in
                   gemmi.cif.read(str(tmp_path / "s/particles.star")).find_block("particles").find_loop(
                       "_rlnImageName").get_loop().tags)
    # Junk share within 4 binomial sigmas; four kinds equally likely among it.
    sd = np.sqrt(n * f * (1 - f))
    assert abs((kind > 0).sum() - n * f) < 4 * sd
    for k in range(1, 5):
        p = f / 4
        assert abs((kind == k).sum() - n * p) < 4 * np.sqrt(n * p * (1 - p)), k
    assert (kind == 5).sum() == 0  # no --junk_map
    with mrcfile.open(tmp_path / "s/particles.mrcs") as m:
        d = m.data.astype(np.float64)
    # Empty ice without noise: nothing. The others: something.
    assert np.abs(d[kind == 1]).max() == 0
    for k in (0, 2, 3, 4):
        assert (d[kind == k].std(axis=(1, 2)) > 0).all(), k
    # A carbon edge covers part of the box: the image's two halves across the edge differ in mean; a
    # particle's (centred, mean-free background) do not as much. Compare the largest half-difference over
    # four splits.
    def half_contrast(img):
        return max(abs(img[:32].mean() - img[32:].mean()), abs(img[:, :32].mean() - img[:, 32:].mean()),
                   abs(np.triu(img).mean() - np.tril(img).mean()),
                   abs(np.triu(img[:, ::-1]).mean() - np.tril(img[:, ::-1]).mean())) / img.std()
    edge = np.median([half_contrast(x) for x in d[kind == 2]])
    part = np.median([half_contrast(x) for x in d[kind == 0]])
    assert edge > 2 * part, (edge, part)


def test_wrong_particles_and_determinism(tmp_path):
    args = ["--n", 200, "--snr", 0.1, "--junk_fraction", 0.5, "--junk_map", MAP, "--seed", 3]
    sim(tmp_path / "a", *args)
    sim(tmp_path / "b", *args)
    assert (tmp_path / "a/particles.mrcs").read_bytes()[1024:] == (tmp_path / "b/particles.mrcs").read_bytes()[1024:]
    kind = np.array([int(v) for v in column(tmp_path / "a/truth.star", "rlnRegulaTruthKind")])
    assert (kind == 5).sum() > 0
    # Without junk the particles are those of the same seed and options (junk draws its own streams).
    sim(tmp_path / "c", "--n", 50, "--snr", 0.1, "--seed", 3)
    sim(tmp_path / "d", "--n", 50, "--snr", 0.1, "--seed", 3, "--junk_fraction", 0.3)
    kd = np.array([int(v) for v in column(tmp_path / "d/truth.star", "rlnRegulaTruthKind")])
    with mrcfile.open(tmp_path / "c/particles.mrcs") as c, mrcfile.open(tmp_path / "d/particles.mrcs") as d:
        good = kd == 0
        # The same particles; the noise level differs slightly (the signal variance that sets it is measured on
        # the first particles that are not junk, here fewer): correlation near 1, not equality.
        for a, b in zip(c.data[good], d.data[good]):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_noise_spread_between_micrographs(tmp_path):
    """Per micrograph the noise sigma is scaled by R^(u - 1/2): after the background normalisation the signal
    power per micrograph then spans up to R^2; with R = 9 the measured spread is large, with R = 1 small."""
    def spread(out, r):
        sim(out, "--n", 800, "--snr", 0.2, "--micrographs", 8, "--noise_spread", r, "--seed", 5)
        mic = column(out / "truth.star", "rlnMicrographName")
        with mrcfile.open(out / "particles.mrcs") as m:
            d = m.data.astype(np.float64)
        y, x = np.mgrid[:64, :64] - 32
        inner = np.hypot(x, y) < 20
        power = d[:, inner].var(axis=1) - 1.0  # background std is 1 after normalisation
        per = [power[[i for i, v in enumerate(mic) if v == name]].mean() for name in sorted(set(mic))]
        return max(per) / min(per)
    assert spread(tmp_path / "flat", 1) < 1.6
    assert spread(tmp_path / "wide", 9) > 8


@pytest.mark.parametrize("bfactor", [0, 200, 600])
def test_noise_bfactor_spectrum(tmp_path, bfactor):
    """Noise-dominated images (SNR 1e-4): numpy's mean power per shell, relative to shell 2, follows
    exp(-B (s^2 - s_2^2) / 2) (the amplitude filter exp(-B s^2 / 4) squared) within 10% at every shell
    from 2 to Nyquist. 300 images of 64 px: each shell's mean power averages 300 x 2 pi r pixels, so its
    relative error is below 2% beyond shell 2 (5% at shell 2); B 0 is the white control (flat)."""
    out = tmp_path / "s"
    sim(out, "--n", 300, "--snr", 1e-4, "--noise_bfactor", bfactor, "--seed", 4)
    with mrcfile.open(out / "particles.mrcs") as m:
        imgs = m.data.astype(np.float64)
    n = imgs.shape[-1]
    p = (abs(np.fft.rfft2(imgs)) ** 2).mean(axis=0)
    ky = np.fft.fftfreq(n) * n
    r = np.rint(np.sqrt(ky[:, None] ** 2 + np.arange(n // 2 + 1)[None, :] ** 2)).astype(int)
    shells = np.arange(2, n // 2 + 1)
    power = np.array([p[r == k].mean() for k in shells])
    s2 = (shells / (n * 4.0)) ** 2
    expected = np.exp(-bfactor * (s2 - s2[0]) / 2)
    np.testing.assert_allclose(power / power[0], expected, rtol=0.1)


def test_bad_options(tmp_path):
    for args, msg in [(["--junk_fraction", 1.0], "--junk_fraction"), (["--junk_map", MAP], "--junk_map"),
                      (["--noise_spread", 2], "--noise_spread needs --micrographs"),
                      (["--noise_spread", 0.5, "--micrographs", 2], "--noise_spread"),
                      (["--noise_bfactor", -1], "--noise_bfactor")]:
        r = sim(tmp_path / "x", "--n", 10, *args, check=False)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr)

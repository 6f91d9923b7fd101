"""regula simulate_movies: counting statistics, the drift as written in the truth, the CTF of the
micrograph against numpy, the files RELION reads (movies.star as relion_import writes it)."""
import shutil

import mrcfile
import numpy as np
import pytest

from movie_data import blob_map, ctf2, run, star_loop


def simulate(regula, out, mp, *args):
    r = run([regula, "simulate_movies", "--i", mp, "--o", out, "--j", 2, *args])
    assert r.returncode == 0, r.stderr
    return out


def flat_args():
    return ["--particles", 0, "--ice_rms", 0, "--aggregates", 0, "--ice_crystals", 0, "--carbon", 0]


def test_counts_are_poisson(regula, tmp_path):
    mp = blob_map(tmp_path / "map.mrc")
    out = simulate(regula, tmp_path / "flat", mp, "--n", 1, "--size", 256, "--frames", 10, "--dose_per_frame", 1.5,
                   *flat_args(), "--no_ideal")
    with mrcfile.open(out / "Movies" / "movie_001.mrc") as m:
        assert m.header.mode == 6
        c = m.data.astype(np.float64)
    assert c.shape == (10, 256, 256)
    assert np.all(c == np.rint(c))
    # 655,360 counts of mean 1.5: the mean's standard error is 0.0015, the variance's about 0.003.
    assert abs(c.mean() - 1.5) < 0.01
    assert abs(c.var() / c.mean() - 1) < 0.015
    # Poisson: P(0) = exp(-1.5).
    assert abs((c == 0).mean() - np.exp(-1.5)) < 0.003
    # No correlation between neighbouring pixels or frames (white counting noise).
    d = c - c.mean()
    assert abs((d[:, :, 1:] * d[:, :, :-1]).mean() / c.var()) < 0.01
    assert abs((d[1:] * d[:-1]).mean() / c.var()) < 0.01


def test_gain_and_hot_pixels(regula, tmp_path):
    mp = blob_map(tmp_path / "map.mrc")
    out = simulate(regula, tmp_path / "g", mp, "--n", 1, "--size", 256, "--frames", 20, "--dose_per_frame", 2,
                   *flat_args(), "--gain", "--hot_pixels", 5, "--no_ideal", "--mode", 2)
    with mrcfile.open(out / "Movies" / "movie_001.mrc") as m:
        c = m.data.astype(np.float64)
    with mrcfile.open(out / "gain.mrc") as m:
        gain = m.data.astype(np.float64)
    assert 1 / 1.15 - 1e-6 <= gain.min() and gain.max() <= 1 / 0.85 + 1e-6
    mean = c.mean(axis=0)
    hot = mean > 15
    assert hot.sum() == 5
    # Counts per pixel are Poisson of 2 / gain: the gain-corrected mean is 2, and the regression
    # of the mean count on 1/gain has slope 2 (standard error ~0.01 over 65k pixels).
    ok = ~hot
    corrected = mean[ok] * gain[ok]
    assert abs(corrected.mean() - 2) < 0.01
    slope = np.polyfit(1 / gain[ok], mean[ok], 1)[0]
    assert abs(slope - 2) < 0.05


def phase_correlation_shift(a, b, refine=True):
    """Displacement d of b relative to a (b(r) = a(r - d)), sub-pixel by a local search of the
    cross-correlation evaluated exactly (matrix DFT) at steps of 0.01 px."""
    # A cosine taper over 16 px at the edges: content enters and leaves as the frames move.
    def taper(n):
        t = np.ones(n)
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(16) + 0.5) / 16)
        t[:16], t[-16:] = r, r[::-1]
        return t
    w2 = taper(a.shape[0])[:, None] * taper(a.shape[1])[None, :]
    A, B = np.fft.fft2((a - a.mean()) * w2), np.fft.fft2((b - b.mean()) * w2)
    X = np.conj(A) * B
    X /= np.abs(X) + 1e-9 * np.abs(X).max()
    cc = np.fft.ifft2(X).real
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    ny, nx = cc.shape
    py = iy if iy <= ny // 2 else iy - ny
    px = ix if ix <= nx // 2 else ix - nx
    if not refine:
        return px, py
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    w = np.exp(-(kx ** 2 + ky ** 2) / (2 * 0.1 ** 2))  # low-pass the phase correlation
    best = (-1e30, px, py)
    for step in (0.1, 0.01):
        cx, cy = best[1], best[2]
        ts = np.arange(-10, 11) * step
        for dy in ts:
            ey = np.exp(2j * np.pi * ky * (cy + dy))
            for dx in ts:
                v = (X * w * ey * np.exp(2j * np.pi * kx * (cx + dx))).real.sum()
                if v > best[0]:
                    best = (v, cx + dx, cy + dy)
    return best[1], best[2]


def test_drift_applied_as_written(regula, tmp_path):
    mp = blob_map(tmp_path / "map.mrc")
    out = simulate(regula, tmp_path / "d", mp, "--n", 1, "--size", 384, "--frames", 6, "--dose_per_frame", 200,
                   "--no_damage", "--local_max", 0, "--ice_rms", 0.1, "--particles", 20, "--carbon", 0,
                   "--drift_min", 8, "--drift_max", 20, "--mode", 2, "--seed", 3)
    with mrcfile.open(out / "Movies" / "movie_001.mrc") as m:
        frames = m.data.astype(np.float64)
    g = star_loop(out / "Truth" / "movie_001_motion.star", "global_shift")
    sx, sy = np.array(g["rlnMicrographShiftX"], float), np.array(g["rlnMicrographShiftY"], float)
    assert sx[0] == 0 and sy[0] == 0
    assert 8 - 0.3 <= np.hypot(sx[-1], sy[-1]) <= 20 + 0.3
    # The truth's shift is the one that re-aligns a frame: minus the content's displacement.
    # Counting noise at 200 e/px and content entering at the edges: the measured displacement is
    # good to a few hundredths of a pixel (0.1 px allows for the edges; a sign or axis error, or a
    # shift applied to the wrong frame, is off by pixels).
    for f in range(1, 6):
        dx, dy = phase_correlation_shift(frames[0], frames[f])
        assert abs(dx + sx[f]) < 0.1 and abs(dy + sy[f]) < 0.1, (f, dx, dy, sx[f], sy[f])


def cc_shift(a, b, sigma=0.15):
    """Displacement d of b relative to a (b(r) = a(r - d)) from the peak of their cross-correlation
    (low-passed, edges tapered), refined by an upsampled DFT to 0.01 px."""
    def taper(n, m=32):
        t = np.ones(n)
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
        t[:m], t[-m:] = r, r[::-1]
        return t
    ny, nx = a.shape
    w2 = taper(ny)[:, None] * taper(nx)[None, :]
    ky, kx = np.fft.fftfreq(ny), np.fft.fftfreq(nx)
    X = np.conj(np.fft.fft2((a - a.mean()) * w2)) * np.fft.fft2((b - b.mean()) * w2)
    X *= np.exp(-(kx[None, :] ** 2 + ky[:, None] ** 2) / (2 * sigma ** 2))
    cc = np.fft.ifft2(X).real
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    py, px = (iy if iy <= ny // 2 else iy - ny), (ix if ix <= nx // 2 else ix - nx)
    t = np.arange(-120, 121) * 0.01
    up = (np.exp(2j * np.pi * np.outer(py + t, ky)) @ X @ np.exp(2j * np.pi * np.outer(kx, px + t))).real
    j, i = np.unravel_index(np.argmax(up), up.shape)
    return px + t[i], py + t[j]


def test_drift_as_written_with_damage_at_low_dose(regula, tmp_path):
    """At a realistic dose (1.5 e/Å² per frame) with radiation damage, every frame is the drift-free
    image moved by minus the written shift: each frame's cross-correlation with the written ideal
    image peaks there. A scale error of the drift (3% of 20-30 px is 0.6-0.9 px at the end) or a
    frame off by one would fail."""
    mp = blob_map(tmp_path / "map.mrc", n=64)
    out = simulate(regula, tmp_path / "d", mp, "--n", 1, "--size", 1024, "--frames", 16, "--dose_per_frame", 1.5,
                   "--local_max", 0, "--particles", 80, "--carbon", 1, "--drift_min", 20, "--drift_max", 30,
                   "--mode", 6, "--seed", 8)
    with mrcfile.open(out / "Movies" / "movie_001.mrc") as m:
        frames = m.data.astype(np.float64)
    with mrcfile.open(out / "Truth" / "movie_001_ideal.mrc") as m:
        ideal = m.data.astype(np.float64)
    g = star_loop(out / "Truth" / "movie_001_motion.star", "global_shift")
    sx, sy = np.array(g["rlnMicrographShiftX"], float), np.array(g["rlnMicrographShiftY"], float)
    measured = np.array([cc_shift(ideal, frames[f]) for f in range(16)])
    err = measured + np.stack([sx, sy], axis=1)
    # Counting noise on 1024 x 1024 pixels at 1.5 e/px: the worst frame is off by 0.06-0.07 px
    # (seeds 8-10; rms 0.02 px), so 0.2 px has room and still fails for a frame off by one.
    assert np.abs(err).max() < 0.2, err
    # No scale error: the measured drift against the written one has slope 1 within 0.5% (seeds
    # 8-10: 0.9988-0.9995, the edges' taper pulls a little towards zero).
    d = np.hypot(sx, sy)
    slope = np.sum(np.hypot(measured[:, 0], measured[:, 1]) * d) / np.sum(d * d)
    assert abs(slope - 1) < 0.005, slope


def test_local_motion_applied_as_written(regula, tmp_path):
    mp = blob_map(tmp_path / "map.mrc")
    out = simulate(regula, tmp_path / "l", mp, "--n", 1, "--size", 512, "--frames", 3, "--dose_per_frame", 200,
                   "--no_damage", "--local_max", 4, "--ice_rms", 0.1, "--particles", 30, "--carbon", 0,
                   "--drift_min", 3, "--drift_max", 6, "--mode", 2, "--seed", 5)
    with mrcfile.open(out / "Movies" / "movie_001.mrc") as m:
        frames = m.data.astype(np.float64)
    loc = star_loop(out / "Truth" / "movie_001_motion.star", "local_shift")
    fr = np.array(loc["rlnMicrographFrameNumber"], int)
    cx, cy = np.array(loc["rlnCoordinateX"], float), np.array(loc["rlnCoordinateY"], float)
    lx, ly = np.array(loc["rlnMicrographShiftX"], float), np.array(loc["rlnMicrographShiftY"], float)
    spread = 0
    # Quadrant patches of 128 px around grid points: the measured displacement of the last frame
    # equals minus the written total shift there (the field varies by < 0.3 px across a patch).
    for gx, gy in ((96, 96), (416, 96), (96, 416), (416, 416), (224, 224)):
        k = np.argmin(np.abs(cx - gx) + np.abs(cy - gy) + 1e6 * (fr != 3))
        x0, y0 = int(cx[k]) - 64, int(cy[k]) - 64
        a, b = frames[0, y0:y0 + 128, x0:x0 + 128], frames[2, y0:y0 + 128, x0:x0 + 128]
        dx, dy = phase_correlation_shift(a, b)
        assert abs(dx + lx[k]) < 0.25 and abs(dy + ly[k]) < 0.25, (gx, gy, dx, dy, lx[k], ly[k])
        spread = max(spread, np.hypot(lx[k] - lx[fr == 3].mean(), ly[k] - ly[fr == 3].mean()))
    assert spread > 1.0  # the field is not uniform


def test_ctf_of_the_micrograph_matches_the_truth(regula, tmp_path):
    """The Thon rings of the drift-free image follow numpy's CTF of the written defocus and angle."""
    mp = blob_map(tmp_path / "map.mrc")
    out = simulate(regula, tmp_path / "c", mp, "--n", 2, "--size", 1024, "--frames", 1, "--dose_per_frame", 40,
                   "--particles", 40, "--carbon", 0, "--ice_crystals", 0, "--aggregates", 0, "--astigmatism_max",
                   1500, "--defocus_min", 8000, "--defocus_max", 25000, "--seed", 7)
    t = star_loop(out / "truth_micrographs.star", "micrographs")
    for i in range(2):
        du, dv, ang = (float(t[c][i]) for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))
        with mrcfile.open(out / "Truth" / f"movie_{i + 1:03d}_ideal.mrc") as m:
            img = m.data.astype(np.float64)
        # 1D: the rotational average of the whole image's power, over its running mean, against
        # the rotational average of CTF^2 from 1/30 to 1/5 Å.
        p = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
        n = img.shape[0]

        def radial_corr(s):
            c2, k = ctf2(p.shape, 1.0, du * s, dv * s, ang)
            r = np.rint(k * n).astype(int)
            cnt = np.maximum(1, np.bincount(r.ravel()))
            pr, cr = np.bincount(r.ravel(), p.ravel()) / cnt, np.bincount(r.ravel(), c2.ravel()) / cnt
            sel = slice(n // 30, n // 5)
            return np.corrcoef(pr[sel] / np.convolve(pr, np.ones(31) / 31, "same")[sel], cr[sel])[0, 1]

        assert radial_corr(1.0) > 0.8
        assert radial_corr(1.05) < radial_corr(1.0) - 0.2 and radial_corr(0.95) < radial_corr(1.0) - 0.2
        # 2D: the periodogram averaged over 256 px tiles (half overlap), over its rotational
        # average, against CTF^2 from 1/30 to 1/4 Å: the written parameters fit better than the
        # defocus 2% away or the angle 45 degrees away (the per-pixel correlation is limited by the
        # periodogram's own scatter, about 0.5 here).
        b = 256
        q = np.zeros((b, b))
        for y0 in range(0, n - b + 1, b // 2):
            for x0 in range(0, n - b + 1, b // 2):
                tile = img[y0:y0 + b, x0:x0 + b]
                q += np.abs(np.fft.fftshift(np.fft.fft2(tile - tile.mean()))) ** 2
        c2, k = ctf2(q.shape, 1.0, du, dv, ang)
        r = np.rint(k * b).astype(int)
        avg = (np.bincount(r.ravel(), q.ravel()) / np.maximum(1, np.bincount(r.ravel())))[r]
        q = np.divide(q, avg, out=np.zeros_like(q), where=avg > 0)  # the DC ring (mean removed) is 0
        band = (k > 1 / 30) & (k < 1 / 4)

        def corr(c):
            return np.corrcoef(q[band], c[band])[0, 1]

        c0 = corr(c2)
        assert c0 > 0.35, c0
        for du2, dv2, a2 in ((du * 1.02, dv * 1.02, ang), (du * 0.98, dv * 0.98, ang), (du, dv, ang + 45)):
            assert corr(ctf2(q.shape, 1.0, du2, dv2, a2)[0]) < c0 - 0.05


def test_movies_star_as_relion_import(regula, tmp_path):
    mp = blob_map(tmp_path / "map.mrc")
    simulate(regula, tmp_path / "s", mp, "--n", 2, "--size", 128, "--frames", 3, "--format", "tiff", "--no_ideal",
             "--particles", 3, "--angpix", 1.0)
    o = star_loop(tmp_path / "s" / "movies.star", "optics")
    assert list(o) == ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
                       "rlnSphericalAberration", "rlnAmplitudeContrast"]
    m = star_loop(tmp_path / "s" / "movies.star", "movies")
    assert list(m) == ["rlnMicrographMovieName", "rlnOpticsGroup"]
    assert m["rlnMicrographMovieName"][0].endswith("Movies/movie_001.tif")
    if shutil.which("relion_import"):
        # RELION's Import of the same files writes the same columns.
        (tmp_path / "Import" / "job001").mkdir(parents=True)
        r = run(["relion_import", "--do_movies", "--optics_group_name", "opticsGroup1", "--angpix", 1.0, "--kV", 300,
                 "--Cs", 2.7, "--Q0", 0.1, "--i", "s/Movies/*.tif", "--odir",
                 "Import/job001/", "--ofile", "movies.star"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        ri = star_loop(tmp_path / "Import" / "job001" / "movies.star", "optics")
        assert list(ri) == list(o)
        assert [float(v) for v in ri["rlnMicrographOriginalPixelSize"]] == [float(v) for v in o["rlnMicrographOriginalPixelSize"]]


def test_tiff_frames_are_the_mrc_frames_flipped(regula, tmp_path):
    """The same seed gives the same counts in any format; TIFF rows run from the top (RELION's and
    IMOD's reading flips them), so PIL's array is the MRC frame upside down."""
    Image = pytest.importorskip("PIL.Image")
    mp = blob_map(tmp_path / "map.mrc")
    common = ["--n", 1, "--size", 96, "--size_y", 64, "--frames", 3, "--particles", 2, "--no_ideal", "--seed", 4]
    simulate(regula, tmp_path / "m", mp, *common, "--mode", 6)
    simulate(regula, tmp_path / "t", mp, *common, "--format", "tiff", "--tiff_bits", 8)
    with mrcfile.open(tmp_path / "m" / "Movies" / "movie_001.mrc") as m:
        ref = m.data.astype(np.float64)
    im = Image.open(tmp_path / "t" / "Movies" / "movie_001.tif")
    assert im.n_frames == 3
    for f in range(3):
        im.seek(f)
        a = np.asarray(im).astype(np.float64)
        assert a.shape == (64, 96)
        np.testing.assert_array_equal(np.flipud(a), ref[f])

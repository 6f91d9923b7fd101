#!/usr/bin/python3
"""Accuracy of motion correction on simulated movies (regula simulate_movies), for one or more
programs' outputs side by side (the commands are in docs/benchmarks.md, section "Movies"):

  * the RMS error of the per-frame global shifts (rlnMicrographShiftX/Y of each movie's STAR file)
    against the truth (SIM/Truth/movie_NNN_motion.star), per movie and over all movies;
  * where the truth has local motion, the RMS error of the whole shift (global plus local) at the truth's 8 x 8 grid
    of points in every frame (SIM/Truth/movie_NNN_motion.star, data_local_shift): the program's local model
    (rlnMotionModelVersion 1, RELION's third-order polynomial) added to its global shifts, or the global
    shifts alone when it wrote none;
  * the FRC of each corrected (dose-weighted) micrograph against the drift-free, noise-free truth
    (SIM/Truth/movie_NNN_ideal.mrc), in shells of 4 Fourier pixels, averaged over the movies, and the
    paired difference between the programs per shell with its standard error over the movies.

usage: motioncorr_frc.py SIM NAME=DIR [NAME=DIR ...] [--tsv OUT.tsv]
  DIR is the --o of a run on SIM/movies.star (the corrected micrograph of SIM/Movies/movie_NNN.mrc is
  DIR/<SIM>/Movies/movie_NNN.mrc, as RELION names it).
"""
import glob
import os
import sys

import gemmi
import mrcfile
import numpy as np


def loop(path, block):
    doc = gemmi.cif.read_file(path)
    b = doc.find_block(block)
    for item in b:
        if item.loop is not None:
            t = item.loop
            return {tag[1:]: [t.val(i, j) for i in range(t.length())] for j, tag in enumerate(t.tags)}
    raise ValueError(f"{path}: no loop in data_{block}")


def shifts(path):
    g = loop(path, "global_shift")
    return np.array(g["rlnMicrographShiftX"], float), np.array(g["rlnMicrographShiftY"], float)


def local_shifts(path, frames, px, py, width, height):
    """Global plus local shift of a program's per-movie STAR file at points (px, py) (pixels) of frames
    (1-based): RELION's ThirdOrderPolynomialModel, x = X / width - 0.5, y = Y / height - 0.5, z = frame - 1,
    18 coefficients per axis: (1, x, x^2, y, y^2, xy) times (z, z^2, z^3). Without a model (version 0)
    the global shift is the estimate everywhere."""
    gx, gy = shifts(path)
    doc = gemmi.cif.read_file(path)
    if doc.find_block("general").find_value("_rlnMotionModelVersion") != "1":
        return gx[frames - 1], gy[frames - 1]
    c = np.array(loop(path, "local_motion_model")["rlnMotionModelCoeff"], float)
    z = frames - 1.0
    x, y = px / width - 0.5, py / height - 0.5
    terms = [np.ones_like(x), x, x * x, y, y * y, x * y]
    sx, sy = gx[frames - 1].copy(), gy[frames - 1].copy()
    for t, term in enumerate(terms):
        for p, zp in enumerate((z, z * z, z * z * z)):
            sx += c[3 * t + p] * zp * term
            sy += c[18 + 3 * t + p] * zp * term
    return sx, sy


def taper(n, m=64):
    t = np.ones(n)
    r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    t[:m], t[-m:] = r, r[::-1]
    return t


def frc(a, b, width=4):
    """FRC of two images in shells of `width` Fourier pixels (edges tapered over 64 px)."""
    ny, nx = a.shape
    w = taper(ny)[:, None] * taper(nx)[None, :]
    A = np.fft.rfft2((a - a.mean()) * w)
    B = np.fft.rfft2((b - b.mean()) * w)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    r = np.sqrt(kx ** 2 + ky ** 2) * min(nx, ny)
    shell = (r / width).astype(int).ravel()
    n = min(nx, ny) // 2 // width
    # Columns 1 .. nx/2 - 1 stand for two coefficients (Hermitian pairs).
    m = np.full(A.shape, 2.0)
    m[:, 0] = 1
    m[:, -1] = 1
    m = m.ravel()
    num = np.bincount(shell, (m * (A * np.conj(B)).real.ravel()), minlength=n + 2)[:n]
    da = np.bincount(shell, (m * np.abs(A).ravel() ** 2), minlength=n + 2)[:n]
    db = np.bincount(shell, (m * np.abs(B).ravel() ** 2), minlength=n + 2)[:n]
    return num / np.sqrt(da * db), (np.arange(n) + 0.5) * width / min(nx, ny)


def main(argv):
    tsv = None
    if "--tsv" in argv:
        k = argv.index("--tsv")
        tsv = argv[k + 1]
        argv = argv[:k] + argv[k + 2:]
    if len(argv) < 2:
        sys.exit(__doc__)
    sim = argv[0].rstrip("/")
    progs = [a.split("=", 1) for a in argv[1:]]
    movies = sorted(glob.glob(os.path.join(sim, "Movies", "movie_*.mrc")))
    rel = os.path.relpath(sim)
    rms = {p: [] for p, _ in progs}
    local = {p: [] for p, _ in progs}
    curves = {p: [] for p, _ in progs}
    freq = None
    for mv in movies:
        stem = os.path.splitext(os.path.basename(mv))[0]
        tx, ty = shifts(os.path.join(sim, "Truth", stem + "_motion.star"))
        ideal = mrcfile.read(os.path.join(sim, "Truth", stem + "_ideal.mrc")).astype(np.float64)
        row = [stem]
        for name, d in progs:
            root = os.path.join(d, rel, "Movies", stem)
            sx, sy = shifts(root + ".star")
            e = np.sqrt(np.mean((sx - tx) ** 2 + (sy - ty) ** 2))
            rms[name].append(e)
            truth_local = loop(os.path.join(sim, "Truth", stem + "_motion.star"), "local_shift")
            f = np.array(truth_local["rlnMicrographFrameNumber"], int)
            lx, ly = (np.array(truth_local[c], float) for c in ("rlnCoordinateX", "rlnCoordinateY"))
            ltx, lty = (np.array(truth_local[c], float) for c in ("rlnMicrographShiftX", "rlnMicrographShiftY"))
            if np.any(ltx != tx[f - 1]) or np.any(lty != ty[f - 1]):  # the truth has local motion
                with mrcfile.open(mv, header_only=True) as m:
                    width, height = int(m.header.nx), int(m.header.ny)
                est = local_shifts(root + ".star", f, lx, ly, width, height)
                local[name].append(np.sqrt(np.mean((est[0] - ltx) ** 2 + (est[1] - lty) ** 2)))
            row.append(f"{name} {e:.3f}" + (f" whole {local[name][-1]:.3f}" if local[name] else ""))
            img = mrcfile.read(root + ".mrc").astype(np.float64)
            c, freq = frc(img, ideal)
            curves[name].append(c)
        print("  ".join(row), flush=True)
    print("RMS error of the global shifts over all movies (px): " +
          ", ".join(f"{n} {np.sqrt(np.mean(np.square(v))):.3f} (per movie {min(v):.3f}-{max(v):.3f})"
                    for n, v in rms.items()))
    if any(local.values()):
        print("RMS error of the whole shift (global + local model) at 8 x 8 points per frame (px): " +
              ", ".join(f"{n} {np.sqrt(np.mean(np.square(v))):.3f} over {len(v)} movies "
                        f"(per movie {min(v):.3f}-{max(v):.3f})" for n, v in local.items() if v))
    names = [p for p, _ in progs]
    mean = {n: np.mean(curves[n], axis=0) for n in names}
    print("FRC against the drift-free truth (mean over movies), by frequency (1/px):")
    for k in range(0, len(freq), max(1, len(freq) // 16)):
        print(f"  {freq[k]:.3f}  " + "  ".join(f"{n} {mean[n][k]:.4f}" for n in names))
    if len(names) >= 2:
        a, b = names[0], names[1]
        d = np.array(curves[a]) - np.array(curves[b])
        md = d.mean(axis=0)
        se = d.std(axis=0, ddof=1) / np.sqrt(d.shape[0]) if d.shape[0] > 1 else np.zeros_like(md)
        worst = int(np.argmin(md))
        print(f"{a} - {b}: smallest mean difference {md[worst]:+.5f} (standard error {se[worst]:.5f}) at "
              f"{freq[worst]:.3f}/px; shells where {a} is lower by more than 2 standard errors: "
              f"{int(np.sum(md < -2 * se))} of {len(md)}")
    if tsv:
        with open(tsv, "w") as f:
            f.write("frequency\t" + "\t".join(names) + "\n")
            for k in range(len(freq)):
                f.write(f"{freq[k]:.5f}\t" + "\t".join(f"{mean[n][k]:.5f}" for n in names) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

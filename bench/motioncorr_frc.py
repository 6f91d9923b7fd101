#!/usr/bin/python3
"""Accuracy of motion correction on simulated movies (regula simulate_movies), for one or more
programs' outputs side by side (the commands are in docs/benchmarks.md, section "Movies"):

  * the RMS error of the per-frame global shifts (rlnMicrographShiftX/Y of each movie's STAR file)
    against the truth (SIM/Truth/movie_NNN_motion.star), per movie and over all movies;
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
            img = mrcfile.read(root + ".mrc").astype(np.float64)
            c, freq = frc(img, ideal)
            curves[name].append(c)
            row.append(f"{name} {e:.3f}")
        print("  ".join(row), flush=True)
    print("RMS error of the global shifts over all movies (px): " +
          ", ".join(f"{n} {np.sqrt(np.mean(np.square(v))):.3f} (per movie {min(v):.3f}-{max(v):.3f})"
                    for n, v in rms.items()))
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

#!/usr/bin/python3
"""A per-image statistic that finds carbon edges and contamination among particles (an analysis for
`select --auto`, not used by Regula yet; docs/class2d.md, "Automatic class selection").

    bench/junk_step_statistic.py SET_DIR [SET_DIR ...]

SET_DIR: the output of `regula simulate --junk_fraction ...` (truth.star with rlnRegulaTruthKind: 0
particle, 1 empty ice, 2 carbon edge, 3 aggregate, 4 contamination; particles.mrcs). For each image: inside
the box's inscribed disc, its mean removed, the image is projected along 24 directions (7.5 degrees apart;
scipy's bilinear rotation), and each projection profile gets the two-means step fit of largest
z = |mean left - mean right| / (sd sqrt(1 / n_left + 1 / n_right)), sd the image's own standard deviation
(n: the disc's pixels on either side). The statistic is the largest z over directions: integrating along
a straight edge gives it the signal-to-noise ratio a single pixel lacks. Prints per kind the 5th, 50th
and 95th percentiles, and the share of each kind above median + s robust sd (1.4826 MAD) over the whole
set for s = 2, 2.5, 3.
"""
import sys

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage

KINDS = {0: "particles", 1: "empty ice", 2: "carbon edges", 3: "aggregates", 4: "contamination", 5: "wrong"}


def kinds(truth):
    block = gemmi.cif.read(str(truth)).find_block("particles")
    return np.array([int(v) for v in block.find_loop("_rlnRegulaTruthKind")])


def step_statistic(img, disc, angles):
    im = np.where(disc, img - img[disc].mean(), 0.0)
    sd = im[disc].std()
    best = 0.0
    for a in angles:
        r = ndimage.rotate(im, a, reshape=False, order=1)
        m = ndimage.rotate(disc.astype(float), a, reshape=False, order=1)
        p, c = r.sum(axis=0), m.sum(axis=0)
        keep = c > 4
        p, c = p[keep], c[keep]
        cp, cc = np.cumsum(p), np.cumsum(c)
        i = np.arange(3, len(p) - 3)
        nl, nr = cc[i], cc[-1] - cc[i]
        z = np.abs(cp[i] / nl - (cp[-1] - cp[i]) / nr) / (sd * np.sqrt(1 / nl + 1 / nr))
        best = max(best, float(z.max()))
    return best


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    angles = np.arange(0, 180, 7.5)
    for d in sys.argv[1:]:
        kind = kinds(f"{d}/truth.star")
        imgs = mrcfile.read(f"{d}/particles.mrcs").astype(np.float64)
        n = imgs.shape[-1]
        yy, xx = np.indices((n, n)) - n / 2
        disc = np.hypot(xx, yy) < n / 2 - 1
        s = np.array([step_statistic(im, disc, angles) for im in imgs])
        print(d)
        for k in np.unique(kind):
            q = np.percentile(s[kind == k], [5, 50, 95])
            print(f"  {KINDS.get(int(k), k):14s} n {np.sum(kind == k):5d}  5/50/95%: {q[0]:.2f} {q[1]:.2f} {q[2]:.2f}")
        med = np.median(s)
        mad = 1.4826 * np.median(np.abs(s - med))
        for sdv in (2.0, 2.5, 3.0):
            t = med + sdv * mad
            shares = ", ".join(f"{KINDS.get(int(k), k)} {np.mean(s[kind == k] > t):.3f}" for k in np.unique(kind))
            print(f"  above median + {sdv} sd ({t:.2f}): {shares}")


if __name__ == "__main__":
    main()

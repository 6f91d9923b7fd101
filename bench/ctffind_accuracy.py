#!/usr/bin/python3
"""Accuracy of CTF estimation against the simulator's truth (regula simulate_movies writes
SIM/truth_micrographs.star): per micrograph the relative error of the mean defocus (U + V) / 2 and, where
the true astigmatism U - V exceeds 300 Å, the error of the astigmatism angle (modulo 180°); then the
median and 95th percentile of the defocus errors and the largest angle error, the figures of issue 16's
acceptance (median <= 0.5%, 95th percentile <= 2%, angle within 5°).

usage: ctffind_accuracy.py SIM RESULT.star [RESULT.star ...]
  RESULT.star: micrographs_ctf.star of a ctffind run on micrographs (or spectra) of SIM's movies; rows are
  matched to the truth by the movie's file name (movie_NNN).
"""
import os
import sys

import numpy as np

from motioncorr_frc import loop


def stem(name):
    return os.path.splitext(os.path.basename(name))[0]


def errors(truth, result):
    rows = {stem(n): j for j, n in enumerate(result["rlnMicrographName"])}
    rel, ang, names = [], [], []
    for i, movie in enumerate(truth["rlnMicrographMovieName"]):
        j = rows.get(stem(movie))
        if j is None:
            continue
        tu, tv, ta = (float(truth[c][i]) for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))
        eu, ev, ea = (float(result[c][j]) for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))
        rel.append(abs((eu + ev) / 2 - (tu + tv) / 2) / ((tu + tv) / 2))
        names.append(stem(movie))
        if tu - tv > 300:
            d = (ea - ta) % 180
            ang.append(min(d, 180 - d))
    return np.array(rel), np.array(ang), names


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    truth = loop(os.path.join(argv[0], "truth_micrographs.star"), "micrographs")
    for path in argv[1:]:
        rel, ang, names = errors(truth, loop(path, "micrographs"))
        worst = names[int(np.argmax(rel))]
        print(f"{path}: {len(rel)} of {len(truth['rlnMicrographMovieName'])} micrographs; mean defocus error "
              f"median {100 * np.median(rel):.3f}%, 95th percentile {100 * np.percentile(rel, 95):.3f}%, "
              f"largest {100 * rel.max():.3f}% ({worst}); astigmatism angle error (U - V > 300 Å, "
              f"{len(ang)} micrographs): median {np.median(ang) if len(ang) else 0:.2f}°, "
              f"largest {ang.max() if len(ang) else 0:.2f}°")


if __name__ == "__main__":
    main(sys.argv[1:])

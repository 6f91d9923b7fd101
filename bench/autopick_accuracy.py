"""Scores bench/autopick_vs_relion.sh's picks against the truth: per method (LoG, templates) and program (RELION
3.1.3, Regula), precision, recall and F1 at RELION's default threshold and the best F1 over figure-of-merit cuts of
the low-threshold run (test_autopick.py's scoring: a pick matches a true particle within 0.2 of its diameter, one
to one, closest pairs first), and how many of RELION's default picks Regula has within 1 and 5 px.

    /usr/bin/python3 bench/autopick_accuracy.py DIR      (DIR: the output folder of autopick_vs_relion.sh)
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
import picking_data as pdd  # noqa: E402
import test_autopick as ta  # noqa: E402
from movie_data import star_loop  # noqa: E402


def main(d):
    os.chdir(d)
    names = star_loop("mics.star", "micrographs")["rlnMicrographName"]
    truth = {os.path.relpath(k, os.getcwd()): v for k, v in pdd.truth("sim").items()}
    ntrue = sum(len(truth.get(n, ([], []))[0]) for n in names)
    print(f"{len(names)} micrographs, {ntrue} true particles")
    for method in ("log", "tpl"):
        title = "LoG" if method == "log" else "templates"
        rows = {}
        for prog in ("R", "G"):
            default, low = ta.pick_reader(f"{prog}_{method}"), ta.pick_reader(f"{prog}_{method}_low")
            npick, nt, nmatch = ta.scored(default, names, truth)
            rows[prog] = default
            best = ta.best_f1(low, names, truth)
            who = "RELION 3.1.3" if prog == "R" else "Regula"
            print(f"{title:9s} {who:12s} default threshold: {npick} picks, {nmatch} matched: precision "
                  f"{nmatch / max(npick, 1):.3f}, recall {nmatch / max(nt, 1):.3f}, F1 {ta.f1(npick, nt, nmatch):.3f}; "
                  f"best F1 over thresholds {best:.3f}")
        for radius in (1.0, 5.0):
            nr = near = 0
            for name in names:
                (rxy, _), (gxy, _) = rows["R"](name), rows["G"](name)
                nr += len(rxy)
                if len(rxy) and len(gxy):
                    near += int((np.sqrt(((rxy[:, None] - gxy[None]) ** 2).sum(-1)).min(1) <= radius).sum())
            print(f"{title:9s} RELION's default picks with one of Regula's within {radius:.0f} px: {near} of {nr}")


if __name__ == "__main__":
    main(sys.argv[1])

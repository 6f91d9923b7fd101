#!/usr/bin/env python3
"""class2d on two optics groups whose magnifications differ (docs/class2d.md, "Anisotropic
magnification"). One view (random psi) of the pseudo-atomic map of tests/python/test_optics_engines.py,
simulated twice with the same seed (so the same poses and noise): without magnification, and with
--mag M. The first half of the particles is taken from the first set (optics group 1, identity), the
second half from the second (group 2, matrix M); class2d K 1, 8 iterations, --ctf --no_norm, on that
file and on a copy with group 2's matrix said to be the identity. Prints the reported resolution and the
median psi error per group (psi minus the truth's, less the circular mean) for both.

Usage: /usr/bin/python3 bench/class2d_mixed_magnification.py OUT --seed S [--mag m00,m01,m10,m11]
       [--snr 2] [--box 96] [--defocus 1000,3000] [--n 400]
"""
import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
import test_optics_engines as T  # noqa: E402
from conftest import run_regula  # noqa: E402


def loop_rows(lines, block):
    """Header labels and data rows of the loop of data_<block> in a Regula-written STAR file."""
    start = lines.index(f"data_{block}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("data_")), len(lines))
    labels = [l.split()[0] for l in lines[start:end] if l.startswith("_")]
    rows = [l.split() for l in lines[start:end] if l.strip() and not l.startswith(("_", "#", "data_", "loop_"))]
    return labels, rows


def merge(d, name, mag2, which):
    """Group 1 from set a (identity), group 2 from set b (matrix mag2), half the particles each."""
    a = (d / "a" / which).read_text().splitlines()
    b = (d / "b" / which).read_text().splitlines()
    olab, orows = loop_rows(a, "optics")
    keep = [k for k, l in enumerate(olab) if not l.startswith("_rlnMagMat")]
    olab = [olab[k] for k in keep] + ["_rlnMagMat00", "_rlnMagMat01", "_rlnMagMat10", "_rlnMagMat11"]
    r1 = [orows[0][k] for k in keep] + ["1", "0", "0", "1"]
    r2 = [orows[0][k] for k in keep] + [str(v) for v in mag2]
    r2[olab.index("_rlnOpticsGroup")], r2[olab.index("_rlnOpticsGroupName")] = "2", "opticsGroup2"
    plab, ra = loop_rows(a, "particles")
    _, rb = loop_rows(b, "particles")
    g = plab.index("_rlnOpticsGroup")
    rows = []
    for k in range(len(ra)):
        cells = list(ra[k] if k < len(ra) // 2 else rb[k])
        cells[g] = "1" if k < len(ra) // 2 else "2"
        rows.append(" ".join(cells))
    text = ["# version 30001", "", "data_optics", "", "loop_", *olab, " ".join(r1), " ".join(r2), "", "",
            "# version 30001", "", "data_particles", "", "loop_", *plab, *rows]
    (d / name).write_text("\n".join(text) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--mag", default="1.05,0.02,-0.01,0.96")
    ap.add_argument("--snr", type=float, default=2)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--defocus", default="1000,3000")
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    d = pathlib.Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    mag = [float(v) for v in a.mag.split(",")]
    lo, hi = a.defocus.split(",")
    T.atoms_map(d / "atoms.mrc")
    sim = ["--n", a.n, "--snr", a.snr, "--seed", a.seed, "--j", 2, "--views", 1, "--box", a.box,
           "--defocus_min", lo, "--defocus_max", hi]
    for name, opts in (("a", []), ("b", ["--mag", *mag])):
        run_regula("simulate", "--i", d / "atoms.mrc", "--o", d / name, *sim, *opts)
    merge(d, "mixed.star", mag, "particles.star")
    merge(d, "hidden.star", [1, 0, 0, 1], "particles.star")
    merge(d, "truth.star", mag, "truth.star")
    for tag in ("mixed", "hidden"):
        run_regula("class2d", "--i", d / f"{tag}.star", "--o", d / f"c2_{tag}/run", "--K", 1, "--iter", 8, "--ctf",
                   "--no_norm", "--j", 2)
        res = T.model_general(d / f"c2_{tag}/run_it008_model.star")["rlnCurrentResolution"]
        dev, grp = T.psi_deviation(d / "truth.star", d / f"c2_{tag}/run_it008_data.star")
        med = [float(np.median(np.abs(dev[grp == k]))) for k in (1, 2)]
        print(f"seed {a.seed} {tag}: resolution {res:.3f} Å, median psi error group 1 {med[0]:.3f}°, "
              f"group 2 {med[1]:.3f}°")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Median pose errors per optics group and the FSC of a map with the truth.

    bench/pose_errors.py TRUTH.star DATA.star [MAP.mrc TRUTH_MAP.mrc]

TRUTH.star: `regula simulate` truth; DATA.star: a refinement's particles (matched by rlnImageName).
Prints per optics group the median angle (degrees) between the true and estimated orientations and
the median origin error (Å); with the maps, the FSC with the truth averaged over shells 4-14 and
9-14 and the first shells below 0.5 and 0.143 (in Å; bench/evaluate_refine.py prints the last
shell above).
"""
import sys

import gemmi
import mrcfile
import numpy as np

from evaluate_refine import euler_matrix as euler, fsc  # the same bench's RELION Euler matrix and FSC


def poses(path):
    b = gemmi.cif.read(str(path)).find_block("particles")
    t = b.find("_rln", ["ImageName", "AngleRot", "AngleTilt", "AnglePsi", "OriginXAngst", "OriginYAngst",
                        "OpticsGroup"])
    return {r[0]: np.array([float(r[i]) for i in range(1, 7)]) for r in t}


def main():
    truth, est = poses(sys.argv[1]), poses(sys.argv[2])
    for g in sorted({int(v[5]) for v in truth.values()}):
        names = [k for k, v in truth.items() if int(v[5]) == g]
        ang = [np.degrees(np.arccos(np.clip((np.trace(euler(*truth[k][:3]).T @ euler(*est[k][:3])) - 1) / 2, -1, 1)))
               for k in names]
        org = [np.hypot(*(truth[k][3:5] - est[k][3:5])) for k in names]
        print(f"  optics group {g}: {len(names)} particles, median {np.median(ang):.2f} deg, {np.median(org):.2f} A")
    if len(sys.argv) > 4:
        with mrcfile.open(sys.argv[4]) as m:
            apix = float(m.voxel_size.x)
            t = m.data.copy()
        v = fsc(mrcfile.read(sys.argv[3]), t)
        n = t.shape[0]
        cross = lambda th: next((n * apix / s for s in range(1, len(v)) if v[s] < th), 2 * apix)
        print(f"  FSC with the truth: mean 4-14 {v[4:15].mean():.3f}, 9-14 {v[9:15].mean():.3f}; "
              f"0.5 at {cross(0.5):.2f} A, 0.143 at {cross(0.143):.2f} A")


if __name__ == "__main__":
    main()

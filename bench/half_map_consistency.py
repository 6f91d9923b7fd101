"""Does a refinement's gold-standard FSC say what its half maps share with the truth? (numpy +
mrcfile, independent of Regula.)

Usage: half_map_consistency.py HALF1 HALF2 TRUE_MAP [first_shell last_shell]

If each half map is h = S + N_h with errors N_1, N_2 independent of each other and of the truth S,
then FSC(h1, h2) = FSC(h1, S) FSC(h2, S) at every shell. The excess FSC(h1, h2) - FSC(h1, S) FSC(h2, S)
is what the two halves have in common that the truth does not have (an error both made alike: a shared
reference bias, a shared model error); a positive excess inflates the gold-standard resolution.
Prints per shell the gold-standard FSC, the product, the excess, and their means over the shells given
(default: 4 to n/2 - 4)."""
import sys

import mrcfile
import numpy as np

from evaluate_refine import fsc


def main():
    h1, h2, truth = (np.asarray(mrcfile.read(p), dtype=np.float64) for p in sys.argv[1:4])
    n = h1.shape[0]
    lo, hi = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (4, n // 2 - 4)
    gold, a, b = fsc(h1, h2), fsc(h1, truth), fsc(h2, truth)
    excess = gold - a * b
    print("shell  gold   h1.truth h2.truth product excess")
    for s in range(1, n // 2 + 1):
        print(f"{s:5d} {gold[s]:6.3f} {a[s]:8.3f} {b[s]:8.3f} {a[s] * b[s]:7.3f} {excess[s]:6.3f}")
    print(f"shells {lo}-{hi}: mean gold {gold[lo:hi + 1].mean():.3f}, product {(a * b)[lo:hi + 1].mean():.3f}, "
          f"excess {excess[lo:hi + 1].mean():.3f}")


if __name__ == "__main__":
    main()

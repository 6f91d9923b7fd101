#!/usr/bin/python3
"""View recovery of a 2D classification against simulated truth.

usage: view_recovery.py TRUTH.star DATA.star [--label NAME]

TRUTH.star: `regula simulate --views V` output (rlnClassNumber = view); DATA.star: the
classification's particles (rlnClassNumber = class). Particles are matched by rlnImageName.
Prints the fraction of particles in a class whose majority view is their own, the number of
views that are the majority of some class, and the number of non-empty classes.
"""
import sys
from collections import Counter, defaultdict

import gemmi


def table(path):
    doc = gemmi.cif.read(path)
    for block in doc:
        t = block.find("_rln", ["ImageName", "ClassNumber"])
        if len(t):
            return {row[0]: int(float(row[1])) for row in t}
    sys.exit(f"{path}: no particles block with _rlnImageName and _rlnClassNumber")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    label = sys.argv[sys.argv.index("--label") + 1] if "--label" in sys.argv else "classification"
    if "--label" in sys.argv:
        args.remove(label)
    if len(args) != 2:
        sys.exit(__doc__)
    truth, data = table(args[0]), table(args[1])
    common = [k for k in data if k in truth]
    if not common:
        sys.exit("no particle of DATA.star is in TRUTH.star (rlnImageName differs)")
    members = defaultdict(Counter)
    for k in common:
        members[data[k]][truth[k]] += 1
    majority = {c: m.most_common(1)[0][0] for c, m in members.items()}
    good = sum(1 for k in common if majority[data[k]] == truth[k])
    views = set(truth[k] for k in common)
    covered = set(majority.values())
    print(f"{label}: {len(common)} particles, {len(members)} non-empty classes, "
          f"view recovery {good / len(common):.4f}, views that are a class majority {len(covered & views)}/{len(views)}")
    for c in sorted(members):
        m = members[c]
        print(f"  class {c:3d}: {sum(m.values()):5d} particles, majority view {majority[c]} "
              f"({m[majority[c]] / sum(m.values()):.2f})")


if __name__ == "__main__":
    main()

"""Accuracy of a focused classification of subtracted particles against the simulation truth.

Usage: focused_accuracy.py TRUTH_STAR DATA_STAR
TRUTH_STAR: `regula simulate`'s truth.star (rlnClassNumber: 1 with the subunit, 2 without);
DATA_STAR: the classification's run_itNNN_data.star of subtracted particles, whose
rlnImageOriginalName names the simulated image. Prints the fraction in their true class under the
better of the two labellings, and the class sizes."""
import sys

import gemmi


def table(path, cols):
    b = gemmi.cif.read(path).find_block("particles")
    return list(b.find("_rln", cols))


def key(name):
    i, stack = name.split("@")
    return f"{int(i)}@{stack.split('/')[-1]}"


truth = {key(r[0]): int(r[1]) for r in table(sys.argv[1], ["ImageName", "ClassNumber"])}
data = {key(r[0]): int(r[1]) for r in table(sys.argv[2], ["ImageOriginalName", "ClassNumber"])}
names = [k for k in data if k in truth]
if len(names) != len(data):
    sys.exit(f"{sys.argv[2]}: {len(data) - len(names)} particles not in {sys.argv[1]}")
same = sum(1 for k in names if data[k] == truth[k])
best = max(same, len(names) - same)
sizes = {c: sum(1 for k in names if data[k] == c) for c in sorted(set(data.values()))}
print(f"{best / len(names):.4f} in their true class ({best}/{len(names)}); class sizes "
      + ", ".join(f"{c}: {v}" for c, v in sizes.items()))

"""Accuracy of a 3D classification against the simulation truth (gemmi only).

Usage: class3d_accuracy.py TRUTH_STAR DATA_STAR
Prints the fraction of particles assigned to their true class (rlnClassNumber of truth.star: the
map each particle was simulated from) under the best one-to-one labelling of the classes, and the
class sizes."""
import itertools
import sys

import gemmi


def classes(path):
    b = gemmi.cif.read(path).find_block("particles")
    t = b.find("_rln", ["ImageName", "ClassNumber"])
    return {r[0].split("@")[0].lstrip("0") + "@" + r[0].split("@")[1].split("/")[-1]: int(r[1]) for r in t}


truth, data = classes(sys.argv[1]), classes(sys.argv[2])
names = [n for n in truth if n in data]
tk = sorted(set(truth[n] for n in names))
dk = sorted(set(data[n] for n in names) | set(tk))
best = 0
for perm in itertools.permutations(dk, len(tk)):
    m = dict(zip(tk, perm))
    best = max(best, sum(1 for n in names if data[n] == m[truth[n]]))
sizes = {k: sum(1 for n in names if data[n] == k) for k in dk}
print(f"particles compared: {len(names)}")
print(f"assigned to their true class: {best / len(names):.4f} ({best}/{len(names)})")
print("class sizes: " + ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items())))

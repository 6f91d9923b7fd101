#!/usr/bin/python3
"""How well a 2D classification puts simulated junk into classes of its own.

    bench/junk_selection.py TRUTH.star DATA.star [MODEL.star] [--label NAME]

TRUTH.star: `regula simulate --junk_fraction` output (rlnRegulaTruthKind: 0 particle, 1 empty ice,
2 carbon edge, 3 aggregate, 4 contamination, 5 wrong particle), in the same order as DATA.star, a
class2d data.star of Regula or RELION (rlnClassNumber). Prints, per kind of junk, the share that
ends in classes made of at least 50% junk (what a perfect class-level selection would remove) and
the share of true particles lost with them. With MODEL.star (the same iteration's model.star) also
a simple automatic score: classes whose rlnEstimatedResolution is worse than 1.5 times the median
over the classes holding particles are rejected; the same shares for that selection. With
--selected SEL.star (the particles `regula select --auto` kept), the shares it rejected.
"""
import argparse
import sys

import gemmi
import numpy as np

KINDS = {1: "empty ice", 2: "carbon edges", 3: "aggregates", 4: "contamination", 5: "wrong particles"}


def column(path, block, label):
    doc = gemmi.cif.read(str(path))
    b = doc.find_block(block) if block else doc.sole_block()
    if b is None:
        sys.exit(f"{path}: no data_{block} block")
    col = b.find_loop(label)
    if col is None or len(col) == 0:
        sys.exit(f"{path}: no {label} in data_{block}")
    return list(col)


def shares(kind, cls, rejected):
    out = {}
    gone = np.isin(cls, sorted(rejected))
    for k, name in KINDS.items():
        m = kind == k
        if m.any():
            out[name] = float(gone[m].mean())
    out["particles lost"] = float(gone[kind == 0].mean())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("truth")
    ap.add_argument("data")
    ap.add_argument("model", nargs="?")
    ap.add_argument("--label", default="")
    ap.add_argument("--selected", help="a STAR file of the kept particles (regula select --auto): its shares too")
    a = ap.parse_args()
    kind = np.array([int(v) for v in column(a.truth, "particles", "_rlnRegulaTruthKind")])
    cls = np.array([int(v) for v in column(a.data, "particles", "_rlnClassNumber")])
    if len(kind) != len(cls):
        sys.exit(f"{a.truth} has {len(kind)} particles, {a.data} {len(cls)}")
    junk_major = {c for c in set(cls.tolist()) if (kind[cls == c] != 0).mean() >= 0.5}
    res = {"junk-majority classes": shares(kind, cls, junk_major)}
    if a.model:
        resol = np.array([float(v) for v in column(a.model, "model_classes", "_rlnEstimatedResolution")])
        used = sorted(set(cls.tolist()))
        med = float(np.median(resol[[c - 1 for c in used]]))
        rejected = {c for c in used if resol[c - 1] > 1.5 * med}
        res[f"resolution > 1.5 x median ({1.5 * med:.1f} A)"] = shares(kind, cls, rejected)
    if a.selected:
        names = column(a.truth, "particles", "_rlnImageName")
        kept = set(column(a.selected, "particles", "_rlnImageName"))
        gone = np.array([n not in kept for n in names])
        s = {name: float(gone[kind == k].mean()) for k, name in KINDS.items() if (kind == k).any()}
        s["particles lost"] = float(gone[kind == 0].mean())
        s["all junk"] = float(gone[kind != 0].mean())
        res["select --auto"] = s
    for sel, s in res.items():
        print(f"{a.label} {sel}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Polishing's parameter training (`--params3`) side by side with relion_motion_refine's, then polishing
with Regula's trained values against its defaults (docs/benchmarks.md, "Training the prior").

    bench/polish_training_vs_relion.py DIR TRUTH.mrc [--relion]

DIR: a data set made by bench/polish_vs_relion.py (particles.star, half1/2.mrc, postprocess.star,
MC/corrected_micrographs.star, sim/Truth); TRUTH: its true map. --relion also runs RELION's training
(more than 35 min on 2 cores). Prints the trained values and times, and for the defaults and the trained
values the tracks' RMS error against the truth (each particle's mean removed) and the mean FSC of the
shiny particles' map (relion_reconstruct --ctf) with the truth over the middle shells.
"""
import argparse, os, sys

import mrcfile
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from polish_vs_relion import REGULA, fsc, loop, run, tracks  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("truth")
    ap.add_argument("--relion", action="store_true")
    a = ap.parse_args()
    d = a.dir
    truth = mrcfile.open(a.truth).data.astype(float)
    n = truth.shape[0]
    angpix = float(mrcfile.open(a.truth).voxel_size.x)
    common = ["--i", "particles.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--corr_mic",
              "MC/corrected_micrographs.star", "--j", 2]
    t = run([REGULA, "polish", "--o", "RegTrain/", "--params3", "--min_p", 1000] + common, d)
    print(f"regula training {t:.1f} s: {open(os.path.join(d, 'RegTrain/opt_params_all_groups.txt')).read().strip()}")
    if a.relion:
        t = run(["relion_motion_refine", "--o", "RelionTrain/", "--f", "postprocess.star", "--angpix_ref", angpix,
                 "--params3", "--min_p", 1000] + common, d)
        print(f"relion training {t:.1f} s: {open(os.path.join(d, 'RelionTrain/opt_params_all_groups.txt')).read().strip()}")
    mics = loop(f"{d}/MC/corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    for tag, extra in (("PolDefault", []), ("PolTrained", ["--params_file", "RegTrain/opt_params_all_groups.txt"])):
        t = run([REGULA, "polish", "--o", tag + "/", "--combine_frames"] + common + extra, d)
        run(["relion_reconstruct", "--i", f"{tag}/shiny.star", "--o", f"rec_{tag}.mrc", "--ctf"], d)
        f = fsc(mrcfile.open(f"{d}/rec_{tag}.mrc").data.astype(float), truth)
        err = []
        for i, m in enumerate(mics):
            est = tracks(f"{d}/{tag}/{os.path.splitext(m)[0]}_tracks.star")
            tru = tracks(f"{d}/sim/Truth/movie_{i + 1:03d}_tracks.star")
            e = (est - est.mean(axis=1, keepdims=True)) - (tru - tru.mean(axis=1, keepdims=True))
            err.append(np.sqrt(np.mean(np.sum(e ** 2, axis=2))) / angpix)
        print(f"{tag}: tracks {np.mean(err):.3f} px (max movie {np.max(err):.2f}); shiny map mean FSC shells "
              f"{n // 12}-{n // 3}: {f[n // 12:n // 3].mean():.3f}; {t:.1f} s")


if __name__ == "__main__":
    main()

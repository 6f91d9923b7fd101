#!/usr/bin/python3
"""Side by side: `regula ctf_refine` and RELION 3.1.3's relion_ctf_refine on the CTF envelope (B-factor and
scale) and the phase-plate shift, on particles made with known values (tests/python/ctf_refine_data.py
make_envelopes: 1,500 particles in micrographs of 50, SNR 0.3, the true defoci as input).

    bench/ctf_refine_envelope_vs_relion.py OUT [--map MAP.mrc] [--seeds 21,22] [--n 1500]

Per seed, four fits on the same half maps (reconstructed with the true values) and soft spherical mask
(relion_postprocess makes RELION's postprocess STAR file): `--fit_bfacs` on B-factors and scales drawn per
particle (B 0-200 Å², scale 0.6-1.4), `--fit_bfacs --bfac_per_mg` and `--fit_defocus --fit_mode fpmfm` on
values drawn per micrograph, and `--fit_defocus --fit_mode mpmff` on phase shifts drawn per micrograph
(20-120 degrees, input off by 8 degrees RMS). Printed: wall times and RMS errors against the truth
(RELION's --fit_bfacs writes its B minus --bfac_min_B, i.e. 30 Å² more than it fitted: taken off).
"""
import argparse
import pathlib
import subprocess
import sys
import time

import numpy as np
import mrcfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import ctf_refine_data as cd  # noqa: E402


def timed(cmd, cwd, log):
    t = time.time()
    with open(pathlib.Path(cwd) / log, "w") as f:
        subprocess.run(cmd, cwd=cwd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t


def prepare(d):
    with mrcfile.open(d / "truth_map.mrc") as f:
        n, apix = f.data.shape[0], float(f.voxel_size.x)
    cd.soft_sphere_mask(d / "mask.mrc", n, apix)
    (d / "pp").mkdir(exist_ok=True)
    subprocess.run(["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc", "--angpix",
                    str(apix), "--o", "pp/postprocess", "--auto_bfac", "false", "--adhoc_bfac", "0"], cwd=d, check=True,
                   capture_output=True)


def rms(x):
    return float(np.sqrt(np.mean(np.asarray(x) ** 2)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--map", default=None)
    ap.add_argument("--seeds", default="21,22")
    ap.add_argument("--n", type=int, default=1500)
    a = ap.parse_args()
    regula = str(ROOT / "build/bin/regula")
    mp = str(pathlib.Path(a.map).resolve()) if a.map else None
    cases = [("particle", dict(), ["--fit_bfacs"], ["--fit_bfacs"]),
             ("micrograph", dict(per_micrograph=True), ["--fit_bfacs", "--bfac_per_mg"],
              ["--fit_bfacs", "--bfac_per_mg"]),
             ("fpmfm", dict(per_micrograph=True), ["--fit_defocus", "--fit_mode", "fpmfm"],
              ["--fit_defocus", "--fit_mode", "fpmfm"]),
             ("mpmff", dict(b_range=None, phase_range=(20, 120), phase_error=8.0),
              ["--fit_defocus", "--fit_mode", "mpmff"], ["--fit_defocus", "--fit_mode", "mpmff"])]
    for seed in map(int, a.seeds.split(",")):
        for name, kw, ours, theirs in cases:
            d = pathlib.Path(a.out) / f"{pathlib.Path(a.map).stem if a.map else 'atoms'}_{name}_seed{seed}"
            truth = cd.make_envelopes(regula, d, n=a.n, seed=seed, map_path=mp, **kw)
            prepare(d)
            t_reg = timed([regula, "ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--mask",
                           "mask.mrc", "--o", "regula/", "--j", "2", *ours], d, "regula.log")
            t_rel = timed(["relion_ctf_refine", "--i", "input.star", "--f", "pp/postprocess.star", "--o", "relion/",
                           "--j", "2", *theirs], d, "relion.log")
            line = f"{d.name}: regula {t_reg:.2f} s, relion {t_rel:.2f} s ({t_reg / t_rel:.2f}x)"
            for prog, off in (("regula", 0.0), ("relion", 30.0 if "--fit_bfacs" in theirs else 0.0)):
                p = cd.read_star(d / prog / "particles_ctf_refine.star")["particles"]
                if name == "mpmff":
                    err = (cd.column(p, "rlnPhaseShift") - truth["phase"] + 180) % 360 - 180
                    line += f"; {prog} phase {rms(err):.2f} deg"
                else:
                    b = cd.column(p, "rlnCtfBfactor") - off - truth["bfactor"]
                    s = cd.column(p, "rlnCtfScalefactor") - truth["scale"]
                    line += f"; {prog} B {rms(b):.1f} Å² (mean {b.mean():+.1f}), scale {rms(s):.3f}"
                if name in ("fpmfm", "mpmff"):
                    dm, _ = cd.defocus_errors(d / prog / "particles_ctf_refine.star", d / "truth.star")
                    line += f", defocus {rms(dm):.1f} Å"
            print(line, flush=True)


if __name__ == "__main__":
    main()

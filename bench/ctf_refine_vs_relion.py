#!/usr/bin/python3
"""Side by side: `regula ctf_refine` and RELION 3.1.3's relion_ctf_refine on the same simulated particles
with known errors (tests/python/ctf_refine_data.py: two optics groups with their own beam tilt and
anisotropic magnification, particles at their own heights around their micrograph's defocus).

    bench/ctf_refine_vs_relion.py OUT [--n N] [--box B] [--seeds 11,12,13] [--map_seeds 5] [--map MAP.mrc]

(--map: a map of its own box and pixel size instead of the pseudo-atomic ones, e.g. from
../shared/tools/model_to_map.py)

RELION runs as its users run it: one CtfRefine job for the magnification (--fit_aniso), then one for
defocus (fpmff: per-particle defocus, per-micrograph astigmatism) and beam tilt on its output; both get
the postprocess STAR file of relion_postprocess on the half maps with a soft spherical mask. Regula
runs one ctf_refine with --fit_aniso --fit_beamtilt --fit_defocus (the same fit mode, its default) and
the same mask. Printed per seed: wall times, beam tilt and magnification errors, defocus RMS error,
astigmatism RMS error, and the FSC with the true map of a reconstruction from each output.
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
from conftest import fsc  # noqa: E402  (numpy's FSC per shell round(|k|))

GROUPS = [{"tilt": (1.0, -0.6), "mag": (1.015, 0.004, 0.004, 0.99)},
          {"tilt": (-0.5, 0.8), "mag": (0.988, -0.003, -0.003, 1.008)}]


def timed(cmd, cwd, log):
    t = time.time()
    with open(pathlib.Path(cwd) / log, "w") as f:
        subprocess.run(cmd, cwd=cwd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t


def report(name, d, star, truth_map, t):
    est = cd.optics_values(d / star)
    dm, ast = cd.defocus_errors(d / star, d / "truth.star")
    tilt = max(np.abs(np.subtract(e["tilt"], g["tilt"])).max() for e, g in zip(est, GROUPS))
    mag = max(np.abs(np.subtract(e["mag"], g["mag"])).max() for e, g in zip(est, GROUPS))
    subprocess.run([str(ROOT / "build/bin/regula"), "--quiet", "reconstruct", "--i", star, "--o", f"rec_{name}.mrc",
                    "--ctf", "--j", "2"], cwd=d, check=True)
    with mrcfile.open(d / f"rec_{name}.mrc") as f:
        curve = fsc(f.data.astype(float), truth_map)
    n = truth_map.shape[0]
    f05 = next((i for i in range(1, len(curve)) if curve[i] < 0.5), len(curve))
    print(f"  {name:8s} time {t:6.1f} s  tilt err {tilt:.3f} mrad  mag err {mag:.4f}  defocus RMS {np.sqrt(np.mean(dm**2)):6.1f} Å"
          f"  astig RMS {np.sqrt(np.mean(ast**2)):6.1f} Å  FSC(truth) 0.5 at shell {f05} of {n // 2}, mean(shells 10-{n // 2 - 2}) {curve[10:n // 2 - 1].mean():.3f}")
    return dict(time=t, tilt=tilt, mag=mag, defocus=float(np.sqrt(np.mean(dm ** 2))), astig=float(np.sqrt(np.mean(ast ** 2))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--seeds", default="11")
    ap.add_argument("--map_seeds", default="5")
    ap.add_argument("--map", default=None)
    a = ap.parse_args()
    regula = str(ROOT / "build/bin/regula")
    for ms in map(int, a.map_seeds.split(",")):
        for seed in map(int, a.seeds.split(",")):
            d = pathlib.Path(a.out) / (f"{pathlib.Path(a.map).stem}_seed{seed}" if a.map else f"map{ms}_seed{seed}")
            paths = cd.make(regula, d, GROUPS, n=a.n, seed=seed, box=a.box, map_seed=ms,
                            map_path=str(pathlib.Path(a.map).resolve()) if a.map else None)
            with mrcfile.open(paths["map"]) as f:
                n, apix = f.data.shape[0], float(f.voxel_size.x)
            cd.soft_sphere_mask(d / "mask.mrc", n, apix)
            (d / "pp").mkdir(exist_ok=True)
            subprocess.run(["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc",
                            "--angpix", str(apix), "--o", "pp/postprocess", "--auto_bfac", "false", "--adhoc_bfac", "0"],
                           cwd=d, check=True, capture_output=True)
            with mrcfile.open(paths["map"]) as f:
                truth = f.data.astype(float)
            print(f"map {a.map or f'pseudo-atomic seed {ms}'}, data seed {seed}: {a.n} particles per optics group, box {n}, {apix} Å/px")
            t1 = timed(["relion_ctf_refine", "--i", "input.star", "--f", "pp/postprocess.star", "--o", "rel_mag/",
                        "--fit_aniso", "--j", "2"], d, "rel_mag.log")
            t2 = timed(["relion_ctf_refine", "--i", "rel_mag/particles_ctf_refine.star", "--f", "pp/postprocess.star",
                        "--o", "rel_def/", "--fit_defocus", "--fit_mode", "fpmff", "--fit_beamtilt", "--j", "2"], d,
                       "rel_def.log")
            t3 = timed([regula, "ctf_refine", "--i", "input.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--mask",
                        "mask.mrc", "--o", "regula/", "--fit_aniso", "--fit_beamtilt", "--fit_defocus", "--j", "2"], d,
                       "regula.log")
            report("input", d, "input.star", truth, 0)
            report("relion", d, "rel_def/particles_ctf_refine.star", truth, t1 + t2)
            report("regula", d, "regula/particles_ctf_refine.star", truth, t3)
            report("truth", d, "truth.star", truth, 0)


if __name__ == "__main__":
    main()

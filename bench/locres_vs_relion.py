"""Local resolution: regula locres against relion_postprocess --locres (RELION 3.1.3) on half maps with a known,
spatially varying resolution (tests/python/locres_data.py), accuracy and time.

Usage: /usr/bin/python3 bench/locres_vs_relion.py [OUT_DIR] [--quick]
Environment: REGULA_BUILD (default build), RELION_NICE (default 5: RELION runs under `nice -n 5`).

Accuracy: for each design (gradient, domain, radial) and data seed (1, 2), both programs with RELION's default
parameters (sampling 25 Å) and two phase seeds each; the Pearson and Spearman correlations of the local-resolution
map with the truth over the voxels within 0.8 of the particle's radius.
Time: on one data set, relion_postprocess (one process) and relion_postprocess_mpi (2 ranks) against regula
--j 1 and --j 2, at sampling 25 Å and 15 Å; wall and user CPU seconds, the load average before each run.
Maps of 128 px at 1.2 Å/px (Nyquist 2.4 Å); truth from 2.9 to 8.4 Å. Results go to OUT_DIR/locres.tsv and are
printed; docs/benchmarks.md records them."""
import os
import pathlib
import resource
import subprocess
import sys
import time

import mrcfile
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import locres_data as L  # noqa: E402

REGULA = str(pathlib.Path(os.environ.get("REGULA_BUILD", ROOT / "build")) / "bin" / "regula")
NICE = ["nice", "-n", os.environ.get("RELION_NICE", "5")]
N, ANGPIX = 128, 1.2


def timed(cmd, cwd):
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, r1.ru_utime - r0.ru_utime, load


def relion(cwd, tag, out, sampling, seed, mpi=0):
    cmd = ["relion_postprocess", "--i", f"{tag}_half1.mrc", "--i2", f"{tag}_half2.mrc", "--locres", "--o", out,
           "--angpix", str(ANGPIX), "--locres_sampling", str(sampling), "--random_seed", str(seed)]
    if mpi:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(mpi), "relion_postprocess_mpi"] + cmd[1:]
    return timed(NICE + cmd, cwd)


def regula(cwd, tag, out, sampling, seed, threads):
    return timed([REGULA, "--quiet", "locres", "--i", f"{tag}_half1.mrc", "--o", out, "--angpix", str(ANGPIX),
                  "--locres_sampling", str(sampling), "--random_seed", str(seed), "--j", str(threads)], cwd)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    out = pathlib.Path(args[0] if args else ROOT / "bench" / "out" / "locres")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    designs = ["gradient"] if quick else ["gradient", "domain", "radial"]
    seeds = [1] if quick else [1, 2]
    for design in designs:
        for dseed in seeds:
            tag = f"{design}{dseed}"
            d = L.make(n=N, angpix=ANGPIX, design=design, seed=dseed, b_lo=60, b_hi=500, sigma=0.12)
            L.write(out / f"{tag}_half1.mrc", d["half1"], ANGPIX)
            L.write(out / f"{tag}_half2.mrc", d["half2"], ANGPIX)
            for pseed in seeds:
                for prog in ("relion", "regula"):
                    name = f"{prog}_{tag}_s{pseed}"
                    if prog == "relion":
                        wall, user, load = relion(out, tag, name, 25, pseed)
                    else:
                        wall, user, load = regula(out, tag, name, 25, pseed, 2)
                    est = mrcfile.read(out / f"{name}_locres.mrc")
                    p, s = L.correlations(est, d["truth"], d["inside"])
                    rows.append(("accuracy", prog, design, dseed, pseed, 25, 2 if prog == "regula" else 1, wall, user,
                                 load, p, s, float(est[d["inside"]].mean()), float(d["truth"][d["inside"]].mean())))
                    print("\t".join(str(round(v, 4)) if isinstance(v, float) else str(v) for v in rows[-1]), flush=True)
    # Time, on the first data set.
    tag = "gradient1"
    for sampling in (25, 15):
        for label, fn in (("relion 1 process", lambda s: relion(out, tag, "t_rl", s, 1)),
                          ("relion_mpi 2 ranks", lambda s: relion(out, tag, "t_rlm", s, 1, mpi=2)),
                          ("regula --j 1", lambda s: regula(out, tag, "t_rg1", s, 1, 1)),
                          ("regula --j 2", lambda s: regula(out, tag, "t_rg2", s, 1, 2))):
            wall, user, load = fn(sampling)
            rows.append(("time", label, "gradient", 1, 1, sampling, 0, wall, user, load, 0, 0, 0, 0))
            print("\t".join(str(round(v, 4)) if isinstance(v, float) else str(v) for v in rows[-1]), flush=True)
    header = "kind\tprogram\tdesign\tdata_seed\tphase_seed\tsampling_A\tthreads\twall_s\tuser_s\tload\tpearson\t" \
             "spearman\tmean_locres_A\tmean_truth_A"
    with open(out / "locres.tsv", "w") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.uname().nodename}\n{header}\n")
        for r in rows:
            f.write("\t".join(str(v) for v in r) + "\n")
    acc = [r for r in rows if r[0] == "accuracy"]
    for prog in ("relion", "regula"):
        p = np.array([r[10] for r in acc if r[1] == prog])
        s = np.array([r[11] for r in acc if r[1] == prog])
        print(f"{prog}: Pearson mean {p.mean():.4f} (min {p.min():.4f}, max {p.max():.4f}); Spearman mean {s.mean():.4f}")
    for design in designs:
        for prog in ("relion", "regula"):
            p = np.array([r[10] for r in acc if r[1] == prog and r[2] == design])
            print(f"  {design} {prog}: Pearson {p.mean():.4f} ± {p.std():.4f}")


if __name__ == "__main__":
    main()

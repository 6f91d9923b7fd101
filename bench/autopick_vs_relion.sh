#!/bin/bash
# Particle picking side by side with relion_autopick (RELION 3.1.3) on simulated micrographs with known
# particle positions (issue 17's acceptance): LoG and template picking, the same options for both, at
# RELION's default thresholds (timed) and at a low threshold (for the best F1 over thresholds), then
# bench/autopick_accuracy.py: precision, recall and F1 against the truth (a pick matches a true particle
# within 0.2 of its diameter, one to one) and the best F1 over figure-of-merit cuts.
#
#   bench/autopick_vs_relion.sh OUT [N (20)] [SEED (31)] [SIZE (4096)]
#     REGULA=path/to/regula; SKIP_RELION=1 reuses OUT/R_*
#
# Micrographs: `regula simulate_movies` one-frame movies of 40 e/Å² at 2 Å/px (tests/python/picking_data.py),
# SIZE x SIZE px, two globular particle types of 100 and 160 Å (test_autopick.py's), 500 particles per
# micrograph, RELION's default junk (an aggregate and an ice crystal per micrograph, carbon edges in 30%),
# defocus 1.5-3.5 µm. Templates: the class averages of the true particles (test_autopick.class_averages).
# Timed: RELION as one process and under `mpirun -np 2` (relion_autopick_mpi), Regula with --j 1 and --j 2;
# one program at a time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"; n="${2:-20}"; seed="${3:-31}"; size="${4:-4096}"
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
mkdir -p "$out"
cd "$out"
if [ ! -f mics.star ]; then
  HERE="$(dirname "$here")" /usr/bin/python3 - "$regula" "$n" "$size" "$seed" <<'EOF'
import os, sys
from pathlib import Path
sys.path.insert(0, os.path.join(os.environ.get("HERE", ""), "tests", "python"))
import picking_data as pdd
import test_autopick as ta
regula, n, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = Path.cwd()
maps = [str(pdd.globular_map(out / f"type{c}.mrc", d, ta.ANGPIX, seed=c)) for c, d in ta.DIAMETERS.items()]
pdd.simulate(regula, str(out / "sim"), maps, n, size, 500, seed,
             extra=["--angpix", ta.ANGPIX, "--defocus_min", 15000, "--defocus_max", 35000])
names = pdd.micrographs_star(out / "sim", out / "mics.star", ta.ANGPIX)
star = out / "mics.star"
star.write_text(star.read_text().replace(f"{out}/", ""))
truth = {os.path.relpath(k, out): v for k, v in pdd.truth(out / "sim").items()}
ta.class_averages(out, [os.path.relpath(x, out) for x in names], truth)
EOF
fi
log=(--LoG --LoG_diam_min 90 --LoG_diam_max 170 --lowpass 20 --shrink 0)
tpl=(--ref refs.mrcs --invert --ctf --ang 5 --particle_diameter 180 --min_distance 100 --lowpass 20 --shrink 0)
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)
timed() {  # NAME command...: runs it, records wall and user time in NAME.time
  local name="$1"; shift
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  /usr/bin/time -f "%e s wall, %U s user, %M KB peak RSS" -o "$name.time" "$@" > "$name.log" 2>&1 || true
  echo "$name (started $(date -u +%H:%M) UTC, load before $load): $(cat "$name.time" | tail -1)"
}
if [ -z "${SKIP_RELION:-}" ] || [ ! -d R_log ]; then
  rm -rf R_log R_log_np2 R_log_low R_tpl R_tpl_np2 R_tpl_low
  # (RELION 3.1.3 may abort after writing its picks, while making its PDF log: the picks are what is scored.)
  timed R_log relion_autopick --i mics.star --odir R_log/ --pickname autopick "${log[@]}"
  timed R_log_np2 "${mpi[@]}" relion_autopick_mpi --i mics.star --odir R_log_np2/ --pickname autopick "${log[@]}"
  relion_autopick --i mics.star --odir R_log_low/ --pickname autopick "${log[@]}" --LoG_adjust_threshold -1 > /dev/null 2>&1 || true
  timed R_tpl relion_autopick --i mics.star --odir R_tpl/ --pickname autopick "${tpl[@]}" --threshold 0.05 --max_stddev_noise 1.1
  timed R_tpl_np2 "${mpi[@]}" relion_autopick_mpi --i mics.star --odir R_tpl_np2/ --pickname autopick "${tpl[@]}" \
    --threshold 0.05 --max_stddev_noise 1.1
  relion_autopick --i mics.star --odir R_tpl_low/ --pickname autopick "${tpl[@]}" --threshold -0.5 --max_stddev_noise -1 > /dev/null 2>&1 || true
fi
rm -rf G_log G_log_j2 G_log_low G_tpl G_tpl_j2 G_tpl_low
timed G_log "$regula" autopick --i mics.star --o G_log/ "${log[@]}" --j 1
timed G_log_j2 "$regula" autopick --i mics.star --o G_log_j2/ "${log[@]}" --j 2
"$regula" --quiet autopick --i mics.star --o G_log_low/ "${log[@]}" --LoG_adjust_threshold -1 --j 2
timed G_tpl "$regula" autopick --i mics.star --o G_tpl/ "${tpl[@]}" --threshold 0.05 --max_stddev_noise 1.1 --j 1
timed G_tpl_j2 "$regula" autopick --i mics.star --o G_tpl_j2/ "${tpl[@]}" --threshold 0.05 --max_stddev_noise 1.1 --j 2
"$regula" --quiet autopick --i mics.star --o G_tpl_low/ "${tpl[@]}" --threshold -0.5 --max_stddev_noise -1 --j 2
HERE="$(dirname "$here")" /usr/bin/python3 "$here/autopick_accuracy.py" .

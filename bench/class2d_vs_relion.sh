#!/bin/bash
# 2D classification of simulated 70S ribosome views: Regula vs RELION 3.1.3 (relion_refine), the
# acceptance run of the 2D issue.
#
#   bench/class2d_vs_relion.sh                 Regula only; RELION's time from bench/results/relion_times.tsv
#   RUN_RELION=1 bench/class2d_vs_relion.sh    also runs relion_refine now (about 13 minutes on 2 cores)
#   REGULA=path/to/regula  THREADS=2  OUT=bench/out
#
# Data: bench/make_datasets.sh (2000 particles, box 96, 4 Å/px, SNR 0.05, defocus 1-3 µm, 10 views,
# seed 11). Both programs get the same options (K 10, 25 iterations, T 2, CTF, psi 6°, offsets 4/2 px,
# oversampling 1, norm and scale correction, zero mask, solvent flattening, diameter 300 Å, seed 1).
# Prints wall times, their ratio and view recovery (bench/view_recovery.py).
set -euo pipefail
cd "$(dirname "$0")/.."
regula="${REGULA:-$PWD/build/bin/regula}"
threads="${THREADS:-2}"
OUT="${OUT:-bench/out}"
REGULA="$regula" bench/make_datasets.sh "$OUT" > /dev/null
data="$OUT/views10/particles.star"
truth="$OUT/views10/truth.star"
common=(--K 10 --iter 25 --tau2_fudge 2 --ctf --psi_step 6 --offset_range 4 --offset_step 2 --oversampling 1
        --norm --scale --j "$threads" --particle_diameter 300 --zero_mask --flatten_solvent)

rm -rf "$OUT/regula_2d" && mkdir -p "$OUT/regula_2d"
t0=$(date +%s.%N)
"$regula" class2d --i "$data" --o "$OUT/regula_2d/run" "${common[@]}" --seed 1 > "$OUT/regula_2d/run.log" 2>&1
t1=$(date +%s.%N)
t_regula=$(echo "$t1 - $t0" | bc)
echo "regula class2d: ${t_regula} s (--j $threads, $(date -u +%F))"
/usr/bin/python3 bench/view_recovery.py "$truth" "$OUT/regula_2d/run_it025_data.star" --label regula | sed -n 1p

if [ "${RUN_RELION:-0}" = "1" ]; then
  rm -rf "$OUT/relion_2d" && mkdir -p "$OUT/relion_2d"
  t0=$(date +%s.%N)
  relion_refine --i "$data" --o "$OUT/relion_2d/run" "${common[@]}" --dont_combine_weights_via_disc --pool 30 \
    --random_seed 1 > "$OUT/relion_2d/run.log" 2>&1
  t1=$(date +%s.%N)
  t_relion=$(echo "$t1 - $t0" | bc)
  echo "relion_refine: ${t_relion} s (now)"
  /usr/bin/python3 bench/view_recovery.py "$truth" "$OUT/relion_2d/run_it025_data.star" --label relion | sed -n 1p
else
  t_relion=$(awk -F'\t' '$1 == "2d" { sub(/^wall /, "", $3); sub(/ s$/, "", $3); t = $3; d = $2 } END { print t }' \
    bench/results/relion_times.tsv)
  echo "relion_refine: ${t_relion} s (recorded in bench/results/relion_times.tsv)"
fi
echo "time ratio regula / relion: $(echo "scale=4; $t_regula / $t_relion" | bc)"

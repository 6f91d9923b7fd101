#!/bin/bash
# 2D classification of simulated 70S ribosome views: Regula vs RELION (relion_refine).
#
#   bench/class2d_vs_relion.sh [WORKDIR]       (default: bench-class2d under the current directory)
#   RUN_RELION=1 bench/class2d_vs_relion.sh    also runs relion_refine (minutes to hours)
#   REGULA=path/to/regula                      default: build/bin/regula of this checkout
#
# Simulates 2000 particles (box 96, 4 Å/px, SNR 0.05, defocus 1-3 µm, 10 views), classifies
# them into 10 classes for 25 iterations with the same options in both programs, and prints
# wall times, their ratio, and view recovery (bench/view_recovery.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
work="${1:-bench-class2d}"
regula="${REGULA:-$repo/build/bin/regula}"
map="$repo/../shared/data/maps/clean70SRibosome_vol_65p.mrc"
threads="${THREADS:-2}"
mkdir -p "$work"
cd "$work"

if [ ! -f sim/particles.star ]; then
  "$regula" simulate --i "$map" --o sim --n 2000 --angpix 4 --box 96 --snr 0.05 \
    --defocus_min 10000 --defocus_max 30000 --views 10 --seed 1
fi

common=(--K 10 --iter 25 --tau2_fudge 2 --ctf --psi_step 6 --offset_range 4 --offset_step 2
        --particle_diameter 300 --j "$threads")

mkdir -p regula
t0=$(date +%s.%N)
"$regula" class2d --i sim/particles.star --o regula/run "${common[@]}" --seed 1
t1=$(date +%s.%N)
t_regula=$(echo "$t1 - $t0" | bc)
echo "regula class2d: ${t_regula} s"
/usr/bin/python3 "$here/view_recovery.py" sim/truth.star regula/run_it025_data.star --label regula

if [ "${RUN_RELION:-0}" = "1" ]; then
  mkdir -p relion
  t0=$(date +%s.%N)
  relion_refine --i sim/particles.star --o relion/run "${common[@]}" --norm --scale \
    --dont_combine_weights_via_disc --pool 3 --oversampling 1 --random_seed 1 > relion/run.log 2>&1
  t1=$(date +%s.%N)
  t_relion=$(echo "$t1 - $t0" | bc)
  echo "relion_refine: ${t_relion} s"
  /usr/bin/python3 "$here/view_recovery.py" sim/truth.star relion/run_it025_data.star --label relion
  echo "time ratio relion / regula: $(echo "scale=2; $t_relion / $t_regula" | bc)"
fi

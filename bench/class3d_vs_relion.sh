#!/bin/bash
# 3D classification of the 50/50 mixture (bench/make_datasets.sh: the 70S map and a copy with 16.7%
# of its mass removed, 2,000 particles, box 96, SNR 0.05): Regula with the options of RELION's recorded
# command (bench/results/relion_times.tsv), its wall time against RELION's and the fraction of
# particles in their true class for both (bench/class3d_accuracy.py).
#   bench/class3d_vs_relion.sh [OUT (bench/out)]     REGULA=path/to/regula, THREADS (2)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
mkdir -p "$out/regula_class3d"
t0=$(date +%s.%N)
"$regula" --quiet class3d --i "$out/hetero/particles.star" --o "$out/regula_class3d/run" --ref "$out/ref40.mrc" \
  --K 2 --tau2_fudge 4 --iter 25 --firstiter_cc --ini_high 40 --ctf --healpix_order 1 --offset_range 4 \
  --offset_step 2 --particle_diameter 300 --zero_mask --flatten_solvent --j "${THREADS:-2}"
t1=$(date +%s.%N)
t_relion=$(awk -F'\t' '$1=="class3d"{split($3,a," "); t=a[2]} END{print t}' "$here/results/relion_times.tsv")
echo "regula class3d: $(echo "$t1 - $t0" | bc) s wall; RELION (recorded): $t_relion s"
echo "== regula"; /usr/bin/python3 "$here/class3d_accuracy.py" "$out/hetero/truth.star" "$out/regula_class3d/run_it025_data.star"
echo "== relion"; /usr/bin/python3 "$here/class3d_accuracy.py" "$out/hetero/truth.star" "$out/relion_class3d/run_it025_data.star"

#!/usr/bin/env bash
# Simulate the acceptance data sets of the 2D, 3D-classification and auto-refine issues
# (ribosome map, box 96, 4 Å/px, SNR 0.05, defocus 1-3 µm, CTF), deterministic by seed.
# Usage: bench/make_datasets.sh [OUT_DIR (bench/out)]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${REGULA:-$PWD/build/bin/regula}
OUT=${1:-bench/out}
MAP=${MAP:-../shared/data/maps/clean70SRibosome_vol_65p.mrc}
mkdir -p "$OUT"
common=(--angpix 4 --box 96 --snr 0.05 --defocus_min 10000 --defocus_max 30000 --max_shift 3 --j 2)
# 2D: 2,000 particles from 10 viewing directions.
[ -f "$OUT/views10/particles.star" ] || $R simulate --i "$MAP" --o "$OUT/views10" --n 2000 --views 10 --seed 11 "${common[@]}"
# Auto-refine: 2,000 particles, uniform orientations.
[ -f "$OUT/refine/particles.star" ] || $R simulate --i "$MAP" --o "$OUT/refine" --n 2000 --seed 12 "${common[@]}"
# Reference for refinement and 3D classification: the true map, boxed to 96, low-passed to 40 Å.
if [ ! -f "$OUT/ref40.mrc" ]; then
  /usr/bin/python3 bench/make_maps.py "$MAP" "$OUT"
fi
# 3D classification: 50/50 mixture of the map and a copy with >= 15% of its mass removed.
[ -f "$OUT/hetero/particles.star" ] || $R simulate --i "$OUT/full96.mrc" --i2 "$OUT/cut96.mrc" --frac2 0.5 \
    --o "$OUT/hetero" --n 2000 --seed 13 --snr 0.05 --defocus_min 10000 --defocus_max 30000 --max_shift 3 --j 2
echo "data sets in $OUT"

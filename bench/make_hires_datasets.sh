#!/usr/bin/env bash
# High-resolution data sets of the real-scale engine issue: signal to Nyquist, deterministic by seed.
#
#   bench/make_hires_datasets.sh [OUT (bench/out)] [SET...]      SET: apo 1u6g trpv55 big320 (default: the
#                                                                first three)
#
# Maps from atomic models (../shared/data/models) by ../shared/tools/model_to_map.py (band-limited at
# Nyquist, atomic B-factors only), particles by `regula simulate` (CTF, defocus 0.5-2.5 µm, white noise
# at the given whole-box SNR, random shifts), references = the true map low-passed to 30 Å by
# bench/lowpass_map.py (numpy, independent of Regula).
#   apo:    apoferritin 6Z6U, O symmetry (axes as RELION's), 1.0 Å/px, box 192, 2,000 particles, SNR 0.05
#   1u6g:   1U6G (Cand1-Cul1-Roc1, asymmetric), 1.5 Å/px, box 160, 4,000 particles, SNR 0.05
#   trpv55: TRPV1 3J5P Fourier-cropped to 5.5 Å/px (signal to Nyquist, 11 Å), box 96, C1,
#           2,000 particles, SNR 0.05
#   big320: 1U6G at 1.0 Å/px, box 320, 200 particles, SNR 0.05 (peak memory at a real box size,
#           bench/refine3d_memory.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${REGULA:-$PWD/build/bin/regula}
OUT=${1:-bench/out}; shift || true
sets=("$@"); [ ${#sets[@]} -gt 0 ] || sets=(apo 1u6g trpv55)
MODELS=${MODELS:-../shared/data/models}
M2M=${M2M:-../shared/tools/model_to_map.py}
for f in "$MODELS" "$M2M"; do [ -e "$f" ] || { echo "make_hires_datasets: $f is missing (../shared)"; exit 1; }; done
mkdir -p "$OUT"
make_set() {  # name model apix box symalign n snr seed max_shift
  local name=$1 model=$2 apix=$3 box=$4 sym=$5 n=$6 snr=$7 seed=$8 shift=$9
  local d="$OUT/$name"
  mkdir -p "$d"
  [ -f "$d/truth_model.mrc" ] || /usr/bin/python3 "$M2M" "$MODELS/$model.pdb" "$d/truth_model.mrc" --apix "$apix" \
      --box "$box" --sym-align "$sym" > "$d/model_to_map.log"
  [ -f "$d/ref30.mrc" ] || /usr/bin/python3 bench/lowpass_map.py "$d/truth_model.mrc" "$d/ref30.mrc" 30
  [ -f "$d/particles.star" ] || "$R" --quiet simulate --i "$d/truth_model.mrc" --o "$d" --n "$n" --seed "$seed" \
      --snr "$snr" --defocus_min 5000 --defocus_max 25000 --max_shift "$shift" --j 2
}
for s in "${sets[@]}"; do
  case $s in
    apo) make_set apo 6z6u 1.0 192 O 2000 0.05 21 4 ;;
    1u6g) make_set 1u6g 1u6g 1.5 160 none 4000 0.05 22 4 ;;
    trpv55) make_set trpv55 3j5p 5.5 96 none 2000 0.05 23 3 ;;
    big320) make_set big320 1u6g 1.0 320 none 200 0.05 24 4 ;;
    *) echo "unknown set $s"; exit 2 ;;
  esac
done
echo "high-resolution data sets in $OUT"

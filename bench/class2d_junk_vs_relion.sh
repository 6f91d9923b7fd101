#!/bin/bash
# Junk in 2D classification: Regula and RELION 3.1.3 with the same command line on simulated sets with
# 25% junk (docs/benchmarks.md, "Junk in 2D classification").
#
#   bench/class2d_junk_vs_relion.sh [OUT (bench/out/junk)]    REGULA=path/to/regula, RUN_RELION=1 also runs
#                                                              relion_refine (about 25-30 min per set, --j 1)
#
# Sets: the 70S map at 4 Å/px (seeds 1 and 3) and beta-galactosidase from ../shared/data (seed 2, skipped
# when absent); 1,500 images of 64 px, 30 micrographs, noise spread 3, SNR 0.05, defocus 0.8-2.5 µm.
# Prints bench/junk_selection.py's shares per kind of junk (junk-majority classes, a resolution rule and
# `regula select --auto`, with and without --auto_step, on Regula's and RELION's classes) and the wall times.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$repo/bench/out/junk}"
regula="${REGULA:-$repo/build/bin/regula}"
mkdir -p "$out"
sets=("70s1:$repo/tests/data/proj/clean70SRibosome_vol_65p.mrc:4:1:230" "70s3:$repo/tests/data/proj/clean70SRibosome_vol_65p.mrc:4:3:230")
bgal="$repo/../shared/data/maps/ngl_betaGal.mrc"
if [ -f "$bgal" ]; then sets+=("bgal2:$bgal:3.54:2:200"); else echo "skipping beta-galactosidase: $bgal absent"; fi
common=(--K 12 --iter 20 --tau2_fudge 2 --ctf --psi_step 6 --offset_range 4 --offset_step 2 --norm --scale --j 1
        --zero_mask --flatten_solvent)
for s in "${sets[@]}"; do
  IFS=: read -r name map apix seed diam <<< "$s"
  d="$out/$name"
  "$regula" --quiet simulate --i "$map" --o "$d/data" --box 64 --angpix "$apix" --n 1500 --snr 0.05 --micrographs 30 \
    --noise_spread 3 --junk_fraction 0.25 --defocus_min 8000 --defocus_max 25000 --max_shift 3 --seed "$seed" --j 2
  rm -rf "$d/regula" && mkdir -p "$d/regula"
  t0=$(date +%s.%N)
  "$regula" --quiet class2d --i "$d/data/particles.star" --o "$d/regula/run" "${common[@]}" --particle_diameter "$diam" \
    --seed 1
  echo "$name regula: $(echo "$(date +%s.%N) - $t0" | bc) s ($(date -u +%F))"
  "$regula" --quiet select --i "$d/regula/run_it020_data.star" --o "$d/regula/selected.star" --auto
  /usr/bin/python3 "$here/junk_selection.py" "$d/data/truth.star" "$d/regula/run_it020_data.star" \
    "$d/regula/run_it020_model.star" --label "$name regula" --selected "$d/regula/selected.star"
  "$regula" --quiet select --i "$d/regula/run_it020_data.star" --o "$d/regula/selected_step.star" --auto --auto_step
  /usr/bin/python3 "$here/junk_selection.py" "$d/data/truth.star" "$d/regula/run_it020_data.star" \
    --label "$name regula --auto_step" --selected "$d/regula/selected_step.star" | grep "select --auto"
  if [ "${RUN_RELION:-0}" = "1" ]; then
    rm -rf "$d/relion" && mkdir -p "$d/relion"
    t0=$(date +%s.%N)
    relion_refine --i "$d/data/particles.star" --o "$d/relion/run" "${common[@]}" --particle_diameter "$diam" \
      --dont_combine_weights_via_disc --pool 30 --random_seed 1 > "$d/relion/run.log" 2>&1
    echo "$name relion_refine: $(echo "$(date +%s.%N) - $t0" | bc) s ($(date -u +%F))"
    "$regula" --quiet select --i "$d/relion/run_it020_data.star" --o "$d/relion/selected.star" --auto
    /usr/bin/python3 "$here/junk_selection.py" "$d/data/truth.star" "$d/relion/run_it020_data.star" \
      "$d/relion/run_it020_model.star" --label "$name relion" --selected "$d/relion/selected.star"
    "$regula" --quiet select --i "$d/relion/run_it020_data.star" --o "$d/relion/selected_step.star" --auto --auto_step
    /usr/bin/python3 "$here/junk_selection.py" "$d/data/truth.star" "$d/relion/run_it020_data.star" \
      --label "$name relion --auto_step" --selected "$d/relion/selected_step.star" | grep "select --auto"
  fi
done

#!/bin/bash
# Optics groups of different pixel sizes in refine3d: Regula and RELION 3.1.3 (relion_refine_mpi,
# 3 ranks) with the same options on a set whose optics group 2 is at another pixel size than the
# reference (docs/benchmarks.md, "Optics groups of different pixel sizes").
#
#   bench/mixed_pixel_vs_relion.sh [OUT (bench/out/mixed_pixel)]   REGULA=path/to/regula, RUN_RELION=1 also
#                                                                   runs RELION (about an hour on 2 busy cores)
#
# Sets (seed 3 and 5): the pseudo-atomic map of tests/python/test_optics_engines.py (400 Gaussian atoms,
# 48 px, 1.2 Å/px, signal to Nyquist), 300 particles, SNR 1, defocus 0.5-1.5 µm; "plain" all at 1.2 Å/px,
# "mixed" with half of them in optics group 2 at 1.0 Å/px (same box). Refinement from the truth
# low-passed to 10 Å. Prints median angular and origin errors per optics group and the FSC with the truth.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$repo/bench/out/mixed_pixel}"
regula="${REGULA:-$repo/build/bin/regula}"
mkdir -p "$out"
cd "$out"
/usr/bin/python3 - "$repo" <<'EOF'
import pathlib, sys
sys.path.insert(0, sys.argv[1] + "/tests/python")
from test_optics_engines import atoms_map
atoms_map(pathlib.Path("atoms.mrc"))
EOF
opts=(--ctf --ini_high 10 --healpix_order 2 --auto_local_healpix_order 4 --offset_range 3 --offset_step 1
      --particle_diameter 45 --flatten_solvent --zero_mask)
for seed in 3 5; do
  sim=(--n 300 --snr 1 --defocus_min 5000 --defocus_max 15000 --seed "$seed" --j 2)
  "$regula" --quiet simulate --i atoms.mrc --o "plain$seed" "${sim[@]}"
  "$regula" --quiet simulate --i atoms.mrc --o "mixed$seed" "${sim[@]}" --og2_fraction 0.5 --og2_angpix 1.0
  for s in "plain$seed" "mixed$seed"; do
    rm -rf "regula_$s"
    t0=$(date +%s.%N)
    "$regula" --quiet refine3d --i "$s/particles.star" --ref "plain$seed/truth_map1.mrc" --o "regula_$s/run" \
      "${opts[@]}" --j 2
    echo "$s regula: $(echo "$(date +%s.%N) - $t0" | bc) s ($(date -u +%F))"
    /usr/bin/python3 "$here/pose_errors.py" "$s/truth.star" "regula_$s/run_data.star" "regula_$s/run_class001.mrc" \
      "plain$seed/truth_map1.mrc"
    if [ "${RUN_RELION:-0}" = "1" ]; then
      rm -rf "relion_$s" && mkdir -p "relion_$s"
      t0=$(date +%s.%N)
      mpirun --allow-run-as-root --oversubscribe -np 3 relion_refine_mpi --auto_refine --split_random_halves \
        --i "$s/particles.star" --ref "plain$seed/truth_map1.mrc" --o "relion_$s/run" "${opts[@]}" --sym C1 \
        --low_resol_join_halves 40 --norm --scale --oversampling 1 --pad 2 --j 1 --dont_combine_weights_via_disc \
        --pool 30 --random_seed 1 > "relion_$s/log" 2>&1
      echo "$s relion: $(echo "$(date +%s.%N) - $t0" | bc) s ($(date -u +%F))"
      /usr/bin/python3 "$here/pose_errors.py" "$s/truth.star" "relion_$s/run_data.star" \
        "relion_$s/run_class001.mrc" "plain$seed/truth_map1.mrc"
    fi
  done
done

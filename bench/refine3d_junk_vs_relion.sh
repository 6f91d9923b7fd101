#!/bin/bash
# refine3d on a particle set with 25% junk, whole and after `regula select --auto` of its 2D classes,
# side by side with RELION 3.1.3's auto-refine of the whole set with the same options
# (docs/benchmarks.md, "refine3d on the junk set").
#
#   bench/refine3d_junk_vs_relion.sh JUNK_SET_DIR [OUT (bench/out/refine_junk)]
#       REGULA=path/to/regula; RUN_RELION=1 also runs relion_refine_mpi (3 ranks; about 2.5 h on 2 cores)
#
# JUNK_SET_DIR: one set of bench/class2d_junk_vs_relion.sh (e.g. bench/out/junk/bgal2: data/ with the
# simulated particles and truth, regula/ with Regula's class2d run). The reference is the truth
# low-passed to 40 Å (bench/lowpass_map.py). Prints bench/evaluate_refine.py's pose errors and FSC with
# the truth (--sym D2: beta-galactosidase refined in C1), the gold-standard resolution and wall times.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
set_dir="$(cd "$1" && pwd)"
out="${2:-$repo/bench/out/refine_junk}"
regula="${REGULA:-$repo/build/bin/regula}"
mkdir -p "$out"
cd "$out"
/usr/bin/python3 "$here/lowpass_map.py" "$set_dir/data/truth_map1.mrc" ref40.mrc 40
opts=(--ref ref40.mrc --firstiter_cc --ini_high 40 --ctf --flatten_solvent --zero_mask --healpix_order 2
      --auto_local_healpix_order 4 --offset_range 5 --offset_step 2 --low_resol_join_halves 40 --norm --scale
      --j 1 --particle_diameter 200 --sym C1)
last=$(ls "$set_dir"/regula/run_it*_data.star | sort | tail -1)
"$regula" --quiet select --i "$last" --o selected.star --auto
evaluate() {  # label data.star final_map
  echo "== $1"
  /usr/bin/python3 "$here/evaluate_refine.py" --sym D2 "$set_dir/data/truth.star" "$2" "$3" \
    "$set_dir/data/truth_map1.mrc" | awk 'NR <= 4'  # (awk reads it all: head would break the pipe)
}
for s in all selected; do
  star="$set_dir/data/particles.star"
  [ "$s" = selected ] && star=selected.star
  rm -rf "regula_$s" && mkdir -p "regula_$s"
  t0=$(date +%s.%N)
  "$regula" --quiet refine3d --i "$star" --o "regula_$s/run" "${opts[@]}" --seed 1
  echo "regula $s: $(echo "$(date +%s.%N) - $t0" | bc) s ($(date -u +%F))"
  "$regula" fsc --i1 "regula_$s/run_half1_class001_unfil.mrc" --i2 "regula_$s/run_half2_class001_unfil.mrc" | tail -2
  evaluate "regula $s" "regula_$s/run_data.star" "regula_$s/run_class001.mrc"
done
if [ "${RUN_RELION:-0}" = "1" ]; then
  rm -rf relion_all && mkdir -p relion_all
  t0=$(date +%s.%N)
  mpirun --allow-run-as-root --oversubscribe -np 3 relion_refine_mpi --auto_refine --split_random_halves \
    --i "$set_dir/data/particles.star" --o relion_all/run "${opts[@]}" --oversampling 1 --pad 2 \
    --dont_combine_weights_via_disc --pool 30 --random_seed 1 > relion_all/log 2>&1
  echo "relion all: $(echo "$(date +%s.%N) - $t0" | bc) s ($(date -u +%F))"
  "$regula" fsc --i1 relion_all/run_half1_class001_unfil.mrc --i2 relion_all/run_half2_class001_unfil.mrc | tail -2
  evaluate "relion all" relion_all/run_data.star relion_all/run_class001.mrc
fi

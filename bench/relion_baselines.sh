#!/usr/bin/env bash
# Run RELION 3.1.3 on the acceptance data sets once and record wall times.
# Usage: bench/relion_baselines.sh [2d] [class3d] [refine] [trpv55] [apo] [1u6g] [trpv55_acc]   (default: the first
# three)
# (trpv55, apo, 1u6g: auto-refine on the high-resolution sets of bench/make_hires_datasets.sh with RELION's GUI
# defaults; trpv55_acc: the trpv55 set with the sampling of the 70S acceptance command, `refine` below:
# --auto_local_healpix_order 3 --offset_step 2)
# Results: bench/out/relion_<job>/ and a line per job in bench/out/relion_times.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
jobs=("$@"); [ ${#jobs[@]} -gt 0 ] || jobs=(2d class3d refine)
bench/make_datasets.sh "$OUT"
hires() {  # set, particle diameter (Å), symmetry[, job name, local order, offset step]: RELION's GUI defaults
  local job=${4:-$1}
  bench/make_hires_datasets.sh "$OUT" "$1"
  run "$job" mpirun --allow-run-as-root --oversubscribe -np 3 relion_refine_mpi \
    --i "$OUT/$1/particles.star" --o "$OUT/relion_$job/run" --ref "$OUT/$1/ref30.mrc" \
    --auto_refine --split_random_halves --firstiter_cc --ini_high 30 --ctf --flatten_solvent --zero_mask \
    --healpix_order 2 --auto_local_healpix_order "${5:-4}" --offset_range 5 --offset_step "${6:-1}" \
    --low_resol_join_halves 40 --norm --scale --j 1 --particle_diameter "$2" --sym "$3" --pad 2 \
    --dont_combine_weights_via_disc --pool 30 --random_seed 1
}
run() {  # name, command...
  local name=$1; shift
  mkdir -p "$OUT/relion_$name"
  echo "$*" > "$OUT/relion_$name/command.txt"
  local TIMEFORMAT="%R %U %S"
  local times
  times=$( { time "$@" > "$OUT/relion_$name/stdout.txt" 2> "$OUT/relion_$name/stderr.txt" ; } 2>&1 )
  read -r wall user sys <<< "$times"
  printf "%s\t%s\twall %s s\tuser %s s\tsys %s s\t%s\n" "$name" "$(date -u +%FT%TZ)" "$wall" "$user" "$sys" "$*" \
    >> "$OUT/relion_times.tsv"
  echo "relion $name: wall $wall s, user $user s, sys $sys s"
}
for j in "${jobs[@]}"; do
  case $j in
    2d) run 2d relion_refine --i "$OUT/views10/particles.star" --o "$OUT/relion_2d/run" --K 10 --iter 25 \
          --tau2_fudge 2 --ctf --psi_step 6 --offset_range 4 --offset_step 2 --norm --scale --j 2 \
          --particle_diameter 300 --zero_mask --flatten_solvent --dont_combine_weights_via_disc --pool 30 \
          --random_seed 1 ;;
    class3d) run class3d relion_refine --i "$OUT/hetero/particles.star" --o "$OUT/relion_class3d/run" \
          --ref "$OUT/ref40.mrc" --K 2 --tau2_fudge 4 --iter 25 --firstiter_cc --ini_high 40 --ctf \
          --healpix_order 1 --offset_range 4 --offset_step 2 --norm --scale --j 2 --particle_diameter 300 \
          --zero_mask --flatten_solvent --sym C1 --dont_combine_weights_via_disc --pool 30 --random_seed 1 ;;
    refine) run refine mpirun --allow-run-as-root --oversubscribe -np 3 relion_refine_mpi \
          --i "$OUT/refine/particles.star" --o "$OUT/relion_refine/run" --ref "$OUT/ref40.mrc" \
          --auto_refine --split_random_halves --firstiter_cc --ini_high 40 --ctf --flatten_solvent --zero_mask \
          --healpix_order 2 --auto_local_healpix_order 3 --offset_range 5 --offset_step 2 \
          --low_resol_join_halves 40 --norm --scale --j 1 --particle_diameter 300 --sym C1 \
          --dont_combine_weights_via_disc --pool 30 --random_seed 1 ;;
    trpv55) hires trpv55 200 C1 ;;
    apo) hires apo 150 O ;;
    1u6g) hires 1u6g 180 C1 ;;
    trpv55_acc) hires trpv55 200 C1 trpv55_acc 3 2 ;;
    *) echo "unknown job $j"; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Peak memory (maximum resident set size, /usr/bin/time -v) of a short refine3d at box 320: two
# iterations, the second the final one (all frequencies, both halves and the joined map), with --j 2,
# with --j 16 and under `mpirun -np 3` (per process). Data: bench/make_hires_datasets.sh OUT big320.
#
#   bench/refine3d_memory.sh [OUT (bench/out)]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${REGULA:-$PWD/build/bin/regula}
OUT=${1:-bench/out}
d=$OUT/big320
[ -f "$d/particles.star" ] || { echo "refine3d_memory: $d/particles.star is missing (bench/make_hires_datasets.sh $OUT big320)"; exit 1; }
opts=(--i "$d/particles.star" --ref "$d/ref30.mrc" --iter 2 --firstiter_cc --ini_high 30 --ctf --flatten_solvent
      --zero_mask --healpix_order 2 --offset_range 4 --offset_step 2 --particle_diameter 220)
measure() {  # name, command...
  local name=$1; shift
  local log=$d/mem_$name.log
  /usr/bin/time -v "$@" > "$log" 2>&1 || { tail -n 5 "$log"; echo "refine3d_memory: $name failed"; exit 1; }
  printf '%-10s peak RSS %6.2f GB   wall %s\n' "$name" "$(awk '/Maximum resident set size/ {print $6 / 1048576}' "$log")" \
    "$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")"
}
echo "refine3d at box 320, $(date -u +%F), $(nproc) cores"
measure j2 "$R" --quiet refine3d --o "$d/mem_j2/run" --j 2 "${opts[@]}"
measure j16 "$R" --quiet refine3d --o "$d/mem_j16/run" --j 16 "${opts[@]}"
# Under mpirun, /usr/bin/time runs inside each rank: the largest of the three is reported.
for r in 0 1 2; do rm -f "$d/mem_np3_rank$r.log"; done
mpirun --allow-run-as-root --oversubscribe -np 3 bash -c \
  "/usr/bin/time -v -o $d/mem_np3_rank\${OMPI_COMM_WORLD_RANK}.log $R --quiet refine3d --o $d/mem_np3/run --j 1 ${opts[*]}"
for r in 0 1 2; do
  printf 'np3 rank %d peak RSS %6.2f GB\n' "$r" "$(awk '/Maximum resident set size/ {print $6 / 1048576}' "$d/mem_np3_rank$r.log")"
done

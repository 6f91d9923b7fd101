#!/bin/bash
# 3D auto-refinement on a high-resolution set (bench/make_hires_datasets.sh): Regula against RELION 3.1.3's
# recorded run of the same set (bench/relion_baselines.sh SET).
#
#   bench/refine3d_hires_vs_relion.sh SET [OUT (bench/out)]    SET: apo 1u6g trpv55 trpv55_acc; REGULA, THREADS (2)
#
# trpv55_acc: the trpv55 data with the 70S acceptance command's sampling (--auto_local_healpix_order 3
# --offset_step 2) instead of RELION's GUI defaults (4, 1).
# Runs `regula refine3d` with the options of RELION's command (bench/relion_baselines.sh hires()), timed by
# /usr/bin/time -v (wall and peak memory), unless OUT/regula_SET/run_class001.mrc exists (REDO=1 to run it
# again). Then for each program that has a final map: the gold-standard resolution (FSC 0.143 of the
# unfiltered half maps, by `regula fsc` for both), the median angular error modulo the symmetry group and
# the median origin error against the truth, where the FSC of the final map against the true map crosses
# 0.5 and 0.143 (bench/evaluate_refine.py, numpy), and both FSC curves side by side.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
set_name="${1:?usage: refine3d_hires_vs_relion.sh apo|1u6g|trpv55 [OUT]}"
out="${2:-$repo/bench/out}"
regula="${REGULA:-$repo/build/bin/regula}"
threads="${THREADS:-2}"
data=$set_name local_order=4 offset_step=1
case $set_name in
  apo) diameter=150 sym=O ;;
  1u6g) diameter=180 sym=C1 ;;
  trpv55) diameter=200 sym=C1 eval_sym=C4 ;;  # refined in C1; TRPV1 is C4, so poses are compared modulo C4
  trpv55_acc) diameter=200 sym=C1 eval_sym=C4 data=trpv55 local_order=3 offset_step=2 ;;
  *) echo "unknown set $set_name"; exit 2 ;;
esac
d="$out/$data"
[ -f "$d/particles.star" ] || REGULA="$regula" "$here/make_hires_datasets.sh" "$out" "$data"
mine="$out/regula_$set_name${TAG:-}"  # TAG: a suffix to keep runs apart (e.g. under another OPENBLAS_CORETYPE)
if [ ! -f "$mine/run_class001.mrc" ] || [ "${REDO:-0}" = 1 ]; then
  mkdir -p "$mine"
  /usr/bin/time -v -o "$mine/time.txt" "$regula" --quiet refine3d --i "$d/particles.star" --o "$mine/run" \
    --ref "$d/ref30.mrc" --firstiter_cc --ini_high 30 --ctf --flatten_solvent --zero_mask --healpix_order 2 \
    --auto_local_healpix_order "$local_order" --offset_range 5 --offset_step "$offset_step" --low_resol_join_halves 40 \
    --particle_diameter "$diameter" --sym "$sym" --pad 2 --j "$threads" 2> "$mine/log.txt"
fi
wall() {  # seconds from /usr/bin/time -v's "Elapsed (wall clock) time (h:mm:ss or m:ss): ..."
  awk -F': ' '/Elapsed/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"
}
t_regula=$(wall "$mine/time.txt")
rss=$(awk -F': ' '/Maximum resident/{printf "%.2f", $2/1048576}' "$mine/time.txt")
t_relion=$(awk -F'\t' -v s="$set_name" '$1==s{split($3,a," "); t=a[2]} END{print t}' \
  "$repo/bench/results/relion_times.tsv")
echo "regula refine3d $set_name: ${t_regula} s wall (--j $threads), peak RSS ${rss} GB"
if [ -n "$t_relion" ]; then
  echo "RELION 3.1.3 (bench/results/relion_times.tsv): ${t_relion} s; ratio $(echo "scale=3; $t_regula / $t_relion" | bc)"
fi
for who in regula relion; do
  r="$out/${who}_$set_name"
  [ $who = regula ] && r=$mine
  [ -f "$r/run_class001.mrc" ] || { echo "== $who: no final map in $r"; continue; }
  echo "== $who"
  "$regula" --quiet fsc --i1 "$r/run_half1_class001_unfil.mrc" --i2 "$r/run_half2_class001_unfil.mrc" | tail -1
  /usr/bin/python3 "$here/evaluate_refine.py" --sym "${eval_sym:-$sym}" "$d/truth.star" "$r/run_data.star" "$r/run_class001.mrc" \
    "$d/truth_model.mrc" "$r/fsc_vs_truth.tsv"
done
if [ -f "$out/relion_$set_name/fsc_vs_truth.tsv" ]; then
  echo "== FSC against the true map (shell, Å, regula, relion)"
  paste <(cut -f1-3 "$mine/fsc_vs_truth.tsv") <(cut -f3 "$out/relion_$set_name/fsc_vs_truth.tsv") | sed -n 2,200p
fi

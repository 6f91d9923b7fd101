#!/bin/bash
# 3D auto-refinement of the simulated 70S ribosome: Regula against RELION 3.1.3's recorded run.
#
#   bench/refine3d_vs_relion.sh [OUT (bench/out)]    REGULA=path/to/regula, THREADS (2)
#
# Uses the data made by bench/make_datasets.sh (2,000 particles, box 96, 4 Å/px, SNR 0.05, defocus
# 1-3 µm; reference = the true map low-passed to 40 Å) and RELION's run recorded by
# bench/relion_baselines.sh in OUT/relion_refine (bench/results/ keeps its numbers). Runs
# `regula refine3d` with the options of RELION's command, then prints Regula's wall time, the ratio
# to RELION's recorded wall time, the gold-standard resolution of both (FSC 0.143 of the unfiltered
# half maps, computed the same way for both by `regula fsc`), the median angular and origin errors
# against the truth, and the FSC of each final map against the true map per shell, side by side.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$repo/bench/out}"
regula="${REGULA:-$repo/build/bin/regula}"
threads="${THREADS:-2}"
[ -f "$out/refine/particles.star" ] || REGULA="$regula" "$here/make_datasets.sh" "$out"
rel="$out/relion_refine"
mkdir -p "$out/regula_refine"
t0=$(date +%s.%N)
"$regula" --quiet refine3d --i "$out/refine/particles.star" --o "$out/regula_refine/run" --ref "$out/ref40.mrc" \
  --firstiter_cc --ini_high 40 --ctf --flatten_solvent --zero_mask --healpix_order 2 --auto_local_healpix_order 3 \
  --offset_range 5 --offset_step 2 --low_resol_join_halves 40 --particle_diameter 300 --sym C1 --j "$threads"
t1=$(date +%s.%N)
t_regula=$(echo "$t1 - $t0" | bc)
t_relion=$(awk -F'\t' '$1=="refine"{split($3,a," "); t=a[2]} END{print t}' "$repo/bench/results/relion_times.tsv")
echo "regula refine3d: ${t_regula} s wall (--j $threads); RELION (last recorded run): ${t_relion} s; ratio $(echo "scale=3; $t_regula / $t_relion" | bc)"
for who in regula relion; do
  d="$out/${who}_refine"
  echo "== $who"
  "$regula" --quiet fsc --i1 "$d/run_half1_class001_unfil.mrc" --i2 "$d/run_half2_class001_unfil.mrc"
  /usr/bin/python3 "$here/evaluate_refine.py" "$out/refine/truth.star" "$d/run_data.star" "$d/run_class001.mrc" \
    "$out/full96.mrc" "$d/fsc_vs_truth.tsv"
done
echo "== FSC against the true map (shell, Å, regula, relion)"
paste <(cut -f1-3 "$out/regula_refine/fsc_vs_truth.tsv") <(cut -f3 "$out/relion_refine/fsc_vs_truth.tsv") | sed -n 2,36p

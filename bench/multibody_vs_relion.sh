#!/bin/bash
# Multi-body refinement side by side with RELION 3.1.3 (issue 19): a two-body complex whose second
# body turns about a hinge by a known angle per particle (bench/multibody_sim.py).
# RELION runs as relion_refine_mpi with 3 ranks (its gold-standard refinements need MPI), --j 1.
#   1. consensus: RELION's auto-refine from the true poses (local searches from HEALPix order 4), the
#      same for both programs (R_cons);
#   2. multi-body refinement from that consensus with the same options: relion_refine --continue ...
#      --multibody_masks (R_mb) and regula refine3d --continue ... --multibody_masks (G_mb);
#   3. the principal components of the body motions: relion_flex_analyse (R_mb/analyse) and regula
#      flex_analyse (G_mb/analyse).
# Scored by bench/multibody_accuracy.py: per particle the rotation of body 2 relative to body 1 against
# the true hinge rotation (median error, correlation of the hinge angle), and the correlation of the
# first principal component with the true hinge angle.
#
#   bench/multibody_vs_relion.sh OUT STRUCT SEED [N (3000)]
#     STRUCT: 1u6g (3 Å/px, box 84, diameter 230 Å) or 3j5p (TRPV1: 3 Å/px, box 64, diameter 170 Å)
#     REGULA=path/to/regula; SKIP_RELION=1 reuses OUT/R_*
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="$1"; struct="$2"; seed="$3"; n="${4:-3000}"
regula="${REGULA:-$root/build/bin/regula}"
shared="${SHARED:-$root/../shared}"
case "$struct" in
  1u6g) model=1u6g.pdb; apix=3.0; box=84; diameter=230 ;;
  3j5p) model=3j5p.pdb; apix=3.0; box=64; diameter=170 ;;
  *) echo "unknown structure $struct (1u6g or 3j5p)"; exit 2 ;;
esac
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$out"
if [ ! -f truth.star ]; then
  /usr/bin/python3 "$here/multibody_sim.py" "$shared/data/models/$model" . --apix "$apix" --box "$box" --n "$n" \
    --seed "$seed" --regula "$regula" --tool "$shared/tools/model_to_map.py"
fi
timed() {  # NAME command...: runs it, records wall and user time in NAME.time
  local name="$1"; shift
  /usr/bin/time -f "%e s wall, %U s user, %M KB peak RSS" -o "$name.time" "$@" > "$name.log" 2>&1
  echo "$name: $(tail -1 "$name.time")"
}
search=(--healpix_order 4 --auto_local_healpix_order 4 --offset_range 3 --offset_step 1.5)
if [ -z "${SKIP_RELION:-}" ] || [ ! -f R_mb/run_data.star ]; then
  rm -rf R_cons R_mb; mkdir -p R_cons R_mb
  mpi=(mpirun --allow-run-as-root --oversubscribe -np 3)  # leader + one rank per half, --j 1 each (2 cores)
  timed R_cons "${mpi[@]}" relion_refine_mpi --i truth.star --o R_cons/run --ref full.mrc --firstiter_cc --ini_high 20 --auto_refine \
    --split_random_halves "${search[@]}" --ctf --particle_diameter "$diameter" --flatten_solvent --zero_mask --norm \
    --scale --pad 2 --sym C1 --low_resol_join_halves 40 --random_seed 1 --j 1 --dont_combine_weights_via_disc
  cons=$(ls R_cons/run_it*_optimiser.star | tail -1)
  echo "$cons" > R_cons/last_optimiser.txt
  timed R_mb "${mpi[@]}" relion_refine_mpi --continue "$cons" --o R_mb/run --multibody_masks bodies.star \
    --solvent_correct_fsc --oversampling 1 "${search[@]}" --reconstruct_subtracted_bodies --j 1 \
    --dont_combine_weights_via_disc
  timed R_flex relion_flex_analyse --PCA_orient --model R_mb/run_model.star --data R_mb/run_data.star \
    --bodies bodies.star --o R_mb/analyse --do_maps --k 3 --write_pca_projections
fi
cons=$(cat R_cons/last_optimiser.txt)
rm -rf G_mb; mkdir -p G_mb
timed G_mb "$regula" refine3d --continue "$cons" --o G_mb/run --multibody_masks bodies.star --oversampling 1 \
  --healpix_order 4 --offset_range 3 --offset_step 1.5 --particle_diameter "$diameter" --j 2 --seed 1
timed G_flex "$regula" flex_analyse --data G_mb/run_data.star --bodies bodies.star --model G_mb/run_model.star \
  --o G_mb/analyse --do_maps --k 3 --maps_per_movie 10
echo "RELION 3.1.3: $(/usr/bin/python3 "$here/multibody_accuracy.py" truth.star bodies.star hinge.txt R_mb/run_data.star \
  R_mb/analyse_projections_along_eigenvectors_all_particles.txt)"
echo "Regula:       $(/usr/bin/python3 "$here/multibody_accuracy.py" truth.star bodies.star hinge.txt G_mb/run_data.star \
  G_mb/analyse_projections_along_eigenvectors_all_particles.txt)"

#!/bin/bash
# Focused classification side by side with RELION 3.1.3 (issue 19): particles of a complex of which
# half carry a small subunit; both programs run the same steps, each with its own programs:
#   1. a consensus reconstruction at the particles' poses (K=1, --skip_align, ITER_CONS iterations:
#      the true poses of the simulation, sim/truth.star, stand for a consensus refinement's, the same
#      for both; its rlnClassNumber, the truth, is overwritten by the K=1 run);
#   2. subtraction of everything outside a soft mask on the subunit (relion_particle_subtract /
#      regula particle_subtract with that consensus);
#   3. classification of the subtracted particles into 2 classes without alignment, with the mask
#      as the solvent mask (relion_refine / regula class3d --K 2 --skip_align --solvent_mask).
# Scored: the fraction of particles in their true class (bench/focused_accuracy.py, matched through
# rlnImageOriginalName), under the better labelling of the two classes; also Regula's steps 2 and 3
# from RELION's consensus (X_*), which separates the consensus map from the rest.
#
#   bench/focused_vs_relion.sh OUT STRUCT SEED [N (2000)] [SNR (0.05)]
#     STRUCT: 1u6g (1U6G without chain B, Rbx1: 10 of 205 kDa; 2 Å/px, box 128) or
#             apo (apoferritin 6Z6U without one of its 24 chains: 18 of 432 kDa; 2 Å/px, box 96)
#     REGULA=path/to/regula; SKIP_RELION=1 reuses OUT/R_*
# Maps: ../shared/tools/model_to_map.py (the complex centred, then the same coordinates without the
# subunit); the mask: the difference of the two maps blurred (Gaussian, 2 px), cut at 10% of its
# largest value, dilated by 3 px, a 5 px raised-cosine edge (bench/focused_maps.py). Particles:
# `regula simulate --i2 ... --frac2 0.5`, CTF with defocus 1-3 µm, shifts up to 3 px.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="$1"; struct="$2"; seed="$3"; n="${4:-2000}"; snr="${5:-0.05}"
regula="${REGULA:-$root/build/bin/regula}"
shared="${SHARED:-$root/../shared}"
case "$struct" in
  1u6g) model=1u6g.pdb; chain=B; apix=2.0; box=128; diameter=220 ;;
  apo) model=6z6u.pdb; chain=A; apix=2.0; box=96; diameter=150 ;;
  *) echo "unknown structure $struct (1u6g or apo)"; exit 2 ;;
esac
iter_cons=25
cons=$(printf "run_it%03d" "$iter_cons")
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$out"
if [ ! -f maps_done ]; then
  /usr/bin/python3 "$shared/tools/model_to_map.py" "$shared/data/models/$model" full.mrc --apix "$apix" --box "$box" \
    --out-model full_aligned.cif > /dev/null
  /usr/bin/python3 "$here/focused_maps.py" full_aligned.cif "$chain" "$shared/tools/model_to_map.py" "$apix" "$box"
  touch maps_done
fi
if [ ! -f sim/particles.star ]; then
  "$regula" --quiet simulate --i full.mrc --i2 without.mrc --frac2 0.5 --o sim --n "$n" --seed "$seed" --snr "$snr" \
    --defocus_min 10000 --defocus_max 30000 --max_shift 3 --j 2
fi
common=(--ctf --particle_diameter "$diameter" --tau2_fudge 4 --flatten_solvent --zero_mask --norm --scale --pad 2
  --random_seed 1)  # (RELION's GUI passes --norm --scale; they are Regula's defaults)
timed() {  # NAME command...: runs it, records wall and user time in NAME.time
  local name="$1"; shift
  /usr/bin/time -f "%e s wall, %U s user, %M KB peak RSS" -o "$name.time" "$@" > "$name.log" 2>&1
  echo "$name: $(tail -1 "$name.time")"
}
if [ -z "${SKIP_RELION:-}" ] || [ ! -f R_cls/run_it025_data.star ]; then
  rm -rf R_cons R_sub R_cls; mkdir -p R_cons R_cls
  timed R_cons relion_refine --i sim/truth.star --o R_cons/run --ref full.mrc --ini_high 30 --K 1 --iter "$iter_cons" \
    --skip_align "${common[@]}" --j 2 --dont_combine_weights_via_disc
  timed R_sub relion_particle_subtract --i "R_cons/${cons}_optimiser.star" --mask subunit_mask.mrc --o R_sub/
  timed R_cls relion_refine --i R_sub/particles_subtracted.star --o R_cls/run --ref "R_cons/${cons}_class001.mrc" \
    --ini_high 20 --K 2 --iter 25 --skip_align --solvent_mask subunit_mask.mrc "${common[@]}" --j 2 \
    --dont_combine_weights_via_disc
fi
rm -rf G_cons G_sub G_cls; mkdir -p G_cons G_cls
timed G_cons "$regula" class3d --i sim/truth.star --o G_cons/run --ref full.mrc --ini_high 30 --K 1 --iter "$iter_cons" \
  --skip_align "${common[@]}" --j 2
timed G_sub "$regula" particle_subtract --i "G_cons/${cons}_optimiser.star" --mask subunit_mask.mrc --o G_sub/ --j 2
timed G_cls "$regula" class3d --i G_sub/particles_subtracted.star --o G_cls/run --ref "G_cons/${cons}_class001.mrc" \
  --ini_high 20 --K 2 --iter 25 --skip_align --solvent_mask subunit_mask.mrc "${common[@]}" --j 2
# Steps 2 and 3 of Regula from RELION's consensus (which of the steps makes a difference).
rm -rf X_sub X_cls; mkdir -p X_cls
"$regula" --quiet particle_subtract --i "R_cons/${cons}_optimiser.star" --mask subunit_mask.mrc --o X_sub/ --j 2
"$regula" --quiet class3d --i X_sub/particles_subtracted.star --o X_cls/run --ref "R_cons/${cons}_class001.mrc" \
  --ini_high 20 --K 2 --iter 25 --skip_align --solvent_mask subunit_mask.mrc "${common[@]}" --j 2
echo "RELION 3.1.3: $(/usr/bin/python3 "$here/focused_accuracy.py" sim/truth.star R_cls/run_it025_data.star)"
echo "Regula:       $(/usr/bin/python3 "$here/focused_accuracy.py" sim/truth.star G_cls/run_it025_data.star)"
echo "Regula's subtraction and classification from RELION's consensus: $(/usr/bin/python3 "$here/focused_accuracy.py" \
  sim/truth.star X_cls/run_it025_data.star)"

#!/bin/bash
# CTF estimation against the truth on simulated movies (issue 16's acceptance: defocus 0.5-4 µm,
# astigmatism 0-2,000 Å, at 200 and 300 kV, from the micrograph and from the spectra alone):
# regula simulate_movies, regula motioncorr with power spectra (--grouping_for_ps 4), then regula ctffind
# on the dose-weighted micrographs and on the spectra (--use_given_ps), scored by bench/ctffind_accuracy.py.
#
#   bench/ctffind_vs_truth.sh OUT [KV (300)] [SEED (61)] [N (20)]
#     REGULA=path/to/regula, THREADS (2), SIZE (2048), FRAMES (40), PS_GROUP (frames per power-spectrum
#     group, 4: RELION's GUI default of 4 e/Å² at 1 e/Å² per frame); an existing OUT/sim is reused
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"; kv="${2:-300}"; seed="${3:-61}"; n="${4:-20}"
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
threads="${THREADS:-2}"
mkdir -p "$out"
cd "$out"
"$here/simulated_movies.sh" "$n" "$seed" --voltage "$kv" --defocus_min 5000 --defocus_max 40000 \
  --astigmatism_max 2000 --no_ideal
g="${PS_GROUP:-4}"
mc="MC"; [ "$g" != 4 ] && mc="MC_g$g"
if [ ! -f "$mc/corrected_micrographs.star" ]; then
  "$regula" --quiet motioncorr --i sim/movies.star --o "$mc/" --j "$threads" --bfactor 150 --dose_weighting \
    --dose_per_frame 1.0 --preexposure 0 --grouping_for_ps "$g"
fi
fit=(--ResMin 30 --ResMax 5 --dFMin 3000 --dFMax 50000 --FStep 250 --j "$threads")
cp="CP"; [ "$g" != 4 ] && cp="CP_g$g"
rm -rf CM "$cp"
/usr/bin/time -f "%e s wall, %U s user" -o CM.time "$regula" --quiet ctffind --i "$mc/corrected_micrographs.star" --o CM/ "${fit[@]}"
/usr/bin/time -f "%e s wall, %U s user" -o "$cp.time" "$regula" --quiet ctffind --i "$mc/corrected_micrographs.star" --o "$cp/" --use_given_ps "${fit[@]}"
echo "ctffind on the micrographs ($n): $(cat CM.time); on the spectra alone ($g frames per group): $(cat "$cp.time")"
/usr/bin/python3 "$here/ctffind_accuracy.py" sim CM/micrographs_ctf.star "$cp/micrographs_ctf.star"

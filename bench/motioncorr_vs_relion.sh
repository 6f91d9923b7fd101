#!/bin/bash
# Motion correction side by side with RELION 3.1.3's own implementation (relion_run_motioncorr
# --use_own) on simulated movies with ground truth (regula simulate_movies), same options for both,
# then bench/motioncorr_frc.py: RMS error of the per-frame global shifts against the truth and the FRC
# of each dose-weighted micrograph against the drift-free, noise-free one.
#
#   bench/motioncorr_vs_relion.sh OUT [N (20)] [SEED (41)] [LOCAL_MAX px (0)] [PATCHES (1)]
#     REGULA=path/to/regula, THREADS (2), SIZE (2048), FRAMES (40), GROUP (--group_frames, 1),
#     SKIP_RELION=1 reuses OUT/RELION
#
# PATCHES 1 is global alignment only; PATCHES 5 gives both programs --patch_x 5 --patch_y 5 (local
# motion; use LOCAL_MAX > 0 so the movies have some). The map is tests/python/movie_data.py's blob map
# (64 px, 1 Å/px); the movies are SIZE x SIZE px, FRAMES frames of 1 e/Å², 200 particles each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"; n="${2:-20}"; seed="${3:-41}"; local_max="${4:-0}"; patches="${5:-1}"
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
threads="${THREADS:-2}"
mkdir -p "$out"
cd "$out"
"$here/simulated_movies.sh" "$n" "$seed" --local_max "$local_max"
opts=(--j "$threads" --bfactor 150 --patch_x "$patches" --patch_y "$patches" --group_frames "${GROUP:-1}"
      --dose_weighting --dose_per_frame 1.0 --preexposure 0)
if [ -z "${SKIP_RELION:-}" ] || [ ! -d RELION ]; then
  rm -rf RELION
  load=$(cut -d' ' -f1-3 /proc/loadavg); start=$(date -u +%F' '%H:%M)
  /usr/bin/time -f "%e s wall, %U s user, %M KB peak RSS" -o RELION.time \
    relion_run_motioncorr --i sim/movies.star --o RELION/ --use_own "${opts[@]}" > RELION.log 2>&1
  echo "RELION 3.1.3 (started $start UTC, load before $load): $(cat RELION.time)"
fi
rm -rf REGULA
load=$(cut -d' ' -f1-3 /proc/loadavg); start=$(date -u +%F' '%H:%M)
/usr/bin/time -f "%e s wall, %U s user, %M KB peak RSS" -o REGULA.time \
  "$regula" motioncorr --i sim/movies.star --o REGULA/ "${opts[@]}" > REGULA.log 2>&1
echo "Regula (started $start UTC, load before $load): $(cat REGULA.time)"
/usr/bin/python3 "$here/motioncorr_frc.py" sim regula=REGULA relion=RELION --tsv frc.tsv

#!/bin/bash
# The simulated movies of the motion and CTF benchmarks, made once: in the current directory, map.mrc
# (tests/python/movie_data.py's 64 px blob map at 1 Å/px) and sim/ from `regula simulate_movies` with N
# movies of SIZE x SIZE px (2048), FRAMES frames (40) of 1 e/Å², 200 particles each, and the extra
# simulate_movies options given; nothing is done when sim/movies.star exists.
#   bench/simulated_movies.sh N SEED [simulate_movies options...]     REGULA, THREADS (2), SIZE, FRAMES
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n="$1"; seed="$2"; shift 2
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
[ -f sim/movies.star ] && exit 0
/usr/bin/python3 -c "import sys; sys.path.insert(0, '$here/../tests/python'); import movie_data; movie_data.blob_map('map.mrc', n=64)"
"$regula" --quiet simulate_movies --i map.mrc --o sim --n "$n" --size "${SIZE:-2048}" --frames "${FRAMES:-40}" \
  --dose_per_frame 1.0 --particles 200 --seed "$seed" --j "${THREADS:-2}" "$@"

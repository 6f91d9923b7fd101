#!/bin/bash
# De novo initial model on the auto-refine acceptance data (bench/make_datasets.sh): 2,000 particles,
# box 96, 4 Å/px, SNR 0.05. Prints the wall time and the FSC against the true map at 25 Å after the
# best rigid alignment in either hand (bench/align_maps.py).
#   bench/initial_model_check.sh [OUT (bench/out)]     REGULA=path/to/regula, THREADS (2)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
mkdir -p "$out/initial_model"
t0=$(date +%s.%N)
"$regula" --quiet initial_model --i "$out/refine/particles.star" --o "$out/initial_model/run" --ctf \
  --particle_diameter 300 --j "${THREADS:-2}"
t1=$(date +%s.%N)
echo "regula initial_model: $(echo "$t1 - $t0" | bc) s wall"
/usr/bin/python3 "$here/align_maps.py" "$out/initial_model/run_initial_model.mrc" "$out/full96.mrc" 4

#!/bin/bash
# De novo initial model on the auto-refine acceptance data (bench/make_datasets.sh): 2,000 particles,
# box 96, 4 Å/px, SNR 0.05. Prints the wall time and the FSC against the true map at 25 Å after the
# best rigid alignment in either hand (`regula fsc --align`: rotation, mirror and shift; before
# 2026-12-06 bench/align_maps.py, rotation and hand without the shift, which reads lower).
#   bench/initial_model_check.sh [OUT (bench/out)] [initial_model options...]   REGULA=path/to/regula, THREADS (2)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
shift || true
regula="${REGULA:-$(dirname "$here")/build/bin/regula}"
mkdir -p "$out/initial_model"
t0=$(date +%s.%N)
"$regula" --quiet initial_model --i "$out/refine/particles.star" --o "$out/initial_model/run" --ctf \
  --particle_diameter 300 --j "${THREADS:-2}" "$@"
t1=$(date +%s.%N)
echo "regula initial_model: $(echo "$t1 - $t0" | bc) s wall"
"$regula" --quiet fsc --i1 "$out/full96.mrc" --i2 "$out/initial_model/run_initial_model.mrc" --align \
  --o "$out/initial_model/vs_truth" --j "${THREADS:-2}"
/usr/bin/python3 - "$out/initial_model/vs_truth_fsc.star" <<'PY'
import sys, gemmi
b = gemmi.cif.read(sys.argv[1]).sole_block()
f = [float(x) for x in b.find_loop('_rlnFourierShellCorrelation')]
r = [float(x) for x in b.find_loop('_rlnAngstromResolution')]
i = min(range(len(r)), key=lambda k: abs(r[k] - 25))
print(f"FSC with the true map at {r[i]:.1f} A after the alignment: {f[i]:.3f}")
PY

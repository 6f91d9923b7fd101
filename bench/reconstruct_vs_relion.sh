#!/usr/bin/env bash
# regula reconstruct vs relion_reconstruct (RELION 3.1.3) on the same simulated particles.
# Usage: bench/reconstruct_vs_relion.sh [N_PARTICLES] [BOX] [THREADS]   (default 2000 96 1)
# Env: BUILD (default build), OUT (default bench/out/reconstruct).
# relion_reconstruct has no thread option (it runs on one thread), so THREADS applies to
# regula only; compare at THREADS=1 for a like-for-like number.
# Prints both wall times, their ratio and the correlation of the two maps inside a soft
# sphere of radius 0.35 * BOX (python3-numpy + python3-mrcfile).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-2000}
BOX=${2:-96}
THREADS=${3:-1}
BUILD=${BUILD:-build}
case $BUILD in /*) REGULA=$BUILD/bin/regula ;; *) REGULA=$ROOT/$BUILD/bin/regula ;; esac
OUT=${OUT:-bench/out/reconstruct}
mkdir -p "$OUT"
cd "$OUT"
[ -x "$REGULA" ] || { echo "no $REGULA; build first (BUILD=...)"; exit 2; }
command -v relion_reconstruct > /dev/null || { echo "relion_reconstruct not installed"; exit 2; }

# The 70S test map (65^3) padded into a BOX^3 box, labelled 4 A/px.
/usr/bin/python3 - "$ROOT/tests/data/proj/clean70SRibosome_vol_65p.mrc" "$BOX" <<'PY'
import sys, numpy as np, mrcfile
a = mrcfile.open(sys.argv[1], permissive=True).data.astype(np.float32)
n = int(sys.argv[2]); o = n // 2 - a.shape[0] // 2
big = np.zeros((n, n, n), np.float32); big[o:o + a.shape[0], o:o + a.shape[1], o:o + a.shape[2]] = a
with mrcfile.new("map.mrc", overwrite=True) as m:
    m.set_data(big); m.voxel_size = 4.0
PY
"$REGULA" --quiet simulate --i map.mrc --box "$BOX" --angpix 4 --n "$N" --snr 0.05 --seed 1 --o sim --j 2

now() { date +%s.%N; }
t0=$(now); "$REGULA" --quiet reconstruct --i sim/truth.star --o regula.mrc --ctf --j "$THREADS"; t1=$(now)
relion_reconstruct --i sim/truth.star --o relion.mrc --ctf > relion_stdout.txt 2>&1; t2=$(now)
t_regula=$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")
t_relion=$(awk "BEGIN{printf \"%.2f\", $t2 - $t1}")
corr=$(/usr/bin/python3 - "$BOX" <<'PY'
import sys, numpy as np, mrcfile
n = int(sys.argv[1])
a = mrcfile.open("regula.mrc").data.astype(float); b = mrcfile.open("relion.mrc").data.astype(float)
z, y, x = np.indices(a.shape) - n // 2
r = np.sqrt(x * x + y * y + z * z); R = 0.35 * n; e = 5
w = np.where(r <= R, 1.0, np.where(r < R + e, 0.5 + 0.5 * np.cos(np.pi * (r - R) / e), 0.0))
ma, mb = (w * a).sum() / w.sum(), (w * b).sum() / w.sum()
print(f"{(w * (a - ma) * (b - mb)).sum() / np.sqrt((w * (a - ma) ** 2).sum() * (w * (b - mb) ** 2).sum()):.5f}")
PY
)
echo "particles $N, box $BOX, regula --j $THREADS"
echo "regula reconstruct:  $t_regula s"
echo "relion_reconstruct:  $t_relion s"
echo "ratio regula/relion: $(awk "BEGIN{printf \"%.3f\", $t_regula / $t_relion}")"
echo "masked correlation:  $corr"

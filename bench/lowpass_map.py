"""Low-pass a map (numpy + mrcfile, independent of Regula): raised-cosine edge 2 Fourier px wide
ending at the given resolution.

Usage: lowpass_map.py IN.mrc OUT.mrc RESOLUTION_A"""
import sys

import mrcfile
import numpy as np

src, dst, res = sys.argv[1], sys.argv[2], float(sys.argv[3])
with mrcfile.open(src, permissive=True) as m:
    v = np.asarray(m.data, dtype=np.float64)
    apix = float(m.voxel_size.x)
n = v.shape[0]
k = np.fft.fftfreq(n) * n
kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(n) * n, indexing="ij")
r = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2)
edge = n * apix / res  # shell of the resolution
w = np.clip((edge - r) / 2.0, 0.0, 1.0)
f = np.fft.rfftn(v) * (0.5 - 0.5 * np.cos(np.pi * w))
out = np.fft.irfftn(f, s=v.shape).astype(np.float32)
with mrcfile.new(dst, overwrite=True) as m:
    m.set_data(out)
    m.voxel_size = apix

"""Maps for the acceptance data sets (numpy + mrcfile, independent of Regula's code).

full96.mrc: the ribosome map windowed (zero-padded about its centre n/2) to 96^3 at 4 Å/px.
cut96.mrc:  the same with a spherical region holding >= 15% of the positive mass set to zero.
ref40.mrc:  full96 low-passed to 40 Å (raised-cosine edge over 2 Fourier pixels) - the reference.
"""
import sys
import numpy as np
import mrcfile

src, out = sys.argv[1], sys.argv[2]
ANGPIX, BOX = 4.0, 96
with mrcfile.open(src, permissive=True) as m:
    v = np.asarray(m.data, dtype=np.float32)
n = v.shape[0]
full = np.zeros((BOX, BOX, BOX), np.float32)
o = BOX // 2 - n // 2
full[o:o + n, o:o + n, o:o + n] = v


def save(name, data):
    with mrcfile.new(f"{out}/{name}", overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        m.voxel_size = ANGPIX


# Remove a sphere around a point off-centre that holds >= 15% of the positive mass.
pos = np.clip(full, 0, None)
total = pos.sum()
zz, yy, xx = np.indices(full.shape)
c = BOX // 2
# centre of the removed region: 40% of the way to the far edge of the mass along +x
com = np.array([(pos * a).sum() / total for a in (zz, yy, xx)])
centre = com + np.array([0, 0, 18.0])
for radius in np.arange(6, 40, 0.5):
    region = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
    frac = pos[region].sum() / total
    if frac >= 0.16:
        break
cut = full.copy()
cut[region] = 0
print(f"cut96: removed {frac:.3f} of the positive mass (sphere radius {radius} px)")

k = np.fft.fftfreq(BOX)
kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
r = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2) * BOX  # Fourier pixels
rc = BOX * ANGPIX / 40.0
w = np.clip((rc + 1 - r) / 2.0, 0, 1)
w = 0.5 - 0.5 * np.cos(np.pi * w)
ref = np.real(np.fft.ifftn(np.fft.fftn(full) * w)).astype(np.float32)
save("full96.mrc", full)
save("cut96.mrc", cut)
save("ref40.mrc", ref)

"""Best rigid alignment (rotation about the centre + either hand) of a map to a reference, by an
exhaustive rotation search on copies cropped in Fourier space to 24 px, then the FSC at full size."""
import sys, numpy as np, mrcfile
from scipy.ndimage import affine_transform

def euler(rot, tilt, psi):
    a, b, g = np.radians(rot), np.radians(tilt), np.radians(psi)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array([[cg*cb*ca - sg*sa, cg*cb*sa + sg*ca, -cg*sb], [-sg*cb*ca - cg*sa, -sg*cb*sa + cg*ca, sg*sb], [sb*ca, sb*sa, cb]])

def crop(v, m):
    n = v.shape[0]; F = np.fft.fftshift(np.fft.fftn(v)); c = n // 2; h = m // 2
    return np.real(np.fft.ifftn(np.fft.ifftshift(F[c-h:c+h, c-h:c+h, c-h:c+h]))) * (m / n) ** 3

def rot(v, R):
    n = v.shape[0]; c = np.array([n // 2] * 3, float)
    return affine_transform(v, R, offset=c - R @ c, order=1)

def fsc(a, b):
    n = a.shape[0]; A, B = np.fft.rfftn(a), np.fft.rfftn(b); k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None]**2 + k[None, :, None]**2 + np.arange(n // 2 + 1)[None, None, :]**2); s = np.rint(r).astype(int).ravel()
    return (np.bincount(s, (A*np.conj(B)).real.ravel()) / np.sqrt(np.bincount(s, (abs(A)**2).ravel()) * np.bincount(s, (abs(B)**2).ravel())))[:n//2+1]

def cc(a, b):
    a = a - a.mean(); b = b - b.mean(); return float((a*b).sum() / np.sqrt((a*a).sum() * (b*b).sum()))

def align(v, t, m=24):
    vs, ts = crop(v, m), crop(t, m)
    best = (-2, None)
    for tilt in np.arange(0, 181, 15):
        for r_ in np.arange(-180, 180, 15 if 0 < tilt < 180 else 360):
            for psi in np.arange(-180, 180, 15):
                R = euler(r_, tilt, psi); s = cc(rot(vs, R), ts)
                if s > best[0]: best = (s, (r_, tilt, psi))
    for step in (5, 2):
        b0 = best[1]
        for dr in (-step, 0, step):
            for dt in (-step, 0, step):
                for dp in (-step, 0, step):
                    e = (b0[0] + dr, b0[1] + dt, b0[2] + dp); s = cc(rot(vs, euler(*e)), ts)
                    if s > best[0]: best = (s, e)
    return best

v = mrcfile.read(sys.argv[1]).astype(np.float64); t = mrcfile.read(sys.argv[2]).astype(np.float64); apix = float(sys.argv[3])
n = v.shape[0]; results = []
for hand in (v, v[::-1].copy()):
    s, e = align(hand, t)
    f = fsc(rot(hand, euler(*e)), t); results.append((f[round(n * apix / 25)], s, f))
f25, s, f = max(results, key=lambda x: x[0])
print(f"FSC at 25 A: {f25:.3f} (correlation {s:.3f}); " + " ".join(f"{x:.2f}" for x in f[:20]))

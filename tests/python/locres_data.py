"""Half maps with a known, spatially varying resolution, for the local-resolution tests and benchmark (numpy
only).

The signal is a cloud of Gaussian "atoms" at random voxel positions inside a sphere (radius `radius` x box,
`density` atoms per voxel), each blurred by its own B-factor B(x), a function of its position: `gradient`
(B rises linearly along x across the sphere), `domain` (B_lo everywhere except a flexible domain, a sphere of
half the radius off the centre, at B_hi, with a smooth transition) or `radial` (B rises with the distance
from the centre). Atoms are grouped into 48 B-factor levels and each level is made exactly in Fourier space
(a lattice of unit deltas times exp(-B s^2 / 4)). Each half map is the signal plus its own white Gaussian
noise of standard deviation `sigma`.

Truth: for atoms of amplitude 1 at voxel density rho (atoms per voxel), random positions, and white noise of
variance sigma^2 per voxel, the expected signal-to-noise ratio per Fourier coefficient of a local window is
rho exp(-B s^2 / 2) / sigma^2, so the expected half-map FSC, SNR / (1 + SNR), crosses 0.143 (SNR = 1/6) at
    d(B) = 1 / s = sqrt(B / (2 ln(6 rho / sigma^2)))  Å,
bounded below by Nyquist (2 x pixel). `truth` is that d at every voxel, from the B(x) of the design; `inside`
marks the voxels far enough inside the sphere for a local window to see atoms all round."""
import numpy as np
import mrcfile

LEVELS = 48


def b_field(design, n, radius, b_lo, b_hi):
    """B(x) in Å^2 on the n^3 grid (indexed [z, y, x]); positions relative to the centre n/2."""
    z, y, x = (np.indices((n, n, n)) - n // 2).astype(np.float64)
    R = radius * n
    if design == "gradient":
        t = np.clip((x + R) / (2 * R), 0, 1)
    elif design == "radial":
        t = np.clip(np.sqrt(x * x + y * y + z * z) / R, 0, 1)
    elif design == "domain":
        c = np.array([0.45, 0.2, -0.1]) * R  # x, y, z of the domain's centre
        r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        t = 1 / (1 + np.exp((r - 0.5 * R) / (0.08 * R)))
    else:
        raise ValueError(design)
    return b_lo + (b_hi - b_lo) * t


def make(n=96, angpix=1.5, design="gradient", b_lo=60.0, b_hi=600.0, radius=0.36, density=0.08, sigma=0.12,
         seed=1):
    """Returns dict(half1, half2, signal, truth, inside, bfactor) as float32/bool arrays indexed [z, y, x]."""
    rng = np.random.default_rng(seed)
    B = b_field(design, n, radius, b_lo, b_hi)
    z, y, x = np.indices((n, n, n)) - n // 2
    in_sphere = x * x + y * y + z * z <= (radius * n) ** 2
    atoms = in_sphere & (rng.random((n, n, n)) < density)
    edges = np.linspace(b_lo, b_hi, LEVELS + 1)
    level = np.clip(np.digitize(B, edges) - 1, 0, LEVELS - 1)
    k = np.fft.fftfreq(n) / angpix
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + (np.fft.rfftfreq(n) / angpix)[None, None, :] ** 2
    F = np.zeros((n, n, n // 2 + 1), np.complex128)
    for lv in range(LEVELS):
        sel = atoms & (level == lv)
        if not sel.any():
            continue
        b = 0.5 * (edges[lv] + edges[lv + 1])
        F += np.fft.rfftn(sel.astype(np.float64)) * np.exp(-b * s2 / 4)
    signal = np.fft.irfftn(F, s=(n, n, n))
    h1 = signal + rng.normal(0, sigma, signal.shape)
    h2 = signal + rng.normal(0, sigma, signal.shape)
    rho = atoms.sum() / in_sphere.sum()
    truth = np.maximum(np.sqrt(B / (2 * np.log(6 * rho / sigma ** 2))), 2 * angpix)
    inside = x * x + y * y + z * z <= (0.8 * radius * n) ** 2
    f32 = lambda a: a.astype(np.float32)
    return dict(half1=f32(h1), half2=f32(h2), signal=f32(signal), truth=f32(truth), inside=inside, bfactor=f32(B))


def write(path, data, angpix):
    with mrcfile.new(str(path), overwrite=True) as o:
        o.set_data(np.asarray(data, dtype=np.float32))
        o.voxel_size = angpix


def correlations(locres, truth, inside):
    """Pearson and Spearman correlation of a local-resolution map with the truth over the `inside` voxels where
    the estimate is defined (> 0)."""
    sel = inside & (locres > 0)
    a, b = locres[sel].astype(np.float64), truth[sel].astype(np.float64)
    pearson = float(np.corrcoef(a, b)[0, 1])
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    spearman = float(np.corrcoef(ra, rb)[0, 1])
    return pearson, spearman

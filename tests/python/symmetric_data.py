"""Small point-group-symmetric ground truths for the refine3d/initial_model symmetry tests (numpy only).

The asymmetric subunit is the 70S ribosome of tests/data/proj (65 px) Fourier-cropped to 20 px (radius
about 8 px above 10% of its maximum), placed off the symmetry axes in a 40-px box and summed over the
group. C4 and D2 (and any group whose operators are signed permutation matrices) are applied as exact
voxel permutations about the centre n/2, so the truth is symmetric to the last bit.

Symmetry operators and the equivalence of orientations follow docs/conventions.md: a map V is
symmetric when V(R x) = V(x) for every operator R; the orientations A and A R (Euler matrix A, ZYZ, map
to image) give the same projection, as in relion_particle_symmetry_expand."""
import numpy as np
import mrcfile

from conftest import DATA, euler, fsc

SUBUNIT = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"
BOX = 40
# Centre of the subunit relative to the box centre (x, y, z) px, off every symmetry axis and plane.
OFFSET = {"C4": (6, 2, 3), "D2": (6, 3, 5)}


def operators(group):
    """The rotations of C4 (4-fold about z) or D2 (2-folds about z and x, hence y): RELION's axes."""
    if group == "C1":
        return [np.eye(3)]
    if group == "C4":
        rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
        return [np.linalg.matrix_power(rz, k) for k in range(4)]
    if group == "D2":
        return [np.diag(d).astype(float) for d in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])]
    raise ValueError(group)


def rotation_angle(R):
    return np.degrees(np.arccos(np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def angular_errors(true_angles, est_angles, group):
    """Per particle: the smallest angle between the true orientation and the estimate's symmetry copies
    A_est R (R in the group), in degrees. Angles are (N, 3) arrays of rot, tilt, psi."""
    At = euler(*np.asarray(true_angles).T)
    Ae = euler(*np.asarray(est_angles).T)
    errs = [rotation_angle(np.swapaxes(At, -1, -2) @ Ae @ R) for R in operators(group)]
    return np.min(errs, axis=0)


def apply_operator(v, R):
    """out(x) = v(c + R (x - c)) for a signed permutation matrix R (exact), c = n/2; v is indexed [z, y, x]."""
    n = v.shape[0]
    c = n // 2
    Ri = np.rint(R).astype(int)
    assert np.allclose(Ri, R), "only signed permutation matrices are exact voxel permutations"
    z, y, x = np.indices(v.shape) - c
    p = np.tensordot(Ri, np.stack([x, y, z]), 1) + c  # source (x, y, z)
    ok = np.all((p >= 0) & (p < n), axis=0)
    out = np.zeros_like(v)
    out[ok] = v[p[2][ok], p[1][ok], p[0][ok]]
    return out


def symmetrise(v, group):
    return sum(apply_operator(v, R) for R in operators(group)) / len(operators(group))


def fourier_crop(v, m):
    n = v.shape[0]
    F = np.fft.fftshift(np.fft.fftn(v))
    lo = n // 2 - m // 2
    G = F[lo:lo + m, lo:lo + m, lo:lo + m]
    return np.real(np.fft.ifftn(np.fft.ifftshift(G))) * (m / n) ** 3


def symmetric_map(group):
    """The group's ground truth, float32 [z, y, x], BOX px, unit maximum."""
    sub = fourier_crop(mrcfile.read(SUBUNIT).astype(np.float64), 20)
    r = np.sqrt(((np.indices(sub.shape) - 10) ** 2).sum(axis=0))
    sub *= np.clip((10.5 - r) / 2, 0, 1)  # soft sphere: radius 9.5 px, 2 px edge (no cube edges)
    v = np.zeros((BOX, BOX, BOX))
    ox, oy, oz = OFFSET[group]
    lo = BOX // 2 - 10
    v[lo + oz:lo + oz + 20, lo + oy:lo + oy + 20, lo + ox:lo + ox + 20] = sub
    v = symmetrise(v, group)
    return (v / v.max()).astype(np.float32)


def write_map(path, v, angpix):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(v, dtype=np.float32))
        m.voxel_size = angpix


def asymmetry(v, group):
    """|v - symmetrise(v)| / |v - mean| over the voxels whose group copies are all inside the box (all but
    the first plane along each axis: index offsets -n/2 + 1 .. n/2 - 1 from the centre); 0 when symmetric."""
    v = np.asarray(v, np.float64)
    d, w = (v - symmetrise(v, group))[1:, 1:, 1:], v[1:, 1:, 1:]
    return float(np.linalg.norm(d) / np.linalg.norm(w - w.mean()))


def rotate(v, R):
    """out(x) = v(c + R^T (x - c)), trilinear, zero outside (the object turned by R about c = n/2, as
    initial_model's rotation of its map); v is indexed [z, y, x]."""
    n = v.shape[0]
    c = n // 2
    z, y, x = (np.indices(v.shape) - c).reshape(3, -1)
    s = np.asarray(R).T @ np.stack([x, y, z]) + c  # source (x, y, z)
    i0 = np.floor(s).astype(int)
    f = s - i0
    out = np.zeros(s.shape[1])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = i0[0] + dx, i0[1] + dy, i0[2] + dz
                ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n) & (iz >= 0) & (iz < n)
                w = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                out[ok] += w[ok] * v[iz[ok], iy[ok], ix[ok]]
    return out.reshape(v.shape)


def correlation(a, b):
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def axis_preserving_alignment(v, truth, group, step=3.0):
    """The best match of v to truth over the rotations that keep the group's axes: turns about z by
    0 .. 360/n (n-fold about z) and those followed by the half turn about x, in both hands (v and its
    mirror image). A map on the group's axes matches a truth on the same axes by one of them; a map
    whose axes are elsewhere matches by none. Returns (fsc curve, correlation, angle, flipped, mirrored)."""
    nfold = {"C4": 4, "D2": 2}[group]
    best = None
    for mirrored, hand in ((False, v), (True, v[::-1].copy())):
        for flipped in (False, True):
            for a in np.arange(0, 360 / nfold, step):
                t = np.radians(a)
                R = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
                if flipped:
                    R = np.diag([1.0, -1.0, -1.0]) @ R
                w = rotate(hand, R)
                cc = correlation(w, truth)
                if best is None or cc > best[1]:
                    best = (w, cc, a, flipped, mirrored)
    w, cc, a, flipped, mirrored = best
    return fsc(w, truth), cc, a, flipped, mirrored

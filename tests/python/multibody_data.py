"""A two-body complex with a hinge, for the multi-body tests (numpy and regula simulate only).

Each body is a cluster of Gaussian blobs (random positions within 7 px of its centre, amplitudes 0.5-1.5,
sigma 1.0 px) in a 48-px box at 4 Å/px; the bodies' centres are 9 px either side of the box centre along x.
Body 2 turns about a hinge (the box centre, axis AXIS) by an angle theta per particle, drawn from N(0,
SIGMA) and rounded to whole STEP degrees: the map of each angle is the blobs of body 2 turned (exact,
analytic), so the truth has no interpolation. Particles: `regula simulate` per angle (random poses, CTF
with defocus 1-2.5 µm, shifts up to 2 px, SNR 1 by default), merged into one particles.star and truth.star
(shuffled; truth.star has rlnRegulaHingeAngle). Masks: each body's density blurred (Gaussian 1.5 px),
cut at 5% of its largest value, dilated by 2 px, 3 px raised-cosine edge; bodies.star rotates each body
relative to the other, sigma 8°, offsets 4 Å."""
import os

import mrcfile
import numpy as np
from scipy import ndimage

from conftest import run_regula

BOX = 48
APIX = 4.0
AXIS = np.array([0.3, 0.9, 0.3]) / np.linalg.norm([0.3, 0.9, 0.3])
SIGMA = 6.0
STEP = 3


def hinge(theta_deg):
    t = np.deg2rad(theta_deg)
    K = np.array([[0, -AXIS[2], AXIS[1]], [AXIS[2], 0, -AXIS[0]], [-AXIS[1], AXIS[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def blobs(seed):
    """Blob centres (x, y, z px from the box centre) and amplitudes of body 1 and body 2."""
    rng = np.random.default_rng(1000 + seed)
    out = []
    for cx in (-9.0, 9.0):
        d = rng.normal(size=(60, 3))
        d *= (rng.uniform(0, 1, 60) ** (1 / 3) * 7 / np.linalg.norm(d, axis=1))[:, None]
        out.append((d + [cx, 0, 0], rng.uniform(0.5, 1.5, 60)))
    return out


def density(centres, amps):
    z, y, x = np.indices((BOX, BOX, BOX)) - BOX // 2
    v = np.zeros((BOX, BOX, BOX))
    for (cx, cy, cz), a in zip(centres, amps):
        v += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * 1.0 ** 2))
    return v


def write_map(path, v):
    with mrcfile.new(str(path), overwrite=True) as f:
        f.set_data(v.astype(np.float32))
        f.voxel_size = APIX


def soft_mask(v):
    b = ndimage.gaussian_filter(v, 1.5)
    binary = ndimage.binary_dilation(b > 0.05 * b.max(), iterations=2)
    dist = ndimage.distance_transform_edt(~binary)
    return np.where(binary, 1.0, np.where(dist < 3, 0.5 + 0.5 * np.cos(np.pi * dist / 3), 0.0))


def star_rows(path):
    """(header up to the particles loop's labels, rows) of a STAR file written by regula simulate."""
    lines = open(path).read().split("\n")
    i = lines.index("data_particles") + 1
    while not lines[i].startswith("_"):
        i += 1
    while lines[i].startswith("_"):
        i += 1
    return "\n".join(lines[:i]), [ln for ln in lines[i:] if ln.strip()]


def make(d, n, seed, snr=1.0):
    """Writes the data set into directory d; returns the hinge angle of each particle of truth.star."""
    d = str(d)
    (c1, a1), (c2, a2) = blobs(seed)
    write_map(os.path.join(d, "full.mrc"), density(np.vstack([c1, c2]), np.concatenate([a1, a2])))
    for k, (c, a) in enumerate(((c1, a1), (c2, a2))):
        write_map(os.path.join(d, f"body{k + 1}_mask.mrc"), soft_mask(density(c, a)))
    with open(os.path.join(d, "bodies.star"), "w") as f:
        f.write("\ndata_\n\nloop_\n_rlnBodyMaskName #1\n_rlnBodyRotateRelativeTo #2\n_rlnBodySigmaAngles #3\n"
                "_rlnBodySigmaOffsetAngst #4\nbody1_mask.mrc 2 8 4\nbody2_mask.mrc 1 8 4\n")
    rng = np.random.default_rng(seed)
    theta = np.clip(np.rint(rng.normal(0, SIGMA, n) / STEP) * STEP, -3 * STEP, 3 * STEP).astype(int)
    prow, trow = [], []
    for k in sorted(set(theta.tolist())):
        name = f"theta{k:+03d}"
        turned = (c2 @ hinge(k).T)  # about the box centre
        write_map(os.path.join(d, name + ".mrc"), density(np.vstack([c1, turned]), np.concatenate([a1, a2])))
        run_regula("simulate", "--i", name + ".mrc", "--o", name, "--n", int((theta == k).sum()), "--seed",
                   seed * 100 + k + 50, "--snr", snr, "--defocus_min", 10000, "--defocus_max", 25000,
                   "--max_shift", 2, cwd=d)
        hp, rp = star_rows(os.path.join(d, name, "particles.star"))
        ht, rt = star_rows(os.path.join(d, name, "truth.star"))
        prow += rp
        trow += [r + f" {k}" for r in rt]
    ncol = sum(1 for ln in ht.split("data_particles")[1].split("\n") if ln.startswith("_"))
    order = rng.permutation(len(prow))
    with open(os.path.join(d, "particles.star"), "w") as f:
        f.write(hp + "\n" + "\n".join(prow[i] for i in order) + "\n")
    with open(os.path.join(d, "truth.star"), "w") as f:
        f.write(ht + f"\n_rlnRegulaHingeAngle #{ncol + 1}\n" + "\n".join(trow[i] for i in order) + "\n")
    with open(os.path.join(d, "hinge.txt"), "w") as f:
        f.write(f"axis {AXIS[0]:.6f} {AXIS[1]:.6f} {AXIS[2]:.6f}\npoint_px 0 0 0\n")
    return np.array([int(trow[i].split()[-1]) for i in order])

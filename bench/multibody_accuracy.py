"""Accuracy of a multi-body refinement of bench/multibody_sim.py's particles.

Usage: multibody_accuracy.py TRUTH_STAR BODIES_STAR HINGE_TXT DATA_STAR [PROJECTIONS_TXT [MAPS_ROOT]]

DATA_STAR: a multi-body refinement's _data.star (RELION's or Regula's: the consensus poses in
data_particles, the bodies' residual angles and offsets in data_images_body_N). Each body's orientation
is the consensus orientation times its residual rotation, R = O^T R90 E(rot, tilt, psi) O (RELION's
convention: O takes the body's rotation axis, from its centre of mass towards the body it rotates
relative to, to z; centres of mass of the masks rounded to whole voxels), matched to the truth by
rlnImageName. Printed:
  - per body, the median angle between its refined orientation and the true one (body 1: the true pose;
    body 2: the true pose turned by the hinge), and, for reference, that of the consensus orientation;
  - the rotation of body 2 relative to body 1 (R1^T R2): its median angular distance to the true hinge
    rotation, and the correlation of its angle about the hinge axis with the true hinge angle;
  - with PROJECTIONS_TXT (RELION's flex_analyse --write_pca_projections format: image name, then the
    projections on the components), |correlation| of each of the first 3 components with the hinge angle;
  - with MAPS_ROOT (ROOT of MAPS_ROOT_body001.mrc ...), each body's map against the true body map at hinge
    angle 0 (body1.mrc, body2.mrc beside the bodies file), both times the body's mask: the resolution where
    their FSC first drops below 0.5."""
import os
import sys

import mrcfile
import numpy as np

from evaluate_refine import euler_matrix as euler  # RELION's Euler matrix, as the other benches

truth_star, bodies_star, hinge_txt, data_star = sys.argv[1:5]
proj_txt = sys.argv[5] if len(sys.argv) > 5 else None
maps_root = sys.argv[6] if len(sys.argv) > 6 else None


def blocks(path):
    """{block name: (labels, rows)} of a STAR file (loops only)."""
    out, name, labels, rows, in_loop = {}, None, [], [], False
    for ln in open(path).read().split("\n"):
        s = ln.strip()
        if s.startswith("data_"):
            if name is not None:
                out[name] = (labels, rows)
            name, labels, rows, in_loop = s[5:], [], [], False
        elif s == "loop_":
            in_loop = True
        elif s.startswith("_") and in_loop:
            labels.append(s.split()[0][1:])
        elif s and not s.startswith("#") and in_loop and labels:
            rows.append(s.split())
    if name is not None:
        out[name] = (labels, rows)
    return out


def col(tab, label, conv=float):
    labels, rows = tab
    i = labels.index(label)
    return [conv(r[i]) for r in rows]


def align_with_z(axis):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    p = np.hypot(a[1], a[2])
    if p > 1e-6:
        return np.array([[p, -a[0] * a[1] / p, -a[0] * a[2] / p], [0, a[2] / p, -a[1] / p], list(a)])
    s = 1.0 if a[0] > 0 else -1.0
    return np.array([[0, 0, -s], [0, 1, 0], [s, 0, 0]])


def angle(R):
    return np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


def rotvec(R):
    th = np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))
    if th < 1e-9:
        return np.zeros(3)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(th))
    return np.degrees(th) * v


# Bodies: centres of mass (rounded) and RELION's orientation matrices.
bt = blocks(bodies_star)
btab = next(t for t in bt.values() if "rlnBodyMaskName" in t[0])
masks = col(btab, "rlnBodyMaskName", str)
rel = col(btab, "rlnBodyRotateRelativeTo", int) if "rlnBodyRotateRelativeTo" in btab[0] else [0] * len(masks)
base = os.path.dirname(bodies_star)
com = []
for m in masks:
    v = mrcfile.read(os.path.join(base, m) if not os.path.exists(m) else m).astype(np.float64)
    n = v.shape[0]
    z, y, x = np.indices(v.shape)
    s = v.sum()
    com.append(np.rint([(v * x).sum() / s - n // 2, (v * y).sum() / s - n // 2, (v * z).sum() / s - n // 2]))
orient = []
for b in range(len(masks)):
    d = com[rel[b] - 1] - com[b] if rel[b] > 0 else -com[b]
    orient.append(align_with_z(-d))
R90 = euler(0, 90, 0).T

h = dict(ln.split(None, 1) for ln in open(hinge_txt).read().strip().split("\n"))
axis = np.array([float(v) for v in h["axis"].split()])
K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])


def hinge(theta):
    t = np.deg2rad(theta)
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


tt = blocks(truth_star)["particles"]
truth = {name: (r, t, p, th) for name, r, t, p, th in zip(col(tt, "rlnImageName", str), col(tt, "rlnAngleRot"),
                                                        col(tt, "rlnAngleTilt"), col(tt, "rlnAnglePsi"),
                                                        col(tt, "rlnRegulaHingeAngle"))}
db = blocks(data_star)
dp = db["particles"]
names = col(dp, "rlnImageName", str)
cons = [euler(r, t, p) for r, t, p in zip(col(dp, "rlnAngleRot"), col(dp, "rlnAngleTilt"), col(dp, "rlnAnglePsi"))]
body_R = []
for b in range(len(masks)):
    tab = db[f"images_body_{b + 1}"]
    body_R.append([orient[b].T @ R90 @ euler(r, t, p) @ orient[b]
                   for r, t, p in zip(col(tab, "rlnAngleRot"), col(tab, "rlnAngleTilt"), col(tab, "rlnAnglePsi"))])
theta = np.array([truth[nm][3] for nm in names])
err = {1: [], 2: []}
err_cons = {1: [], 2: []}
rel_err, rel_angle = [], []
for i, nm in enumerate(names):
    At = euler(*truth[nm][:3])
    true_body = {1: At, 2: At @ hinge(theta[i])}
    for b in (1, 2):
        err[b].append(angle((cons[i] @ body_R[b - 1][i]).T @ true_body[b]))
        err_cons[b].append(angle(cons[i].T @ true_body[b]))
    Q = body_R[0][i].T @ body_R[1][i]
    rel_err.append(angle(Q.T @ hinge(theta[i])))
    rel_angle.append(rotvec(Q) @ axis)
rel_angle = np.array(rel_angle)
out = [f"{len(names)} particles"]
for b in (1, 2):
    out.append(f"body {b} median error {np.median(err[b]):.2f}° (consensus {np.median(err_cons[b]):.2f}°)")
out.append(f"body 2 relative to body 1: median error {np.median(rel_err):.2f}° (none: {np.median(np.abs(theta)):.2f}°), "
           f"corr(hinge angle) {np.corrcoef(rel_angle, theta)[0, 1]:.3f}, slope {np.polyfit(theta, rel_angle, 1)[0]:.2f}")
if proj_txt:
    pr = {}
    for ln in open(proj_txt):
        p = ln.split()
        if p:
            pr[p[0]] = [float(v) for v in p[1:]]
    P = np.array([pr[nm] for nm in names])
    cs = [abs(np.corrcoef(P[:, k], theta)[0, 1]) for k in range(min(3, P.shape[1]))]
    out.append("|corr(PC, hinge)| " + " ".join(f"{c:.3f}" for c in cs))
if maps_root:
    res = []
    for b in range(len(masks)):
        mpath = os.path.join(base, masks[b]) if not os.path.exists(masks[b]) else masks[b]
        m = mrcfile.read(mpath).astype(np.float64)
        t = mrcfile.read(os.path.join(base, f"body{b + 1}.mrc")).astype(np.float64) * m
        e = mrcfile.read(f"{maps_root}_body{b + 1:03d}.mrc").astype(np.float64) * m
        F, G = np.fft.rfftn(t), np.fft.rfftn(e)
        n = t.shape[0]
        k = np.fft.fftfreq(n) * n
        r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2))
        sh = r.astype(int).ravel()
        num = np.bincount(sh, (F * np.conj(G)).real.ravel())
        den = np.sqrt(np.bincount(sh, (abs(F) ** 2).ravel()) * np.bincount(sh, (abs(G) ** 2).ravel()))
        fsc = (num / np.maximum(den, 1e-30))[: n // 2 + 1]
        below = np.nonzero(fsc[1:] < 0.5)[0]
        shell = (below[0] if len(below) else n // 2)
        apix = mrcfile.open(mpath, header_only=True).voxel_size.x
        res.append(f"{n * apix / max(shell, 1):.2f}")
    out.append("body maps vs truth (FSC 0.5) " + " / ".join(res) + " Å")
print("; ".join(out))

"""Particles of a two-body complex with a hinge, for multi-body refinement (issue 19).

Usage: multibody_sim.py MODEL OUT --apix A --box N --n N [--sigma 6] [--max 15] [--snr 0.05] [--seed 1]
                        [--split 0.5] [--regula build/bin/regula]

The atomic model is centred (../shared/tools/model_to_map.py) and cut by a plane normal to its longest
principal axis at the --split quantile of the atoms along it: body 1 below, body 2 above. Body 2 turns
about a hinge: the line through the centroid of the atoms within 6 Å of the plane, along the model's
second principal axis. Each particle has a hinge angle theta drawn from N(0, sigma) in whole degrees,
|theta| <= --max; one map per angle (the atoms turned, then model_to_map), projected by
`regula simulate` (random poses, CTF with defocus 1-3 µm, shifts up to 3 px, white noise at --snr).

Writes in OUT: full.mrc (theta 0), body1.mrc, body2.mrc, body1_mask.mrc, body2_mask.mrc (each body's
density blurred by 2 px, cut at 10% of its largest value, dilated by 3 px, 5 px raised-cosine edge),
bodies.star (RELION's body file: body 2 rotates relative to body 1, sigma 10°, offsets 2 Å; body 1
relative to body 2), particles.star and truth.star (all particles; truth.star has the true poses of
body 1's frame, i.e. of the map, and rlnRegulaHingeAngle), hinge.txt (the axis and point, map px from
the box centre, x y z)."""
import argparse
import os
import subprocess
import sys

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("out")
ap.add_argument("--apix", type=float, required=True)
ap.add_argument("--box", type=int, required=True)
ap.add_argument("--n", type=int, required=True)
ap.add_argument("--sigma", type=float, default=6.0)
ap.add_argument("--max", type=int, default=15)
ap.add_argument("--snr", type=float, default=0.05)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--split", type=float, default=0.5)
ap.add_argument("--regula", default=os.path.join(root, "build", "bin", "regula"))
ap.add_argument("--tool", default=os.path.join(root, "..", "shared", "tools", "model_to_map.py"))
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
os.chdir(a.out)


def to_map(model_file, out):
    subprocess.run([sys.executable, a.tool, model_file, out, "--apix", str(a.apix), "--box", str(a.box), "--no-center",
                    "--assembly", "none"], check=True, stdout=subprocess.DEVNULL)


def write_map(path, data):
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(data.astype(np.float32))
        f.voxel_size = a.apix


def soft_mask(density):
    blur = ndimage.gaussian_filter(density, 2.0)
    binary = ndimage.binary_dilation(blur > 0.1 * blur.max(), iterations=3)
    dist = ndimage.distance_transform_edt(~binary)
    return np.where(binary, 1.0, np.where(dist < 5, 0.5 + 0.5 * np.cos(np.pi * dist / 5), 0.0))


subprocess.run([sys.executable, a.tool, a.model, "full.mrc", "--apix", str(a.apix), "--box", str(a.box),
                "--out-model", "aligned.cif"], check=True, stdout=subprocess.DEVNULL)
st = gemmi.read_structure("aligned.cif")
st.remove_waters()
atoms = [at for ch in st[0] for res in ch for at in res]
xyz = np.array([[at.pos.x, at.pos.y, at.pos.z] for at in atoms])
c0 = xyz.mean(axis=0)
w, v = np.linalg.eigh(np.cov((xyz - c0).T))
long_axis, hinge_axis = v[:, 2], v[:, 1]
t = (xyz - c0) @ long_axis
cut = np.quantile(t, a.split)
upper = t >= cut
hinge_point = xyz[np.abs(t - cut) < 6].mean(axis=0)
# Map voxel (i) of coordinate x (Å): model_to_map keeps the file's coordinates (--no-center) on a grid
# whose voxel 0 is at 0 Å, so the box centre N/2 is at N/2 * apix Å.
centre = a.box // 2 * a.apix


def model_with(theta_deg, which):
    s = gemmi.read_structure("aligned.cif")
    s.remove_waters()
    th = np.deg2rad(theta_deg)
    k = hinge_axis
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K
    idx = 0
    for ch in s[0]:
        for res in ch:
            for at in res:
                p = np.array([at.pos.x, at.pos.y, at.pos.z])
                keep = which == "all" or (which == "upper") == bool(upper[idx])
                if upper[idx]:
                    p = R @ (p - hinge_point) + hinge_point
                if not keep:
                    at.occ = 0.0
                at.pos = gemmi.Position(*p)
                idx += 1
    if which != "all":
        for ch in s[0]:
            for res in ch:
                for i in reversed(range(len(res))):
                    if res[i].occ == 0.0:
                        del res[i]
    s.setup_entities()
    return s


rng = np.random.default_rng(a.seed)
theta = np.clip(np.rint(rng.normal(0.0, a.sigma, a.n)), -a.max, a.max).astype(int)
for which, name in (("lower", "body1"), ("upper", "body2")):
    model_with(0, which).make_mmcif_document().write_file(name + ".cif")
    to_map(name + ".cif", name + ".mrc")
    write_map(name + "_mask.mrc", soft_mask(mrcfile.read(name + ".mrc").astype(np.float64)))
with open("bodies.star", "w") as f:
    f.write("\ndata_\n\nloop_\n_rlnBodyMaskName #1\n_rlnBodyRotateRelativeTo #2\n_rlnBodySigmaAngles #3\n"
            "_rlnBodySigmaOffsetAngst #4\nbody1_mask.mrc 2 10 2\nbody2_mask.mrc 1 10 2\n")
hp = (hinge_point - centre) / a.apix
with open("hinge.txt", "w") as f:
    f.write(f"axis {hinge_axis[0]:.6f} {hinge_axis[1]:.6f} {hinge_axis[2]:.6f}\n")
    f.write(f"point_px {hp[0]:.4f} {hp[1]:.4f} {hp[2]:.4f}\n")
    f.write(f"body2_fraction_of_atoms {upper.mean():.4f}\n")

values = sorted(set(theta.tolist()))
particle_rows, truth_rows, header_p, header_t = [], [], None, None


def read_star(path):
    """(text before the particles loop's rows, rows) of a STAR file written by regula simulate."""
    lines = open(path).read().split("\n")
    start = lines.index("data_particles")
    i = start + 1
    while i < len(lines) and not lines[i].startswith("_"):
        i += 1
    while i < len(lines) and lines[i].startswith("_"):
        i += 1
    rows = [ln for ln in lines[i:] if ln.strip()]
    return "\n".join(lines[:i]), rows


for k in values:
    count = int((theta == k).sum())
    d = f"theta{k:+03d}"
    if not os.path.exists(f"{d}/truth.star"):
        model_with(k, "all").make_mmcif_document().write_file(f"{d}.cif")
        to_map(f"{d}.cif", f"{d}.mrc")
        subprocess.run([a.regula, "--quiet", "simulate", "--i", f"{d}.mrc", "--o", d, "--n", str(count), "--seed",
                        str(a.seed * 1000 + k + 500), "--snr", str(a.snr), "--defocus_min", "10000", "--defocus_max",
                        "30000", "--max_shift", "3", "--j", "2"], check=True)
        os.remove(f"{d}.cif")
    hp_, rp = read_star(f"{d}/particles.star")
    ht, rt = read_star(f"{d}/truth.star")
    ncol = sum(1 for ln in ht.split("data_particles")[1].split("\n") if ln.startswith("_"))
    header_p, header_t = hp_, ht + f"\n_rlnRegulaHingeAngle #{ncol + 1}"
    particle_rows += rp
    truth_rows += [r + f" {k}" for r in rt]
# One order for both files, shuffled so that the hinge angle does not follow the row.
order = rng.permutation(len(particle_rows))
with open("particles.star", "w") as f:
    f.write(header_p + "\n" + "\n".join(particle_rows[i] for i in order) + "\n")
with open("truth.star", "w") as f:
    f.write(header_t + "\n" + "\n".join(truth_rows[i] for i in order) + "\n")
print(f"{len(particle_rows)} particles, hinge angles {values[0]}..{values[-1]} deg (sigma {a.sigma}); "
      f"body 2 holds {upper.mean():.2f} of the atoms; hinge point {hp.round(2)} px, axis {hinge_axis.round(3)}")

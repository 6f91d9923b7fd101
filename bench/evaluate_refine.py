"""Accuracy of a 3D refinement against the simulation truth (numpy + gemmi + mrcfile only).

Usage: evaluate_refine.py [--sym GROUP] TRUTH_STAR DATA_STAR FINAL_MAP TRUE_MAP [OUT_TSV]
Prints the median angular error (degrees; the angle of the rotation between the true and the
refined orientation, RELION's ZYZ convention), the median origin error (Å), and the FSC of the
final map against the true map per shell (also written to OUT_TSV).

With --sym (Cn, Dn, T or O, RELION's axes: n-fold about z, 2-folds of Dn about x, T and O with the
3-fold about (1,1,1) and the 2- or 4-fold about z) the angular error is the smallest over the
estimate's symmetry copies A_est R: the orientations A and A R give the same projection
(docs/conventions.md)."""
import sys
import numpy as np
import gemmi
import mrcfile


def euler_matrix(rot, tilt, psi):
    a, b, g = np.radians(rot), np.radians(tilt), np.radians(psi)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def table(path):
    doc = gemmi.cif.read(path)
    b = doc.find_block("particles") or doc[len(doc) - 1]
    t = b.find("_rln", ["ImageName", "AngleRot", "AngleTilt", "AnglePsi", "OriginXAngst", "OriginYAngst"])
    return {r[0].split("@")[0].lstrip("0") + "@" + r[0].split("@")[1].split("/")[-1]:
            tuple(float(r[i]) for i in range(1, 6)) for r in t}


def fsc(a, b):
    n = a.shape[0]
    A, B = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.round(np.sqrt(kx ** 2 + ky ** 2 + kz ** 2)).astype(int)
    out = []
    for s in range(n // 2 + 1):
        m = shell == s
        num = np.real(np.sum(A[m] * np.conj(B[m])))
        den = np.sqrt(np.sum(np.abs(A[m]) ** 2) * np.sum(np.abs(B[m]) ** 2))
        out.append(num / den if den > 0 else 0.0)
    return np.array(out)


def axis_rotation(axis, degrees):
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    K = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def group_operators(name):
    """All rotations of the point group, as the closure of its generators."""
    name = name.upper()
    if name[0] == "C":
        gens = [axis_rotation((0, 0, 1), 360 / int(name[1:]))]
    elif name[0] == "D":
        gens = [axis_rotation((0, 0, 1), 360 / int(name[1:])), axis_rotation((1, 0, 0), 180)]
    elif name == "T":
        gens = [axis_rotation((0, 0, 1), 180), axis_rotation((1, 1, 1), 120)]
    elif name == "O":
        gens = [axis_rotation((0, 0, 1), 90), axis_rotation((1, 1, 1), 120)]
    else:
        sys.exit(f"evaluate_refine.py: symmetry {name} not supported (Cn, Dn, T, O)")
    ops = [np.eye(3)]
    grew = True
    while grew:
        grew = False
        for a in list(ops):
            for g in gens:
                m = g @ a
                if not any(np.allclose(m, o, atol=1e-9) for o in ops):
                    ops.append(m)
                    grew = True
    return ops


def main():
    args = sys.argv[1:]
    ops = [np.eye(3)]
    if args and args[0] == "--sym":
        ops = group_operators(args[1])
        args = args[2:]
    sys.argv = sys.argv[:1] + args
    truth, data = table(sys.argv[1]), table(sys.argv[2])
    errs, oerr = [], []
    for name, t in truth.items():
        if name not in data:
            continue
        d = data[name]
        At, Ae = euler_matrix(*t[:3]), euler_matrix(*d[:3])
        errs.append(min(np.degrees(np.arccos(np.clip((np.trace(At.T @ Ae @ S) - 1) / 2, -1, 1))) for S in ops))
        oerr.append(np.hypot(t[3] - d[3], t[4] - d[4]))
    final = mrcfile.read(sys.argv[3]).astype(np.float64)
    true = mrcfile.read(sys.argv[4]).astype(np.float64)
    with mrcfile.open(sys.argv[4], permissive=True) as m:
        px = float(m.voxel_size.x)
    curve = fsc(final, true)
    n = final.shape[0]
    print(f"particles compared: {len(errs)}")
    print(f"median angular error: {np.median(errs):.2f} deg; median origin error: {np.median(oerr):.2f} A")
    below = np.nonzero(curve[1:] < 0.143)[0]
    s143 = below[0] if len(below) else n // 2
    below5 = np.nonzero(curve[1:] < 0.5)[0]
    s05 = below5[0] if len(below5) else n // 2
    print(f"FSC(final, truth) = 0.5 near shell {s05} ({n * px / max(s05, 1):.2f} A)")
    print(f"FSC(final, truth) = 0.143 near shell {s143} ({n * px / max(s143, 1):.2f} A)")
    if len(sys.argv) > 5:
        with open(sys.argv[5], "w") as f:
            f.write("shell\tresolution_A\tfsc_vs_truth\n")
            for s, v in enumerate(curve):
                f.write(f"{s}\t{(n * px / s) if s else float('inf'):.3f}\t{v:.5f}\n")


if __name__ == "__main__":
    main()

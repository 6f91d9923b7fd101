"""Acceptance checks of the imaging subcommands against RELION 3.1.3's own
binaries (skipped when they are not installed):

* `regula project --ctf` vs `relion_project --ctf`: same map, 100 random poses
  with shifts and CTFs; every image correlates at >= 0.99.
* `regula reconstruct --ctf` vs `relion_reconstruct --ctf` (both defaults) on
  2,000 simulated particles (box 96, 4 A/px, SNR 0.05): the maps correlate at
  >= 0.99 inside a soft sphere of the particle radius and over the whole box,
  at the same scale, and regula is at least as fast (relion_reconstruct has no
  thread option, so both run on one thread).
* Noise-free round trip: `regula project --nr_uniform 5000`, `regula
  reconstruct`, `regula fsc` with the original map: FSC >= 0.9 up to 0.8 x Nyquist.
* `regula mask` vs `relion_mask_create`; `regula fsc` vs `relion_image_handler --fsc`;
  `regula preprocess` vs `relion_preprocess --operate_on` (--norm --no_ramp, --invert_contrast, --scale).

The whole file takes about 12 s on 2 cores (relion_reconstruct ~4.5 s),
so nothing is marked slow.
"""
import pathlib
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

mrcfile = pytest.importorskip("mrcfile")

from conftest import DATA, regula_binary

RELION = {name: shutil.which(name) or (f"/usr/bin/{name}" if pathlib.Path(f"/usr/bin/{name}").exists() else None)
          for name in ("relion_project", "relion_reconstruct", "relion_mask_create", "relion_image_handler",
                       "relion_preprocess")}
MAP65 = DATA / "proj" / "clean70SRibosome_vol_65p.mrc"
N = 96
ANGPIX = 4.0


def need(name):
    if RELION[name] is None:
        pytest.skip(f"{name} not installed")
    return RELION[name]


def run(cmd, cwd, **kw):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}"
    return r


def read(path):
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def write(path, data, voxel):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data, dtype=np.float32))
        m.voxel_size = voxel


def corr(a, b, w=None):
    w = np.ones_like(a) if w is None else w
    ma, mb = np.sum(w * a) / np.sum(w), np.sum(w * b) / np.sum(w)
    da, db = a - ma, b - mb
    return np.sum(w * da * db) / np.sqrt(np.sum(w * da * da) * np.sum(w * db * db))


def soft_sphere(n, radius, edge):
    z, y, x = np.indices((n, n, n)) - n // 2
    r = np.sqrt(x * x + y * y + z * z)
    m = np.where(r <= radius, 1.0, 0.0)
    ring = (r > radius) & (r < radius + edge)
    m[ring] = 0.5 + 0.5 * np.cos(np.pi * (r[ring] - radius) / edge)
    return m


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The 65^3 70S map (centre 32) padded into a 96^3 box (centre 48), labelled 4 A/px."""
    d = tmp_path_factory.mktemp("imaging")
    a = read(MAP65)
    big = np.zeros((N, N, N))
    o = N // 2 - 65 // 2
    big[o:o + 65, o:o + 65, o:o + 65] = a
    write(d / "map96.mrc", big, ANGPIX)
    return d


def poses_star(path, count, seed, stack="dummy.mrcs"):
    rng = np.random.default_rng(seed)
    lines = ["", "# version 30001", "", "data_optics", "", "loop_",
             "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2", "_rlnImagePixelSize #3", "_rlnImageSize #4",
             "_rlnImageDimensionality #5", "_rlnVoltage #6", "_rlnSphericalAberration #7",
             "_rlnAmplitudeContrast #8", f"1 opticsGroup1 {ANGPIX} {N} 2 300.0 2.7 0.1", "",
             "# version 30001", "", "data_particles", "", "loop_",
             "_rlnImageName #1", "_rlnAngleRot #2", "_rlnAngleTilt #3", "_rlnAnglePsi #4",
             "_rlnOriginXAngst #5", "_rlnOriginYAngst #6", "_rlnDefocusU #7", "_rlnDefocusV #8",
             "_rlnDefocusAngle #9", "_rlnOpticsGroup #10"]
    for i in range(count):
        rot, psi = rng.uniform(-180, 180, 2)
        tilt = np.degrees(np.arccos(rng.uniform(-1, 1)))
        ox, oy = rng.uniform(-12, 12, 2)
        du = rng.uniform(8000, 30000)
        dv = du - rng.uniform(0, 600)
        ang = rng.uniform(0, 180)
        lines.append(f"{i + 1:06d}@{stack} {rot:.6f} {tilt:.6f} {psi:.6f} {ox:.4f} {oy:.4f} "
                     f"{du:.2f} {dv:.2f} {ang:.3f} 1")
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def test_project_ctf_matches_relion(work):
    relion_project = need("relion_project")
    poses_star(work / "poses100.star", 100, seed=11)
    run([regula_binary(), "--quiet", "project", "--i", "map96.mrc", "--ang", "poses100.star", "--ctf",
         "--o", "rg_proj", "--j", "2"], work)
    run([relion_project, "--i", "map96.mrc", "--ang", "poses100.star", "--ctf", "--angpix", ANGPIX,
         "--o", "rl_proj"], work)
    ours, theirs = read(work / "rg_proj.mrcs"), read(work / "rl_proj.mrcs")
    assert ours.shape == theirs.shape == (100, N, N)
    c = np.array([corr(ours[i], theirs[i]) for i in range(100)])
    print(f"project --ctf vs relion_project: correlation min {c.min():.6f} mean {c.mean():.6f}")
    assert c.min() >= 0.99
    # Same scale too (both are line integrals of the map in voxels): least-squares ratio near 1.
    ratio = np.sum(ours * theirs) / np.sum(theirs * theirs)
    assert abs(ratio - 1) < 0.01
    star = (work / "rg_proj.star").read_text()
    assert "000100@rg_proj.mrcs" in star and "_rlnDefocusU" in star


@pytest.fixture(scope="module")
def reconstructions(work):
    """2,000 simulated particles reconstructed by regula and by relion_reconstruct, both with their
    defaults (iterative gridding with a Kaiser-Bessel blob of radius 1.9, order 0, alpha 15), timed
    on one thread each (relion_reconstruct has no thread option)."""
    relion_reconstruct = need("relion_reconstruct")
    run([regula_binary(), "--quiet", "simulate", "--i", "map96.mrc", "--box", N, "--angpix", ANGPIX, "--n", 2000,
         "--snr", 0.05, "--seed", 5, "--o", "sim", "--j", "2"], work)
    t0 = time.perf_counter()
    run([regula_binary(), "--quiet", "reconstruct", "--i", "sim/truth.star", "--o", "rg_rec.mrc", "--ctf",
         "--j", "1"], work)
    t_regula = time.perf_counter() - t0
    t0 = time.perf_counter()
    run([relion_reconstruct, "--i", "sim/truth.star", "--o", "rl_rec.mrc", "--ctf"], work)
    t_relion = time.perf_counter() - t0
    mask = soft_sphere(N, 34, 5)  # the 70S particle (65 px in a 96 px box) fits in a 34 px radius
    ours, theirs = read(work / "rg_rec.mrc"), read(work / "rl_rec.mrc")
    c = corr(ours, theirs, mask)
    c_box = corr(ours, theirs)
    scale = np.sum(ours * theirs * mask) / np.sum(theirs * theirs * mask)
    print(f"reconstruct --ctf, 2000 x {N}^2, 1 thread: regula {t_regula:.2f} s, relion_reconstruct "
          f"{t_relion:.2f} s (ratio {t_regula / t_relion:.2f}); correlation {c:.5f} in the mask, "
          f"{c_box:.5f} over the box; scale {scale:.4f}")
    return dict(t_regula=t_regula, t_relion=t_relion, c=c, c_box=c_box, scale=scale, ours=ours)


def test_reconstruct_ctf_matches_relion_and_is_faster(work, reconstructions):
    r = reconstructions
    assert r["ours"].shape == (N, N, N)
    with mrcfile.open(work / "rg_rec.mrc") as m:
        assert abs(float(m.voxel_size.x) - ANGPIX) < 1e-4
    # Same poses, origins, CTF, insertion, gridding kernel and iterations, crop, corner mask and
    # sinc^2 correction: the maps agree up to float rounding and the FFT grid of the blob
    # convolution (measured 0.9993 in the mask, 0.9987 over the box including the corners).
    assert r["c"] >= 0.99
    assert r["c_box"] >= 0.99
    assert abs(r["scale"] - 1) < 0.01  # same scale (measured 0.998)
    assert r["t_regula"] <= r["t_relion"]


def test_noise_free_round_trip(work):
    reg = regula_binary()
    run([reg, "--quiet", "project", "--i", "map96.mrc", "--nr_uniform", 5000, "--seed", 7, "--o", "uni",
         "--j", "2"], work)
    run([reg, "--quiet", "reconstruct", "--i", "uni.star", "--o", "uni_rec.mrc", "--j", "2"], work)
    r = run([reg, "--quiet", "fsc", "--i1", "uni_rec.mrc", "--i2", "map96.mrc", "--o", "uni"], work)
    fsc = parse_fsc_star((work / "uni_fsc.star").read_text())
    limit = int(0.8 * (N // 2))
    print(f"round trip: min FSC over shells 1..{limit} = {fsc[1:limit + 1].min():.4f}; {r.stdout.strip()}")
    assert fsc[1:limit + 1].min() >= 0.9
    assert (work / "uni_fsc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mask_matches_relion_mask_create(work):
    relion_mask_create = need("relion_mask_create")
    m = read(work / "map96.mrc")
    thr = float(np.quantile(m, 0.9))  # about a tenth of the box in the initial mask
    opts = ["--ini_threshold", f"{thr:.6f}", "--extend_inimask", "3", "--width_soft_edge", "5",
            "--lowpass", "15", "--angpix", ANGPIX]
    run([regula_binary(), "--quiet", "mask", "--i", "map96.mrc", "--o", "rg_mask.mrc"] + opts, work)
    run([relion_mask_create, "--i", "map96.mrc", "--o", "rl_mask.mrc"] + opts, work)
    ours, theirs = read(work / "rg_mask.mrc"), read(work / "rl_mask.mrc")
    d = np.abs(ours - theirs)
    print(f"mask vs relion_mask_create: max |difference| {d.max():.2e}, volume {ours.mean():.4f} vs {theirs.mean():.4f}")
    assert 0.05 < theirs.mean() < 0.6  # a real mask, not empty or full
    # Same thresholding, distance dilation and cosine edge; a few voxels exactly at the
    # threshold after the low-pass may round differently (float vs double filter).
    assert np.mean(d > 1e-3) < 1e-4
    assert np.sum(d) / np.sum(theirs) < 1e-3


def parse_fsc_star(text):
    rows = [l.split() for l in text.splitlines() if re.match(r"^\s*\d+\s+[-+0-9.eE]+\s+[-+0-9.eE]+\s+[-+0-9.eE]+\s*$", l)]
    return np.array([float(r[3]) for r in rows])


def test_fsc_matches_relion_image_handler(work):
    handler = need("relion_image_handler")
    m = read(work / "map96.mrc")
    rng = np.random.default_rng(3)
    sigma = 0.3 * m.std() * 10
    # Two "half maps": the map plus independent noise, so the FSC falls with resolution.
    write(work / "h1.mrc", m + rng.normal(0, sigma, m.shape), ANGPIX)
    write(work / "h2.mrc", m + rng.normal(0, sigma, m.shape), ANGPIX)
    r = run([regula_binary(), "--quiet", "fsc", "--i1", "h1.mrc", "--i2", "h2.mrc", "--o", "half"], work)
    ours = parse_fsc_star((work / "half_fsc.star").read_text())
    rl = run([handler, "--i", "h1.mrc", "--fsc", "h2.mrc", "--angpix", ANGPIX], work)
    theirs = parse_fsc_star(rl.stdout)
    assert ours.shape == theirs.shape == (N // 2 + 1,)
    print(f"fsc vs relion_image_handler --fsc: max |difference| {np.abs(ours - theirs).max():.2e}; {r.stdout.strip()}")
    assert np.abs(ours - theirs).max() < 1e-3
    assert theirs.min() < 0.143 < theirs[1]  # the curve crosses the threshold: the check below means something
    # Resolution at 0.143 from RELION's curve by the documented rule (last shell before the first drop).
    first_below = next(i for i in range(1, len(theirs)) if theirs[i] < 0.143)
    expected = N * ANGPIX / (first_below - 1)
    got = float(re.search(r"resolution at FSC 0.143: ([0-9.]+) A", r.stdout).group(1))
    assert abs(got - expected) < 1e-3 * expected
    # With a mask: the same as RELION's FSC of the masked maps.
    mask = soft_sphere(N, 36, 6)
    write(work / "sphere.mrc", mask, ANGPIX)
    write(work / "h1m.mrc", read(work / "h1.mrc") * mask, ANGPIX)
    write(work / "h2m.mrc", read(work / "h2.mrc") * mask, ANGPIX)
    run([regula_binary(), "--quiet", "fsc", "--i1", "h1.mrc", "--i2", "h2.mrc", "--mask", "sphere.mrc",
         "--o", "masked"], work)
    ours_m = parse_fsc_star((work / "masked_fsc.star").read_text())
    theirs_m = parse_fsc_star(run([handler, "--i", "h1m.mrc", "--fsc", "h2m.mrc", "--angpix", ANGPIX], work).stdout)
    assert np.abs(ours_m - theirs_m).max() < 1e-3


def test_preprocess_matches_relion_preprocess(work):
    relion_preprocess = need("relion_preprocess")
    reg = regula_binary()
    run([reg, "--quiet", "project", "--i", "map96.mrc", "--nr_uniform", 20, "--seed", 2, "--o", "pp_in",
         "--add_noise", "--white_noise", 50], work)
    # Normalisation (background mean/stddev outside 40 px, no ramp) and contrast inversion.
    run([reg, "--quiet", "preprocess", "--i", "pp_in.star", "--o", "rg_norm", "--norm", "--bg_radius", 40,
         "--invert_contrast"], work)
    run([relion_preprocess, "--operate_on", "pp_in.mrcs", "--operate_out", "rl_norm.mrcs", "--norm", "--no_ramp",
         "--bg_radius", 40, "--invert_contrast"], work)
    ours, theirs = read(work / "rg_norm.mrcs"), read(work / "rl_norm.mrcs")
    assert ours.shape == theirs.shape == (20, N, N)
    d = np.abs(ours - theirs).max()
    print(f"preprocess --norm --invert_contrast vs relion_preprocess: max |difference| {d:.2e}")
    assert d < 1e-4 * np.abs(theirs).max()  # float rounding
    # Fourier re-scaling 96 -> 64 px.
    run([reg, "--quiet", "preprocess", "--i", "pp_in.star", "--o", "rg_scale", "--scale", 64], work)
    run([relion_preprocess, "--operate_on", "pp_in.mrcs", "--operate_out", "rl_scale.mrcs", "--scale", 64], work)
    ours, theirs = read(work / "rg_scale.mrcs"), read(work / "rl_scale.mrcs")
    assert ours.shape == theirs.shape == (20, 64, 64)
    c = np.array([corr(ours[i], theirs[i]) for i in range(20)])
    # The same coefficients of the transform, the new Nyquist row and column included: the
    # images agree to float rounding (RELION computes in double).
    d = np.abs(ours - theirs).max()
    print(f"preprocess --scale 64 vs relion_preprocess: correlation min {c.min():.7f}, max |difference| {d:.2e}")
    assert c.min() >= 0.999
    assert d < 1e-4 * np.abs(theirs).max()
    # Enlarging 96 -> 128 px: RELION copies the coefficients with |k| <= 48 (a sphere).
    run([reg, "--quiet", "preprocess", "--i", "pp_in.star", "--o", "rg_up", "--scale", 128], work)
    run([relion_preprocess, "--operate_on", "pp_in.mrcs", "--operate_out", "rl_up.mrcs", "--scale", 128], work)
    ours, theirs = read(work / "rg_up.mrcs"), read(work / "rl_up.mrcs")
    assert ours.shape == theirs.shape == (20, 128, 128)
    c = np.array([corr(ours[i], theirs[i]) for i in range(20)])
    print(f"preprocess --scale 128 vs relion_preprocess: correlation min {c.min():.7f}")
    assert c.min() >= 0.999
    star = (work / "rg_scale.star").read_text()
    optics = re.search(r"^1 opticsGroup1 (\S+) (\S+) 2\s*$", star, re.M)  # pixel size, box, dimensionality
    assert optics and float(optics.group(1)) == pytest.approx(6.0) and int(optics.group(2)) == 64  # 4 * 96 / 64


def test_convert_rescale_and_new_box_match_relion_image_handler(work):
    """`regula convert --rescale_angpix A --new_box N` against `relion_image_handler` with the same
    options: the same box (rounded to an even size), the same exact pixel size in the header, and
    the same values to float rounding (both crop or pad the Fourier transform, then window)."""
    handler = need("relion_image_handler")
    for name, opts in [("shrink", ["--rescale_angpix", 5, "--new_box", 64]),   # 96 -> 76 px at 5.0526 A, cropped
                       ("grow", ["--rescale_angpix", 3]),                       # 96 -> 128 px at 3 A
                       ("grow_crop", ["--rescale_angpix", 3.3, "--new_box", 100]),  # 96 -> 116 px, cropped to 100
                       ("window", ["--new_box", 112])]:                         # padded with zeros
        run([regula_binary(), "--quiet", "convert", "--i", "map96.mrc", "--o", f"ours_{name}.mrc", *opts], work)
        run([handler, "--i", "map96.mrc", "--o", f"theirs_{name}.mrc", *opts], work)
        with mrcfile.open(work / f"ours_{name}.mrc") as a, mrcfile.open(work / f"theirs_{name}.mrc") as b:
            assert a.data.shape == b.data.shape, name
            assert float(a.voxel_size.x) == pytest.approx(float(b.voxel_size.x), rel=1e-6), name
            ours, theirs = np.asarray(a.data, np.float64), np.asarray(b.data, np.float64)
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max(), name  # measured 2.4e-7
    # A stack: every image re-sampled alike.
    rng = np.random.default_rng(4)
    write(work / "stack.mrcs", rng.normal(size=(3, 96, 96)), ANGPIX)
    run([regula_binary(), "--quiet", "convert", "--i", "stack.mrcs", "--o", "ours_stack.mrcs", "--rescale_angpix", 6],
        work)
    run([handler, "--i", "stack.mrcs", "--o", "theirs_stack.mrcs", "--rescale_angpix", 6], work)
    ours, theirs = read(work / "ours_stack.mrcs"), read(work / "theirs_stack.mrcs")
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()

"""Fresh RELION cross-check of the CTF: relion_project --ctf of a point mass
with astigmatism, phase shift and B-factor, compared (1) with Regula's CTF by
the C++ test Ctf.MatchesFreshRelionRun (test_ctf binary) and (2) with the
formula of docs/conventions.md written independently in numpy."""
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

mrcfile = pytest.importorskip("mrcfile")

from conftest import regula_binary

RELION_PROJECT = shutil.which("relion_project")
N = 64
ANGPIX = 1.5

# rot tilt psi U V angle phase B scale
PARTICLES = [
    (0.0, 0.0, 0.0, 14000.0, 9000.0, 35.0, 0.0, 0.0, 1.0),
    (30.0, 60.0, -20.0, 9000.0, 14000.0, -50.0, 0.0, 60.0, 1.0),
    (120.0, 90.0, 45.0, 20000.0, 18500.0, 110.0, 90.0, 0.0, 1.0),
    (-75.0, 150.0, 10.0, 6000.0, 6000.0, 0.0, 30.0, 120.0, 0.8),
]


def write_inputs(d):
    vol = np.zeros((N, N, N), np.float32)
    vol[N // 2, N // 2, N // 2] = 1.0
    with mrcfile.new(d / "point.mrc", overwrite=True) as m:
        m.set_data(vol)
        m.voxel_size = ANGPIX
    lines = [
        "", "# version 30001", "", "data_optics", "", "loop_",
        "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2", "_rlnImagePixelSize #3", "_rlnImageSize #4",
        "_rlnImageDimensionality #5", "_rlnVoltage #6", "_rlnSphericalAberration #7", "_rlnAmplitudeContrast #8",
        f"1 opticsGroup1 {ANGPIX} {N} 2 300.0 2.7 0.07", "", "# version 30001", "", "data_particles", "", "loop_",
        "_rlnImageName #1", "_rlnAngleRot #2", "_rlnAngleTilt #3", "_rlnAnglePsi #4", "_rlnDefocusU #5",
        "_rlnDefocusV #6", "_rlnDefocusAngle #7", "_rlnPhaseShift #8", "_rlnCtfBfactor #9",
        "_rlnCtfScalefactor #10", "_rlnOriginXAngst #11", "_rlnOriginYAngst #12", "_rlnOpticsGroup #13",
    ]
    for i, p in enumerate(PARTICLES):
        lines.append(f"{i + 1:06d}@dummy.mrcs " + " ".join(f"{v}" for v in p) + " 0.0 0.0 1")
    (d / "input.star").write_text("\n".join(lines) + "\n")


def numpy_ctf(U, V, ang, phase, B, scale, kv=300.0, cs=2.7, q0=0.07):
    lam = 12.2643247 / np.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    kx = np.arange(N // 2 + 1) / (N * ANGPIX)
    ky = np.fft.fftfreq(N) / ANGPIX
    KX, KY = np.meshgrid(kx, ky)
    a = np.radians(ang)
    ku = np.cos(a) * KX + np.sin(a) * KY
    kw = -np.sin(a) * KX + np.cos(a) * KY
    k2 = KX**2 + KY**2
    gamma = (-np.pi * lam * (U * ku**2 + V * kw**2) + np.pi / 2 * cs * 1e7 * lam**3 * k2**2
             - np.radians(phase) - np.arctan(q0 / np.sqrt(1 - q0 * q0)))
    return -np.sin(gamma) * np.exp(-B / 4 * k2) * scale


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    if RELION_PROJECT is None:
        pytest.skip("relion_project not installed")
    d = tmp_path_factory.mktemp("ctf_fresh")
    write_inputs(d)
    subprocess.run([RELION_PROJECT, "--i", "point.mrc", "--o", "proj", "--ang", "input.star", "--ctf",
                    "--angpix", str(ANGPIX), "--pad", "2"], cwd=d, check=True, capture_output=True)
    assert (d / "proj.mrcs").exists()
    return d


def test_relion_matches_documented_formula(fresh):
    stack = mrcfile.open(fresh / "proj.mrcs", permissive=True).data.astype(float)
    assert stack.shape == (len(PARTICLES), N, N)
    kx = np.arange(N // 2 + 1)
    ky = np.fft.fftfreq(N) * N
    KX, KY = np.meshgrid(kx, ky)
    inside = KX**2 + KY**2 < (N // 2) ** 2
    for img, p in zip(stack, PARTICLES):
        F = np.fft.rfft2(img) * (-1.0) ** (KX + KY)  # origin at the centre n/2
        ctf = numpy_ctf(*p[3:])
        # Measured 0.9995-1.0000; without the B-factor envelope 0.75-0.90.
        r = np.corrcoef(F.real[inside], ctf[inside])[0, 1]
        assert r > 0.999, (p, r)
        if p[7] > 0:
            r0 = np.corrcoef(F.real[inside], numpy_ctf(*p[3:7], 0.0, p[8])[inside])[0, 1]
            assert r0 < 0.95, (p, r0)
        # A unit point mass: the transform is the CTF itself, scale included
        # (least-squares amplitude measured 0.9967-1.0000).
        amp = np.sum(F.real[inside] * ctf[inside]) / np.sum(ctf[inside] ** 2)
        assert abs(amp - 1) < 0.01, (p, amp)
        # A point at the centre gives a real transform.
        assert np.abs(F.imag[inside]).max() < 1e-3 * np.abs(F.real[inside]).max()
        low = inside & (KX**2 + KY**2 <= 36) & (np.abs(ctf) > 0.05)
        assert np.all(np.sign(F.real[low]) == np.sign(ctf[low]))


def test_regula_ctf_matches_fresh_relion(fresh):
    build = pathlib.Path(regula_binary()).parent.parent
    exe = build / "tests" / "test_ctf"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    env = dict(os.environ, REGULA_CTF_FRESH_DIR=str(fresh))
    res = subprocess.run([str(exe), "--gtest_filter=Ctf.MatchesFreshRelionRun"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[  PASSED  ] 1 test" in res.stdout
    assert "SKIPPED" not in res.stdout

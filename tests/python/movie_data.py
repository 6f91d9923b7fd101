"""Helpers for the movie and micrograph tests: a small particle map, reading STAR loops, numpy's CTF."""
import subprocess

import gemmi
import mrcfile
import numpy as np


def blob_map(path, n=48, angpix=1.0, seed=0):
    """A particle-like map: 30 Gaussian blobs (sigma 2-4 Å) inside a radius of n/3, at angpix."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    v = np.zeros((n, n, n), np.float32)
    for _ in range(30):
        c = rng.normal(size=3)
        c *= n / 3 * rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(c)
        s = rng.uniform(2, 4) / angpix
        v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s)).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(v)
        m.voxel_size = angpix
    return path


def star_loop(path, block):
    """A loop of a STAR file as a dict of columns (strings)."""
    doc = gemmi.cif.read_file(str(path))
    b = doc.find_block(block)
    table = None
    for item in b:
        if item.loop is not None:
            table = item.loop
    cols = {}
    for j, tag in enumerate(table.tags):
        cols[tag[1:]] = [table.val(i, j) for i in range(table.length())]
    return cols


def ctf2(shape, angpix, du, dv, angle_deg, kv=300.0, cs=2.7, q0=0.1):
    """CTF^2 on a centred grid (origin at n/2), RELION's formula written out independently."""
    ny, nx = shape
    ky, kx = np.meshgrid((np.arange(ny) - ny // 2) / (ny * angpix), (np.arange(nx) - nx // 2) / (nx * angpix),
                         indexing="ij")
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    k2 = kx ** 2 + ky ** 2
    phi = np.arctan2(ky, kx)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (phi - np.radians(angle_deg)))
    gamma = -np.pi * lam * df * k2 + np.pi / 2 * cs * 1e7 * lam ** 3 * k2 ** 2 - np.arctan(q0 / np.sqrt(1 - q0 * q0))
    return np.sin(gamma) ** 2, np.sqrt(k2)


def run(cmd, cwd=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    return r

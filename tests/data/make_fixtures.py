#!/usr/bin/python3
"""Generate the small MRC fixtures committed under tests/data (run with /usr/bin/python3,
which has numpy and mrcfile). Seeded, so re-running gives the same bytes.

stack_float32.mrcs: 4 images of 16x16 float32, pixel 1.5 Å, image i (0-based) has
pixel (x, y) = i * 1000 + y * 16 + x + noise, so a test can tell images and axes apart.
"""
import pathlib

import mrcfile
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def stack_float32():
    rng = np.random.default_rng(20140)
    n, nimg = 16, 4
    y, x = np.mgrid[0:n, 0:n]
    data = np.stack([i * 1000.0 + y * n + x for i in range(nimg)]).astype(np.float32)
    data += rng.normal(0, 0.25, data.shape).astype(np.float32)
    path = HERE / "stack_float32.mrcs"
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data)
        m.set_image_stack()
        m.voxel_size = 1.5
        m.update_header_stats()
    return path


if __name__ == "__main__":
    print(stack_float32())

#!/bin/sh
# Regenerates clean70S_crop48.mrc and rln_proj_48.mrcs (needs python3-mrcfile and RELION 3.1.3).
set -e
cd "$(dirname "$0")"
/usr/bin/python3 -c "
import mrcfile, numpy as np
a = mrcfile.open('clean70SRibosome_vol_65p.mrc').data
with mrcfile.new('clean70S_crop48.mrc', overwrite=True) as m:
    m.set_data(np.ascontiguousarray(a[8:56, 8:56, 8:56])); m.voxel_size = 1.0
"
tmp=$(mktemp -d)
relion_project --i clean70S_crop48.mrc --o "$tmp/rp48" --ang rln_proj_48.star --angpix 1
cp "$tmp/rp48.mrcs" rln_proj_48.mrcs
rm -rf "$tmp"

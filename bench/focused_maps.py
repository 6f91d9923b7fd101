"""Maps for bench/focused_vs_relion.sh: the complex without one chain, and a soft mask on that chain.

Usage: focused_maps.py ALIGNED_MODEL CHAIN MODEL_TO_MAP APIX BOX
ALIGNED_MODEL is the centred model written by model_to_map.py --out-model for full.mrc; the map
without CHAIN is made from the same coordinates (--no-center), so the two maps share their frame.
Writes without.mrc, subunit.mrc (full - without) and subunit_mask.mrc: the subunit's density blurred by
a Gaussian of 2 px, cut at 10% of its largest value, dilated by 3 px, with a 5 px raised-cosine edge."""
import subprocess
import sys

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage

model, chain, tool, apix, box = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
st = gemmi.read_structure(model)
m = st[0]
names = [c.name for c in m]
if chain not in names:
    sys.exit(f"{model}: no chain {chain} (chains: {' '.join(names)})")
m.remove_chain(chain)
st.setup_entities()
st.make_mmcif_document().write_file("without.cif")
subprocess.run([sys.executable, tool, "without.cif", "without.mrc", "--apix", str(apix), "--box", str(box),
                "--no-center", "--assembly", "none"], check=True, stdout=subprocess.DEVNULL)
full = mrcfile.read("full.mrc").astype(np.float32)
without = mrcfile.read("without.mrc").astype(np.float32)
sub = full - without
with mrcfile.new("subunit.mrc", overwrite=True) as f:
    f.set_data(sub)
    f.voxel_size = apix
blur = ndimage.gaussian_filter(sub, 2.0)
binary = blur > 0.1 * blur.max()
binary = ndimage.binary_dilation(binary, iterations=3)
dist = ndimage.distance_transform_edt(~binary)
mask = np.where(binary, 1.0, np.where(dist < 5, 0.5 + 0.5 * np.cos(np.pi * dist / 5), 0.0)).astype(np.float32)
with mrcfile.new("subunit_mask.mrc", overwrite=True) as f:
    f.set_data(mask)
    f.voxel_size = apix
print(f"subunit {chain}: {sub.sum() / full.sum():.3f} of the density; mask {binary.sum()} voxels inside, "
      f"{(mask > 0).sum()} with the edge")

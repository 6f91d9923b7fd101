// A soft mask from a map: `regula mask`, the counterpart of relion_mask_create
// --ini_threshold T [--lowpass A --angpix P] --extend_inimask E --width_soft_edge W.
//
// The map is optionally low-passed to --lowpass Å (RELION's raised-cosine
// filter), binarised at value >= --ini_threshold, dilated by --extend_inimask
// px (voxels closer than that to the binary mask join it), and given a
// raised-cosine edge --width_soft_edge px wide outside (imaging/mask.hpp).
// Output values are in [0, 1]; the map header's pixel size is kept.
#pragma once
#include <string>

namespace regula {

struct MaskJobOptions {
  std::string map;            // --i: cubic map
  std::string out;            // --o: output mask (MRC)
  double ini_threshold = 0;   // --ini_threshold (map units)
  bool threshold_given = false;
  double lowpass = 0;         // --lowpass (Å); 0 = none
  double extend_px = 0;       // --extend_inimask (px)
  double soft_edge_px = 0;    // --width_soft_edge (px)
  double angpix = 0;          // --angpix (Å); 0 = from the map header

  std::string validate() const;
};

struct MaskJobResult {
  int box = 0;
  double angpix = 0;
  double volume_fraction = 0;  // mean mask value
};

MaskJobResult mask_create(const MaskJobOptions& opt);

}  // namespace regula

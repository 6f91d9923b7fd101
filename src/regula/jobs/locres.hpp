// Local resolution: `regula locres` and `regula postprocess --locres`, the counterpart of
// relion_postprocess --locres (imaging/local_resolution.hpp for the method).
//
// Outputs (OUT = --o): OUT_locres.mrc (local resolution in Å, 0 where no window reaches),
// OUT_locres_filtered.mrc (the sum of the half maps, divided by the MTF, sharpened by --adhoc_bfac,
// filtered locally: weighted by each point's FSC and low-passed at its resolution, blended by the
// windows; the sum, not the average, as RELION), OUT_locres_fscs.star (one block data_fsc_X_Y_Z per
// sampling point, named as RELION's, with the corrected, unmasked, masked and phase-randomised FSC per
// shell, and data_local_resolution listing the points and their resolutions). With --mask (used only
// for statistics, as RELION): OUT_locres_histogram.png, the histogram of the local resolution where
// the mask is above 0.5, and its percentiles in the log and the result.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

struct LocresOptions {
  std::string half1;               // --i: ROOT_half1_class001_unfil.mrc
  std::string half2;               // --i2 (default: --i with "half1" replaced by "half2")
  std::string out_root = "relion";  // --o: OUT_locres.mrc, OUT_locres_filtered.mrc, OUT_locres_fscs.star
  std::string mask;                // --mask: only for the histogram of local resolutions in it
  double angpix = 0;               // --angpix, Å (0: from the header of --i)
  double adhoc_bfac = 0;           // --adhoc_bfac, Å^2: sharpening of the filtered map
  std::string mtf;                 // --mtf: STAR with rlnResolutionInversePixel, rlnMtfValue
  double mtf_angpix = 0;           // --mtf_angpix (0: --angpix)
  double sampling = 25;            // --locres_sampling, Å between sampling points
  double maskrad = -1;             // --locres_maskrad, Å (-1: sampling / 2)
  double edgwidth = -1;            // --locres_edgwidth, Å (-1: sampling)
  double randomize_at = 25;        // --locres_randomize_at, Å
  double minres = 50;              // --locres_minres, Å: the worst local resolution reported
  int filter_edge_width = 2;       // --filter_edge_width, shells
  int randomisations = 4;          // --locres_randomisations: phase randomisations averaged (RELION: 1)
  int fsc_box = 0;                 // --locres_fsc_box, px: box of the local FSCs (0: the smallest that holds the window)
  uint64_t seed = 1;               // --random_seed
  int threads = 1;                 // --j

  std::string validate() const;
};

struct LocresResult {
  std::string locres_map, filtered_map, fscs_star, histogram_png;
  size_t points = 0;
  double min_resolution = 0, max_resolution = 0;  // Å, over the sampling points
  std::vector<double> mask_percentiles;           // 5, 25, 50, 75, 95 % of the map in the mask (with --mask)
};

LocresResult run_locres(const LocresOptions& opt);

// The second half map's name: `half1` with its last "half1" replaced by "half2" (RELION's
// getTheOtherHalf); InputError when the name has none.
std::string second_half_name(const std::string& half1);

}  // namespace regula

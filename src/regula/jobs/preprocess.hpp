// Per-image operations on a particle stack: `regula preprocess`, the
// counterpart of `relion_preprocess --operate_on` / particle re-extraction.
//
// For every particle, in this order:
//   1. --scale N: Fourier re-scaling to an N x N box (pixel size times n / N);
//   2. --window N: real-space crop or zero-pad about the centre n/2 to N x N
//      (pixel size unchanged);
//   3. --norm: minus the mean and divided by the standard deviation of the
//      pixels farther than --bg_radius px (of the box after 1-2) from the centre
//      (RELION's --norm with --no_ramp: no plane is fitted);
//   4. --invert_contrast: multiplied by -1.
// Outputs ROOT.mrcs (all images, in STAR order) and ROOT.star: the input table
// with rlnImageName "N@ROOT.mrcs", and in the optics groups rlnImageSize and
// rlnImagePixelSize updated for --scale/--window. Origins (Å), angles and CTF
// columns are unchanged. All input images must have the same size.
#pragma once
#include <string>

namespace regula {

struct PreprocessOptions {
  std::string star;          // --i
  std::string out_root;      // --o: ROOT.mrcs, ROOT.star
  bool norm = false;         // --norm
  double bg_radius = -1;     // --bg_radius (px, after scaling/windowing)
  bool invert_contrast = false;  // --invert_contrast
  int scale = -1;            // --scale: new box (px) by Fourier re-scaling; <= 0: none
  int window = -1;           // --window: new box (px) by real-space windowing; <= 0: none
  double angpix = 0;         // --angpix: pixel size (Å) when the STAR file has none
  int threads = 1;           // --j

  std::string validate() const;
};

struct PreprocessResult {
  std::string stack, star;
  long count = 0;
  int box_in = 0, box_out = 0;  // px
};

PreprocessResult preprocess(const PreprocessOptions& opt);

}  // namespace regula

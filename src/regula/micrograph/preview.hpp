// A micrograph made small enough to look at (the web page's micrograph view, docs/web.md):
// binned by an integer factor, low-pass filtered and contrast-stretched to 8 bits.
//
//  * bin = ceil(max(nx, ny) / max_size): output pixel (i, j) is the mean of the micrograph pixels
//    x in [i bin, (i + 1) bin), y in [j bin, (j + 1) bin) that exist (the last row and column may
//    cover fewer), so the output is ceil(nx / bin) x ceil(ny / bin) and pixel (i, j) stands for
//    micrograph position ((i + 1/2) bin - 1/2, (j + 1/2) bin - 1/2) in micrograph pixels;
//  * low-pass: a Gaussian of the binned image whose transfer is 1/2 at 1/lowpass (sigma =
//    lowpass sqrt(ln 2 / 2) / pi Å), separable, edges replicated; skipped when lowpass <= 0, the
//    pixel size is unknown (<= 0) or sigma is below 0.3 binned pixels;
//  * contrast: black and white are the `clip` and 1 - `clip` quantiles of the filtered image, or the
//    median -/+ `sigma` robust standard deviations ((q75 - q25) / 1.349) where that is narrower (values
//    beyond are clipped): hot pixels, and ice or carbon covering more than `clip` of the micrograph,
//    do not take the grey range from the particles. For Gaussian noise the quantiles decide.
// Rows come out in the micrograph's order: row 0 of the preview is y = 0 (RELION's coordinates,
// rlnCoordinateY, count rows the same way).
#pragma once
#include <cstdint>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

struct PreviewOptions {
  int max_size = 1024;   // the longer side of the preview is at most this (pixels, >= 1)
  double lowpass = 20;   // Å (<= 0: binning only)
  double angpix = 0;     // Å per micrograph pixel (<= 0: unknown, no low-pass)
  double clip = 0.01;    // quantile clipped at each end (0 <= clip < 0.5)
  double sigma = 3;      // robust standard deviations about the median (<= 0: the quantiles only)
};

struct Preview {
  int width = 0, height = 0;   // pixels of the preview
  int bin = 1;                 // micrograph pixels per preview pixel along x and y
  std::vector<uint8_t> grey;   // width x height, row-major, row 0 is y = 0
  double black = 0, white = 0; // the values that became 0 and 255
};

// InputError for an empty micrograph (nz must be 1) or options outside their ranges.
Preview micrograph_preview(const Grid<float>& mic, const PreviewOptions& opt);

}  // namespace regula

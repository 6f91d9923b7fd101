// Laplacian-of-Gaussian picking (relion_autopick --LoG of RELION 3.1.3, same options, same figure
// of merit and same picks up to floating-point rounding).
//
// On the working grid (micrograph/picking.hpp) the prepared micrograph, with its contrast inverted
// unless the particles are white (so that particles give positive responses), is filtered by the
// scale-normalised LoG of each diameter d of a ladder: round(dmin / i) for i = max_search .. 2,
// dmin, (dmin + dmax) / 2, dmax, round(dmax * i) for i = 2 .. max_search. In Fourier space the
// filter is r^2 exp(-r^2 / (2 s^2)) / s^2 with r in Fourier pixels of the micrograph and
// s = size * angpix / d (so its peak is at the frequency of a disc of diameter d), on the transform
// normalised by the number of pixels as RELION's (the values are RELION's). Each pixel keeps its
// best response and that response's diameter. With `use_ctf`, the transform is first divided by
// the CTF up to its first peak (1 beyond it).
//
// Figure of merit and threshold: pixels within max(skip_side, dmin / 2 / angpix) pixels of the
// micrograph's edge get 0; pixels whose best diameter is outside [dmin, dmax] get 0; over the
// pixels whose best diameter is inside (including zeroed edge pixels, as RELION), the mean m and
// standard deviation s of the best response give the threshold m + adjust * s and the upper limit
// m + upper * s. Picking is greedy: the highest remaining pixel above the threshold becomes a pick
// (unless above the upper limit, which rejects strong features such as ice and carbon edges but
// still clears their surroundings), and every pixel closer than
// round(scale * (d_best + dmin) * neighbour / 2 / angpix) work pixels to it is cleared.
// The figure of merit of a pick is its response (rlnAutopickFigureOfMerit), rlnClassNumber 0 and
// rlnAnglePsi 0 as RELION's.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/micrograph/picking.hpp"

namespace regula {

struct LogPickOptions {
  double angpix = 1;            // Å per micrograph pixel
  double diam_min = -1, diam_max = -1;  // Å (--LoG_diam_min/max)
  double neighbour = 1.0;       // --LoG_neighbour / 100
  bool white_particles = false; // --Log_invert
  double adjust_threshold = 0;  // --LoG_adjust_threshold (standard deviations)
  double upper_threshold = 99999;  // --LoG_upper_threshold (standard deviations)
  int max_search = 5;           // --Log_max_search
  double lowpass = 20;          // Å (--lowpass); <= 0 with shrink 0: the full micrograph
  double shrink = 0;            // --shrink (0: to the lowpass)
  bool optimise_size = true;    // false: --skip_optimise_scale
  double outlier_z = 8;         // --outlier_removal_zscore
  int skip_side = 0;            // --skip_side (px)
  bool use_ctf = false;         // --LoG_use_ctf
  CtfParams ctf;                // for use_ctf

  std::string validate() const;
  std::vector<double> diameters() const;  // the ladder (Å)
};

struct LogPickResult {
  std::vector<Pick> picks;
  PickingGrid grid;
  double threshold = 0, upper = 0;      // absolute values of the figure of merit
  double fom_mean = 0, fom_stddev = 0;  // of the in-range pixels
};

// Picks one micrograph. `noise_seed` seeds the padding of non-square micrographs.
LogPickResult pick_log(const Grid<float>& micrograph, const LogPickOptions& opt, uint64_t noise_seed,
                       int nthreads = 1);

}  // namespace regula

// Alignment of movie frames (or frame groups, or patches of them) to each other, as the
// iterative scheme of MotionCor2 and relion_run_motioncorr --use_own: each frame is aligned to the
// sum of all the others (so its own noise does not correlate with itself), the shifts are applied,
// and this repeats until they no longer change.
//
// Differences from RELION's own implementation, which decide accuracy:
//  * the cross-correlation is computed on a Fourier grid cropped where the B-factor weight
//    exp(-2 B k^2) (k in cycles per pixel, B in pixel^2 as RELION's --bfactor; isotropic, whereas
//    RELION's weight is twice as strong along x as along y) falls below 1e-3; its inverse FFT is
//    used only in the first round, for the integer peak;
//  * the peak is then refined by Newton's method on the cross-correlation as an exact function of
//    a continuous shift (its gradient and Hessian are sums over the Fourier coefficients), not by a
//    parabola through three samples of a coarse grid;
//  * iterations stop when the rms change is below 0.005 px (RELION: 0.5 px);
//  * optionally (motioncorr uses it for the global trajectory) the shifts of each round are
//    smoothed over time by a penalty on their second differences.
// Shifts follow RELION's convention: the shift that moves frame f onto the reference (content
// moved by +s), relative to the first frame (s_0 = 0), in pixels of the frames given.
#pragma once
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/core/parallel.hpp"

namespace regula {

struct AlignParams {
  double bfactor = 150;    // pixel^2 (RELION's --bfactor)
  int max_iterations = 20;
  double tolerance = 0.005;  // px, rms change of the shifts
  double search = 50;      // px, largest shift of the first round
  // Temporal regularisation: after each round the trajectory is replaced by the penalised
  // least-squares fit sum (s - measured)^2 + smoothness sum (second difference)^2 (0: none).
  double smoothness = 0;
};

struct AlignResult {
  std::vector<double> sx, sy;
  bool converged = false;
  int iterations = 0;
};

// `frames`: half-complex FFTs ((nx/2+1) x ny) of real nx x ny images.
AlignResult align_frames(const std::vector<const Grid<cfloat>*>& frames, int nx, int ny, const AlignParams& p,
                         ThreadPool& pool);

// Multiplies a half-complex transform of an nx x ny image by exp(-2 pi i (kx sx / nx + ky sy / ny)),
// which moves its content by (+sx, +sy) pixels.
void shift_half_complex(Grid<cfloat>& F, int nx, double sx, double sy);

}  // namespace regula

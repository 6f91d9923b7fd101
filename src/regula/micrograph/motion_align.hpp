// Alignment of movie frames (or frame groups, or patches of them) to each other, as the
// iterative scheme of MotionCor2 and relion_run_motioncorr --use_own: each frame is aligned to the
// sum of all the others (so its own noise does not correlate with itself), the shifts are applied,
// and this repeats until they no longer change.
//
// The frames come as the low-frequency part of their spectra (alignment_crop: where the weight
// product exp(-2 B k^2) is at least 1e-3), with the smooth component of Moisan's periodic-plus-
// smooth decomposition removed (remove_smooth_component). Differences from RELION's own
// implementation, which decide accuracy:
//  * an image is not periodic: the jumps between its opposite edges stay where the detector is
//    while the specimen moves, and every frame correlates with every other at zero shift through
//    them. With a carbon edge or an ice crystal near a border this pulled every shift towards
//    zero (both RELION and Regula under-estimated 25 px drifts by 3-4% on simulated movies);
//    the smooth component carries those jumps and is removed;
//  * a high-pass weight 1 - exp(-k^2 / (2 h^2)) (h = 0.02 cycles per pixel by default) on top of
//    RELION's B-factor weight exp(-B k^2) (B in pixel^2, k in cycles per pixel; RELION's weight is
//    twice as strong along x as along y, ours isotropic): structure larger than ~50 px (ice
//    thickness, carbon, crystals) carries little information on a shift but a large correlation
//    that the field of view's edges bias;
//  * the peak is refined by Newton's method on the cross-correlation as an exact function of a
//    continuous shift (its gradient and Hessian are sums over the Fourier coefficients), not by a
//    parabola through three samples of a coarse grid; the inverse FFT is used only in the first
//    round, for the integer peak;
//  * iterations stop when the rms change of the trajectory is below `tolerance` (RELION: 0.5 px).
// Shifts follow RELION's convention: the shift that moves frame f onto the reference (content
// moved by +s), relative to the first frame (s_0 = 0), in pixels of the images given.
#pragma once
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/grid.hpp"
#include "regula/core/parallel.hpp"

namespace regula {

struct AlignParams {
  double bfactor = 150;      // pixel^2 (RELION's --bfactor)
  double highpass = 0.02;    // cycles per pixel (0: none)
  int max_iterations = 5;
  double tolerance = 0.005;  // px, rms change of the trajectory in a round
  double search = 50;        // px, largest shift of the first round
};

struct AlignResult {
  std::vector<double> sx, sy;
  bool converged = false;
  int iterations = 0;
};

// Even size (cx, cy) <= (nx, ny) of the cropped grid that holds the frequencies where
// exp(-2 B k^2) >= 1e-3 (k in cycles per pixel of an nx x ny image).
void alignment_crop(int nx, int ny, double bfactor, int& cx, int& cy);

// Crops a half-complex spectrum of an nx x ny image ((nx/2+1) x ny, FFT-order rows) to
// (cx/2+1) x cy: coefficient (i, j) of the crop is (kx = i, ky = fft_freq(j, cy)) of the image; the
// Nyquist row of the crop is set to 0 unless cy == ny.
void crop_spectrum(const cfloat* F, int nx, int ny, int cx, int cy, cfloat* out);

// Differences across the opposite edges of an nx x ny image (row y at img + y * stride):
// rows[x] = u(x, ny-1) - u(x, 0), cols[y] = u(nx-1, y) - u(0, y).
void edge_differences(const float* img, size_t stride, int nx, int ny, float* rows, float* cols);

// Subtracts from a crop (as crop_spectrum) of an nx x ny image's spectrum the spectrum of the smooth
// component of Moisan's periodic-plus-smooth decomposition (J Math Imaging Vis 39:161, 2011),
// computed from the image's edge differences alone.
void remove_smooth_component(cfloat* crop, int cx, int cy, int nx, int ny, const float* rows, const float* cols);

// Working memory of align_frames (the weighted, shifted spectra and their sum), kept by a caller that
// aligns many times (a movie's alignments and its patches'); every value is written before it is read.
struct AlignBuffers {
  std::vector<AlignedArray<cfloat>> g;
  AlignedArray<cfloat> s;
  std::vector<AlignedArray<cfloat>> x, cc;  // per thread: a frame's cross-spectrum, its correlation
};

// `spectra`: (cx/2+1) x cy half-complex grids, coefficient (i, j) at frequency (i / width,
// fft_freq(j, cy) / height) cycles per pixel, of images `width` x `height` pixels in size (the unit of
// the shifts, the B-factor, the high-pass and the search): crops of their transforms (crop_spectrum
// and remove_smooth_component; `cropped`), or whole transforms of images of cx x cy samples
// (binned when cx < width). Deterministic for any number of threads. With `start`, its shifts are
// the first round's (Newton's method from them, no integer search). `buffers`: working memory to use
// (else its own, freed on return).
AlignResult align_frames(const std::vector<const Grid<cfloat>*>& spectra, double width, double height, bool cropped,
                         const AlignParams& p, ThreadPool& pool, const AlignResult* start = nullptr,
                         AlignBuffers* buffers = nullptr);

// Smooths a trajectory (s[0] = 0, the reference) by penalised least squares:
//   minimise sum_{f>=1} (s_f - m_f)^2 + lambda sum_{c >= first_penalised} (s_{c-1} - 2 s_c + s_{c+1})^2
// with s_0 = 0 held, lambda chosen by generalised cross-validation over x and y together (so that
// noisy shifts are smoothed and a well-measured trajectory is left alone), and no penalty on the
// curvature at frames before `first_penalised` (the fast early motion). Returns lambda.
double smooth_trajectory(std::vector<double>& sx, std::vector<double>& sy, int first_penalised);

}  // namespace regula

// Fourier filters, B-factors, normalisation and box changes for square images
// (nz == 1) and cubic maps. Resolutions in Å, pixel sizes in Å/pixel, edge
// widths in Fourier pixels (shells of the box), B-factors in Å^2.
//
// Fourier-space versions act on a half-complex transform of a grid of size
// n = F.ny() (centred or not: the filters are real and radial).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

// Low-pass as RELION's lowPassFilterMap: the filter shell i = round(n * pixel / resolution);
// coefficients below shell (i - edge/2) are kept, above (i + edge/2) set to 0,
// with a raised cosine in between (edge/2 is integer division, as RELION).
void low_pass(Grid<cfloat>& F_half, double resolution_A, double pixel_A, int edge_px = 2);
// The gain of low_pass at |k| = k_px Fourier pixels of a box of side n.
double low_pass_gain(double k_px, int n, double resolution_A, double pixel_A, int edge_px = 2);
void low_pass(Grid<float>& img, double resolution_A, double pixel_A, int edge_px = 2);
// High-pass: the complement (0 below the edge, 1 above, raised cosine rising in between).
void high_pass(Grid<cfloat>& F_half, double resolution_A, double pixel_A, int edge_px = 2);
void high_pass(Grid<float>& img, double resolution_A, double pixel_A, int edge_px = 2);

// Multiplies by exp(-B s^2 / 4), s = |k| / (n * pixel) in 1/Å (B < 0 sharpens).
void apply_bfactor(Grid<cfloat>& F_half, double bfactor_A2, double pixel_A);
void apply_bfactor(Grid<float>& img, double bfactor_A2, double pixel_A);

// Background statistics over the pixels at distance > bg_radius_px from the
// centre (n/2 per axis): mean and population standard deviation.
struct BackgroundStats {
  double mean = 0, stddev = 0;
  size_t count = 0;
};
BackgroundStats background_stats(const Grid<float>& img, double bg_radius_px);
// As relion_preprocess --norm: img = (img - mean) / stddev with the background
// statistics above. Returns the statistics used; a zero stddev leaves the scale unchanged.
BackgroundStats normalise_background(Grid<float>& img, double bg_radius_px);

void invert_contrast(Grid<float>& img);

// An n x n image of Gaussian noise with a given spectrum: in our unnormalised transform every
// coefficient in shell s = round(|k|) is complex Gaussian with E|F|^2 = 2 sigma2[s] (real and
// imaginary parts of variance sigma2[s]; the self-conjugate ones real with variance 2 sigma2[s]),
// 0 beyond the last shell given. That is the noise of the likelihood's model, and what RELION
// puts outside the particle mask without --zero_mask.
Grid<float> coloured_noise(int n, const std::vector<double>& sigma2, std::mt19937_64& rng);

// Fourier re-scaling to a new box (pixel size scales by n / new_n): crop or
// zero-pad the centred transform; pixel values keep their scale (a constant
// image stays the same constant). As relion_preprocess --scale (RELION's
// windowFourierTransform): shrinking keeps the new Nyquist row/column (the
// old coefficients at frequency +new_n/2); enlarging copies the coefficients
// with |k| <= n/2, a sphere. (FFTW's inverse then uses the Nyquist entries as
// they are, so for even sizes the result is not the real part of an exactly
// Hermitian transform, the same as RELION's.)
Grid<float> rescale(const Grid<float>& img, int new_n);

// The half-complex transform of an n-pixel square image (or cube) cropped or zero-padded to new_n,
// frequency by frequency, as RELION's windowFourierTransform: cropping keeps the new Nyquist
// row/column from the old +new_n/2 frequency; padding copies the coefficients with |k| <= n/2 (a
// disc or sphere). No scaling. Works on centred and uncentred transforms alike.
Grid<cfloat> window_fourier(const Grid<cfloat>& F, int n, int new_n);
// The same into `out` (reshaped only when its shape differs: no allocation in a loop).
void window_fourier(const Grid<cfloat>& F, int n, int new_n, Grid<cfloat>& out);

// Real-space windowing to a new box about the centre (n/2 -> new_n/2): crop,
// or pad with `fill`.
Grid<float> window(const Grid<float>& img, int new_n, float fill = 0.0f);

// Phase randomisation (RELION's randomizePhasesBeyond): the coefficients of the map's transform at
// |k| >= radius_px (Fourier pixels) get uniform random phases, amplitudes kept; the random numbers
// come from make_rng(seed, stream, "PHAS") in the transform's storage order (z, y, x), so a seed
// gives the same map on any thread count (`nthreads` is for the FFTs). Cubic maps or square images.
Grid<float> randomize_phases(const Grid<float>& map, double radius_px, uint64_t seed, uint64_t stream,
                             int nthreads = 1);

// Integer shift with wrap-around: out(x + dx, y + dy, z + dz) = in(x, y, z), indices modulo the
// size (the content moves by +d pixels, as RELION's selfTranslate with WRAP). Any grid shape.
Grid<float> shift_wrapped(const Grid<float>& img, int dx, int dy, int dz = 0);

// A cubic map turned by R about the point c and moved by t (px from the box centre n/2):
// out(y) = in(R^T (y - n/2 - c - t) + n/2 + c), trilinear, zero outside the box.
Grid<float> transform_map(const Grid<float>& in, const Mat3& R, const Vec3& c = {0, 0, 0},
                          const Vec3& t = {0, 0, 0});

}  // namespace regula

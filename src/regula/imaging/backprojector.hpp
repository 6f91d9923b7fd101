// Back-projection (insertion of 2D Fourier slices into a padded 3D lattice, or
// of rotated 2D images into a 2D lattice) and reconstruction by Fourier
// division with optional Wiener (tau2) regularisation and iterative gridding.
//
// Conventions are those of projector.hpp: centred half-complex transforms,
// orientation A puts image coefficient (kx, ky) at A^T (kx, ky, 0), frequencies
// in Fourier pixels of the original box. insert() is the exact adjoint of
// Projector::project() for the real inner product Re sum conj(a) b over the
// stored lattice and over the non-redundant image coefficients (kx > 0, or
// kx == 0 and ky >= 0): the linear spreading is the transpose of the linear
// interpolation. The redundant column (kx == 0, ky < 0) is not inserted.
//
// Accumulators are single precision (float). For threads, use one BackProjector
// per thread and add() them in a fixed order: the result does not depend on the
// thread count when the per-thread work split is fixed.
#pragma once
#include <span>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

struct ReconstructOptions {
  // Per-shell signal power tau2(shell) for shells 0..n/2, in the units of
  // |Projector::project|^2 (i.e. shell_power() of the map, see below). When
  // non-empty, 1 / (tau2_fudge * padding^dim * tau2) is added to the weights
  // (MAP / Wiener regularisation as in RELION); shells with tau2 == 0 are set to 0.
  std::vector<double> tau2;
  double tau2_fudge = 1.0;
  // Iterative gridding as RELION's BackProjector::reconstruct (Pipe & Menon
  // 1999 density compensation): starting from u = 1 on the lattice points with
  // |q| < padding * max_frequency, `gridding_iterations` times
  //   u <- u / max(1e-6 * mean(W), |(u W) * blob|)
  // where the convolution with the Kaiser-Bessel blob is done through FFTs of
  // the padded lattice (inverse FFT, multiplication by the blob's radial 3D
  // Fourier transform normalised to 1 at the origin and zero from half the
  // padded sampling rate on, forward FFT). The map is then the inverse FFT of
  // u * data. (RELION's floor is an absolute 1e-6, the same for its weight
  // units in relion_reconstruct; relative, it suits weights in any units.)
  bool iterative_gridding = true;
  int gridding_iterations = 10;
  // The blob (RELION's --blob_r, --blob_m, --blob_a; defaults as relion_reconstruct
  // and relion_refine): radius in Fourier pixels of the ORIGINAL box; on the
  // padded lattice the radius is 2 * blob_radius whatever the padding (RELION
  // 3.1 fixes this factor at 2). Order m >= 0, taper alpha.
  double blob_radius = 1.9;
  int blob_order = 0;
  double blob_alpha = 15.0;
  // Without iterative gridding: plain Fourier division data / max(W, floor)
  // with floor = weight_floor * (mean weight in the shell floor(|q| / padding)),
  // as RELION's --skip_gridding (weight_floor 1/1000).
  double weight_floor = 1e-3;
  // Maximum frequency in Fourier pixels of the original box (<= 0: r_max of
  // the back-projector). Coefficients at |k| >= limit are zero (as RELION, strict).
  int max_frequency = -1;
  // Divide by sinc^2 of the padded box (correction for linear interpolation).
  bool gridding_correction = true;
  // 3D only, as relion_reconstruct after cropping to the original box: beyond
  // radius n/2 (px from the centre n/2) blend to the mean value outside that
  // radius with a raised cosine of width 3 px; beyond n/2 + 3 px the map is that
  // mean. 2D reconstructions are not masked (RELION masks its 2D class averages
  // here too, but also masks the particles; Regula's 2D classification compares
  // averages and particles over the whole box).
  bool mask_corners = true;
  // Threads for the FFTs and lattice loops (the result does not depend on it
  // beyond float rounding in FFTW).
  int nthreads = 1;

  // Empty when valid, else a message naming the violated constraint.
  std::string validate() const;
};

class BackProjector {
 public:
  BackProjector() = default;
  // `n`: box size of the images and map; `dim`: 3 (map from 2D slices) or 2
  // (2D class from rotated images); r_max in Fourier pixels (<= 0: n/2).
  BackProjector(int n, int padding = 2, int r_max = -1, int dim = 3);

  int size() const { return n_; }
  int padding() const { return pad_; }
  int r_max() const { return r_max_; }
  int dim() const { return data_.dim; }

  // Adds a centred half-complex image (n_img/2+1) x n_img (n_img <= n; a
  // smaller image is a Fourier crop in units of the original box) at
  // orientation A. `weight_half` has the same shape (e.g. CTF^2, or CTF^2 /
  // sigma2), or is empty for weight 1 per coefficient. The caller multiplies
  // the image by the CTF (and 1/sigma2) beforehand.
  void insert(const Grid<cfloat>& image_half, const Grid<float>& weight_half, const Mat3& A);
  // The same for an image of another sampling (imaging/optics_model.hpp): coefficient k of an
  // image of any box m (Fourier px of that box) goes to A^T (T k, 0), T mapping image Fourier px
  // to Fourier px of this accumulator's box; every coefficient with |T k| <= r_max is inserted,
  // the image's corners too (as RELION's backproject2Dto3D). T = identity, m = n is insert().
  void insert_mapped(const Grid<cfloat>& image_half, const Grid<float>& weight_half, const Mat3& A,
                     const Mat2& T);

  // Adds a slice (3D) or rotated image (2D) given at a list of pixels (kx, ky in Fourier pixels
  // of the box, the non-redundant half plane: kx > 0, or kx == 0 and ky > 0): complex values
  // interleaved (re, im) and weights, at orientation A (as insert(), the same linear spreading).
  // Pixels beyond r_max are skipped.
  void insert_pixels(std::span<const float> kx, std::span<const float> ky, const float* data_interleaved,
                     const float* weight, const Mat3& A);

  // Adds `factor` times another accumulator of the same geometry (deterministic reduction;
  // factor -1 removes a part that was added before).
  void add(const BackProjector& other, float factor = 1.0f);

  // Gold-standard helpers for two independent accumulators of the same geometry (3D):
  // FSC per shell 0..n/2 between the unregularised ratios data/weight of this and `other`, with
  // data and weight first summed over the padding^3 lattice points nearest to each point of the
  // original grid (as RELION computes it from its half-set back-projectors, downsampled); shell 0 is 1.
  std::vector<double> lattice_fsc(const BackProjector& other) const;
  // Replaces the data and weight of both accumulators by their sum at lattice points with
  // |q| < padding * max_shell (RELION's --low_resol_join_halves).
  void join_below(BackProjector& other, double max_shell);
  void clear();

  // Applies point-group symmetry: data(q) and weight(q) become the sums over
  // the operators R of the (interpolated) values at R q. `operators` is the
  // whole group; the identity is added if missing. Enforces Hermitian
  // symmetry of the x = 0 plane first. Call once, after all insertions.
  void symmetrise(const std::vector<Mat3>& operators);

  // Reconstructed map (n^3, or n x n in 2D), origin at n/2, in the units of
  // the map whose projections were inserted. Does not modify the accumulators.
  Grid<float> reconstruct(const ReconstructOptions& opt = {}) const;

  // Mean of padding^dim * weight over the lattice points of each shell
  // 0..n/2 (shell = round(|q| / padding)): RELION's average inverse noise power
  // in the reconstruction; with an FSC-based SSNR, tau2 = SSNR / this.
  std::vector<double> mean_weight_per_shell() const;

  const FourierLattice& data() const { return data_; }
  const Grid<float>& weight() const { return weight_; }
  // Raw accumulators, for moving partial sums between processes (MPI).
  Grid<cfloat>& raw_data() { return data_.data; }
  Grid<float>& raw_weight() { return weight_; }

 private:
  void enforce_hermitian();
  int n_ = 0, pad_ = 2, r_max_ = 0;
  FourierLattice data_;
  Grid<float> weight_;  // same layout as data_.data
  bool hermitian_done_ = false;
};

// 3D Fourier transform, at frequency w (cycles per unit of length), of the
// Kaiser-Bessel blob b(r) = t^m I_m(alpha t) / I_m(alpha), t = sqrt(1 - (r/a)^2),
// for r <= a (0 beyond): the kernel of the iterative gridding (used, as in
// RELION, with this 3D transform for 2D reconstructions too). alpha > 0.
double kaiser_bessel_ft(double w, double a, int m, double alpha);

// Per-shell mean |F(k)|^2 of the (unnormalised, centred) transform of a real
// image or map, shells 0..n/2 by rounded |k| in Fourier pixels. For a map this
// is in the units of |Projector::project|^2 (the tau2 scale of ReconstructOptions).
std::vector<double> shell_power(const Grid<float>& map);

}  // namespace regula

// M-step for 2D classes: class averages from the weighted sums of the E-step.
//
// The E-step gives, for one class and each in-plane angle psi_p it used, sums over particles
// and translations at a set of half-complex Fourier pixels (docs/estep.md):
//   data_p(k)   = sum w C X^t / sigma2   (complex),   weight_p(k) = sum w C^2 / sigma2,
// in the frame of the rotated reference (Projector2D::project_psi(psi_p)). Each pair is
// inserted once into the class's 2D BackProjector at A = euler_to_matrix(0, 0, psi_p) (the
// adjoint of the rotation; insert_class_sums), and the class is the regularised ratio
//   A(k) = data(k) / (weight(k) + 1 / (T padding^2 tau2(shell)))
// (RELION's MAP reconstruction with tau2_fudge T; BackProjector::reconstruct).
#pragma once
#include <array>
#include <complex>
#include <cstdint>
#include <span>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/backprojector.hpp"

namespace regula::mstep {

// Half-complex Fourier pixels of an n x n image: shells 1..r_max (shell = round(|k|) in Fourier
// pixels), non-redundant half (kx > 0, or kx == 0 and ky > 0; the DC term excluded).
struct FourierPixels {
  int n = 0, r_max = 0;
  std::vector<uint32_t> index;  // into the (n/2+1) x n half-complex grid: iy * (n/2+1) + kx
  std::vector<int> kx, ky;      // signed frequencies, Fourier pixels
  std::vector<int> shell;       // round(|k|), in [1, r_max]
  size_t size() const { return index.size(); }
  // Pixels per shell 0..n/2 (shell 0 always 0).
  std::vector<double> shell_counts() const;
};
FourierPixels select_fourier_pixels(int n, int r_max);

struct ClassAverageOptions {
  int padding = 2;
  int r_max = 0;               // Fourier pixels: coefficients at |k| >= r_max + 1 are zero
  std::vector<double> tau2;    // per shell 0..n/2 (BackProjector units); empty: no prior
  double tau2_fudge = 1;
  bool iterative_gridding = true;
  // Shells where tau2 is 0 (beyond the reference's band) reconstructed from the data alone (RELION),
  // their SSNR written kNoPriorSsnr; otherwise their coefficients are 0.
  bool zero_tau2_unregularised = false;
};

struct ClassAverage {
  Image image;                 // n x n, origin at n/2
  std::vector<double> ssnr;    // per shell 0..n/2: mean data weight / prior weight (0 without tau2;
                               // kNoPriorSsnr where zero_tau2_unregularised took a shell without prior)
};

// The accumulator of one class for sums at shells up to r_max (a 2D BackProjector whose lattice
// reaches shell r_max + 1, as reconstruct_class_2d expects).
BackProjector class_accumulator(int n, int r_max, int padding = 2);

// Inserts the sums of one in-plane angle (psi_deg, degrees): data and weight at the m pixels of
// `pixels` (rows of m values). Rows whose weights are all 0 are skipped.
void insert_class_sums(BackProjector& acc, const FourierPixels& pixels, double psi_deg,
                       const std::complex<double>* data, const double* weight);

// The class average of an accumulator (class_accumulator geometry, opt.r_max its r_max).
ClassAverage reconstruct_class_2d(const BackProjector& acc, const ClassAverageOptions& opt);

// The same from rows: psi_deg P angles; data, weight P * pixels.size() values (rotation p's row
// at p * m).
ClassAverage reconstruct_class_2d(const FourierPixels& pixels, std::span<const double> psi_deg,
                                  std::span<const std::complex<double>> data, std::span<const double> weight,
                                  const ClassAverageOptions& opt);

// Largest normalised correlation Re<R_psi a, b> / (|R_psi a| |b|) of image b with image a rotated
// by the angles psi_deg (Projector2D::project_psi), over the Fourier pixels of shells 1..r (both
// images about their centre n/2). 1 when b is a rotated by one of the angles; -1 when no angle
// gives two non-zero images.
double rotational_correlation(const Image& a, const Image& b, std::span<const double> psi_deg, int r);

// Centre of mass (pixels, relative to the centre n/2) of the positive values within radius_px.
std::array<double, 2> positive_centre_of_mass(const Image& img, double radius_px);
// Moves the content of `img` by (dx, dy) pixels (Fourier phase shift, circular).
void shift_image(Image& img, double dx_px, double dy_px);

}  // namespace regula::mstep

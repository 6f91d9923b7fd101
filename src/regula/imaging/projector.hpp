// Fourier-space projection of maps (central slices) and 2D references (rotations).
//
// Conventions (RELION's, checked against relion_project output in tests):
//  * Real-space origin at index n/2 along every axis (even and odd n).
//  * Fourier transforms are "centred": fft_forward followed by centre_origin, so
//    the transform is taken about the origin at n/2. Half-complex layout
//    (n/2+1) x n (x n) with y (and z) in FFT order, as core/fft.hpp.
//  * Scale: our forward FFT is unnormalised, and a projection's 2D transform is
//    the central slice of the map's 3D transform, so fft_inverse (which divides
//    by n^2) of project()'s output is the line integral (sum over z, in pixels)
//    of the map, as relion_project writes it.
//  * Orientation A (Mat3 from sampling/euler.hpp): the image coefficient at
//    (kx, ky) is the 3D transform at A^T * (kx, ky, 0). For a 2D reference the
//    upper-left 2x2 block of A is used: coefficient at k is the reference's
//    transform at A2^T * k (rotation by psi, A = euler_to_matrix(0, 0, psi)).
//  * Interpolation: trilinear (bilinear in 2D) on a lattice padded by
//    `padding` (oversampled Fourier grid); the map is pre-divided in real space
//    by sinc^2(pi r / (padding n)) (r in pixels from the centre), the transform
//    of the linear interpolation kernel, as RELION does.
//  * Frequencies are in Fourier pixels of the original box (k / (n * pixel) in 1/Å).
//  * RELION 3.1 origin offsets (rlnOriginX/YAngst / pixel size): a particle is
//    the projection moved by (-originX, -originY) pixels, i.e.
//    shift_phase(F, -ox, -oy, n) (checked against relion_project, even box).
//  * Odd boxes: relion_project writes images whose origin is at pixel n/2 + 1
//    (its 2D CenterFFT for odd sizes) while the map origin is at n/2; our images
//    keep the origin at n/2, so relion_project's odd-box images equal ours moved
//    by (+1, +1) pixel (tests/cpp/test_projector.cpp pins this).
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

// A half-complex Fourier lattice in centred storage: x in [0, R] at index x,
// y (and z in 3D) in [-R, R] at index y + R. Coefficients with x < 0 are the
// Hermitian mates conj(F(-x, -y, -z)). Shared by Projector and BackProjector.
struct FourierLattice {
  int dim = 3;  // 2 or 3
  int R = 0;    // lattice radius (padded Fourier pixels)
  Grid<cfloat> data;

  void init(int dimension, int radius);
  size_t index(int x, int y, int z) const {
    return data.index(x, y + R, dim == 3 ? z + R : 0);
  }
  // Linear interpolation at lattice coordinates p (padded Fourier pixels);
  // pz is ignored in 2D. Points with px < 0 use Hermitian symmetry.
  // Requires |p| <= R - 1 per component.
  cfloat interpolate(double px, double py, double pz) const;
  // The same value and its gradient (per lattice coordinate, 3 entries; 3D lattices only): the exact
  // derivative of the trilinear interpolant, from the same 8 lattice points.
  cfloat interpolate_gradient(double px, double py, double pz, cfloat* grad) const;
  // Moves p < 0 in x to its Hermitian mate -p (stored); true when it did (the value is conjugated).
  static bool to_stored_half(double& px, double& py, double& pz) {
    if (px >= 0) return false;
    px = -px;
    py = -py;
    pz = -pz;
    return true;
  }
};

// The central slice of orientation A on a lattice of padding p: pixel (kx, ky) of the image sits at
// lattice position p A^T (kx, ky, 0) = (m00 kx + m01 ky, m10 kx + m11 ky, m20 kx + m21 ky).
struct CentralSlice {
  double m00, m01, m10, m11, m20, m21;
  CentralSlice(const Mat3& A, double p)
      : m00(p * A[0][0]), m01(p * A[1][0]), m10(p * A[0][1]), m11(p * A[1][1]), m20(p * A[0][2]), m21(p * A[1][2]) {}
};

// (Inline: called per pixel of every projection.)
inline cfloat FourierLattice::interpolate(double px, double py, double pz) const {
  const bool conj = to_stored_half(px, py, pz);
  const int x0 = int(std::floor(px)), y0 = int(std::floor(py));
  const float fx = float(px - x0), fy = float(py - y0);
  const size_t sy = size_t(data.nx());
  cfloat v;
  if (dim == 2) {
    const cfloat* p = data.data() + index(x0, y0, 0);
    cfloat a = p[0] + fx * (p[1] - p[0]);
    cfloat b = p[sy] + fx * (p[sy + 1] - p[sy]);
    v = a + fy * (b - a);
  } else {
    const int z0 = int(std::floor(pz));
    const float fz = float(pz - z0);
    const size_t sz = sy * size_t(data.ny());
    const cfloat* p = data.data() + index(x0, y0, z0);
    cfloat a00 = p[0] + fx * (p[1] - p[0]);
    cfloat a10 = p[sy] + fx * (p[sy + 1] - p[sy]);
    cfloat a01 = p[sz] + fx * (p[sz + 1] - p[sz]);
    cfloat a11 = p[sz + sy] + fx * (p[sz + sy + 1] - p[sz + sy]);
    cfloat b0 = a00 + fy * (a10 - a00);
    cfloat b1 = a01 + fy * (a11 - a01);
    v = b0 + fz * (b1 - b0);
  }
  return conj ? std::conj(v) : v;
}

// Radial gridding correction factor sinc^2(pi r / padded_size) for a distance r
// in pixels from the centre (1 at r = 0).
double gridding_sinc2(double r_px, int padded_size);

class Projector {
 public:
  Projector() = default;
  // `map`: n^3 volume (or n x n image when nz == 1, giving a 2D projector),
  // origin at n/2. `padding`: oversampling factor (>= 1). `r_max`: maximum
  // frequency kept, in Fourier pixels of the original box; <= 0 means n/2.
  // `nthreads` is used for the FFT only.
  explicit Projector(const Grid<float>& map, int padding = 2, int r_max = -1, int nthreads = 1);
  // Wraps an existing lattice (tests, or a reference built elsewhere). The
  // lattice radius must be at least padding * r_max + 2.
  Projector(int n, int padding, int r_max, FourierLattice lattice);

  int size() const { return n_; }
  int padding() const { return pad_; }
  int r_max() const { return r_max_; }
  int dim() const { return lat_.dim; }
  const FourierLattice& lattice() const { return lat_; }

  // Central slice (3D) or rotated reference (2D) for orientation A into a
  // half-complex image (n_out/2+1) x n_out (resized if needed). n_out <= 0
  // means the original size n; a smaller n_out gives the Fourier-cropped
  // image (same frequencies in units of the original box). Coefficients with
  // |k| > min(r_max, n_out/2) are zero. Thread-safe (const).
  void project(const Mat3& A, Grid<cfloat>& out_half, int n_out = 0) const;
  Grid<cfloat> project(const Mat3& A, int n_out = 0) const;
  // Central slice for an image of another sampling (imaging/optics_model.hpp): image coefficient
  // k (Fourier px of an n_out box, |k| <= n_out/2) is the transform at A^T (T k, 0), T mapping
  // image Fourier px to Fourier px of this map (magnification and pixel/box size ratio);
  // coefficients with |T k| > r_max are zero. T = identity and n_out = n is project().
  void project_mapped(const Mat3& A, const Mat2& T, Grid<cfloat>& out_half,
                      int n_out) const;
  // One coefficient of such a slice: the transform at A^T (q, 0), q in Fourier px of this map
  // (|q| <= r_max - 1); with `grad`, also the interpolant's gradient per lattice coordinate
  // (FourierLattice::interpolate_gradient; 3D only).
  cfloat value_at(const Mat3& A, double qx, double qy) const {
    const double p = pad_;
    return lat_.interpolate(p * (A[0][0] * qx + A[1][0] * qy), p * (A[0][1] * qx + A[1][1] * qy),
                            p * (A[0][2] * qx + A[1][2] * qy));
  }
  cfloat value_at(const Mat3& A, double qx, double qy, cfloat* grad) const {
    const double p = pad_;
    return lat_.interpolate_gradient(p * (A[0][0] * qx + A[1][0] * qy), p * (A[0][1] * qx + A[1][1] * qy),
                                     p * (A[0][2] * qx + A[1][2] * qy), grad);
  }

  // Real-space projection (n x n, origin at n/2) for orientation A, with the
  // content shifted by (+dx, +dy) pixels, scaled as relion_project (sum over z).
  Image project_real(const Mat3& A, double dx_px = 0, double dy_px = 0) const;

 protected:
  int n_ = 0, pad_ = 2, r_max_ = 0;
  FourierLattice lat_;
};

// 2D class reference: rotation in Fourier space by an in-plane angle psi.
class Projector2D : public Projector {
 public:
  Projector2D() = default;
  // `reference`: n x n image (nz == 1), origin at n/2.
  explicit Projector2D(const Image& reference, int padding = 2, int r_max = -1);
  // Reference rotated as a particle of in-plane angle psi (degrees) would see it.
  void project_psi(double psi_deg, Grid<cfloat>& out_half, int n_out = 0) const;
};

// Multiplies a centred half-complex transform of an n x n image by the phase
// ramp exp(-2 pi i (kx dx + ky dy) / n), which moves the real-space content by
// (+dx, +dy) pixels.
void shift_phase(Grid<cfloat>& F_half, double dx_px, double dy_px, int n);

// Convenience: real-space projection of `map` for orientation A (builds a
// Projector; use the class for many projections).
Image project_real(const Volume& map, const Mat3& A, double dx_px = 0, double dy_px = 0,
                   int padding = 2);

// Centred half-complex transform of a real image/volume (origin at n/2):
// fft_forward followed by centre_origin. Inverse: from_fourier_centred.
Grid<cfloat> fourier_centred(const Grid<float>& img, int nthreads = 1);
Grid<float> from_fourier_centred(const Grid<cfloat>& F_half, int n, int nthreads = 1);
// The centred transform of an n x n image at the frequencies s k, k on the half-complex grid of a box
// N ((N/2+1) x N, FFT order in y; k in Fourier px of N, s in image Fourier px per px of N): the exact
// DFT there, sum_x img(x) exp(-2 pi i s k.(x - n/2) / n), computed separably in O(n^2 N + n N^2).
// fourier_centred(img) when s = 1 and N = n. Pixels with round(|s k|) > n/2 (beyond the image's
// Nyquist) are 0. Optics groups of another pixel or box size seen at a reference's sampling.
Grid<cfloat> fourier_centred_resampled(const Grid<float>& img, int N, double s);
// The same for many n x n images: the phase tables made once (float; sums in float, as the FFTs).
// With a matrix M (image Fourier px per reference Fourier px; an optics group with anisotropic
// magnification, M = T_g^-1) the frequencies M k are off the separable grid: the DFT there is
// evaluated by a type-2 non-uniform FFT (the image divided by the kernel's transform, zero-padded
// twice, transformed, then interpolated at 2 M k with a Kaiser-Bessel kernel of 8 x 8 taps: error
// 1e-7 of the largest coefficient, float round-off, tests/cpp/test_projector.cpp); pixels with
// round(|M k|) > n/2 are 0. M = s I takes the exact separable path above.
class FourierResampler {
 public:
  FourierResampler() = default;
  FourierResampler(int n, int N, double s);
  FourierResampler(int n, int N, const std::array<std::array<double, 2>, 2>& M);
  int image_size() const { return n_; }
  // out becomes (N/2+1) x N.
  void transform(const Grid<float>& img, Grid<cfloat>& out) const;

 private:
  void transform_nonuniform(const Grid<float>& img, Grid<cfloat>& out) const;
  int n_ = 0, N_ = 0, hx_ = 0;
  double s_ = 1;
  // Non-uniform path (empty otherwise): per kept pixel of the grid, its index in `out` and its
  // kernel's taps (kTaps weights and padded-grid indices along x and along y); the deapodisation
  // factor per image row/column.
  static constexpr int kTaps = 8;
  std::vector<uint32_t> nu_out_;
  std::vector<float> nu_wx_, nu_wy_;
  std::vector<int32_t> nu_ix_, nu_iy_;
  std::vector<float> nu_deapod_;
  std::vector<float> cx_, sx_;   // [x * hx + kx]: cos, sin of -2 pi s kx (x - n/2) / n
  std::vector<int> rows_;        // rows iy of the grid within the image's Nyquist
  std::vector<float> cy_, sy_;   // [r * n + y] for row rows_[r]
  std::vector<uint8_t> keep_;    // [iy * hx + kx]: round(|s k|) <= n/2
};

}  // namespace regula

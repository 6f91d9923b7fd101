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
// Accumulators are single precision (float), stored on the half ball of lattice points within
// reach of the inserted frequencies (LatticeBall). For threads and processes, either one
// BackProjector per thread added in a fixed order, or one shared accumulator in exact mode
// (start_exact: 64-bit integer sums, atomic, independent of order), converted at the end.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <memory>
#include <mutex>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

struct ReconstructOptions {
  // Per-shell signal power tau2(shell) for shells 0..n/2, in the units of
  // |Projector::project|^2 (i.e. shell_power() of the map, see below). When
  // non-empty, 1 / (tau2_fudge * padding^dim * tau2) is added to the weights
  // (MAP / Wiener regularisation as in RELION); shells with tau2 == 0 are set to 0, or with
  // zero_tau2_unregularised reconstructed without the prior term (RELION's classification adds
  // 1 / (0.001 w) there, negligible against w in its units: no prior where nothing is known).
  std::vector<double> tau2;
  bool zero_tau2_unregularised = false;
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
  // With mask_corners: blend to the mean of the map in the shell (n/2 - 2, n/2] (the level at the
  // sphere's edge) instead of the mean outside. For maps back-projected from masked particles (the
  // 3D jobs' reach mask), whose solvent near the particle carries no data and sits at 0 while the
  // padded reconstruction's corners do not: the step at radius n/2 that RELION's fill leaves there is
  // low-frequency content (measured: FSC with the truth at the two lowest shells 0.994 / 0.969
  // instead of 0.9999 / 0.993).
  bool corners_from_edge = false;
  // Threads for the FFTs and lattice loops (the result does not depend on it
  // beyond float rounding in FFTW).
  int nthreads = 1;

  // Empty when valid, else a message naming the violated constraint.
  std::string validate() const;
};

// The lattice points a BackProjector stores: the half ball (3D) or half disc (2D) x >= 0,
// x^2 + y^2 + z^2 <= R^2 of radius R = padding * r_max + 2 (every point linear spreading can
// reach), row by row: rows (y, z) in order z then y, x = 0..len-1 within a row. Memory is half that
// of the enclosing box.
struct LatticeBall {
  int dim = 3, R = 0;
  std::vector<int64_t> start;  // per row (y, z): index of x = 0 (rows outside the ball: len 0)
  std::vector<int32_t> len;    // points per row (x = 0..len-1)
  size_t count = 0;

  void init(int dimension, int radius);
  size_t row(int y, int z) const { return (dim == 3 ? size_t(z + R) * size_t(2 * R + 1) : 0) + size_t(y + R); }
  // Index of (x, y, z), or -1 outside the stored points (x < 0 is not stored: use the mate).
  int64_t find(int x, int y, int z) const {
    if (x < 0 || y < -R || y > R || (dim == 3 ? (z < -R || z > R) : z != 0)) return -1;
    const size_t r = row(y, z);
    return x < len[r] ? start[r] + x : -1;
  }
  // Calls f(index, x, y, z) for every stored point, in storage order.
  template <class F>
  void for_each(F&& f) const {
    const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
    for (int z = zlo; z <= zhi; ++z)
      for (int y = -R; y <= R; ++y) {
        const size_t r = row(y, z);
        for (int x = 0; x < len[r]; ++x) f(size_t(start[r] + x), x, y, z);
      }
  }
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
  int dim() const { return ball_.dim; }
  const LatticeBall& ball() const { return ball_; }

  // Exact accumulation (for any number of threads and processes): from this call until
  // finish_exact(), each call of insert(), insert_pixels() or insert_slices() sums its own
  // contributions per lattice point (in float, in an order fixed by its arguments) and adds those
  // sums rounded to a fixed quantum into 64-bit integers. Integer sums do not depend on their
  // order, so the result is the same bit for bit whatever the thread count, the split of the calls
  // (particles) over threads or processes, and the order of the reduction (exact_sums() can be
  // summed over MPI ranks). The quanta are chosen from bounds on the largest sum any lattice point
  // can reach (data: |complex component|, weight): quantum = bound / 2^61, far below float
  // precision with bounds from the data (number of particles times the largest contribution of
  // one particle). The accumulator must be empty (freshly made or cleared). Memory: 24 bytes per
  // point until finish_exact(), plus per inserting thread a buffer of at most 24 MB (bricks of the
  // points one call touches) and its index (4 bytes per 64 lattice points).
  // `shared` true: several threads insert at once; their integer additions go in z slabs under a
  // lock each. `shared` false: one thread at a time (e.g. one per class), without locks.
  void start_exact(double data_bound, double weight_bound, bool shared = true);
  // The most bricks of 64 points (768 bytes) an inserting thread's buffer holds (default 32,768:
  // 24 MB); a call that touches more adds what the buffer holds to the sums and goes on. Changes
  // only speed and memory, and the float rounding of the buffer (for tests).
  static void set_insert_buffer_bricks(size_t bricks);
  bool exact() const { return !exact_.empty(); }
  // The integer sums (3 per point: re, im, weight), e.g. for an MPI sum over ranks.
  std::span<int64_t> exact_sums() { return exact_; }
  // Converts the integer sums into the float accumulators (adding them) and frees them.
  void finish_exact();

  // Adds a centred half-complex image (n_img/2+1) x n_img (n_img <= n; a
  // smaller image is a Fourier crop in units of the original box) at
  // orientation A. `weight_half` has the same shape (e.g. CTF^2, or CTF^2 /
  // sigma2), or is empty for weight 1 per coefficient. The caller multiplies
  // the image by the CTF (and 1/sigma2) beforehand. Not thread-safe unless exact().
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
  // Pixels beyond r_max are skipped. Thread-safe when exact() and shared.
  void insert_pixels(std::span<const float> kx, std::span<const float> ky, const float* data_interleaved,
                     const float* weight, const Mat3& A);

  // Adds J slices at orientations A[j] (data: J rows of 2m interleaved floats, weight: J rows of m),
  // as insert_pixels for each. In exact mode the slices are first summed in a thread-private buffer
  // of the lattice points they touch and added to the integer sums once per point: the same result
  // as one insert_pixels per slice up to the float rounding of the buffer, and fast when the slices
  // are near each other (one particle's significant orientations share most points).
  void insert_slices(std::span<const float> kx, std::span<const float> ky, const float* data, const float* weight,
                     std::span<const Mat3> A);

  // Adds `factor` times another accumulator of the same geometry (deterministic reduction;
  // factor -1 removes a part that was added before).
  void add(const BackProjector& other, float factor = 1.0f);
  // Multiplies every data and weight value by `factor` (forgetting sums of mini-batches).
  void scale(float factor);

  // Gold-standard helpers for two independent accumulators of the same geometry (3D):
  // FSC per shell 0..n/2 between the unregularised ratios data/weight of this and `other`, with
  // data and weight first summed over the padding^3 lattice points nearest to each point of the
  // original grid (as RELION computes it from its half-set back-projectors, downsampled); shell 0 is 1.
  std::vector<double> lattice_fsc(const BackProjector& other) const;
  // Replaces the data and weight of both accumulators by their sum at lattice points with
  // |q| < padding * max_shell (RELION's --low_resol_join_halves).
  void join_below(BackProjector& other, double max_shell);
  void clear();

  // Sums the x = 0 plane with its Hermitian mates (in place, once; every reader does it on the fly
  // when it was not done). symmetrise() calls it.
  void make_hermitian();

  // Applies point-group symmetry: data(q) and weight(q) become the sums over
  // the operators R of the (interpolated) values at R q. `operators` is the
  // whole group; the identity is added if missing. Enforces Hermitian
  // symmetry of the x = 0 plane first. Call once, after all insertions. `nthreads` split the
  // lattice planes; each point's sum is formed in the same order whatever their number.
  void symmetrise(const std::vector<Mat3>& operators, int nthreads = 1);

  // Reconstructed map (n^3, or n x n in 2D), origin at n/2, in the units of
  // the map whose projections were inserted. Does not modify the accumulators. Memory beyond the
  // accumulators: 8 bytes per stored point plus one in-place FFT buffer of the gridding grid, then
  // one of the padded box.
  Grid<float> reconstruct(const ReconstructOptions& opt = {}) const;

  // Mean of padding^dim * weight over the lattice points of each shell
  // 0..n/2 (shell = round(|q| / padding)): RELION's average inverse noise power
  // in the reconstruction; with an FSC-based SSNR, tau2 = SSNR / this.
  std::vector<double> mean_weight_per_shell() const;

  // Stored values (x >= 0 half; the x = 0 plane as inserted, before the Hermitian sum unless
  // make_hermitian() was called): 0 outside the stored points.
  cfloat data_at(int x, int y, int z = 0) const;
  float weight_at(int x, int y, int z = 0) const;
  std::span<const cfloat> data_values() const { return data_; }
  std::span<const float> weight_values() const { return weight_; }
  // Raw accumulators, for moving partial sums between processes (MPI).
  std::span<cfloat> raw_data() { return data_; }
  std::span<float> raw_weight() { return weight_; }

 private:
  // (data, weight) of point i at (x, y, z), with the Hermitian mate added on the x = 0 plane
  // when make_hermitian() was not called.
  void effective(size_t i, int x, int y, int z, cfloat& d, float& w) const;
  void insert_buffered(std::span<const float> kx, std::span<const float> ky, const float* data,
                       const float* weight, std::span<const Mat3> A);
  template <class Cell>
  void spread_cells(std::span<const float> kx, std::span<const float> ky, const float* v, const float* wt,
                    const Mat3& A, Cell&& cell) const;
  template <class Deposit>
  void spread_pixels(std::span<const float> kx, std::span<const float> ky, const float* v, const float* wt,
                     const Mat3& A, Deposit&& deposit);
  int n_ = 0, pad_ = 2, r_max_ = 0;
  LatticeBall ball_;
  BigVector<cfloat> data_;
  BigVector<float> weight_;
  BigVector<int64_t> exact_;  // 3 per point while exact()
  double qdata_ = 0, qweight_ = 0;  // 1 / quantum
  bool exact_shared_ = true;        // added to by several threads: under slab_locks_
  // Mutexes that a copy does not share (it gets as many of its own).
  class LockSet {
   public:
    LockSet() = default;
    explicit LockSet(size_t n) : n_(n), m_(n ? std::make_unique<std::mutex[]>(n) : nullptr) {}
    LockSet(const LockSet& o) : LockSet(o.n_) {}
    LockSet(LockSet&&) noexcept = default;
    LockSet& operator=(const LockSet& o) { return *this = LockSet(o.n_); }
    LockSet& operator=(LockSet&&) noexcept = default;
    std::mutex& operator[](size_t i) { return m_[i]; }

   private:
    size_t n_ = 0;
    std::unique_ptr<std::mutex[]> m_;
  };
  LockSet slab_locks_;
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

#include "regula/imaging/backprojector.hpp"

#include <algorithm>
#include <array>
#include <numeric>
#include <cassert>
#include <cmath>
#include <limits>
#include <atomic>
#include <mutex>
#include <cstdint>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/imaging/mask.hpp"

namespace regula {
namespace {

// Convolution of a function on the padded Fourier lattice with the gridding
// blob, done as RELION: inverse FFT of an M^dim grid (lattice frequency q at
// FFT index q mod M), multiplication by the blob's transform at the real-space
// position x (FFT order), forward FFT. The transform is normalised to 1 at
// x = 0 (so the discrete kernel sums to 1). RELION does this on a grid of odd
// size M_R = 2 (pad r_max + 1) + 1 and evaluates the transform at |x| / (n pad)
// rather than |x| / M_R, and zeroes it from |x| / (n pad) = 1/2 on: its kernel is
// the blob shrunk by n pad / M_R (radius 3.74 instead of 3.8 padded px for
// n = 96, pad 2). We use that same kernel on our grid of size M (any M, chosen
// for fast FFTs): the transform at frequency |x| M_R / (M n pad).
class BlobConvolution {
 public:
  BlobConvolution(int M, int dim, int n, int pad, int r_max, const ReconstructOptions& opt)
      : M_(M), dim_(dim), nthreads_(std::max(1, opt.nthreads)), pool_(nthreads_) {
    // Multiplier by integer squared radius (fft_inverse includes 1/M^dim, so
    // inverse then forward is the identity).
    const int h = M / 2;
    const size_t r2max = size_t(dim) * size_t(h) * size_t(h);
    table_.assign(r2max + 1, 0.0f);
    const double a = 2.0 * opt.blob_radius;  // RELION 3.1: radius on the padded lattice = 2 * blob_r
    const double b0 = kaiser_bessel_ft(0.0, a, opt.blob_order, opt.blob_alpha);
    const double M_R = 2.0 * (pad * r_max + 1) + 1;
    for (size_t r2 = 0; r2 <= r2max; ++r2) {
      const double w = std::sqrt(double(r2)) * M_R / (double(M) * n * pad);
      if (w < 0.5) table_[r2] = float(kaiser_bessel_ft(w, a, opt.blob_order, opt.blob_alpha) / b0);
    }
  }

  // In place on a half-complex M^dim transform (FFT order), whose input must
  // be Hermitian (here: real and even, as sampling weights are); one buffer (in-place FFTs).
  void apply(Grid<cfloat>& F) {
    fft_inverse_inplace(F, M_, nthreads_);
    const int M = M_, nz = dim_ == 3 ? M : 1;
    pool_.parallel_for(size_t(0), size_t(nz), [&](size_t zi, int) {
      const int z = int(zi), kz = dim_ == 3 ? fft_freq(z, M) : 0;
      for (int y = 0; y < M; ++y) {
        const int ky = fft_freq(y, M);
        const size_t base = size_t(kz * kz + ky * ky);
        float* row = &real_at(F, 0, y, z);
        for (int x = 0; x < M; ++x) {
          const int kx = fft_freq(x, M);
          row[x] *= table_[base + size_t(kx * kx)];
        }
      }
    });
    fft_forward_inplace(F, M_, nthreads_);
  }

 private:
  int M_, dim_, nthreads_;
  ThreadPool pool_;
  std::vector<float> table_;
};




// Quantised value for exact accumulation (rounded to the nearest integer multiple of the quantum).
// (Truncation toward zero: one instruction; the error is below one quantum, as rounding's half.)
inline int64_t quantise(double v, double inv_quantum) { return static_cast<int64_t>(v * inv_quantum); }



// Fewer slices than this go straight into unshared exact sums (the buffer pays off from about 4 on:
// bench_imaging BM_InsertSlicesExact).
constexpr size_t kMinBuffered = 4;

// Thread-private sums of one insert_slices() call: lattice points in bricks of 4 x 4 x 4 (x, y + R,
// z + R; the z side is 1 in 2D), a brick's storage taken when one of its points is first touched.
// Storage is zero when taken: flush() zeroes what it reads.
struct BrickSums {
  static constexpr unsigned kSide = 4;
  static constexpr size_t kValues = 3 * kSide * kSide * kSide;  // re, im, weight per point
  // At most max_bricks (default 2^15: 24 MB) at once; beyond, insert_buffered adds them to the sums
  // first (BackProjector::set_insert_buffer_bricks).
  static inline std::atomic<size_t> max_bricks{size_t(1) << 15};
  int R = -1, dim = 0, nbx = 0, nby = 0, nbz = 0;
  std::vector<int32_t> slot;     // per brick: its storage, or -1
  std::vector<int32_t> touched;  // bricks with storage
  std::vector<float> sums;
  // Bricks along y, and along z (the lock slabs of a shared accumulator), for a ball of radius R.
  static size_t slabs(int R, int dim) { return dim == 3 ? size_t((2 * R + 2) / int(kSide) + 1) : 1; }
  // Brick b's position in bricks.
  void coords(int32_t b, int& bx, int& by, int& bz) const {
    bx = b % nbx;
    by = (b / nbx) % nby;
    bz = b / (nbx * nby);
  }
  void fit(int radius, int dimension) {
    if (radius == R && dimension == dim) return;
    R = radius;
    dim = dimension;
    nbx = (R + 2) / int(kSide) + 1;
    nby = (2 * R + 2) / int(kSide) + 1;
    nbz = int(slabs(R, dim));
    slot.assign(size_t(nbx) * size_t(nby) * size_t(nbz), -1);
    touched.clear();
  }
  // The sums of the point at (X, Y, Z) = (x, y + R, z + R), nullptr when it needs a new brick and
  // max_bricks are in use.
  float* point(unsigned X, unsigned Y, unsigned Z) {
    const size_t b = (size_t(Z / kSide) * size_t(nby) + size_t(Y / kSide)) * size_t(nbx) + size_t(X / kSide);
    int32_t s = slot[b];
    if (s < 0) {
      if (touched.size() >= max_bricks.load(std::memory_order_relaxed)) return nullptr;
      s = int32_t(touched.size());
      slot[b] = s;
      touched.push_back(int32_t(b));
      if (sums.size() < touched.size() * kValues) sums.resize(touched.size() * kValues, 0.0f);
    }
    return sums.data() + size_t(s) * kValues + 3 * (((Z % kSide) * kSide + Y % kSide) * kSide + X % kSide);
  }
};

}  // namespace

void LatticeBall::init(int dimension, int radius) {
  dim = dimension;
  R = radius;
  const size_t rows = size_t(2 * R + 1) * size_t(dim == 3 ? 2 * R + 1 : 1);
  start.assign(rows, 0);
  len.assign(rows, 0);
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  int64_t next = 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y) {
      const size_t r = row(y, z);
      const int64_t rest = int64_t(R) * R - int64_t(y) * y - int64_t(z) * z;
      start[r] = next;
      if (rest < 0) continue;
      int xm = int(std::floor(std::sqrt(double(rest))));
      while (int64_t(xm + 1) * (xm + 1) <= rest) ++xm;
      while (xm > 0 && int64_t(xm) * xm > rest) --xm;
      len[r] = xm + 1;
      next += xm + 1;
    }
  count = size_t(next);
}

BackProjector::BackProjector(int n, int padding, int r_max, int dim) {
  if (n < 2) input_error("backprojector: box size {} must be >= 2", n);
  if (padding < 1) input_error("backprojector: padding factor {} must be >= 1", padding);
  if (dim != 2 && dim != 3) input_error("backprojector: dimension {} must be 2 or 3", dim);
  n_ = n;
  pad_ = padding;
  r_max_ = r_max <= 0 ? n / 2 : std::min(r_max, n / 2);
  ball_.init(dim, pad_ * r_max_ + 2);
  data_.assign(ball_.count, cfloat(0, 0));
  weight_.assign(ball_.count, 0.0f);
}

void BackProjector::start_exact(double data_bound, double weight_bound, bool shared) {
  exact_shared_ = shared;
  // One lock per z slab of insert_buffered's bricks.
  slab_locks_ = LockSet(shared ? BrickSums::slabs(ball_.R, ball_.dim) : 0);
  if (!(data_bound > 0) || !(weight_bound > 0) || !std::isfinite(data_bound) || !std::isfinite(weight_bound))
    runtime_error("backprojector: exact accumulation needs positive finite bounds (got {}, {})", data_bound,
                  weight_bound);
  // 1 / quantum as a power of two: bound / quantum <= 2^61 (a margin of 2 below the int64 range).
  qdata_ = std::ldexp(1.0, 61 - std::ilogb(data_bound) - 1);
  qweight_ = std::ldexp(1.0, 61 - std::ilogb(weight_bound) - 1);
  exact_.assign(3 * ball_.count, 0);
  // The float accumulators are not used meanwhile: release their memory.
  BigVector<cfloat>().swap(data_);
  BigVector<float>().swap(weight_);
}

void BackProjector::set_insert_buffer_bricks(size_t bricks) { BrickSums::max_bricks = std::max<size_t>(bricks, 1); }

void BackProjector::finish_exact() {
  if (exact_.empty()) return;
  data_.assign(ball_.count, cfloat(0, 0));
  weight_.assign(ball_.count, 0.0f);
  const double sd = 1.0 / qdata_, sw = 1.0 / qweight_;
  for (size_t i = 0; i < ball_.count; ++i) {
    data_[i] = cfloat(float(double(exact_[3 * i]) * sd), float(double(exact_[3 * i + 1]) * sd));
    weight_[i] = float(double(exact_[3 * i + 2]) * sw);
  }
  BigVector<int64_t>().swap(exact_);
}

cfloat BackProjector::data_at(int x, int y, int z) const {
  const int64_t i = ball_.find(x, y, z);
  return i < 0 || data_.empty() ? cfloat(0, 0) : data_[size_t(i)];
}

float BackProjector::weight_at(int x, int y, int z) const {
  const int64_t i = ball_.find(x, y, z);
  return i < 0 || weight_.empty() ? 0.0f : weight_[size_t(i)];
}

void BackProjector::effective(size_t i, int x, int y, int z, cfloat& d, float& w) const {
  d = data_[i];
  w = weight_[i];
  if (x != 0 || hermitian_done_ || (y == 0 && z == 0)) return;
  const int64_t j = ball_.find(0, -y, -z);
  if (j < 0) return;
  d += std::conj(data_[size_t(j)]);
  w += weight_[size_t(j)];
}

// Linear spreading of pixel values into the ball, one cell per pixel: cell(x0, y0, z0, fx, fy, fz,
// value, weight) for the lattice cell whose corner (x0, y0, z0) is the floor of A^T k (scaled by the
// padding; the Hermitian mate, conjugated, when that has x < 0) and f the fractional parts (z0 = 0
// and fz = 0 in 2D). Pixels beyond r_max are skipped.
template <class Cell>
void BackProjector::spread_cells(std::span<const float> kx, std::span<const float> ky, const float* v,
                                 const float* wt, const Mat3& A, Cell&& cell) const {
  const CentralSlice c(A, pad_);
  const double rmax2 = double(r_max_) * r_max_;
  const int dim = ball_.dim;
  for (size_t q = 0; q < kx.size(); ++q) {
    const double x = kx[q], y = ky[q];
    if (x * x + y * y > rmax2) continue;
    cfloat val(v[2 * q], v[2 * q + 1]);
    double px = c.m00 * x + c.m01 * y, py = c.m10 * x + c.m11 * y, pz = dim == 3 ? c.m20 * x + c.m21 * y : 0.0;
    if (FourierLattice::to_stored_half(px, py, pz)) val = std::conj(val);
    const int x0 = int(std::floor(px)), y0 = int(std::floor(py)), z0 = dim == 3 ? int(std::floor(pz)) : 0;
    cell(x0, y0, z0, float(px - x0), float(py - y0), dim == 3 ? float(pz - z0) : 0.0f, val, wt[q]);
  }
}

// The same as deposit(index, x, y, z, c, value, weight) for each of the 4 (2D) or 8 (3D) corners of
// the cells, c the corner's linear weight.
template <class Deposit>
void BackProjector::spread_pixels(std::span<const float> kx, std::span<const float> ky, const float* v,
                                  const float* wt, const Mat3& A, Deposit&& deposit) {
  const int dim = ball_.dim;
  spread_cells(kx, ky, v, wt, A, [&](int x0, int y0, int z0, float fx, float fy, float fz, cfloat val, float w) {
    const float gx[2] = {1 - fx, fx}, gy[2] = {1 - fy, fy}, gz[2] = {1 - fz, fz};
    for (int dz = 0; dz < (dim == 3 ? 2 : 1); ++dz)
      for (int dy = 0; dy < 2; ++dy) {
        const size_t r = ball_.row(y0 + dy, z0 + dz);
        const size_t i0 = size_t(ball_.start[r] + x0);
        const float cyz = gy[dy] * (dim == 3 ? gz[dz] : 1.0f);
        deposit(i0, x0, y0 + dy, z0 + dz, gx[0] * cyz, val, w);
        deposit(i0 + 1, x0 + 1, y0 + dy, z0 + dz, gx[1] * cyz, val, w);
      }
  });
}

void BackProjector::insert_pixels(std::span<const float> kx, std::span<const float> ky, const float* v,
                                  const float* wt, const Mat3& A) {
  assert(!hermitian_done_ && "insert_pixels() after symmetrise()");
  if (!exact_.empty()) {
    if (exact_shared_) {  // shared sums are only added to by insert_buffered, under its locks
      insert_buffered(kx, ky, v, wt, std::span<const Mat3>(&A, 1));
      return;
    }
    int64_t* e = exact_.data();
    const double qd = qdata_, qw = qweight_;
    spread_pixels(kx, ky, v, wt, A, [&](size_t i, int, int, int, float c, cfloat val, float w) {
      e[3 * i] += quantise(double(c) * val.real(), qd);
      e[3 * i + 1] += quantise(double(c) * val.imag(), qd);
      e[3 * i + 2] += quantise(double(c) * w, qw);
    });
    return;
  }
  cfloat* d = data_.data();
  float* w = weight_.data();
  spread_pixels(kx, ky, v, wt, A, [&](size_t i, int, int, int, float c, cfloat val, float wv) {
    d[i] += c * val;
    w[i] += c * wv;
  });
}

void BackProjector::insert_slices(std::span<const float> kx, std::span<const float> ky, const float* data,
                                  const float* weight, std::span<const Mat3> A) {
  const size_t m = kx.size(), J = A.size();
  if (!exact_.empty() && (exact_shared_ || J >= kMinBuffered)) {
    insert_buffered(kx, ky, data, weight, A);
    return;
  }
  for (size_t j = 0; j < J; ++j) insert_pixels(kx, ky, data + j * 2 * m, weight + j * m, A[j]);
}

// The slices are spread into a thread-private buffer of bricks of lattice points (made when first
// touched), summed there in float, then added to the integer sums once per touched point, brick by
// brick in storage order. Shared sums are added to under the lock of the brick's z slab (plain
// additions, which pipeline; atomic ones wait for each other), so all additions to shared sums go
// through here.
void BackProjector::insert_buffered(std::span<const float> kx, std::span<const float> ky, const float* data,
                                    const float* weight, std::span<const Mat3> A) {
  const size_t m = kx.size(), J = A.size();
  thread_local BrickSums buf;
  buf.fit(ball_.R, ball_.dim);
  const int R = ball_.R, dim = ball_.dim;
  constexpr int S = int(BrickSums::kSide);
  const auto flush = [&] {
    std::sort(buf.touched.begin(), buf.touched.end());
    int64_t* e = exact_.data();
    const double qd = qdata_, qw = qweight_;
    const int nz = dim == 3 ? S : 1;
    // Brick k + kAhead and its lattice rows are fetched while brick k is added.
    constexpr size_t kAhead = 2;
    const auto prefetch = [&](int32_t b) {
      const char* own = reinterpret_cast<const char*>(buf.sums.data() + size_t(buf.slot[size_t(b)]) * BrickSums::kValues);
      for (size_t o = 0; o < BrickSums::kValues * sizeof(float); o += 64) __builtin_prefetch(own + o);
      int bx, by, bz;
      buf.coords(b, bx, by, bz);
      for (int lz = 0; lz < nz; ++lz) {
        const int z = dim == 3 ? bz * S + lz - R : 0;
        if (z > R) break;
        for (int ly = 0; ly < S; ++ly) {
          const int y = by * S + ly - R;
          if (y > R) break;
          const size_t r = ball_.row(y, z);
          const int x = bx * S;
          if (x >= ball_.len[r]) continue;
          const int64_t* t = e + 3 * size_t(ball_.start[r] + x);
          __builtin_prefetch(t, 1);
          __builtin_prefetch(t + 3 * S - 1, 1);
        }
      }
    };
    for (size_t k = 0; k < std::min(kAhead, buf.touched.size()); ++k) prefetch(buf.touched[k]);
    std::unique_lock<std::mutex> lock;
    for (size_t k = 0; k < buf.touched.size(); ++k) {
      const int32_t b = buf.touched[k];
      if (k + kAhead < buf.touched.size()) prefetch(buf.touched[k + kAhead]);
      float* brick = buf.sums.data() + size_t(buf.slot[size_t(b)]) * BrickSums::kValues;
      buf.slot[size_t(b)] = -1;
      int bx, by, bz;
      buf.coords(b, bx, by, bz);
      if (exact_shared_ && lock.mutex() != &slab_locks_[size_t(bz)]) {  // bricks come slab by slab
        if (lock.owns_lock()) lock.unlock();
        lock = std::unique_lock<std::mutex>(slab_locks_[size_t(bz)]);
      }
      for (int lz = 0; lz < nz; ++lz) {
        const int z = dim == 3 ? bz * S + lz - R : 0;
        for (int ly = 0; ly < S; ++ly) {
          const int y = by * S + ly - R;
          for (int lx = 0; lx < S; ++lx) {
            float* p = brick + 3 * size_t((lz * S + ly) * S + lx);
            if (p[0] == 0 && p[1] == 0 && p[2] == 0) continue;
            const int x = bx * S + lx;
            const int64_t i = ball_.find(x, y, z);
            assert(i >= 0 && "spreading left the ball");
            int64_t* t = e + 3 * size_t(i);
            t[0] += quantise(p[0], qd);
            t[1] += quantise(p[1], qd);
            t[2] += quantise(p[2], qw);
            p[0] = p[1] = p[2] = 0;
          }
        }
      }
    }
    buf.touched.clear();
  };
  BrickSums& B = buf;
  // The storage of point (X, Y, Z) (brick coordinates), made room for when the buffer is full.
  const auto point = [&](unsigned X, unsigned Y, unsigned Z) {
    float* p = B.point(X, Y, Z);
    if (p) return p;
    flush();  // the buffer is full: add what it holds to the sums and start again
    return B.point(X, Y, Z);
  };
  const int nzc = dim == 3 ? 2 : 1;
  const auto cell = [&](int x0, int y0, int z0, float fx, float fy, float fz, cfloat val, float w) {
    const unsigned X = unsigned(x0), Y = unsigned(y0 + R), Z = dim == 3 ? unsigned(z0 + R) : 0u;
    const float vr = val.real(), vi = val.imag();
    const float gy[2] = {1 - fy, fy}, gz[2] = {1 - fz, fz};
    const bool x_inside = X % BrickSums::kSide != BrickSums::kSide - 1;  // X + 1 in the same brick
    for (int dz = 0; dz < nzc; ++dz)
      for (unsigned dy = 0; dy < 2; ++dy) {
        const float cyz = gy[dy] * gz[dz], c0 = (1 - fx) * cyz, c1 = fx * cyz;
        float* p = point(X, Y + dy, Z + unsigned(dz));
        p[0] += c0 * vr;
        p[1] += c0 * vi;
        p[2] += c0 * w;
        p = x_inside ? p + 3 : point(X + 1, Y + dy, Z + unsigned(dz));
        p[0] += c1 * vr;
        p[1] += c1 * vi;
        p[2] += c1 * w;
      }
  };
  // Pixel blocks outer, slices inner: one particle's significant orientations are near each other,
  // so a block's pixels land on the same bricks for every slice, which stay in cache.
  constexpr size_t kPixBlock = 16;
  for (size_t q0 = 0; q0 < m; q0 += kPixBlock) {
    const size_t len = std::min(kPixBlock, m - q0);
    const std::span<const float> bx = kx.subspan(q0, len), by = ky.subspan(q0, len);
    for (size_t j = 0; j < J; ++j) spread_cells(bx, by, data + j * 2 * m + 2 * q0, weight + j * m + q0, A[j], cell);
  }
  flush();
}

void BackProjector::insert(const Grid<cfloat>& img, const Grid<float>& wimg, const Mat3& A) {
  const int n_img = img.ny();
  if (img.nx() != n_img / 2 + 1 || img.nz() != 1 || n_img > n_)
    runtime_error("backprojector: image transform is {}x{}x{}, expected (m/2+1) x m with m <= {}", img.nx(),
                  img.ny(), img.nz(), n_);
  const bool has_w = !wimg.empty();
  if (has_w && !wimg.same_shape(Grid<float>(img.nx(), img.ny())))
    runtime_error("backprojector: weight is {}x{}, image is {}x{}", wimg.nx(), wimg.ny(), img.nx(), img.ny());
  const int rmax = std::min(r_max_, n_img / 2);
  // The x = 0 column holds Hermitian pairs (0, y) and (0, -y): only y >= 0 is inserted, so that
  // each independent coefficient counts once (as RELION).
  std::vector<float> kx, ky, d, w;
  for (int iy = 0; iy < n_img; ++iy) {
    const int y = fft_freq(iy, n_img);
    if (std::abs(y) > rmax) continue;
    for (int x = y < 0 ? 1 : 0; x <= rmax; ++x) {
      if (x * x + y * y > rmax * rmax) break;
      kx.push_back(float(x));
      ky.push_back(float(y));
      d.push_back(img(x, iy).real());
      d.push_back(img(x, iy).imag());
      w.push_back(has_w ? wimg(x, iy) : 1.0f);
    }
  }
  insert_pixels(kx, ky, d.data(), w.data(), A);
}

void BackProjector::insert_mapped(const Grid<cfloat>& img, const Grid<float>& wimg, const Mat3& A, const Mat2& T) {
  assert(!hermitian_done_ && "insert_mapped() after symmetrise()");
  const int m = img.ny();
  if (img.nx() != m / 2 + 1 || img.nz() != 1)
    runtime_error("backprojector: image transform is {}x{}x{}, expected (m/2+1) x m", img.nx(), img.ny(), img.nz());
  const bool has_w = !wimg.empty();
  if (has_w && !wimg.same_shape(Grid<float>(img.nx(), img.ny())))
    runtime_error("backprojector: weight is {}x{}, image is {}x{}", wimg.nx(), wimg.ny(), img.nx(), img.ny());
  // The image's pixels (x = 0, y < 0 are the Hermitian mates: not inserted) mapped by T.
  std::vector<float> kx, ky, v, w;
  const double rmax2 = double(r_max_) * r_max_;
  for (int iy = 0; iy < m; ++iy) {
    const int y = fft_freq(iy, m);
    for (int x = y < 0 ? 1 : 0; x < img.nx(); ++x) {
      const double qx = T[0][0] * x + T[0][1] * y, qy = T[1][0] * x + T[1][1] * y;
      if (qx * qx + qy * qy > rmax2) continue;
      kx.push_back(float(qx));
      ky.push_back(float(qy));
      const cfloat c = img(x, iy);
      v.push_back(c.real());
      v.push_back(c.imag());
      w.push_back(has_w ? wimg(x, iy) : 1.0f);
    }
  }
  insert_pixels(kx, ky, v.data(), w.data(), A);
}

std::vector<double> BackProjector::lattice_fsc(const BackProjector& o) const {
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.ball_.dim != ball_.dim)
    runtime_error("backprojector: FSC of accumulators of different geometry");
  // Data and weight summed over the padding^3 lattice points nearest to each point k of the
  // original grid (k = round(q / padding)), then the ratios: the FSC of the two unregularised
  // half reconstructions at the original sampling (per-point ratios on the padded lattice would be
  // dominated by the noise of low-weight points).
  const int dim = ball_.dim;
  const size_t hs = size_t(n_ / 2 + 1);
  const int K = r_max_ + 1, KY = 2 * K + 1, KZ = dim == 3 ? 2 * K + 1 : 1;
  const size_t cells = size_t(K + 1) * size_t(KY) * size_t(KZ);
  std::vector<std::complex<double>> s1(cells), s2(cells);
  std::vector<double> w1(cells, 0.0), w2(cells, 0.0);
  const double max_r2 = double(pad_ * r_max_) * (pad_ * r_max_);
  auto down = [&](int q) { return int(std::floor((q + pad_ / 2.0) / pad_)); };
  ball_.for_each([&](size_t i, int x, int y, int z) {
    const double r2 = double(x) * x + double(y) * y + double(z) * z;
    if (r2 >= max_r2) return;
    const int kx = down(x), ky = down(y), kz = dim == 3 ? down(z) : 0;
    if (kx > K || std::abs(ky) > K || std::abs(kz) > K) return;
    const size_t c = (size_t(kz + (dim == 3 ? K : 0)) * size_t(KY) + size_t(ky + K)) * size_t(K + 1) + size_t(kx);
    cfloat d1, d2;
    float a1, a2;
    effective(i, x, y, z, d1, a1);
    o.effective(i, x, y, z, d2, a2);
    s1[c] += std::complex<double>(d1);
    s2[c] += std::complex<double>(d2);
    w1[c] += a1;
    w2[c] += a2;
  });
  std::vector<double> num(hs, 0.0), n1(hs, 0.0), n2(hs, 0.0);
  for (int kz = (dim == 3 ? -K : 0); kz <= (dim == 3 ? K : 0); ++kz)
    for (int ky = -K; ky <= K; ++ky)
      for (int kx = 0; kx <= K; ++kx) {
        const size_t c = (size_t(kz + (dim == 3 ? K : 0)) * size_t(KY) + size_t(ky + K)) * size_t(K + 1) + size_t(kx);
        if (!(w1[c] > 0) || !(w2[c] > 0)) continue;
        const size_t s = size_t(std::lround(std::sqrt(double(kx * kx + ky * ky + kz * kz))));
        if (s >= hs) continue;
        const std::complex<double> a = s1[c] / w1[c], b = s2[c] / w2[c];
        num[s] += (a * std::conj(b)).real();
        n1[s] += std::norm(a);
        n2[s] += std::norm(b);
      }
  std::vector<double> f(hs, 0.0);
  f[0] = 1;
  for (size_t s = 1; s < hs; ++s) f[s] = n1[s] > 0 && n2[s] > 0 ? num[s] / std::sqrt(n1[s] * n2[s]) : 0.0;
  return f;
}

void BackProjector::join_below(BackProjector& o, double max_shell) {
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.ball_.dim != ball_.dim)
    runtime_error("backprojector: cannot join accumulators of different geometry");
  const double lim2 = double(pad_) * max_shell * double(pad_) * max_shell;
  ball_.for_each([&](size_t i, int x, int y, int z) {
    if (double(x) * x + double(y) * y + double(z) * z >= lim2) return;
    const cfloat d = data_[i] + o.data_[i];
    const float w = weight_[i] + o.weight_[i];
    data_[i] = o.data_[i] = d;
    weight_[i] = o.weight_[i] = w;
  });
}

void BackProjector::add(const BackProjector& o, float factor) {
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.ball_.dim != ball_.dim)
    runtime_error("backprojector: cannot add accumulators of different geometry");
  assert(o.hermitian_done_ == hermitian_done_);
  if (factor == 1.0f) {
    for (size_t i = 0; i < weight_.size(); ++i) {
      data_[i] += o.data_[i];
      weight_[i] += o.weight_[i];
    }
    return;
  }
  for (size_t i = 0; i < weight_.size(); ++i) {
    data_[i] += factor * o.data_[i];
    weight_[i] += factor * o.weight_[i];
  }
}

void BackProjector::scale(float factor) {
  for (size_t i = 0; i < weight_.size(); ++i) {
    data_[i] *= factor;
    weight_[i] *= factor;
  }
}

void BackProjector::clear() {
  BigVector<int64_t>().swap(exact_);
  data_.assign(ball_.count, cfloat(0, 0));
  weight_.assign(ball_.count, 0.0f);
  hermitian_done_ = false;
}

void BackProjector::make_hermitian() {
  if (hermitian_done_) return;
  // d(0, q) + conj(d(0, -q)) for each pair of the x = 0 plane, once per pair.
  const int R = ball_.R, dim = ball_.dim;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y) {
      if (z > 0 || (z == 0 && y >= 0)) continue;
      const int64_t a = ball_.find(0, y, z), b = ball_.find(0, -y, -z);
      if (a < 0 || b < 0) continue;
      const cfloat s = data_[size_t(a)] + std::conj(data_[size_t(b)]);
      data_[size_t(a)] = s;
      data_[size_t(b)] = std::conj(s);
      const float ws = weight_[size_t(a)] + weight_[size_t(b)];
      weight_[size_t(a)] = weight_[size_t(b)] = ws;
    }
  hermitian_done_ = true;
}

namespace {

using IntMat = std::array<std::array<int, 3>, 3>;

IntMat int_product(const IntMat& a, const IntMat& b) {
  IntMat c{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 3; ++k) c[i][j] += a[i][k] * b[k][j];
  return c;
}

bool contains(const std::vector<IntMat>& g, const IntMat& m) { return std::find(g.begin(), g.end(), m) != g.end(); }

// The group generated by `gens` (integer matrices of finite order), the identity first; stops past
// 48 elements (no finite group of signed permutations is larger).
std::vector<IntMat> generated(const std::vector<IntMat>& gens) {
  IntMat id{};
  for (int i = 0; i < 3; ++i) id[i][i] = 1;
  std::vector<IntMat> g{id};
  for (size_t k = 0; k < g.size() && g.size() <= 48; ++k)
    for (const IntMat& s : gens)
      if (const IntMat p = int_product(g[k], s); !contains(g, p)) g.push_back(p);
  return g;
}

// Transversals T_0, T_1, ... of a chain of subgroups G = H_0 > H_1 > ... > {e} of a group G (the
// identity first): H_i = H_{i+1} T_i, every element once as a product k t, the identity in each T_i.
// Then, with (R_g f)(q) = f(g q) and R_t R_k = R_{kt},
//   sum over g in G of f(g q) = (P_0 P_1 ... f)(q),  (P_i f)(q) = sum over t in T_i of f(t q),
// so the |G| - 1 lookups per point become sum_i (|T_i| - 1): 5 instead of 23 for O. H_{i+1} is the
// largest proper subgroup of H_i made by one or two of its elements (a few thousand products).
std::vector<std::vector<IntMat>> transversal_chain(std::vector<IntMat> H) {
  std::vector<std::vector<IntMat>> chain;
  while (H.size() > 1) {
    std::vector<IntMat> K = generated({});
    for (size_t a = 1; a < H.size(); ++a)
      for (size_t b = a; b < H.size(); ++b) {
        std::vector<IntMat> S = generated(a == b ? std::vector<IntMat>{H[a]} : std::vector<IntMat>{H[a], H[b]});
        if (S.size() < H.size() && S.size() > K.size()) K = std::move(S);
      }
    std::vector<IntMat> T, covered;
    for (const IntMat& h : H) {  // H[0], the identity, represents the coset K itself
      if (contains(covered, h)) continue;
      T.push_back(h);
      for (const IntMat& k : K) covered.push_back(int_product(k, h));
    }
    chain.push_back(std::move(T));
    H = std::move(K);
  }
  return chain;
}

}  // namespace

void BackProjector::symmetrise(const std::vector<Mat3>& operators, int nthreads) {
  make_hermitian();
  // The operators other than the identity (the identity term is the accumulator itself). Entries
  // within 1e-9 of an integer are snapped to it: operators made of 0 and +-1 (the 2- and 4-folds on
  // the axes, the 3-folds on the cube diagonals: C2, C4, D2, D4, T, O) then map lattice points onto
  // lattice points and are applied by lookup, exactly, instead of by interpolation.
  struct Op {
    Mat3 S;
    bool integral = true;
  };
  std::vector<Op> ops;
  for (const Mat3& R : operators) {
    double dev = 0;
    Op op;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        dev += std::abs(R[i][j] - (i == j ? 1.0 : 0.0));
        const double r = std::round(R[i][j]);
        if (std::abs(R[i][j] - r) < 1e-9)
          op.S[i][j] = r;
        else
          op.S[i][j] = R[i][j], op.integral = false;
      }
    if (dev >= 1e-9) ops.push_back(op);
  }
  if (ops.empty()) return;
  const int dim = ball_.dim;
  const double max_r = double(pad_) * r_max_;
  const int R = ball_.R;
  // Linear interpolation at q (any sign of x: the Hermitian mate for x < 0); 0 outside the ball.
  auto interp = [&](double px, double py, double pz, cfloat& d, float& w) {
    const bool flip = px < 0;
    if (flip) px = -px, py = -py, pz = -pz;
    const int x0 = int(std::floor(px)), y0 = int(std::floor(py)), z0 = dim == 3 ? int(std::floor(pz)) : 0;
    const double fx = px - x0, fy = py - y0, fz = dim == 3 ? pz - z0 : 0.0;
    std::complex<double> ds(0, 0);
    double ws = 0;
    // The 4 (2D: 2) rows of the 8 corners looked up once each (x0 >= 0 here).
    for (int dz = 0; dz <= (dim == 3 ? 1 : 0); ++dz) {
      const int z = z0 + dz;
      if (dim == 3 && (z < -R || z > R)) continue;
      for (int dy = 0; dy <= 1; ++dy) {
        const int y = y0 + dy;
        if (y < -R || y > R) continue;
        const size_t r = ball_.row(y, z);
        const int len = ball_.len[r];
        const int64_t st = ball_.start[r];
        for (int dx = 0; dx <= 1; ++dx) {
          const double c = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * (dim == 3 ? (dz ? fz : 1 - fz) : 1.0);
          if (c == 0 || x0 + dx >= len) continue;
          const size_t j = size_t(st + x0 + dx);
          ds += c * std::complex<double>(data_[j]);
          ws += c * weight_[j];
        }
      }
    }
    d = cfloat(float(ds.real()), float(flip ? -ds.imag() : ds.imag()));
    w = float(ws);
  };
  // The value at the lattice point S p of an integral operator (its mate for x < 0; 0 outside).
  auto lookup = [&](int qx, int qy, int qz, cfloat& d, float& w) {
    const bool flip = qx < 0;
    if (flip) qx = -qx, qy = -qy, qz = -qz;
    const int64_t j = ball_.find(qx, qy, dim == 3 ? qz : 0);
    if (j < 0) {
      d = cfloat(0, 0);
      w = 0;
      return;
    }
    d = flip ? std::conj(data_[size_t(j)]) : data_[size_t(j)];
    w = weight_[size_t(j)];
  };
  // One pass: data(q) += the values at S q for each operator S of pass_ops (lookups for integral
  // ones, linear interpolation for the others), all read from the values before the pass.
  const auto sum_over = [&](const std::vector<Op>& pass_ops) {
    BigVector<cfloat> nd = data_;
    BigVector<float> nw = weight_;
    // In tiles of kTile^3 points (2D: rows, split by y): the points of a tile and their images under
    // one operator lie close together in memory, so an operator's reads stay in the cache. A unit is
    // a slab of kTile planes (z); each point reads the old values and writes only its own new ones,
    // adding the operators' terms in the order given whatever the tiling and the number of threads.
    constexpr int kTile = 8;
    const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
    const size_t units = dim == 3 ? size_t((zhi - zlo) / kTile + 1) : size_t(2 * R + 1);
    ThreadPool pool(std::max(1, std::min(nthreads, int(units))));
    pool.parallel_for(0, units, [&](size_t u, int) {
      const int z0 = dim == 3 ? zlo + int(u) * kTile : 0, z1 = dim == 3 ? std::min(zhi, z0 + kTile - 1) : 0;
      const int ya = dim == 3 ? -R : -R + int(u), yb = dim == 3 ? R : ya;
      for (int yt = ya; yt <= yb; yt += kTile)
        for (int xt = 0; xt <= R; xt += kTile)
          for (const Op& op : pass_ops) {
            const Mat3& S = op.S;
            for (int z = z0; z <= z1; ++z)
              for (int y = yt; y <= std::min(yb, yt + kTile - 1); ++y) {
                const size_t r = ball_.row(y, z);
                const int xe = std::min(ball_.len[r], xt + kTile);
                for (int x = xt; x < xe; ++x) {
                  if (double(x) * x + double(y) * y + double(z) * z > max_r * max_r) continue;
                  const size_t i = size_t(ball_.start[r] + x);
                  cfloat d;
                  float w;
                  if (op.integral) {
                    // q' = S q in integers (for 2D the upper-left block)
                    const int qx = int(S[0][0]) * x + int(S[0][1]) * y + (dim == 3 ? int(S[0][2]) * z : 0);
                    const int qy = int(S[1][0]) * x + int(S[1][1]) * y + (dim == 3 ? int(S[1][2]) * z : 0);
                    const int qz = dim == 3 ? int(S[2][0]) * x + int(S[2][1]) * y + int(S[2][2]) * z : 0;
                    lookup(qx, qy, qz, d, w);
                  } else {
                    const double qx = S[0][0] * x + S[0][1] * y + (dim == 3 ? S[0][2] * z : 0.0);
                    const double qy = S[1][0] * x + S[1][1] * y + (dim == 3 ? S[1][2] * z : 0.0);
                    const double qz = dim == 3 ? S[2][0] * x + S[2][1] * y + S[2][2] * z : 0.0;
                    interp(qx, qy, qz, d, w);
                  }
                  nd[i] += d;
                  nw[i] += w;
                }
              }
          }
    });
    data_ = std::move(nd);
    weight_ = std::move(nw);
  };
  // A closed group of integral operators (C2, C4, D2, D4, T, O in RELION's frames): passes over the
  // transversals of a chain of subgroups, innermost first (exact lookups: the result equals the
  // direct sum up to the order of the float additions).
  bool integral = true;
  for (const Op& op : ops) integral = integral && op.integral;
  if (integral && ops.size() > 1) {
    std::vector<IntMat> group = generated({});
    for (const Op& op : ops) {
      IntMat m{};
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) m[size_t(i)][size_t(j)] = int(op.S[i][j]);
      if (!contains(group, m)) group.push_back(m);
    }
    bool closed = group.size() <= 48;
    for (size_t a = 0; closed && a < group.size(); ++a)
      for (size_t b = 0; closed && b < group.size(); ++b) closed = contains(group, int_product(group[a], group[b]));
    if (closed) {
      const std::vector<std::vector<IntMat>> chain = transversal_chain(group);
      for (size_t i = chain.size(); i-- > 0;) {
        std::vector<Op> pass_ops;
        for (size_t t = 1; t < chain[i].size(); ++t) {  // chain[i][0] is the identity
          Op op;
          for (int r = 0; r < 3; ++r)
            for (int c = 0; c < 3; ++c) op.S[r][c] = chain[i][t][size_t(r)][size_t(c)];
          pass_ops.push_back(op);
        }
        sum_over(pass_ops);
      }
      return;
    }
  }
  sum_over(ops);
}

double kaiser_bessel_ft(double w, double a, int m, double alpha) {
  // (2 pi)^(3/2) a^3 alpha^m / I_m(alpha) * I_nu(s) / s^nu, nu = m + 3/2,
  // s = sqrt(alpha^2 - (2 pi a w)^2); J_nu(|s|) / |s|^nu past the root (Lewitt 1990).
  const double nu = m + 1.5;
  const double t = 2 * kPi * a * std::abs(w);
  const double s2 = alpha * alpha - t * t;
  double g;
  if (s2 > 1e-12)
    g = std::cyl_bessel_i(nu, std::sqrt(s2)) / std::pow(std::sqrt(s2), nu);
  else if (s2 < -1e-12)
    g = std::cyl_bessel_j(nu, std::sqrt(-s2)) / std::pow(std::sqrt(-s2), nu);
  else
    g = 1.0 / (std::pow(2.0, nu) * std::tgamma(nu + 1));  // common limit at s -> 0
  return std::pow(2 * kPi, 1.5) * a * a * a * std::pow(alpha, m) / std::cyl_bessel_i(double(m), alpha) * g;
}

std::string ReconstructOptions::validate() const {
  if (!(tau2_fudge > 0)) return fmt::format("tau2_fudge must be positive (got {})", tau2_fudge);
  if (gridding_iterations < 0) return fmt::format("gridding iterations must be >= 0 (got {})", gridding_iterations);
  if (!(blob_radius > 0) || blob_radius > 10)
    return fmt::format("blob radius must be in (0, 10] Fourier px (got {})", blob_radius);
  if (blob_order < 0 || blob_order > 4) return fmt::format("blob order must be 0 to 4 (got {})", blob_order);
  if (!(blob_alpha > 0) || blob_alpha > 50) return fmt::format("blob alpha must be in (0, 50] (got {})", blob_alpha);
  if (!(weight_floor >= 0)) return fmt::format("weight floor must be >= 0 (got {})", weight_floor);
  return "";
}

Grid<float> BackProjector::reconstruct(const ReconstructOptions& opt) const {
  if (auto msg = opt.validate(); !msg.empty()) input_error("backprojector: reconstruct: {}", msg);
  if (!exact_.empty()) runtime_error("backprojector: reconstruct() before finish_exact()");
  const int dim = ball_.dim, pad = pad_, R = ball_.R;
  const int rlim = opt.max_frequency > 0 ? std::min(opt.max_frequency, r_max_) : r_max_;
  const double max_r2 = double(pad * rlim) * (pad * rlim);
  const double oversampling = dim == 3 ? double(pad) * pad * pad : double(pad) * pad;
  const int nthreads = std::max(1, opt.nthreads);
  ThreadPool pool(nthreads);
  // The ball's z planes (2D: its one plane) as work units: fn(z) for each, from several threads.
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  const auto planes = [&](auto&& fn) {
    pool.parallel_for(0, size_t(zhi - zlo + 1), [&](size_t u, int) { fn(zlo + int(u)); });
  };
  const auto for_plane = [&](int z, auto&& f) {
    for (int y = -R; y <= R; ++y) {
      const size_t r = ball_.row(y, z);
      for (int x = 0; x < ball_.len[r]; ++x) f(size_t(ball_.start[r] + x), x, y);
    }
  };

  // The lattice points that take part (|q| < pad * rlim) get their weight plus the Wiener term
  // (wt, per stored point; negative: not taking part). Points of shells with tau2 == 0 (no signal
  // expected) keep their plain weight in the density compensation, so that it does not see an
  // edge at the cut, but their coefficients are zero (keep = 0), unless zero_tau2_unregularised
  // (then they are reconstructed without the prior term). Sums per plane, added in order.
  std::vector<float> wt(ball_.count, -1.0f);
  std::vector<char> keep(ball_.count, 0);
  std::vector<double> plane_wsum(size_t(zhi - zlo + 1), 0.0);
  std::vector<size_t> plane_count(plane_wsum.size(), 0);
  planes([&](int z) {
    double wsum = 0;
    size_t count = 0;
    for_plane(z, [&](size_t i, int x, int y) {
      const double r2 = double(x) * x + double(y) * y + double(z) * z;
      if (r2 >= max_r2) return;
      cfloat d;
      float w;
      effective(i, x, y, z, d, w);
      double tw = w;
      keep[i] = 1;
      if (!opt.tau2.empty()) {
        const size_t shell = size_t(std::lround(std::sqrt(r2) / pad));
        const double t2 = shell < opt.tau2.size() ? opt.tau2[shell] : 0.0;
        if (t2 > 0)
          tw += 1.0 / (opt.tau2_fudge * oversampling * t2);
        else if (!opt.zero_tau2_unregularised)
          keep[i] = 0;
      }
      wt[i] = float(tw);
      wsum += tw;
      ++count;
    });
    plane_wsum[size_t(z - zlo)] = wsum;
    plane_count[size_t(z - zlo)] = count;
  });
  const double wsum = std::accumulate(plane_wsum.begin(), plane_wsum.end(), 0.0);
  const size_t count = std::accumulate(plane_count.begin(), plane_count.end(), size_t(0));
  // A half-complex grid (side M, FFT order in y, z) holding value(i, x, y, z) at the stored points
  // of every plane and zero elsewhere, written plane by plane (zeroing and filling a plane in one go).
  const auto put = [&](Grid<cfloat>& G, int M, auto&& value) {
    const int gz = dim == 3 ? M : 1;
    const size_t gplane = size_t(M / 2 + 1) * size_t(M);
    pool.parallel_for(0, size_t(gz), [&](size_t iz, int) {
      cfloat* p = G.data() + iz * gplane;
      std::fill(p, p + gplane, cfloat(0, 0));
      const int z = dim == 3 ? fft_freq(int(iz), M) : 0;
      if (z < zlo || z > zhi) return;
      for (int y = -R; y <= R; ++y) {
        const size_t r = ball_.row(y, z);
        const int len = std::min(ball_.len[r], M / 2 + 1);
        if (len <= 0 || std::abs(y) > M / 2) continue;
        cfloat* row = p + size_t(fft_index(y, M)) * size_t(M / 2 + 1);
        for (int x = 0; x < len; ++x) row[x] = value(size_t(ball_.start[r] + x), x, y, z);
      }
    });
  };
  // The factor u applied to the data (stored in place of wt).
  std::vector<float>& u = wt;
  if (opt.iterative_gridding && opt.gridding_iterations > 0) {
    // Iterative gridding (see ReconstructOptions) on an FFT grid of size M large enough that the
    // blob does not couple the lattice edge with the opposite edge (as RELION's M_R).
    const int M = fft_friendly_size(2 * pad * rlim + int(std::ceil(2 * opt.blob_radius)), true);
    BlobConvolution conv(M, dim, n_, pad, rlim, opt);
    // RELION's floor is 1e-6 in its weight units; relative to the mean weight it works for
    // weights in any units (e.g. CTF^2 / sigma2 with unnormalised FFTs).
    const double wfloor = std::max(1e-6 * wsum / double(std::max<size_t>(count, 1)), 1e-300);
    std::vector<float> uf(ball_.count, 0.0f);
    for (size_t i = 0; i < ball_.count; ++i) uf[i] = wt[i] >= 0 ? 1.0f : 0.0f;
    Grid<cfloat> G(M / 2 + 1, M, dim == 3 ? M : 1);
    auto gpos = [&](int x, int y, int z) {
      return size_t(x) + size_t(M / 2 + 1) * (size_t(fft_index(y, M)) + size_t(M) * size_t(dim == 3 ? fft_index(z, M) : 0));
    };
    for (int it = 0; it < opt.gridding_iterations; ++it) {
      put(G, M, [&](size_t i, int, int, int) { return wt[i] >= 0 ? cfloat(uf[i] * wt[i], 0.0f) : cfloat(0, 0); });
      conv.apply(G);
      planes([&](int z) {
        for_plane(z, [&](size_t i, int x, int y) {
          // Points without weight (no slice reached them: few particles, a forced final iteration)
          // take no part: their u multiplies nothing. Elsewhere u stays a finite float (where the
          // weights around a point are tiny, 1 / floor per iteration would overflow it to inf, and
          // inf x 0 = NaN would spread over the whole map through the FFTs).
          if (wt[i] > 0)
            uf[i] = float(std::min(double(uf[i]) / std::max(wfloor, double(std::abs(G[gpos(x, y, z)]))),
                                   double(std::numeric_limits<float>::max())));
        });
      });
    }
    u = std::move(uf);
  } else {
    // 1 / max(w, floor_fraction x mean w of the shell floor(|q| / pad)) (the last shell rlim - 1 for
    // points beyond it), as RELION's --skip_gridding.
    auto shell = [&](int x, int y, int z) {
      const double r = std::sqrt(double(x) * x + double(y) * y + double(z) * z);
      return std::min(size_t(std::floor(r / pad)), size_t(std::max(rlim, 1) - 1));
    };
    std::vector<double> ssum(size_t(std::max(rlim, 1)), 0.0), scnt(ssum.size(), 0.0);
    ball_.for_each([&](size_t i, int x, int y, int z) {
      if (wt[i] < 0) return;
      ssum[shell(x, y, z)] += wt[i];
      scnt[shell(x, y, z)] += 1;
    });
    ball_.for_each([&](size_t i, int x, int y, int z) {
      if (wt[i] < 0) return;
      const size_t s = shell(x, y, z);
      const double w = std::max(double(wt[i]), scnt[s] > 0 ? opt.weight_floor * ssum[s] / scnt[s] : 0.0);
      wt[i] = w > 0 ? float(1.0 / w) : 0.0f;
    });
  }
  // u * data into the padded half-complex transform (centred: FFT order in y, z), inverted in place.
  // For even N the centring is the sign (-1)^(x + y + z), applied while filling.
  const int N = pad * n_;
  const int off = N / 2 - n_ / 2, c = n_ / 2;
  const int nz = dim == 3 ? n_ : 1;
  Grid<float> out(n_, n_, nz);
  {
  Grid<cfloat> G(N / 2 + 1, N, dim == 3 ? N : 1);
  const bool even = N % 2 == 0;
  put(G, N, [&](size_t i, int x, int y, int z) {
    if (!keep[i]) return cfloat(0, 0);
    cfloat d;
    float w;
    effective(i, x, y, z, d, w);
    const cfloat v = d * u[i];
    return even && ((x + y + z) & 1) ? -v : v;
  });
  std::vector<float>().swap(u);
  std::vector<char>().swap(keep);
  if (!even) centre_origin(G, N, true);
  fft_inverse_inplace(G, N, nthreads);
  pool.parallel_for(0, size_t(nz), [&](size_t z, int) {
    for (int y = 0; y < n_; ++y)
      for (int x = 0; x < n_; ++x) out(x, y, int(z)) = real_at(G, x + off, y + off, dim == 3 ? int(z) + off : 0);
  });
  }
  // RELION's softMaskOutsideMap with its defaults: beyond radius n/2 the map blends over a
  // 3 px cosine edge into the mean of the region outside it.
  if (opt.mask_corners && dim == 3)
    apply_spherical_mask(out, n_ / 2.0, 3.0, opt.corners_from_edge ? MaskFill::EdgeMean : MaskFill::BackgroundMean);
  if (opt.gridding_correction)
    pool.parallel_for(0, size_t(nz), [&](size_t zi, int) {
      const int z = int(zi);
      for (int y = 0; y < n_; ++y)
        for (int x = 0; x < n_; ++x) {
          const double dz = dim == 3 ? z - c : 0;
          const double r = std::sqrt(double(x - c) * (x - c) + double(y - c) * (y - c) + dz * dz);
          out(x, y, z) = float(out(x, y, z) / gridding_sinc2(r, N));
        }
    });
  return out;
}

std::vector<double> BackProjector::mean_weight_per_shell() const {
  const int dim = ball_.dim;
  const double oversampling = dim == 3 ? double(pad_) * pad_ * pad_ : double(pad_) * pad_;
  std::vector<double> sum(size_t(n_ / 2 + 1), 0.0), cnt(sum.size(), 0.0);
  const double max_r2 = double(pad_ * r_max_) * (pad_ * r_max_);
  ball_.for_each([&](size_t i, int x, int y, int z) {
    const double r2 = double(x) * x + double(y) * y + double(z) * z;
    if (r2 >= max_r2) return;
    const size_t shell = size_t(std::lround(std::sqrt(r2) / pad_));
    if (shell >= sum.size()) return;
    cfloat d;
    float w;
    effective(i, x, y, z, d, w);
    sum[shell] += oversampling * w;
    cnt[shell] += 1;
  });
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = cnt[i] > 0 ? sum[i] / cnt[i] : 0.0;
  return sum;
}

std::vector<double> shell_power(const Grid<float>& map) {
  const int n = map.nx();
  Grid<cfloat> F = fft_forward(map);
  std::vector<double> sum(size_t(n / 2 + 1), 0.0), cnt(sum.size(), 0.0);
  for (int z = 0; z < F.nz(); ++z) {
    const int kz = F.nz() > 1 ? fft_freq(z, F.nz()) : 0;
    for (int y = 0; y < F.ny(); ++y) {
      const int ky = fft_freq(y, F.ny());
      for (int x = 0; x < F.nx(); ++x) {
        const size_t shell = size_t(std::lround(std::sqrt(double(x) * x + double(ky) * ky + double(kz) * kz)));
        if (shell >= sum.size()) continue;
        sum[shell] += std::norm(F(x, y, z));
        cnt[shell] += 1;
      }
    }
  }
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = cnt[i] > 0 ? sum[i] / cnt[i] : 0.0;
  return sum;
}

}  // namespace regula

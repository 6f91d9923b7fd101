#include "regula/imaging/backprojector.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/imaging/mask.hpp"

namespace regula {
namespace {

// Linear interpolation of a lattice-layout grid (x in [0, R], y, z in [-R, R])
// at p; `flipped` tells whether the Hermitian mate (-p) was used.
template <class T>
T lattice_interp(const Grid<T>& g, int dim, int R, double px, double py, double pz, bool& flipped) {
  flipped = px < 0;
  if (flipped) {
    px = -px;
    py = -py;
    pz = -pz;
  }
  const int x0 = int(std::floor(px)), y0 = int(std::floor(py)), z0 = dim == 3 ? int(std::floor(pz)) : 0;
  const double fx = px - x0, fy = py - y0, fz = dim == 3 ? pz - z0 : 0.0;
  auto at = [&](int x, int y, int z) -> T {
    if (x > R || y < -R || y > R || (dim == 3 && (z < -R || z > R))) return T{};
    return g(x, y + R, dim == 3 ? z + R : 0);
  };
  T r{};
  for (int dz = 0; dz <= (dim == 3 ? 1 : 0); ++dz)
    for (int dy = 0; dy <= 1; ++dy)
      for (int dx = 0; dx <= 1; ++dx) {
        double w = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * (dim == 3 ? (dz ? fz : 1 - fz) : 1.0);
        if (w != 0) r += T(float(w)) * at(x0 + dx, y0 + dy, z0 + dz);
      }
  return r;
}

// Sums the x = 0 plane with its Hermitian mates: d(0,q) + conj(d(0,-q)).
void hermitian_sum(FourierLattice& d, Grid<float>& w) {
  const int R = d.R, dim = d.dim;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y) {
      // visit each pair once: (y, z) before (-y, -z) in (z, y) order
      if (z > 0 || (z == 0 && y >= 0)) continue;
      size_t a = d.index(0, y, z), b = d.index(0, -y, -z);
      cfloat s = d.data[a] + std::conj(d.data[b]);
      d.data[a] = s;
      d.data[b] = std::conj(s);
      float ws = w[a] + w[b];
      w[a] = ws;
      w[b] = ws;
    }
}

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
  // be Hermitian (here: real and even, as sampling weights are).
  void apply(Grid<cfloat>& F) {
    Grid<float> f = fft_inverse(F, M_, nthreads_);
    const int M = M_, nz = dim_ == 3 ? M : 1;
    pool_.parallel_for(size_t(0), size_t(nz), [&](size_t zi, int) {
      const int z = int(zi), kz = dim_ == 3 ? fft_freq(z, M) : 0;
      for (int y = 0; y < M; ++y) {
        const int ky = fft_freq(y, M);
        const size_t base = size_t(kz * kz + ky * ky);
        float* row = &f(0, y, z);
        for (int x = 0; x < M; ++x) {
          const int kx = fft_freq(x, M);
          row[x] *= table_[base + size_t(kx * kx)];
        }
      }
    });
    F = fft_forward(f, nthreads_);
  }

 private:
  int M_, dim_, nthreads_;
  ThreadPool pool_;
  std::vector<float> table_;
};

// Smallest size >= m whose only prime factors are 2, 3 and 5 (fast FFTs).
int fft_friendly(int m) {
  for (int k = std::max(m, 1);; ++k) {
    int r = k;
    for (int p : {2, 3, 5})
      while (r % p == 0) r /= p;
    if (r == 1) return k;
  }
}


// A lattice point that takes part in the reconstruction: its index in the
// lattice, coordinates (padded px), weight (plus the Wiener term), and whether
// its coefficient is kept (false for shells with tau2 == 0).
struct LatticePoint {
  double w;
  size_t index;
  int16_t x, y, z;
  bool keep;
};

// Iterative gridding factors u (see ReconstructOptions) for the points `pts`
// of a lattice of dimension `dim` (n: original box, rlim: frequency limit).
std::vector<double> gridding_factors(const std::vector<LatticePoint>& pts, int dim, int n, int pad, int rlim,
                                     const ReconstructOptions& opt) {
  // FFT grid large enough that the blob (radius 2 * blob_radius padded px)
  // does not couple the lattice edge with the opposite edge (as RELION's M_R).
  int M = fft_friendly(2 * pad * rlim + int(std::ceil(2 * opt.blob_radius)));
  while (M % 2) M = fft_friendly(M + 1);
  const size_t hx = size_t(M / 2 + 1), count = pts.size();
  std::vector<size_t> gpos(count);
  for (size_t j = 0; j < count; ++j) {
    const LatticePoint& p = pts[j];
    gpos[j] = size_t(p.x) + hx * (size_t(fft_index(p.y, M)) + size_t(M) * size_t(dim == 3 ? fft_index(p.z, M) : 0));
  }
  BlobConvolution conv(M, dim, n, pad, rlim, opt);
  // RELION's floor is 1e-6 in its weight units; relative to the mean weight it
  // works for weights in any units (e.g. CTF^2 / sigma2 with unnormalised FFTs).
  double wmean = 0;
  for (const LatticePoint& p : pts) wmean += p.w;
  const double wfloor = std::max(1e-6 * wmean / double(std::max<size_t>(count, 1)), 1e-300);
  std::vector<double> u(count, 1.0);
  Grid<cfloat> G(int(hx), M, dim == 3 ? M : 1);
  for (int it = 0; it < opt.gridding_iterations; ++it) {
    if (it > 0) G.fill(cfloat(0, 0));  // reuse the memory (cheaper than new pages)
    for (size_t j = 0; j < count; ++j) G[gpos[j]] = cfloat(float(u[j] * pts[j].w), 0.0f);
    conv.apply(G);
    for (size_t j = 0; j < count; ++j) u[j] /= std::max(wfloor, double(std::abs(G[gpos[j]])));
  }
  return u;
}

// 1 / max(w, floor_fraction x mean w of the shell floor(|q| / pad)) (the last
// shell rlim - 1 for points beyond it), as RELION's --skip_gridding.
std::vector<double> floored_inverse_weights(const std::vector<LatticePoint>& pts, int pad, int rlim,
                                            double floor_fraction) {
  auto shell = [&](const LatticePoint& p) {
    const double r = std::sqrt(double(p.x) * p.x + double(p.y) * p.y + double(p.z) * p.z);
    return std::min(size_t(std::floor(r / pad)), size_t(std::max(rlim, 1) - 1));
  };
  std::vector<double> sum(size_t(std::max(rlim, 1)), 0.0), cnt(sum.size(), 0.0);
  for (const LatticePoint& p : pts) {
    sum[shell(p)] += p.w;
    cnt[shell(p)] += 1;
  }
  std::vector<double> u(pts.size(), 0.0);
  for (size_t j = 0; j < pts.size(); ++j) {
    const size_t s = shell(pts[j]);
    const double w = std::max(pts[j].w, cnt[s] > 0 ? floor_fraction * sum[s] / cnt[s] : 0.0);
    u[j] = w > 0 ? 1.0 / w : 0.0;
  }
  return u;
}

}  // namespace

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

BackProjector::BackProjector(int n, int padding, int r_max, int dim) {
  if (n < 2) input_error("backprojector: box size {} must be >= 2", n);
  if (padding < 1) input_error("backprojector: padding factor {} must be >= 1", padding);
  if (dim != 2 && dim != 3) input_error("backprojector: dimension {} must be 2 or 3", dim);
  n_ = n;
  pad_ = padding;
  r_max_ = r_max <= 0 ? n / 2 : std::min(r_max, n / 2);
  data_.init(dim, pad_ * r_max_ + 2);
  weight_ = Grid<float>(data_.data.nx(), data_.data.ny(), data_.data.nz());
}

void BackProjector::insert(const Grid<cfloat>& img, const Grid<float>& wimg, const Mat3& A) {
  assert(!hermitian_done_ && "insert() after symmetrise()");
  const int n_img = img.ny();
  if (img.nx() != n_img / 2 + 1 || img.nz() != 1 || n_img > n_)
    runtime_error("backprojector: image transform is {}x{}x{}, expected (m/2+1) x m with m <= {}", img.nx(),
                  img.ny(), img.nz(), n_);
  const bool has_w = !wimg.empty();
  if (has_w && !wimg.same_shape(Grid<float>(img.nx(), img.ny())))
    runtime_error("backprojector: weight is {}x{}, image is {}x{}", wimg.nx(), wimg.ny(), img.nx(), img.ny());
  const int dim = data_.dim;
  const int rmax = std::min(r_max_, n_img / 2);
  const int rmax2 = rmax * rmax;
  const double p = pad_;
  const double m00 = p * A[0][0], m01 = p * A[1][0];
  const double m10 = p * A[0][1], m11 = p * A[1][1];
  const double m20 = p * A[0][2], m21 = p * A[1][2];
  cfloat* d = data_.data.data();
  float* w = weight_.data();
  const size_t sy = size_t(data_.data.nx());
  const size_t sz = sy * size_t(data_.data.ny());
  for (int iy = 0; iy < n_img; ++iy) {
    const int y = fft_freq(iy, n_img);
    if (std::abs(y) > rmax) continue;
    // The x = 0 column holds Hermitian pairs (0, y) and (0, -y): insert only
    // y >= 0 so that each independent coefficient counts once (as RELION).
    for (int x = y < 0 ? 1 : 0; x <= rmax; ++x) {
      if (x * x + y * y > rmax2) break;
      cfloat v = img(x, iy);
      const float wt = has_w ? wimg(x, iy) : 1.0f;
      double px = m00 * x + m01 * y, py = m10 * x + m11 * y, pz = m20 * x + m21 * y;
      if (px < 0) {
        px = -px;
        py = -py;
        pz = -pz;
        v = std::conj(v);
      }
      const int x0 = int(std::floor(px)), y0 = int(std::floor(py));
      const float fx = float(px - x0), fy = float(py - y0);
      if (dim == 2) {
        const size_t i0 = data_.index(x0, y0, 0);
        const float w00 = (1 - fx) * (1 - fy), w01 = fx * (1 - fy), w10 = (1 - fx) * fy, w11 = fx * fy;
        d[i0] += w00 * v;
        d[i0 + 1] += w01 * v;
        d[i0 + sy] += w10 * v;
        d[i0 + sy + 1] += w11 * v;
        w[i0] += w00 * wt;
        w[i0 + 1] += w01 * wt;
        w[i0 + sy] += w10 * wt;
        w[i0 + sy + 1] += w11 * wt;
      } else {
        const int z0 = int(std::floor(pz));
        const float fz = float(pz - z0);
        const size_t i0 = data_.index(x0, y0, z0);
        const size_t off[8] = {0, 1, sy, sy + 1, sz, sz + 1, sz + sy, sz + sy + 1};
        const float gx[2] = {1 - fx, fx}, gy[2] = {1 - fy, fy}, gz[2] = {1 - fz, fz};
        for (int k = 0; k < 8; ++k) {
          const float c = gx[k & 1] * gy[(k >> 1) & 1] * gz[k >> 2];
          d[i0 + off[k]] += c * v;
          w[i0 + off[k]] += c * wt;
        }
      }
    }
  }
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

void BackProjector::insert_pixels(std::span<const float> kx, std::span<const float> ky, const float* v,
                                  const float* wt, const Mat3& A) {
  assert(!hermitian_done_ && "insert_pixels() after symmetrise()");
  const double p = pad_;
  const double m00 = p * A[0][0], m01 = p * A[1][0];
  const double m10 = p * A[0][1], m11 = p * A[1][1];
  const double m20 = p * A[0][2], m21 = p * A[1][2];
  const double rmax2 = double(r_max_) * r_max_;
  cfloat* d = data_.data.data();
  float* w = weight_.data();
  const size_t sy = size_t(data_.data.nx());
  const size_t sz = sy * size_t(data_.data.ny());
  const size_t off[8] = {0, 1, sy, sy + 1, sz, sz + 1, sz + sy, sz + sy + 1};
  for (size_t q = 0; q < kx.size(); ++q) {
    const double x = kx[q], y = ky[q];
    if (x * x + y * y > rmax2) continue;
    cfloat val(v[2 * q], v[2 * q + 1]);
    double px = m00 * x + m01 * y, py = m10 * x + m11 * y, pz = m20 * x + m21 * y;
    if (px < 0) {
      px = -px;
      py = -py;
      pz = -pz;
      val = std::conj(val);
    }
    const int x0 = int(std::floor(px)), y0 = int(std::floor(py));
    const float fx = float(px - x0), fy = float(py - y0);
    if (data_.dim == 2) {  // the same bilinear spreading as insert()
      const size_t i0 = data_.index(x0, y0, 0);
      const float c[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
      for (int k = 0; k < 4; ++k) {
        d[i0 + off[k]] += c[k] * val;
        w[i0 + off[k]] += c[k] * wt[q];
      }
      continue;
    }
    const int z0 = int(std::floor(pz));
    const float fz = float(pz - z0);
    const size_t i0 = data_.index(x0, y0, z0);
    const float gx[2] = {1 - fx, fx}, gy[2] = {1 - fy, fy}, gz[2] = {1 - fz, fz};
    for (int k = 0; k < 8; ++k) {
      const float c = gx[k & 1] * gy[(k >> 1) & 1] * gz[k >> 2];
      d[i0 + off[k]] += c * val;
      w[i0 + off[k]] += c * wt[q];
    }
  }
}

std::vector<double> BackProjector::lattice_fsc(const BackProjector& o) const {
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.data_.dim != data_.dim)
    runtime_error("backprojector: FSC of accumulators of different geometry");
  FourierLattice D1 = data_, D2 = o.data_;
  Grid<float> W1 = weight_, W2 = o.weight_;
  if (!hermitian_done_) hermitian_sum(D1, W1);
  if (!o.hermitian_done_) hermitian_sum(D2, W2);
  // Data and weight summed over the padding^3 lattice points nearest to each point k of the
  // original grid (k = round(q / padding)), then the ratios: the FSC of the two unregularised
  // half reconstructions at the original sampling (per-point ratios on the padded lattice would be
  // dominated by the noise of low-weight points).
  const int R = D1.R, dim = D1.dim;
  const size_t hs = size_t(n_ / 2 + 1);
  const int K = r_max_ + 1, KY = 2 * K + 1, KZ = dim == 3 ? 2 * K + 1 : 1;
  const size_t cells = size_t(K + 1) * size_t(KY) * size_t(KZ);
  std::vector<std::complex<double>> s1(cells), s2(cells);
  std::vector<double> w1(cells, 0.0), w2(cells, 0.0);
  const double max_r2 = double(pad_ * r_max_) * (pad_ * r_max_);
  auto down = [&](int q) { return int(std::floor((q + pad_ / 2.0) / pad_)); };
  const int zlo0 = dim == 3 ? -R : 0, zhi0 = dim == 3 ? R : 0;
  for (int z = zlo0; z <= zhi0; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        const double r2 = double(x) * x + double(y) * y + double(z) * z;
        if (r2 >= max_r2) continue;
        const int kx = down(x), ky = down(y), kz = dim == 3 ? down(z) : 0;
        if (kx > K || std::abs(ky) > K || std::abs(kz) > K) continue;
        const size_t c = (size_t(kz + (dim == 3 ? K : 0)) * size_t(KY) + size_t(ky + K)) * size_t(K + 1) + size_t(kx);
        const size_t i = D1.index(x, y, z);
        s1[c] += std::complex<double>(D1.data[i]);
        s2[c] += std::complex<double>(D2.data[i]);
        w1[c] += W1[i];
        w2[c] += W2[i];
      }
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
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.data_.dim != data_.dim)
    runtime_error("backprojector: cannot join accumulators of different geometry");
  const int R = data_.R, dim = data_.dim;
  const double lim2 = double(pad_) * max_shell * double(pad_) * max_shell;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        if (double(x) * x + double(y) * y + double(z) * z >= lim2) continue;
        const size_t i = data_.index(x, y, z);
        const cfloat d = data_.data[i] + o.data_.data[i];
        const float w = weight_[i] + o.weight_[i];
        data_.data[i] = o.data_.data[i] = d;
        weight_[i] = o.weight_[i] = w;
      }
}

void BackProjector::add(const BackProjector& o, float factor) {
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.data_.dim != data_.dim)
    runtime_error("backprojector: cannot add accumulators of different geometry");
  assert(o.hermitian_done_ == hermitian_done_);
  if (factor == 1.0f) {
    for (size_t i = 0; i < weight_.size(); ++i) {
      data_.data[i] += o.data_.data[i];
      weight_[i] += o.weight_[i];
    }
    return;
  }
  for (size_t i = 0; i < weight_.size(); ++i) {
    data_.data[i] += factor * o.data_.data[i];
    weight_[i] += factor * o.weight_[i];
  }
}

void BackProjector::clear() {
  data_.data.fill(cfloat(0, 0));
  weight_.fill(0.0f);
  hermitian_done_ = false;
}

void BackProjector::enforce_hermitian() {
  if (hermitian_done_) return;
  hermitian_sum(data_, weight_);
  hermitian_done_ = true;
}

void BackProjector::symmetrise(const std::vector<Mat3>& operators) {
  enforce_hermitian();
  std::vector<Mat3> ops;
  bool has_identity = false;
  for (const Mat3& R : operators) {
    double dev = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) dev += std::abs(R[i][j] - (i == j ? 1.0 : 0.0));
    if (dev < 1e-9)
      has_identity = true;
    else
      ops.push_back(R);
  }
  (void)has_identity;  // the identity term is the accumulator itself
  if (ops.empty()) return;
  const int R = data_.R, dim = data_.dim;
  const double max_r = double(pad_) * r_max_;
  FourierLattice nd = data_;
  Grid<float> nw = weight_;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        if (double(x) * x + double(y) * y + double(z) * z > max_r * max_r) continue;
        const size_t i = data_.index(x, y, z);
        for (const Mat3& S : ops) {
          // q' = S q (for 2D the upper-left block)
          double qx = S[0][0] * x + S[0][1] * y + (dim == 3 ? S[0][2] * z : 0.0);
          double qy = S[1][0] * x + S[1][1] * y + (dim == 3 ? S[1][2] * z : 0.0);
          double qz = dim == 3 ? S[2][0] * x + S[2][1] * y + S[2][2] * z : 0.0;
          bool flipped;
          cfloat v = lattice_interp(data_.data, dim, R, qx, qy, qz, flipped);
          nd.data[i] += flipped ? std::conj(v) : v;
          nw[i] += lattice_interp(weight_, dim, R, qx, qy, qz, flipped);
        }
      }
  data_ = std::move(nd);
  weight_ = std::move(nw);
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
  FourierLattice D = data_;
  Grid<float> W0 = weight_;
  if (!hermitian_done_) hermitian_sum(D, W0);
  const int dim = D.dim, R = D.R, pad = pad_;
  const int rlim = opt.max_frequency > 0 ? std::min(opt.max_frequency, r_max_) : r_max_;
  const double max_r2 = double(pad * rlim) * (pad * rlim);
  const double oversampling = dim == 3 ? double(pad) * pad * pad : double(pad) * pad;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  const int nthreads = std::max(1, opt.nthreads);

  // The lattice points that take part (|q| < pad * rlim), with their weights
  // plus the Wiener term. Points of shells with tau2 == 0 (no signal expected)
  // keep their plain weight in the density compensation, so that it does not
  // see an edge at the cut, but their coefficients are zero.
  std::vector<LatticePoint> pts;
  const double rr = double(pad) * rlim + 1;  // half ball (3D) or half disc (2D), with margin
  pts.reserve(size_t(dim == 3 ? 2.0 / 3.0 * kPi * rr * rr * rr : 0.5 * kPi * rr * rr) + size_t(8 * rr * rr));
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        const double r2 = double(x) * x + double(y) * y + double(z) * z;
        if (r2 >= max_r2) continue;
        LatticePoint p{W0[D.index(x, y, z)], D.index(x, y, z), int16_t(x), int16_t(y), int16_t(z), true};
        if (!opt.tau2.empty()) {
          const size_t shell = size_t(std::lround(std::sqrt(r2) / pad));
          const double t2 = shell < opt.tau2.size() ? opt.tau2[shell] : 0.0;
          if (t2 > 0)
            p.w += 1.0 / (opt.tau2_fudge * oversampling * t2);
          else
            p.keep = false;
        }
        pts.push_back(p);
      }
  // The factor applied to the data.
  const std::vector<double> u = opt.iterative_gridding && opt.gridding_iterations > 0
                                    ? gridding_factors(pts, dim, n_, pad, rlim, opt)
                                    : floored_inverse_weights(pts, pad, rlim, opt.weight_floor);
  // Decentre u * data into the padded half-complex transform and invert.
  const int N = pad * n_;
  Grid<cfloat> G(N / 2 + 1, N, dim == 3 ? N : 1);
  for (size_t j = 0; j < pts.size(); ++j) {
    const LatticePoint& p = pts[j];
    if (!p.keep) continue;
    const cfloat d = D.data[p.index];
    G(p.x, fft_index(p.y, N), dim == 3 ? fft_index(p.z, N) : 0) = cfloat(float(d.real() * u[j]), float(d.imag() * u[j]));
  }
  Grid<float> padded = from_fourier_centred(G, N, nthreads);
  const int off = N / 2 - n_ / 2, c = n_ / 2;
  const int nz = dim == 3 ? n_ : 1;
  Grid<float> out(n_, n_, nz);
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < n_; ++y)
      for (int x = 0; x < n_; ++x) out(x, y, z) = padded(x + off, y + off, dim == 3 ? z + off : 0);
  // RELION's softMaskOutsideMap with its defaults: beyond radius n/2 the map blends over a
  // 3 px cosine edge into the mean of the region outside it.
  if (opt.mask_corners && dim == 3) apply_spherical_mask(out, n_ / 2.0, 3.0, MaskFill::BackgroundMean);
  if (opt.gridding_correction)
    for (int z = 0; z < nz; ++z)
      for (int y = 0; y < n_; ++y)
        for (int x = 0; x < n_; ++x) {
          const double dz = dim == 3 ? z - c : 0;
          const double r = std::sqrt(double(x - c) * (x - c) + double(y - c) * (y - c) + dz * dz);
          out(x, y, z) = float(out(x, y, z) / gridding_sinc2(r, N));
        }
  return out;
}

std::vector<double> BackProjector::mean_weight_per_shell() const {
  FourierLattice D = data_;
  Grid<float> W = weight_;
  if (!hermitian_done_) hermitian_sum(D, W);
  const int dim = D.dim, R = D.R;
  const double oversampling = dim == 3 ? double(pad_) * pad_ * pad_ : double(pad_) * pad_;
  std::vector<double> sum(size_t(n_ / 2 + 1), 0.0), cnt(sum.size(), 0.0);
  const double max_r2 = double(pad_ * r_max_) * (pad_ * r_max_);
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        const double r2 = double(x) * x + double(y) * y + double(z) * z;
        if (r2 >= max_r2) continue;
        const size_t shell = size_t(std::lround(std::sqrt(r2) / pad_));
        if (shell >= sum.size()) continue;
        sum[shell] += oversampling * W[D.index(x, y, z)];
        cnt[shell] += 1;
      }
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

#include "regula/imaging/backprojector.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"

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

// Kaiser-Bessel blob (radius a, order m, alpha), value at distance r.
double kb_blob(double r, double a = 1.9, int m = 2, double alpha = 15.0) {
  if (r > a) return 0.0;
  double t = std::sqrt(std::max(0.0, 1.0 - (r / a) * (r / a)));
  return std::pow(t, m) * std::cyl_bessel_i(double(m), alpha * t) / std::cyl_bessel_i(double(m), alpha);
}

// Iterative density compensation (Pipe & Menon 1999): u <- u / ((u W) * blob)
// on the lattice points marked inside, starting from u = 1; returns u.
std::vector<double> pipe_menon_weights(const std::vector<double>& W, const std::vector<char>& inside,
                                       const FourierLattice& D, int iterations, double clamp, int nthreads) {
  const int dim = D.dim, R = D.R;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  const size_t total = W.size();
  // Normalised blob stencil over offsets in {-1, 0, 1}^dim, indexed by squared distance.
  double b[4];
  double bsum = 0;
  for (int k = 0; k < 4; ++k) b[k] = kb_blob(std::sqrt(double(k)));
  for (int dz = -1; dz <= 1; ++dz)
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx)
        if (dim == 3 || dz == 0) bsum += b[dx * dx + dy * dy + dz * dz];
  for (double& v : b) v /= bsum;
  std::vector<double> u(total), c(total), conv(total);
  for (size_t i = 0; i < total; ++i) u[i] = inside[i] ? 1.0 : 0.0;
  ThreadPool pool(std::max(1, nthreads));
  auto cval = [&](int x, int y, int z) -> double {
    if (x < 0) {  // Hermitian mate (weights are real and even)
      x = -x;
      y = -y;
      z = -z;
    }
    if (x > R || y < -R || y > R || z < -R || z > R) return 0.0;
    return c[D.index(x, y, z)];
  };
  for (int it = 0; it < iterations; ++it) {
    for (size_t i = 0; i < total; ++i) c[i] = u[i] * W[i];
    pool.parallel_for(size_t(0), size_t(zhi - zlo + 1), [&](size_t zi, int) {
      const int z = zlo + int(zi);
      for (int y = -R; y <= R; ++y)
        for (int x = 0; x <= R; ++x) {
          const size_t i = D.index(x, y, z);
          if (!inside[i]) continue;
          double s = 0;
          for (int dz = (dim == 3 ? -1 : 0); dz <= (dim == 3 ? 1 : 0); ++dz)
            for (int dy = -1; dy <= 1; ++dy)
              for (int dx = -1; dx <= 1; ++dx) s += b[dx * dx + dy * dy + dz * dz] * cval(x + dx, y + dy, z + dz);
          conv[i] = s;
        }
    });
    for (size_t i = 0; i < total; ++i)
      if (inside[i]) u[i] /= std::max(conv[i], clamp);
  }
  return u;
}

}  // namespace

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

void BackProjector::add(const BackProjector& o) {
  if (o.n_ != n_ || o.pad_ != pad_ || o.r_max_ != r_max_ || o.data_.dim != data_.dim)
    runtime_error("backprojector: cannot add accumulators of different geometry");
  assert(o.hermitian_done_ == hermitian_done_);
  for (size_t i = 0; i < weight_.size(); ++i) {
    data_.data[i] += o.data_.data[i];
    weight_[i] += o.weight_[i];
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

Grid<float> BackProjector::reconstruct(const ReconstructOptions& opt) const {
  FourierLattice D = data_;
  Grid<float> W0 = weight_;
  if (!hermitian_done_) hermitian_sum(D, W0);
  const int dim = D.dim, R = D.R, pad = pad_;
  const int rlim = opt.max_frequency > 0 ? std::min(opt.max_frequency, r_max_) : r_max_;
  const double max_r2 = double(pad * rlim) * (pad * rlim);
  const double oversampling = dim == 3 ? double(pad) * pad * pad : double(pad) * pad;
  const size_t total = W0.size();
  std::vector<double> W(total, 0.0);
  std::vector<char> inside(total, 0);
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  double wsum = 0;
  size_t wcount = 0;
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        const double r2 = double(x) * x + double(y) * y + double(z) * z;
        if (r2 >= max_r2) continue;
        const size_t i = D.index(x, y, z);
        double w = W0[i];
        if (!opt.tau2.empty()) {
          const size_t shell = size_t(std::lround(std::sqrt(r2) / pad));
          const double t2 = shell < opt.tau2.size() ? opt.tau2[shell] : 0.0;
          if (!(t2 > 0)) continue;  // no signal expected: coefficient stays 0
          w += 1.0 / (opt.tau2_fudge * oversampling * t2);
        }
        W[i] = w;
        inside[i] = 1;
        wsum += w;
        ++wcount;
      }
  const double wmean = wcount ? wsum / double(wcount) : 0.0;
  std::vector<double> u(total, 0.0);  // the factor applied to the data
  if (opt.iterative_gridding && opt.gridding_iterations > 0) {
    u = pipe_menon_weights(W, inside, D, opt.gridding_iterations, std::max(1e-6 * wmean, 1e-300), opt.nthreads);
  } else {
    const double floor = std::max(opt.weight_floor * wmean, 1e-300);
    for (size_t i = 0; i < total; ++i)
      if (inside[i]) u[i] = 1.0 / std::max(W[i], floor);
  }
  // Decentre into the padded half-complex transform and invert.
  const int N = pad * n_;
  Grid<cfloat> G(N / 2 + 1, N, dim == 3 ? N : 1);
  for (int z = zlo; z <= zhi; ++z)
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        const size_t i = D.index(x, y, z);
        if (!inside[i]) continue;
        G(x, fft_index(y, N), dim == 3 ? fft_index(z, N) : 0) = cfloat(float(D.data[i].real() * u[i]),
                                                                       float(D.data[i].imag() * u[i]));
      }
  Grid<float> padded = from_fourier_centred(G, N, std::max(1, opt.nthreads));
  const int off = N / 2 - n_ / 2, c = n_ / 2;
  const int nz = dim == 3 ? n_ : 1;
  Grid<float> out(n_, n_, nz);
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < n_; ++y)
      for (int x = 0; x < n_; ++x) {
        float v = padded(x + off, y + off, dim == 3 ? z + off : 0);
        if (opt.gridding_correction) {
          const double dz = dim == 3 ? z - c : 0;
          const double r = std::sqrt(double(x - c) * (x - c) + double(y - c) * (y - c) + dz * dz);
          v = float(v / gridding_sinc2(r, N));
        }
        out(x, y, z) = v;
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

#include "regula/imaging/projector.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"

namespace regula {

void FourierLattice::init(int dimension, int radius) {
  dim = dimension;
  R = radius;
  data = Grid<cfloat>(R + 1, 2 * R + 1, dim == 3 ? 2 * R + 1 : 1);
}

cfloat FourierLattice::interpolate_gradient(double px, double py, double pz, cfloat* grad) const {
  const bool conj = to_stored_half(px, py, pz);
  const int x0 = int(std::floor(px)), y0 = int(std::floor(py)), z0 = int(std::floor(pz));
  const float fx = float(px - x0), fy = float(py - y0), fz = float(pz - z0);
  const size_t sy = size_t(data.nx()), sz = sy * size_t(data.ny());
  const cfloat* p = data.data() + index(x0, y0, z0);
  const cfloat d00 = p[1] - p[0], d10 = p[sy + 1] - p[sy], d01 = p[sz + 1] - p[sz], d11 = p[sz + sy + 1] - p[sz + sy];
  const cfloat a00 = p[0] + fx * d00, a10 = p[sy] + fx * d10, a01 = p[sz] + fx * d01, a11 = p[sz + sy] + fx * d11;
  const cfloat b0 = a00 + fy * (a10 - a00), b1 = a01 + fy * (a11 - a01);
  const cfloat gx0 = d00 + fy * (d10 - d00), gx1 = d01 + fy * (d11 - d01);
  cfloat g[3] = {gx0 + fz * (gx1 - gx0), (a10 - a00) + fz * ((a11 - a01) - (a10 - a00)), b1 - b0};
  const cfloat v = b0 + fz * (b1 - b0);
  // V(p) = conj(L(-p)) on the mirrored side, so dV/dp = -conj(dL/dq) at q = -p.
  for (int j = 0; j < 3; ++j) grad[j] = conj ? -std::conj(g[j]) : g[j];
  return conj ? std::conj(v) : v;
}

double gridding_sinc2(double r_px, int padded_size) {
  if (r_px <= 0) return 1.0;
  double a = kPi * r_px / padded_size;
  double s = std::sin(a) / a;
  return s * s;
}

namespace {

// Value of a centred half-complex transform (FFT order in y, z) of real size
// N at signed frequency (kx, ky, kz), any sign, using periodicity and Hermitian symmetry.
cfloat full_value(const Grid<cfloat>& F, int N, int dim, int kx, int ky, int kz) {
  auto wrap = [N](int k) { return ((k % N) + N) % N; };
  int ix = wrap(kx), iy = wrap(ky), iz = dim == 3 ? wrap(kz) : 0;
  if (ix > N / 2) {
    ix = (N - ix) % N;
    iy = (N - iy) % N;
    if (dim == 3) iz = (N - iz) % N;
    return std::conj(F(ix, iy, iz));
  }
  return F(ix, iy, iz);
}

}  // namespace

Projector::Projector(const Grid<float>& map, int padding, int r_max, int nthreads) {
  const int n = map.nx();
  const int dim = map.nz() == 1 ? 2 : 3;
  if (map.ny() != n || (dim == 3 && map.nz() != n) || n < 2)
    input_error("projector: reference is {}x{}x{}, expected a square image or a cubic map",
                map.nx(), map.ny(), map.nz());
  if (padding < 1) input_error("projector: padding factor {} must be >= 1", padding);
  n_ = n;
  pad_ = padding;
  r_max_ = r_max <= 0 ? n / 2 : std::min(r_max, n / 2);
  const int N = pad_ * n;
  const int off = N / 2 - n / 2;
  const int c = n / 2;
  const int Nz = dim == 3 ? N : 1, nz = dim == 3 ? n : 1;
  ThreadPool pool(std::max(1, nthreads));
  // The map divided by the gridding correction, padded with zeros, transformed in place; planes
  // of the padded grid are the threads' work units.
  Grid<cfloat> F(N / 2 + 1, N, Nz);
  pool.parallel_for(0, size_t(Nz), [&](size_t zi, int) {
    const int Z = int(zi);
    float* plane = &real_at(F, 0, 0, Z);
    std::fill(plane, plane + size_t(2 * (N / 2 + 1)) * size_t(N), 0.0f);
    const int z = dim == 3 ? Z - off : 0;
    if (z < 0 || z >= nz) return;
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double dz = dim == 3 ? z - c : 0;
        const double r = std::sqrt(double(x - c) * (x - c) + double(y - c) * (y - c) + dz * dz);
        real_at(F, x + off, y + off, Z) = float(map(x, y, z) / gridding_sinc2(r, N));
      }
  });
  fft_forward_inplace(F, N, nthreads);
  // Centred about N/2: for even N the sign (-1)^(kx + ky + kz), applied while copying.
  const bool even = N % 2 == 0;
  if (!even) centre_origin(F, N);
  lat_.init(dim, pad_ * r_max_ + 2);
  const int R = lat_.R;
  const int zlo = dim == 3 ? -R : 0, zhi = dim == 3 ? R : 0;
  pool.parallel_for(0, size_t(zhi - zlo + 1), [&](size_t u, int) {
    const int z = zlo + int(u);
    for (int y = -R; y <= R; ++y)
      for (int x = 0; x <= R; ++x) {
        const cfloat v = full_value(F, N, dim, x, y, z);
        lat_.data[lat_.index(x, y, z)] = even && ((x + y + z) & 1) ? -v : v;
      }
  });
}

Projector::Projector(int n, int padding, int r_max, FourierLattice lattice)
    : n_(n), pad_(padding), r_max_(r_max <= 0 ? n / 2 : std::min(r_max, n / 2)), lat_(std::move(lattice)) {
  if (lat_.R < pad_ * r_max_ + 2)
    runtime_error("projector: lattice radius {} is smaller than padding*r_max+2 = {}", lat_.R,
                  pad_ * r_max_ + 2);
}

void Projector::project(const Mat3& A, Grid<cfloat>& out, int n_out) const {
  if (n_out <= 0) n_out = n_;
  if (out.nx() != n_out / 2 + 1 || out.ny() != n_out || out.nz() != 1)
    out = Grid<cfloat>(n_out / 2 + 1, n_out);
  else
    out.fill(cfloat(0, 0));
  const int rmax = std::min(r_max_, n_out / 2);
  const int rmax2 = rmax * rmax;
  const CentralSlice c(A, pad_);
  for (int iy = 0; iy < n_out; ++iy) {
    const int y = fft_freq(iy, n_out);
    if (std::abs(y) > rmax) continue;
    cfloat* row = out.data() + size_t(iy) * out.nx();
    for (int x = 0; x <= rmax; ++x) {
      if (x * x + y * y > rmax2) break;
      row[x] = lat_.interpolate(c.m00 * x + c.m01 * y, c.m10 * x + c.m11 * y, c.m20 * x + c.m21 * y);
    }
  }
}

void Projector::project_mapped(const Mat3& A, const Mat2& T, Grid<cfloat>& out,
                               int n_out) const {
  if (out.nx() != n_out / 2 + 1 || out.ny() != n_out || out.nz() != 1)
    out = Grid<cfloat>(n_out / 2 + 1, n_out);
  else
    out.fill(cfloat(0, 0));
  const int rimg = n_out / 2;
  const double rmax2 = double(r_max_) * r_max_;
  for (int iy = 0; iy < n_out; ++iy) {
    const int y = fft_freq(iy, n_out);
    cfloat* row = out.data() + size_t(iy) * out.nx();
    for (int x = 0; x <= rimg; ++x) {
      if (x * x + y * y > rimg * rimg) break;
      const double qx = T[0][0] * x + T[0][1] * y, qy = T[1][0] * x + T[1][1] * y;
      if (qx * qx + qy * qy > rmax2) continue;
      row[x] = value_at(A, qx, qy);
    }
  }
}

Grid<cfloat> Projector::project(const Mat3& A, int n_out) const {
  Grid<cfloat> out;
  project(A, out, n_out);
  return out;
}

Image Projector::project_real(const Mat3& A, double dx_px, double dy_px) const {
  Grid<cfloat> F = project(A);
  if (dx_px != 0 || dy_px != 0) shift_phase(F, dx_px, dy_px, n_);
  return from_fourier_centred(F, n_);
}

Projector2D::Projector2D(const Image& reference, int padding, int r_max)
    : Projector(reference, padding, r_max) {
  if (reference.nz() != 1) input_error("Projector2D: reference has {} sections, expected 1", reference.nz());
}

void Projector2D::project_psi(double psi_deg, Grid<cfloat>& out_half, int n_out) const {
  project(euler_to_matrix(0, 0, psi_deg), out_half, n_out);
}

void shift_phase(Grid<cfloat>& F, double dx, double dy, int n) {
  if (F.nx() != n / 2 + 1 || F.ny() != n)
    runtime_error("shift_phase: transform is {}x{}, expected {}x{}", F.nx(), F.ny(), n / 2 + 1, n);
  const double s = -2.0 * kPi / n;
  std::vector<cfloat> px(size_t(F.nx()));
  for (int x = 0; x < F.nx(); ++x) px[size_t(x)] = std::polar(1.0f, float(s * x * dx));
  for (int iy = 0; iy < F.ny(); ++iy) {
    cfloat py = std::polar(1.0f, float(s * fft_freq(iy, n) * dy));
    cfloat* row = F.data() + size_t(iy) * F.nx();
    for (int x = 0; x < F.nx(); ++x) row[x] *= px[size_t(x)] * py;
  }
}

Image project_real(const Volume& map, const Mat3& A, double dx_px, double dy_px, int padding) {
  Projector P(map, padding);
  return P.project_real(A, dx_px, dy_px);
}

Grid<cfloat> fourier_centred(const Grid<float>& img, int nthreads) {
  Grid<cfloat> F = fft_forward(img, nthreads);
  centre_origin(F, img.nx());
  return F;
}

Grid<float> from_fourier_centred(const Grid<cfloat>& F_half, int n, int nthreads) {
  Grid<cfloat> G = F_half;
  centre_origin(G, n, true);
  return fft_inverse(G, n, nthreads);
}

Grid<cfloat> fourier_centred_resampled(const Grid<float>& img, int N, double s) {
  Grid<cfloat> F;
  FourierResampler(img.nx(), N, s).transform(img, F);
  return F;
}

FourierResampler::FourierResampler(int n, int N, double s) : n_(n), N_(N), hx_(N / 2 + 1), s_(s) {
  if (n < 2 || N < 2 || !(s > 0)) runtime_error("FourierResampler: an {} px image to box {} at {}", n, N, s);
  const int c = n / 2;
  const double lim = double(n / 2) + 0.5;  // round(|s k|) <= n/2
  cx_.resize(size_t(n) * hx_);
  sx_.resize(size_t(n) * hx_);
  for (int x = 0; x < n; ++x)
    for (int kx = 0; kx < hx_; ++kx) {
      const double a = -2.0 * kPi * s * kx * double(x - c) / n;
      cx_[size_t(x) * hx_ + kx] = float(std::cos(a));
      sx_[size_t(x) * hx_ + kx] = float(std::sin(a));
    }
  keep_.assign(size_t(N) * hx_, 0);
  for (int iy = 0; iy < N; ++iy) {
    const double ky = s * fft_freq(iy, N);
    if (std::abs(ky) >= lim) continue;
    rows_.push_back(iy);
    for (int y = 0; y < n; ++y) {
      const double a = -2.0 * kPi * ky * double(y - c) / n;
      cy_.push_back(float(std::cos(a)));
      sy_.push_back(float(std::sin(a)));
    }
    for (int kx = 0; kx < hx_; ++kx) {
      const double kxs = s * kx;
      keep_[size_t(iy) * hx_ + kx] = std::lround(std::sqrt(kxs * kxs + ky * ky)) <= n / 2;
    }
  }
}

namespace {
// Kaiser-Bessel kernel of width W (padded-grid px) for oversampling 2 (Beatty et al. 2005's beta).
struct KbKernel {
  double W, beta;
  explicit KbKernel(int w) : W(w), beta(kPi * std::sqrt(W * W / 4.0 * 2.25 - 0.8)) {}
  double operator()(double u) const {
    const double t = 2 * u / W;
    return std::abs(t) >= 1 ? 0.0 : std::cyl_bessel_i(0.0, beta * std::sqrt(1 - t * t));
  }
  // Its continuous transform at real-space offset r of a grid of `len` px: the integral of
  // kernel(u) cos(2 pi u r / len), by the trapezoid rule on 4,096 intervals (the kernel is smooth
  // and near 0 at its ends).
  double transform(double r, int len) const {
    const int steps = 4096;
    const double h = W / steps;
    double sum = 0;
    for (int i = 0; i <= steps; ++i) {
      const double u = -W / 2 + i * h;
      sum += (i == 0 || i == steps ? 0.5 : 1.0) * (*this)(u) * std::cos(2 * kPi * u * r / len);
    }
    return sum * h;
  }
};
}  // namespace

FourierResampler::FourierResampler(int n, int N, const std::array<std::array<double, 2>, 2>& M)
    : n_(n), N_(N), hx_(N / 2 + 1) {
  if (M[0][1] == 0 && M[1][0] == 0 && M[0][0] == M[1][1]) {
    *this = FourierResampler(n, N, M[0][0]);
    return;
  }
  const double det = M[0][0] * M[1][1] - M[0][1] * M[1][0];
  if (n < 2 || N < 2 || !(std::abs(det) > 0))
    runtime_error("FourierResampler: an {} px image to box {} through a singular matrix", n, N);
  const int P = 2 * n;  // the padded grid
  const KbKernel kb(kTaps);
  nu_deapod_.resize(size_t(n));
  for (int x = 0; x < n; ++x) nu_deapod_[size_t(x)] = float(1.0 / kb.transform(double(x - n / 2), P));
  for (int iy = 0; iy < N; ++iy)
    for (int kx = 0; kx < hx_; ++kx) {
      const double qx = kx, qy = fft_freq(iy, N);
      const double fx = M[0][0] * qx + M[0][1] * qy, fy = M[1][0] * qx + M[1][1] * qy;
      if (std::lround(std::sqrt(fx * fx + fy * fy)) > n / 2) continue;
      nu_out_.push_back(uint32_t(iy * hx_ + kx));
      for (int axis = 0; axis < 2; ++axis) {
        const double kappa = 2.0 * (axis == 0 ? fx : fy);  // padded-grid Fourier px
        const int m0 = int(std::floor(kappa - kTaps / 2.0)) + 1;
        auto& w = axis == 0 ? nu_wx_ : nu_wy_;
        auto& ix = axis == 0 ? nu_ix_ : nu_iy_;
        for (int t = 0; t < kTaps; ++t) {
          const int m = m0 + t;
          w.push_back(float(kb(kappa - m)));
          ix.push_back(((m % P) + P) % P);
        }
      }
    }
}

void FourierResampler::transform_nonuniform(const Grid<float>& img, Grid<cfloat>& out) const {
  const int P = 2 * n_, c = n_ / 2;
  // The image divided by the kernel's transform, its centre at the padded grid's origin.
  Grid<float> pad(P, P, 1, 0.0f);
  for (int y = 0; y < n_; ++y)
    for (int x = 0; x < n_; ++x)
      pad(((x - c) % P + P) % P, ((y - c) % P + P) % P) = img(x, y) * nu_deapod_[size_t(x)] * nu_deapod_[size_t(y)];
  Grid<cfloat> G;
  fft_forward(pad, G);
  // The whole padded transform from its half (Hermitian: G(-m) = conj G(m)).
  std::vector<cfloat> full(size_t(P) * size_t(P));
  for (int my = 0; my < P; ++my)
    for (int mx = 0; mx < P; ++mx)
      full[size_t(my) * size_t(P) + size_t(mx)] =
          mx <= P / 2 ? G(mx, my) : std::conj(G(P - mx, (P - my) % P));
  for (size_t o = 0; o < nu_out_.size(); ++o) {
    const float* wx = nu_wx_.data() + o * kTaps;
    const float* wy = nu_wy_.data() + o * kTaps;
    const int32_t* ix = nu_ix_.data() + o * kTaps;
    const int32_t* iy = nu_iy_.data() + o * kTaps;
    cfloat sum(0, 0);
    for (int b = 0; b < kTaps; ++b) {
      const cfloat* row = full.data() + size_t(iy[b]) * size_t(P);
      cfloat r(0, 0);
      for (int a = 0; a < kTaps; ++a) r += wx[a] * row[ix[a]];
      sum += wy[b] * r;
    }
    out[nu_out_[o]] = sum;
  }
}

void FourierResampler::transform(const Grid<float>& img, Grid<cfloat>& out) const {
  if (img.nx() != n_ || img.ny() != n_) runtime_error("FourierResampler: a {}x{} image for {} px", img.nx(), img.ny(), n_);
  if (!nu_out_.empty() || !nu_deapod_.empty()) {
    if (out.nx() != hx_ || out.ny() != N_ || out.nz() != 1) out = Grid<cfloat>(hx_, N_);
    std::fill(out.begin(), out.end(), cfloat(0, 0));
    transform_nonuniform(img, out);
    return;
  }
  if (out.nx() != hx_ || out.ny() != N_ || out.nz() != 1) out = Grid<cfloat>(hx_, N_);
  std::fill(out.begin(), out.end(), cfloat(0, 0));
  const size_t hx = size_t(hx_), n = size_t(n_);
  // Along x: T(kx, y) = sum_x img(x, y) exp(...), real and imaginary parts apart (the loops vectorise).
  std::vector<float> tr(n * hx, 0.0f), ti(n * hx, 0.0f);
  for (size_t y = 0; y < n; ++y) {
    float* r = tr.data() + y * hx;
    float* i = ti.data() + y * hx;
    for (size_t x = 0; x < n; ++x) {
      const float v = img(int(x), int(y));
      const float* c = cx_.data() + x * hx;
      const float* sn = sx_.data() + x * hx;
      for (size_t k = 0; k < hx; ++k) {
        r[k] += v * c[k];
        i[k] += v * sn[k];
      }
    }
  }
  // Along y, for the rows within the image's Nyquist.
  std::vector<float> rr(hx), ri(hx);
  for (size_t q = 0; q < rows_.size(); ++q) {
    std::fill(rr.begin(), rr.end(), 0.0f);
    std::fill(ri.begin(), ri.end(), 0.0f);
    const float* ec = cy_.data() + q * n;
    const float* es = sy_.data() + q * n;
    for (size_t y = 0; y < n; ++y) {
      const float a = ec[y], b = es[y];
      const float* r = tr.data() + y * hx;
      const float* i = ti.data() + y * hx;
      for (size_t k = 0; k < hx; ++k) {
        rr[k] += a * r[k] - b * i[k];
        ri[k] += a * i[k] + b * r[k];
      }
    }
    const int iy = rows_[q];
    const uint8_t* keep = keep_.data() + size_t(iy) * hx;
    for (size_t k = 0; k < hx; ++k)
      if (keep[k]) out(int(k), iy) = cfloat(rr[k], ri[k]);
  }
}

}  // namespace regula

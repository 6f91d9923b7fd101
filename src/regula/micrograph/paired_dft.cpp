#include "regula/micrograph/paired_dft.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"

namespace regula {

namespace {

constexpr int kRowsPerChunk = 16;  // rows of the row pass's p-point stage per pair of SGEMMs

}  // namespace

int PairedInverseDft::largest_prime_factor(int n) {
  int best = 1;
  for (int f = 2; f * f <= n; ++f)
    while (n % f == 0) {
      best = f;
      n /= f;
    }
  return std::max(best, n);
}

bool PairedInverseDft::preferred(int n) { return n >= 2 && n % 2 == 0 && largest_prime_factor(n) >= 17; }

PairedInverseDft::PairedInverseDft(int n) : n_(n) {
  if (n < 4 || n % 2 != 0) runtime_error("PairedInverseDft: the size must be even and >= 4 (got {})", n);
  p_ = largest_prime_factor(n);
  if (p_ < 3) runtime_error("PairedInverseDft: {} has no odd prime factor", n);
  m_ = n / p_;
  h_ = (p_ - 1) / 2;
  set_blas_single_threaded();  // the p-point stages are small products
  const double w = 2.0 * std::numbers::pi / double(n);
  twiddle_.resize(size_t(p_) * size_t(m_));
  for (int k1 = 0; k1 < p_; ++k1)
    for (int t2 = 0; t2 < m_; ++t2) twiddle_[size_t(k1) * m_ + t2] = cfloat(std::polar(1.0, w * double(k1) * double(t2)));
  cos_.resize(size_t(h_) * size_t(h_));
  sin_.resize(cos_.size());
  for (int t = 0; t < h_; ++t)
    for (int k = 0; k < h_; ++k) {
      const double a = 2.0 * std::numbers::pi * double(((k + 1) * (t + 1)) % p_) / double(p_);
      cos_[size_t(t) * h_ + k] = float(std::cos(a));
      sin_[size_t(t) * h_ + k] = float(std::sin(a));
    }
  const size_t nn = size_t(n) * size_t(n);
  z_ = reinterpret_cast<cfloat*>(fftwf_malloc(nn * sizeof(cfloat)));
  y_ = reinterpret_cast<cfloat*>(fftwf_malloc(nn * sizeof(cfloat)));
  if (!z_ || !y_) {
    release();
    runtime_error("PairedInverseDft: out of memory for {} x {}", n, n);
  }
  // The m-point transforms, in place: along the columns (stride p rows) of z_ and along the rows
  // (stride p) of y_, for every k1 < p and every column / row.
  auto* zc = reinterpret_cast<fftwf_complex*>(z_);
  auto* yc = reinterpret_cast<fftwf_complex*>(y_);
  with_fftw_planner([&] {
    fftwf_iodim d{m_, p_ * n, p_ * n};
    fftwf_iodim many[2] = {{p_, n, n}, {n, 1, 1}};
    cols_ = fftwf_plan_guru_dft(1, &d, 2, many, zc, zc, FFTW_BACKWARD, FFTW_ESTIMATE);
    fftwf_iodim e{m_, p_, p_};
    fftwf_iodim many_rows[2] = {{n, n, n}, {p_, 1, 1}};
    rows_ = fftwf_plan_guru_dft(1, &e, 2, many_rows, yc, yc, FFTW_BACKWARD, FFTW_ESTIMATE);
  });
  if (!cols_ || !rows_) {
    release();
    runtime_error("PairedInverseDft: FFTW could not plan the {}-point transforms", m_);
  }
  u_.resize(std::max(size_t(h_) * 2 * size_t(n), size_t(kRowsPerChunk) * m_ * 2 * h_));
  v_.resize(u_.size());
  au_.resize(u_.size());
  bv_.resize(u_.size());
}

PairedInverseDft::~PairedInverseDft() { release(); }

void PairedInverseDft::release() {
  if (cols_ || rows_)
    with_fftw_planner([&] {
      if (cols_) fftwf_destroy_plan(cols_);
      if (rows_) fftwf_destroy_plan(rows_);
    });
  cols_ = rows_ = nullptr;
  fftwf_free(z_);
  fftwf_free(y_);
  z_ = y_ = nullptr;
}

void PairedInverseDft::inverse(const Grid<cfloat>& A, const Grid<cfloat>& B, Grid<float>& a, Grid<float>& b) {
  const int n = n_;
  if (A.nx() != n / 2 + 1 || A.ny() != n || A.nz() != 1 || B.nx() != A.nx() || B.ny() != n || B.nz() != 1)
    runtime_error("PairedInverseDft: half-plane transforms of {} x {} expected", n / 2 + 1, n);
  if (a.nx() != n || a.ny() != n || a.nz() != 1) a = Grid<float>(n, n);
  if (b.nx() != n || b.ny() != n || b.nz() != 1) b = Grid<float>(n, n);
  build(A, B);
  pass_columns();
  pass_rows(a, b);
}

// z = A + iB on the full plane (row ky, column kx): for kx > n/2 from the Hermitian mirrors.
void PairedInverseDft::build(const Grid<cfloat>& A, const Grid<cfloat>& B) {
  const int n = n_, nh = n / 2 + 1;
  for (int ky = 0; ky < n; ++ky) {
    const int my = (n - ky) % n;
    const cfloat* ar = A.data() + size_t(ky) * nh;
    const cfloat* br = B.data() + size_t(ky) * nh;
    cfloat* z = z_ + size_t(ky) * n;
    cfloat* zm = z_ + size_t(my) * n;
    for (int kx = 1; kx < n / 2; ++kx) {
      const cfloat u = ar[kx], v = br[kx];
      z[kx] = cfloat(u.real() - v.imag(), u.imag() + v.real());
      zm[n - kx] = cfloat(u.real() + v.imag(), v.real() - u.imag());
    }
    for (int kx : {0, n / 2}) {  // self-mirrored columns: their Hermitian halves
      const cfloat u = 0.5f * (ar[kx] + std::conj(A.data()[size_t(my) * nh + kx]));
      const cfloat v = 0.5f * (br[kx] + std::conj(B.data()[size_t(my) * nh + kx]));
      z[kx] = u + cfloat(0, 1) * v;
    }
  }
}

// Along ky (row index k = k1 + p k2 -> t = m t1 + t2): z_ -> y_.
void PairedInverseDft::pass_columns() {
  const int n = n_, p = p_, m = m_, h = h_;
  const size_t L = size_t(n), L2 = 2 * L;
  fftwf_execute_dft(cols_, reinterpret_cast<fftwf_complex*>(z_), reinterpret_cast<fftwf_complex*>(z_));
  for (int k1 = 1; k1 < p; ++k1)
    for (int t2 = 1; t2 < m; ++t2) {
      const cfloat w = twiddle_[size_t(k1) * m + t2];
      cfloat* r = z_ + size_t(k1 + p * t2) * L;
      for (size_t j = 0; j < L; ++j) r[j] *= w;
    }
  float* U = u_.data();
  float* V = v_.data();
  for (int t2 = 0; t2 < m; ++t2) {
    const float* X = reinterpret_cast<const float*>(z_ + size_t(p) * t2 * L);  // p rows of 2L floats
    for (int k = 1; k <= h; ++k) {
      const float* xk = X + size_t(k) * L2;
      const float* xm = X + size_t(p - k) * L2;
      float* u = U + size_t(k - 1) * L2;
      float* v = V + size_t(k - 1) * L2;
      for (size_t j = 0; j < L2; ++j) {
        u[j] = xk[j] + xm[j];
        v[j] = xk[j] - xm[j];
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, h, int(L2), h, 1.0f, cos_.data(), h, U, int(L2), 0.0f,
                au_.data(), int(L2));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, h, int(L2), h, 1.0f, sin_.data(), h, V, int(L2), 0.0f,
                bv_.data(), int(L2));
    const float* x0 = X;
    float* y0 = reinterpret_cast<float*>(y_ + size_t(t2) * L);
    for (size_t j = 0; j < L2; ++j) {
      float s = x0[j];
      for (int k = 0; k < h; ++k) s += U[size_t(k) * L2 + j];
      y0[j] = s;
    }
    for (int t = 1; t <= h; ++t) {
      const float* a = au_.data() + size_t(t - 1) * L2;
      const float* bb = bv_.data() + size_t(t - 1) * L2;
      float* yp = reinterpret_cast<float*>(y_ + size_t(m * t + t2) * L);
      float* ym = reinterpret_cast<float*>(y_ + size_t(m * (p - t) + t2) * L);
      for (size_t j = 0; j < L2; j += 2) {
        const float re = x0[j] + a[j], im = x0[j + 1] + a[j + 1];
        yp[j] = re - bb[j + 1];
        yp[j + 1] = im + bb[j];
        ym[j] = re + bb[j + 1];
        ym[j + 1] = im - bb[j];
      }
    }
  }
}

// Along kx within each row (k = k1 + p k2 -> x = m t1 + t2): y_ -> a (real parts) and b (imaginary
// parts), with the 1/n^2 normalisation.
void PairedInverseDft::pass_rows(Grid<float>& ga, Grid<float>& gb) {
  const int n = n_, p = p_, m = m_, h = h_;
  const float s = 1.0f / (float(n) * float(n));
  fftwf_execute_dft(rows_, reinterpret_cast<fftwf_complex*>(y_), reinterpret_cast<fftwf_complex*>(y_));
  float* U = u_.data();
  float* V = v_.data();
  for (int y0 = 0; y0 < n; y0 += kRowsPerChunk) {
    const int ny = std::min(kRowsPerChunk, n - y0);
    // Twiddles, then the sums and differences: row q = (row, t2), two of them (re, im), h columns.
    for (int r = 0; r < ny; ++r) {
      cfloat* row = y_ + size_t(y0 + r) * n;
      for (int t2 = 1; t2 < m; ++t2)
        for (int k1 = 1; k1 < p; ++k1) row[k1 + p * t2] *= twiddle_[size_t(k1) * m + t2];
      for (int t2 = 0; t2 < m; ++t2) {
        const cfloat* x = row + size_t(p) * t2;
        const size_t q = size_t(r) * m + t2;
        float* ur = U + (2 * q) * h;
        float* ui = ur + h;
        float* vr = V + (2 * q) * h;
        float* vi = vr + h;
        for (int k = 1; k <= h; ++k) {
          const cfloat c1 = x[k], c2 = x[p - k];
          ur[k - 1] = c1.real() + c2.real();
          ui[k - 1] = c1.imag() + c2.imag();
          vr[k - 1] = c1.real() - c2.real();
          vi[k - 1] = c1.imag() - c2.imag();
        }
      }
    }
    const int rows = 2 * ny * m;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, h, h, 1.0f, U, h, cos_.data(), h, 0.0f, au_.data(), h);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, h, h, 1.0f, V, h, sin_.data(), h, 0.0f, bv_.data(), h);
    for (int r = 0; r < ny; ++r) {
      const cfloat* row = y_ + size_t(y0 + r) * n;
      float* oa = ga.data() + size_t(y0 + r) * n;
      float* ob = gb.data() + size_t(y0 + r) * n;
      for (int t2 = 0; t2 < m; ++t2) {
        const cfloat x0 = row[size_t(p) * t2];
        const size_t q = size_t(r) * m + t2;
        const float* ar = au_.data() + (2 * q) * h;
        const float* ai = ar + h;
        const float* br = bv_.data() + (2 * q) * h;
        const float* bi = br + h;
        const float* ur = U + (2 * q) * h;
        const float* ui = ur + h;
        float sr = x0.real(), si = x0.imag();
        for (int k = 0; k < h; ++k) {
          sr += ur[k];
          si += ui[k];
        }
        oa[t2] = s * sr;
        ob[t2] = s * si;
        for (int t = 1; t <= h; ++t) {
          const float re = x0.real() + ar[t - 1], im = x0.imag() + ai[t - 1];
          oa[m * t + t2] = s * (re - bi[t - 1]);
          ob[m * t + t2] = s * (im + br[t - 1]);
          oa[m * (p - t) + t2] = s * (re + bi[t - 1]);
          ob[m * (p - t) + t2] = s * (im - br[t - 1]);
        }
      }
    }
  }
}

}  // namespace regula

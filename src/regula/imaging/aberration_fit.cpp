#include "regula/imaging/aberration_fit.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "regula/imaging/zernike.hpp"

namespace regula {

namespace {

// Pixel order by |f| and the band edges (counts of pixels) of the growing-band schedule.
struct Bands {
  std::vector<size_t> order;
  std::vector<size_t> ends;
};

Bands make_bands(std::span<const double> fx, std::span<const double> fy) {
  Bands b;
  const size_t n = fx.size();
  std::vector<double> r(n);
  for (size_t k = 0; k < n; ++k) r[k] = std::hypot(fx[k], fy[k]);
  b.order.resize(n);
  std::iota(b.order.begin(), b.order.end(), size_t(0));
  std::stable_sort(b.order.begin(), b.order.end(), [&](size_t a, size_t c) { return r[a] < r[c]; });
  const double rmax = n ? r[b.order.back()] : 0;
  for (double frac : {1.0 / 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0}) {
    size_t e = 0;
    while (e < n && r[b.order[e]] <= frac * rmax * (1 + 1e-12)) ++e;
    if (e > 0 && (b.ends.empty() || e > b.ends.back())) b.ends.push_back(e);
  }
  return b;
}

std::vector<double> basis_matrix(std::span<const double> fx, std::span<const double> fy, const PhaseBasis& basis) {
  std::vector<double> B(fx.size() * size_t(basis.size));
  for (size_t k = 0; k < fx.size(); ++k) basis.eval(fx[k], fy[k], B.data() + k * size_t(basis.size));
  return B;
}

double dot(const double* a, const std::vector<double>& c) {
  double s = 0;
  for (size_t j = 0; j < c.size(); ++j) s += a[j] * c[j];
  return s;
}

// Maximises sum over the pixels of a band of f_k(phi_k), phi_k = B_k . c, by damped Newton steps with
// a positive curvature h_k >= 0 supplied by `term` (value, slope, curvature to use).
template <class Term>
void newton_bands(std::span<const double> fx, std::span<const double> fy, const PhaseBasis& basis,
                  std::vector<double>& c, Term term) {
  const Bands bands = make_bands(fx, fy);
  const std::vector<double> B = basis_matrix(fx, fy, basis);
  const int nb = basis.size;
  const size_t m = size_t(nb);
  for (size_t end : bands.ends) {
    auto objective = [&](const std::vector<double>& cc) {
      double s = 0;
      for (size_t e = 0; e < end; ++e) {
        const size_t k = bands.order[e];
        s += term(k, dot(&B[k * m], cc)).value;
      }
      return s;
    };
    double J = objective(c);
    for (int it = 0; it < 60; ++it) {
      std::vector<double> H(m * m, 0.0), g(m, 0.0);
      for (size_t e = 0; e < end; ++e) {
        const size_t k = bands.order[e];
        const double* b = &B[k * m];
        const auto t = term(k, dot(b, c));
        for (size_t p = 0; p < m; ++p) {
          g[p] += t.slope * b[p];
          for (size_t q = 0; q < m; ++q) H[p * m + q] += t.curvature * b[p] * b[q];
        }
      }
      double trace = 0;
      for (size_t p = 0; p < m; ++p) trace += H[p * m + p];
      for (size_t p = 0; p < m; ++p) H[p * m + p] += 1e-12 * trace + 1e-300;
      std::vector<double> step = g;
      if (!solve_small(H, step, nb)) break;
      // Trust region in phase: no pixel of the band moves by more than half a radian in one step
      // (nearly collinear bases otherwise take huge steps to a wrapped, wrong optimum).
      double largest = 0;
      for (size_t e = 0; e < end; ++e) largest = std::max(largest, std::abs(dot(&B[bands.order[e] * m], step)));
      double t = largest > 0.5 ? 0.5 / largest : 1.0;
      bool better = false;
      for (int h = 0; h < 30; ++h, t *= 0.5) {
        std::vector<double> trial = c;
        for (size_t p = 0; p < m; ++p) trial[p] += t * step[p];
        const double Jt = objective(trial);
        if (Jt > J) {
          const double gain = Jt - J;
          c = trial;
          J = Jt;
          better = gain > 1e-13 * std::abs(J);
          break;
        }
      }
      if (!better) break;
    }
  }
}

struct TermValue {
  double value, slope, curvature;
};

}  // namespace

namespace {
PhaseBasis zernike_basis(int count, ZernikeIndex (*index)(int)) {
  PhaseBasis b;
  b.size = count;
  b.eval = [count, index](double fx, double fy, double* out) {
    for (int i = 0; i < count; ++i) {
      const ZernikeIndex z = index(i);
      out[i] = zernike(z.n, z.m, fx, fy);
    }
  };
  return b;
}
}  // namespace

PhaseBasis odd_zernike_basis(int max_order) {
  return zernike_basis(max_order < 1 ? 0 : (max_order + 1) * (max_order + 3) / 4, odd_zernike_index);
}

PhaseBasis even_zernike_basis(int max_order) {
  return zernike_basis(max_order < 0 ? 0 : (max_order + 2) * (max_order + 2) / 4, even_zernike_index);
}

PhaseBasis beam_tilt_basis(double cs_angstrom, double lambda) {
  PhaseBasis b;
  b.size = 4;
  const double a = -2 * M_PI * cs_angstrom * lambda * lambda * 1e-3;
  b.eval = [a](double fx, double fy, double* out) {
    const double r2 = fx * fx + fy * fy;
    out[0] = a * r2 * fx;
    out[1] = a * r2 * fy;
    out[2] = fx;
    out[3] = fy;
  };
  return b;
}

std::vector<double> fit_odd_phase(std::span<const double> fx, std::span<const double> fy,
                                  std::span<const cdouble> xy, const PhaseBasis& basis, std::vector<double> c) {
  c.resize(size_t(basis.size), 0.0);
  if (fx.empty() || basis.size == 0) return c;
  std::vector<double> amp(xy.size()), theta(xy.size());
  for (size_t k = 0; k < xy.size(); ++k) {
    amp[k] = std::abs(xy[k]);
    theta[k] = std::arg(xy[k]);
  }
  newton_bands(fx, fy, basis, c, [&](size_t k, double phi) {
    const double d = theta[k] - phi;
    return TermValue{amp[k] * std::cos(d), amp[k] * std::sin(d), amp[k]};
  });
  return c;
}

double even_loglik(const EvenSums& s, double d) {
  const double cd = std::cos(d), sd = std::sin(d);
  return -2 * (s.b0 * cd + s.b1 * sd) - (s.m00 * cd * cd + 2 * s.m01 * cd * sd + s.m11 * sd * sd);
}

std::vector<double> fit_even_phase(std::span<const double> fx, std::span<const double> fy,
                                   std::span<const EvenSums> sums, const PhaseBasis& basis, std::vector<double> c) {
  c.resize(size_t(basis.size), 0.0);
  if (fx.empty() || basis.size == 0) return c;
  newton_bands(fx, fy, basis, c, [&](size_t k, double d) {
    const EvenSums& s = sums[k];
    const double cd = std::cos(d), sd = std::sin(d);
    // u = (cd, sd), u' = (-sd, cd); L = -2 b.u - u^T M u.
    const double bu = s.b0 * cd + s.b1 * sd, bu1 = -s.b0 * sd + s.b1 * cd;
    const double uMu = s.m00 * cd * cd + 2 * s.m01 * cd * sd + s.m11 * sd * sd;
    const double u1Mu = -s.m00 * cd * sd + s.m01 * (cd * cd - sd * sd) + s.m11 * sd * cd;
    const double u1Mu1 = s.m00 * sd * sd - 2 * s.m01 * cd * sd + s.m11 * cd * cd;
    const double value = -2 * bu - uMu;
    const double slope = -2 * bu1 - 2 * u1Mu;
    const double second = 2 * bu - 2 * u1Mu1 + 2 * uMu;
    const double scale = std::abs(s.b0) + std::abs(s.b1) + std::abs(s.m00) + std::abs(s.m11);
    return TermValue{value, slope, std::max(-second, 1e-3 * scale)};
  });
  return c;
}

double best_even_offset(const EvenSums& s) {
  double best = 0, bestL = even_loglik(s, 0);
  for (int i = 1; i < 360; ++i) {
    const double d = -M_PI + 2 * M_PI * i / 360;
    const double L = even_loglik(s, d);
    if (L > bestL) {
      bestL = L;
      best = d;
    }
  }
  // One refinement by golden section around the grid optimum.
  double lo = best - 2 * M_PI / 360, hi = best + 2 * M_PI / 360;
  for (int it = 0; it < 40; ++it) {
    const double m1 = lo + (hi - lo) * 0.381966, m2 = hi - (hi - lo) * 0.381966;
    if (even_loglik(s, m1) > even_loglik(s, m2)) hi = m2;
    else lo = m1;
  }
  return std::remainder(0.5 * (lo + hi), 2 * M_PI);
}

Mat2 fit_displacement(std::span<const double> kx, std::span<const double> ky, std::span<const MagSums> sums) {
  std::vector<double> N(16, 0.0), r(4, 0.0);
  for (size_t k = 0; k < sums.size(); ++k) {
    const MagSums& s = sums[k];
    const double K[2][4] = {{kx[k], ky[k], 0, 0}, {0, 0, kx[k], ky[k]}};
    const double A[2][2] = {{s.a00, s.a01}, {s.a01, s.a11}};
    const double b[2] = {s.b0, s.b1};
    for (int p = 0; p < 4; ++p) {
      r[size_t(p)] += K[0][p] * b[0] + K[1][p] * b[1];
      for (int q = 0; q < 4; ++q) {
        double v = 0;
        for (int a = 0; a < 2; ++a)
          for (int c = 0; c < 2; ++c) v += K[a][p] * A[a][c] * K[c][q];
        N[size_t(p * 4 + q)] += v;
      }
    }
  }
  if (!solve_small(N, r, 4)) return Mat2{{{0, 0}, {0, 0}}};
  return Mat2{{{r[0], r[1]}, {r[2], r[3]}}};
}

std::array<double, 2> extract_beam_tilt(std::vector<double>& c, double cs_angstrom, double lambda) {
  const double a = -2 * M_PI * cs_angstrom * lambda * lambda * 1e-3 / 3;
  const double tx = c[4] / a, ty = c[3] / a;
  c[4] = 0;
  c[3] = 0;
  c[1] -= 2 * a * tx;
  c[0] -= 2 * a * ty;
  return {tx, ty};
}

DefocusForm defocus_form(double u, double v, double angle_deg) {
  const double t = 2 * angle_deg * M_PI / 180, r = 0.5 * (u - v);
  return {0.5 * (u + v), r * std::cos(t), r * std::sin(t)};
}

std::array<double, 3> defocus_uva(const DefocusForm& f) {
  const double r = std::hypot(f.a1, f.a2);
  double angle = r > 0 ? 0.5 * std::atan2(f.a2, f.a1) * 180 / M_PI : 0.0;
  if (angle <= -90) angle += 180;
  return {f.d + r, f.d - r, angle};
}

bool solve_small(std::vector<double> A, std::vector<double>& x, int n) {
  const size_t m = size_t(n);
  double scale = 0;
  for (double v : A) scale = std::max(scale, std::abs(v));
  if (!(scale > 0) || !std::isfinite(scale)) return false;
  for (size_t col = 0; col < m; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < m; ++r)
      if (std::abs(A[r * m + col]) > std::abs(A[piv * m + col])) piv = r;
    if (std::abs(A[piv * m + col]) <= 1e-14 * scale) return false;
    if (piv != col) {
      for (size_t q = 0; q < m; ++q) std::swap(A[col * m + q], A[piv * m + q]);
      std::swap(x[col], x[piv]);
    }
    for (size_t r = col + 1; r < m; ++r) {
      const double f = A[r * m + col] / A[col * m + col];
      if (f == 0) continue;
      for (size_t q = col; q < m; ++q) A[r * m + q] -= f * A[col * m + q];
      x[r] -= f * x[col];
    }
  }
  for (size_t i = m; i-- > 0;) {
    double s = x[i];
    for (size_t q = i + 1; q < m; ++q) s -= A[i * m + q] * x[q];
    x[i] = s / A[i * m + i];
  }
  return true;
}

}  // namespace regula

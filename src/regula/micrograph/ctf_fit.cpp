#include "regula/micrograph/ctf_fit.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/nelder_mead.hpp"
#include "regula/core/parallel.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {
namespace {

// ---------------------------------------------------------------- small numerics

// Solves A x = b (n x n, row-major) by Gaussian elimination with partial pivoting; a tiny ridge
// keeps rank-deficient systems solvable.
std::vector<double> solve(std::vector<double> A, std::vector<double> b, int n) {
  double tr = 0;
  for (int i = 0; i < n; ++i) tr += A[size_t(i * n + i)];
  for (int i = 0; i < n; ++i) A[size_t(i * n + i)] += 1e-10 * (tr / n + 1e-30);
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r)
      if (std::abs(A[size_t(r * n + c)]) > std::abs(A[size_t(p * n + c)])) p = r;
    if (p != c) {
      for (int k = 0; k < n; ++k) std::swap(A[size_t(c * n + k)], A[size_t(p * n + k)]);
      std::swap(b[size_t(c)], b[size_t(p)]);
    }
    const double d = A[size_t(c * n + c)];
    if (std::abs(d) < 1e-300) continue;
    for (int r = c + 1; r < n; ++r) {
      const double f = A[size_t(r * n + c)] / d;
      if (f == 0) continue;
      for (int k = c; k < n; ++k) A[size_t(r * n + k)] -= f * A[size_t(c * n + k)];
      b[size_t(r)] -= f * b[size_t(c)];
    }
  }
  std::vector<double> x(size_t(n), 0.0);
  for (int r = n - 1; r >= 0; --r) {
    double s = b[size_t(r)];
    for (int k = r + 1; k < n; ++k) s -= A[size_t(r * n + k)] * x[size_t(k)];
    const double d = A[size_t(r * n + r)];
    x[size_t(r)] = std::abs(d) < 1e-300 ? 0.0 : s / d;
  }
  return x;
}

// Nelder-Mead maximisation of f from x0 with initial steps `step`, until the vertices' values agree
// to 1e-7 or `max_evals` evaluations were made.
std::vector<double> nelder_mead(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x0,
                                const std::vector<double>& step, int max_evals, double* best_value) {
  NelderMeadOptions o;
  o.step = step;
  o.f_tol = 1e-7;
  o.max_evaluations = max_evals;
  NelderMeadResult r = nelder_mead_maximise(f, x0, o);
  if (best_value) *best_value = r.value;
  return r.x;
}

// Cubic B-spline basis (uniform knots, `m` intervals over [k0, k1]): values of the m + 3 functions.
void spline_basis(double k, double k0, double k1, int m, double* out) {
  const double h = (k1 - k0) / m;
  const double t = std::clamp((k - k0) / h, 0.0, double(m)) + 3.0;
  for (int j = 0; j < m + 3; ++j) {
    const double s = t - j;
    double b = 0;
    if (s >= 0 && s < 1)
      b = s * s * s / 6;
    else if (s >= 1 && s < 2)
      b = (-3 * s * s * s + 12 * s * s - 12 * s + 4) / 6;
    else if (s >= 2 && s < 3)
      b = (3 * s * s * s - 24 * s * s + 60 * s - 44) / 6;
    else if (s >= 3 && s < 4)
      b = (4 - s) * (4 - s) * (4 - s) / 6;
    out[j] = b;
  }
}

constexpr int kBgIntervals = 4;                 // background B: cubic spline
constexpr int kBgBasis = kBgIntervals + 3;
constexpr int kEnvBasis = 3;                    // envelope E: 1, k, k^2
constexpr int kParams = kBgBasis + kEnvBasis;

// The optics needed for gamma.
struct Optics {
  double a1 = 0;  // pi lambda
  double a2 = 0;  // pi/2 Cs lambda^3
  double w = 0;   // amplitude contrast phase
  explicit Optics(const CtfFitOptions& o) {
    const double lambda = electron_wavelength(o.voltage_kv);
    a1 = kPi * lambda;
    a2 = kPi / 2 * o.cs_mm * 1e7 * lambda * lambda * lambda;
    const double q = o.amplitude_contrast;
    w = std::atan(q / std::sqrt(1 - q * q));
  }
  double ctf2(double defocus, double k2) const {
    const double s = std::sin(-a1 * defocus * k2 + a2 * k2 * k2 - w);
    return s * s;
  }
};

// Smooth background and envelope: S(k) ~ B(k) + E(k) c2(k).
struct Smooth {
  double k0 = 0, k1 = 1;
  std::array<double, kParams> p{};
  double background(double k) const {
    double b[kBgBasis];
    spline_basis(k, k0, k1, kBgIntervals, b);
    double v = 0;
    for (int j = 0; j < kBgBasis; ++j) v += p[size_t(j)] * b[j];
    return v;
  }
  double envelope(double k) const {
    const double u = (k - k0) / (k1 - k0);
    return p[kBgBasis] + p[kBgBasis + 1] * u + p[kBgBasis + 2] * u * u;
  }
};

// Least-squares fit of S(k_i) = B(k_i) + E(k_i) c2_i (weights w_i); returns the residual.
double fit_smooth(const std::vector<double>& k, const std::vector<double>& s, const std::vector<double>& c2,
                  const std::vector<double>& w, double k0, double k1, Smooth& out) {
  std::vector<double> A(size_t(kParams * kParams), 0.0), b(size_t(kParams), 0.0);
  double row[kParams];
  for (size_t i = 0; i < k.size(); ++i) {
    if (w[i] <= 0) continue;
    spline_basis(k[i], k0, k1, kBgIntervals, row);
    const double u = (k[i] - k0) / (k1 - k0);
    row[kBgBasis] = c2[i];
    row[kBgBasis + 1] = c2[i] * u;
    row[kBgBasis + 2] = c2[i] * u * u;
    for (int a = 0; a < kParams; ++a) {
      b[size_t(a)] += w[i] * row[a] * s[i];
      for (int c = 0; c < kParams; ++c) A[size_t(a * kParams + c)] += w[i] * row[a] * row[c];
    }
  }
  auto x = solve(A, b, kParams);
  out.k0 = k0;
  out.k1 = k1;
  for (int j = 0; j < kParams; ++j) out.p[size_t(j)] = x[size_t(j)];
  double r = 0;
  for (size_t i = 0; i < k.size(); ++i) {
    if (w[i] <= 0) continue;
    const double d = s[i] - out.background(k[i]) - out.envelope(k[i]) * c2[i];
    r += w[i] * d * d;
  }
  return r;
}

// The band's pixels.
struct Pixels {
  std::vector<float> kx, ky, k2, c2phi, s2phi, value, norm;
  size_t size() const { return kx.size(); }
};

// Pearson correlation between the normalised spectrum and CTF^2 (mean m, astigmatism vector ax, ay).
double score(const Pixels& px, const Optics& op, double m, double ax, double ay, size_t stride) {
  double sxy = 0, sy = 0, syy = 0, sx = 0, sxx = 0;
  size_t n = 0;
  for (size_t i = 0; i < px.size(); i += stride) {
    const double df = m + 0.5 * (ax * px.c2phi[i] + ay * px.s2phi[i]);
    const double c = op.ctf2(df, px.k2[i]);
    const double x = px.norm[i];
    sx += x;
    sxx += x * x;
    sy += c;
    syy += c * c;
    sxy += x * c;
    ++n;
  }
  if (n < 10) return -1;
  const double cov = sxy - sx * sy / n, vx = sxx - sx * sx / n, vy = syy - sy * sy / n;
  return vx > 0 && vy > 0 ? cov / std::sqrt(vx * vy) : -1;
}

// Equivalent isotropic frequency^2 for a pixel of (anisotropic) defocus df at k2, given mean m.
double equiphase_k2(const Optics& op, double m, double df, double k2) {
  const double g = -op.a1 * df * k2 + op.a2 * k2 * k2;
  const double a1 = op.a1 * m;
  const double disc = a1 * a1 + 4 * op.a2 * g;
  if (disc < 0) return -1;
  return -2 * g / (a1 + std::sqrt(disc));
}

}  // namespace

Grid<float> average_spectrum(const Grid<float>& mic, int box, int nthreads) {
  int b = std::min({box, mic.nx(), mic.ny()});
  b -= b % 2;
  if (b < 32) input_error("micrograph of {}x{} px: too small for a CTF spectrum (needs 32 px)", mic.nx(), mic.ny());
  const int step = b / 2;
  const int tx = (mic.nx() - b) / step + 1, ty = (mic.ny() - b) / step + 1;
  const size_t tiles = size_t(tx) * size_t(ty);
  const size_t chunks = std::min<size_t>(16, tiles);
  const int nxh = b / 2 + 1;
  std::vector<Grid<double>> part(chunks, Grid<double>(nxh, b));
  ThreadPool pool(nthreads);
  pool.parallel_for(0, chunks, [&](size_t c, int) {
    Grid<float> tile(b, b);
    for (size_t t = c * tiles / chunks; t < (c + 1) * tiles / chunks; ++t) {
      const int x0 = int(t % size_t(tx)) * step, y0 = int(t / size_t(tx)) * step;
      double mean = 0;
      for (int y = 0; y < b; ++y)
        for (int x = 0; x < b; ++x) mean += tile(x, y) = mic(x0 + x, y0 + y);
      mean /= double(b) * b;
      for (auto& v : tile) v = float(v - mean);
      const Grid<cfloat> F = fft_forward(tile);
      for (size_t i = 0; i < F.size(); ++i) part[c][i] += std::norm(F[i]);
    }
  });
  Grid<double> sum(nxh, b);
  for (auto& p : part)
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += p[i];
  Grid<float> out(b, b);
  for (int y = 0; y < b; ++y)
    for (int x = 0; x < b; ++x) {
      int kx = x - b / 2, ky = y - b / 2;
      if (kx < 0) {
        kx = -kx;
        ky = -ky;
      }
      out(x, y) = float(std::sqrt(sum(kx, fft_index(ky, b)) / double(tiles)));
    }
  return out;
}

CtfFitResult fit_ctf(const Grid<float>& S, double angpix, const CtfFitOptions& o, int nthreads) {
  (void)nthreads;
  const int n = S.nx();
  if (S.ny() != n || n < 32 || n % 2) input_error("CTF fit: the spectrum must be square, even and >= 32 px (got {}x{})",
                                                  S.nx(), S.ny());
  if (!(angpix > 0)) input_error("CTF fit: pixel size {} Å must be positive", angpix);
  const double nyq = 0.5 / angpix;
  const double kmin = 1.0 / o.res_min, kmax = std::min(1.0 / o.res_max, nyq * 0.98);
  if (!(kmax > kmin * 1.5))
    input_error("CTF fit: --ResMin {} Å and --ResMax {} Å leave no band below Nyquist ({} Å)", o.res_min, o.res_max,
                2 * angpix);
  const Optics op(o);
  const double inv = 1.0 / (n * angpix);

  // Rotational average (shells of one pixel) in the band, for the 1D search and the background.
  const int nsh = n / 2;
  std::vector<double> sh_sum(size_t(nsh), 0), sh_cnt(size_t(nsh), 0);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const int kx = x - n / 2, ky = y - n / 2;
      if (kx == 0 || ky == 0) continue;
      const int r = int(std::lround(std::sqrt(double(kx * kx + ky * ky))));
      if (r >= nsh) continue;
      sh_sum[size_t(r)] += S(x, y);
      sh_cnt[size_t(r)] += 1;
    }
  std::vector<double> rk, rs, rw;
  for (int r = 0; r < nsh; ++r) {
    const double k = r * inv;
    if (k < kmin || k > kmax || sh_cnt[size_t(r)] == 0) continue;
    rk.push_back(k);
    rs.push_back(sh_sum[size_t(r)] / sh_cnt[size_t(r)]);
    rw.push_back(1.0);
  }
  if (rk.size() < size_t(kParams) + 4)
    input_error("CTF fit: only {} frequency shells between {} and {} Å; use a larger --Box or a wider band", rk.size(),
                o.res_min, o.res_max);

  // 1. 1D search of the mean defocus.
  CtfFitResult res;
  Smooth sm;
  double best = std::numeric_limits<double>::infinity(), best_df = o.df_min;
  std::vector<double> c2(rk.size());
  for (double df = o.df_min; df <= o.df_max + 1e-6; df += o.df_step) {
    for (size_t i = 0; i < rk.size(); ++i) c2[i] = op.ctf2(df, rk[i] * rk[i]);
    Smooth s;
    const double r = fit_smooth(rk, rs, c2, rw, kmin, kmax, s);
    // A fit whose envelope is negative explains the rings as anti-rings: not a CTF.
    if (s.envelope(0.5 * (kmin + kmax)) <= 0) continue;
    if (r < best) {
      best = r;
      best_df = df;
      sm = s;
    }
  }
  res.defocus_1d = best_df;

  // Band pixels with background-subtracted, ring-normalised values.
  Pixels px;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const int ix = x - n / 2, iy = y - n / 2;
      if (ix == 0 || iy == 0) continue;
      const double kx = ix * inv, ky = iy * inv, k2 = kx * kx + ky * ky, k = std::sqrt(k2);
      if (k < kmin || k > kmax) continue;
      const double phi = std::atan2(ky, kx);
      px.kx.push_back(float(kx));
      px.ky.push_back(float(ky));
      px.k2.push_back(float(k2));
      px.c2phi.push_back(float(std::cos(2 * phi)));
      px.s2phi.push_back(float(std::sin(2 * phi)));
      px.value.push_back(S(x, y));
    }
  px.norm.resize(px.size());
  auto normalise = [&](const Smooth& s) {
    std::vector<double> ss(size_t(nsh), 0), cnt(size_t(nsh), 0);
    std::vector<int> shell(px.size());
    for (size_t i = 0; i < px.size(); ++i) {
      const double k = std::sqrt(double(px.k2[i]));
      shell[i] = std::min(nsh - 1, int(std::lround(k / inv)));
      const double d = px.value[i] - s.background(k);
      px.norm[i] = float(d);
      ss[size_t(shell[i])] += d * d;
      cnt[size_t(shell[i])] += 1;
    }
    for (size_t i = 0; i < px.size(); ++i) {
      const double rms = std::sqrt(ss[size_t(shell[i])] / std::max(1.0, cnt[size_t(shell[i])]));
      px.norm[i] = rms > 0 ? float(px.norm[i] / rms) : 0.0f;
    }
  };
  normalise(sm);

  // 2. Grid over mean defocus, astigmatism and angle, then Nelder-Mead.
  const double amax = o.astigmatism > 0 ? 3 * o.astigmatism : 3000.0;
  const size_t stride = px.size() > 40000 ? 4 : px.size() > 10000 ? 2 : 1;
  double gbest = -2;
  std::vector<double> x0{best_df, 0, 0};
  for (int i = -5; i <= 5; ++i) {
    const double m = best_df * (1 + 0.02 * i);
    if (m <= 0) continue;
    for (int ia = 0; ia <= 8; ++ia) {
      const double a = amax * ia / 8;
      for (int it = 0; it < (ia == 0 ? 1 : 12); ++it) {
        const double t = deg2rad(15.0 * it);
        const double v = score(px, op, m, a * std::cos(2 * t), a * std::sin(2 * t), stride);
        if (v > gbest) {
          gbest = v;
          x0 = {m, a * std::cos(2 * t), a * std::sin(2 * t)};
        }
      }
    }
  }
  auto objective = [&](const std::vector<double>& p) {
    const double a = std::hypot(p[1], p[2]);
    if (p[0] - a / 2 <= 0 || a > 1.5 * amax) return -2.0;
    return score(px, op, p[0], p[1], p[2], 1);
  };
  double fom = 0;
  std::vector<double> xb = nelder_mead(objective, x0, {0.005 * x0[0], 60, 60}, 300, &fom);

  // 3. Background again along equal-phase rings, and refine once more.
  {
    std::vector<double> ek, es, ec, ew;
    const double m = xb[0];
    std::vector<double> bins(size_t(nsh), 0), bcnt(size_t(nsh), 0);
    for (size_t i = 0; i < px.size(); ++i) {
      const double df = m + 0.5 * (xb[1] * px.c2phi[i] + xb[2] * px.s2phi[i]);
      const double u = equiphase_k2(op, m, df, px.k2[i]);
      if (u <= 0) continue;
      const int b = int(std::lround(std::sqrt(u) / inv));
      if (b < 0 || b >= nsh) continue;
      bins[size_t(b)] += px.value[i];
      bcnt[size_t(b)] += 1;
    }
    for (int b = 0; b < nsh; ++b) {
      const double k = b * inv;
      if (bcnt[size_t(b)] < 1 || k < kmin || k > kmax) continue;
      ek.push_back(k);
      es.push_back(bins[size_t(b)] / bcnt[size_t(b)]);
      ec.push_back(op.ctf2(m, k * k));
      ew.push_back(1.0);
    }
    Smooth s2;
    if (ek.size() > size_t(kParams) + 4) {
      fit_smooth(ek, es, ec, ew, kmin, kmax, s2);
      sm = s2;
      normalise(sm);
      double f2 = 0;
      auto x2 = nelder_mead(objective, xb, {0.003 * xb[0], 40, 40}, 300, &f2);
      // A restart with smaller steps (the simplex can collapse early along the astigmatism).
      double f3 = 0;
      auto x3 = nelder_mead(objective, x2, {0.001 * x2[0], 15, 15}, 200, &f3);
      xb = f3 >= f2 ? x3 : x2;
      fom = std::max(f2, f3);
    }
  }

  // Result in RELION's convention (U >= V, angle of U from x).
  const double a = std::hypot(xb[1], xb[2]);
  res.defocus_u = xb[0] + a / 2;
  res.defocus_v = xb[0] - a / 2;
  double ang = 0.5 * rad2deg(std::atan2(xb[2], xb[1]));
  if (ang <= -90) ang += 180;
  if (ang > 90) ang -= 180;
  res.defocus_angle = ang;
  res.figure_of_merit = fom;

  // 4. Equi-phase average to Nyquist and the fit resolution.
  {
    const double m = xb[0];
    std::vector<double> bins(size_t(nsh), 0), bcnt(size_t(nsh), 0);
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const int ix = x - n / 2, iy = y - n / 2;
        if (ix == 0 || iy == 0) continue;
        const double kx = ix * inv, ky = iy * inv, k2 = kx * kx + ky * ky;
        if (k2 < kmin * kmin) continue;
        const double phi = std::atan2(ky, kx);
        const double df = m + 0.5 * (xb[1] * std::cos(2 * phi) + xb[2] * std::sin(2 * phi));
        const double u = equiphase_k2(op, m, df, k2);
        if (u <= 0) continue;
        const int b = int(std::lround(std::sqrt(u) / inv));
        if (b >= nsh) continue;
        bins[size_t(b)] += S(x, y);
        bcnt[size_t(b)] += 1;
      }
    for (int b = 0; b < nsh; ++b) {
      const double k = b * inv;
      if (bcnt[size_t(b)] < 1 || k < kmin) continue;
      res.epa_k.push_back(k);
      res.epa_data.push_back(bins[size_t(b)] / bcnt[size_t(b)] - sm.background(std::min(k, kmax)));
      res.epa_fit.push_back(op.ctf2(m, k * k));
    }
    // Sliding correlation over one CTF period around each shell.
    double fit_k = res.epa_k.empty() ? kmin : res.epa_k.front();
    for (size_t i = 0; i < res.epa_k.size(); ++i) {
      const double k = res.epa_k[i];
      const double period = 1.0 / std::max(1e-9, 2 * electron_wavelength(o.voltage_kv) * m * k);
      double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
      int cnt = 0;
      for (size_t j = 0; j < res.epa_k.size(); ++j) {
        if (std::abs(res.epa_k[j] - k) > period) continue;
        const double xv = res.epa_data[j], yv = res.epa_fit[j];
        sx += xv;
        sy += yv;
        sxx += xv * xv;
        syy += yv * yv;
        sxy += xv * yv;
        ++cnt;
      }
      double c = 0;
      if (cnt >= 3) {
        const double cov = sxy - sx * sy / cnt, vx = sxx - sx * sx / cnt, vy = syy - sy * sy / cnt;
        c = vx > 0 && vy > 0 ? cov / std::sqrt(vx * vy) : 0;
      }
      if (c < 0.3) break;  // the first drop ends the fit
      fit_k = k;
    }
    res.max_resolution = 1.0 / fit_k;
  }

  // Diagnostic image: left the normalised spectrum, right the fit.
  res.diagnostic = Grid<float>(n, n);
  {
    Smooth s = sm;
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const int ix = x - n / 2, iy = y - n / 2;
        const double kx = ix * inv, ky = iy * inv, k2 = kx * kx + ky * ky, k = std::sqrt(k2);
        if (k < kmin) continue;
        if (ix < 0) {
          const double e = s.envelope(std::min(k, kmax));
          const double v = (S(x, y) - s.background(std::min(k, kmax))) / (std::abs(e) > 0 ? std::abs(e) : 1.0);
          res.diagnostic(x, y) = float(std::clamp(v, -2.0, 3.0));
        } else {
          const double phi = std::atan2(ky, kx);
          const double df = xb[0] + 0.5 * (xb[1] * std::cos(2 * phi) + xb[2] * std::sin(2 * phi));
          res.diagnostic(x, y) = float(op.ctf2(df, k2));
        }
      }
  }
  return res;
}

}  // namespace regula

#include "regula/micrograph/particle_motion.hpp"

#include <algorithm>
#include <cmath>
#include <deque>

#include <cblas.h>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"

extern "C" void dsyev_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                       double* work, const int* lwork, int* info);

namespace regula {

namespace {

// Catmull-Rom weights for the points i-1 .. i+2 at fraction t, and their derivatives.
void cubic_weights(double t, double w[4], double dw[4]) {
  const double t2 = t * t, t3 = t2 * t;
  w[0] = 0.5 * (-t3 + 2 * t2 - t);
  w[1] = 0.5 * (3 * t3 - 5 * t2 + 2);
  w[2] = 0.5 * (-3 * t3 + 4 * t2 + t);
  w[3] = 0.5 * (t3 - t2);
  dw[0] = 0.5 * (-3 * t2 + 4 * t - 1);
  dw[1] = 0.5 * (9 * t2 - 10 * t);
  dw[2] = 0.5 * (-9 * t2 + 8 * t + 1);
  dw[3] = 0.5 * (3 * t2 - 2 * t);
}

// Grid coordinate u clamped to where the 4-point stencil fits; `inside` false when it was clamped.
void locate(double u, int n, int& i, double& t, bool& inside) {
  const double lo = 1, hi = n - 2;
  inside = u >= lo && u <= hi;
  u = std::clamp(u, lo, hi);
  i = std::min(int(std::floor(u)), n - 3);
  t = u - i;
}

}  // namespace

double ShiftMap::interpolate(double x, double y, double* gx, double* gy) const {
  const int n = size();
  int ix, iy;
  double tx, ty;
  bool in_x, in_y;
  locate(x + range, n, ix, tx, in_x);
  locate(y + range, n, iy, ty, in_y);
  double wx[4], dwx[4], wy[4], dwy[4];
  cubic_weights(tx, wx, dwx);
  cubic_weights(ty, wy, dwy);
  double v = 0, vx = 0, vy = 0;
  for (int b = 0; b < 4; ++b) {
    const float* row = value.data() + size_t(iy - 1 + b) * size_t(n) + size_t(ix - 1);
    double r = 0, rx = 0;
    for (int a = 0; a < 4; ++a) {
      r += wx[a] * row[a];
      rx += dwx[a] * row[a];
    }
    v += wy[b] * r;
    vx += wy[b] * rx;
    vy += dwy[b] * r;
  }
  if (gx) *gx = in_x ? vx : 0.0;
  if (gy) *gy = in_y ? vy : 0.0;
  return v;
}

VelocityBasis velocity_basis(const std::vector<double>& x, const std::vector<double>& y, const MotionPrior& prior) {
  const int P = int(x.size());
  VelocityBasis b;
  b.particles = P;
  if (P == 0) return b;
  if (!(prior.sigma_div > 0) || !(prior.sigma_vel > 0)) throw InputError("polish: s_vel and s_div must be positive");
  std::vector<double> K(size_t(P) * size_t(P));
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < P; ++q)
      K[size_t(p) * size_t(P) + size_t(q)] =
          std::exp(-std::hypot(x[size_t(p)] - x[size_t(q)], y[size_t(p)] - y[size_t(q)]) / prior.sigma_div);
  std::vector<double> w(static_cast<size_t>(P));
  int lwork = -1, info = 0;
  double query = 0;
  // LAPACK runs on OpenBLAS: one thread, or the eigenvectors would depend on how many cores OpenBLAS sees
  // (under mpirun, bound to one core, it saw one and the tracks changed in the 4th decimal).
  set_blas_single_threaded();
  dsyev_("V", "U", &P, K.data(), &P, w.data(), &query, &lwork, &info);
  lwork = std::max(1, int(query));
  std::vector<double> work(static_cast<size_t>(lwork));
  dsyev_("V", "U", &P, K.data(), &P, w.data(), work.data(), &lwork, &info);
  if (info != 0) throw std::runtime_error("polish: eigen-decomposition of the velocity kernel failed");
  // Column-major eigenvectors: eigenvector j in K[j * P .. j * P + P).
  const double wmax = *std::max_element(w.begin(), w.end());
  std::vector<int> keep;
  for (int j = P - 1; j >= 0; --j)
    if (w[size_t(j)] > 1e-9 * wmax) keep.push_back(j);
  const int B = int(keep.size());
  b.L.assign(size_t(P) * size_t(B), 0.0);
  for (int k = 0; k < B; ++k) {
    const int j = keep[size_t(k)];
    b.lambda.push_back(w[size_t(j)]);
    const double s = prior.sigma_vel * std::sqrt(w[size_t(j)]);
    for (int p = 0; p < P; ++p) b.L[size_t(p) * size_t(B) + size_t(k)] = s * K[size_t(j) * size_t(P) + size_t(p)];
  }
  return b;
}

double offset_prior_sigma(const std::vector<ShiftMap>& maps, int particles, int frames) {
  if (particles <= 0 || frames <= 0) return 0.05;
  // Per particle, the log-likelihood of a constant displacement on its grid (particles of different
  // boxes have grids of different ranges), less its maximum; exp of it once.
  std::vector<size_t> start(size_t(particles) + 1, 0);
  int R_max = 0;
  for (int p = 0; p < particles; ++p) {
    const int R = maps[size_t(p) * size_t(frames)].range;
    R_max = std::max(R_max, R);
    start[size_t(p) + 1] = start[size_t(p)] + size_t(2 * R + 1) * size_t(2 * R + 1);
  }
  std::vector<double> S(start.back(), 0.0);
  for (int p = 0; p < particles; ++p) {
    double* s = S.data() + start[size_t(p)];
    const size_t cells = start[size_t(p) + 1] - start[size_t(p)];
    for (int f = 0; f < frames; ++f) {
      const ShiftMap& m = maps[size_t(p) * size_t(frames) + size_t(f)];
      if (m.value.size() != cells) throw std::logic_error("offset_prior_sigma: one particle's maps of different ranges");
      for (size_t c = 0; c < cells; ++c) s[c] += m.value[c];
    }
    const double top = *std::max_element(s, s + cells);
    for (size_t c = 0; c < cells; ++c) s[c] -= top;
  }
  std::vector<double> L(S.size());
  for (size_t c = 0; c < S.size(); ++c) L[c] = std::exp(S[c]);
  // Per iteration the prior's factor exp(-(dx^2 + dy^2) / (2 s^2)) = e[|dx|] e[|dy|]. A particle whose
  // likelihood is negligible wherever the prior is not (the products underflow) is summed in logarithms.
  std::vector<double> e(size_t(R_max) + 1);
  double s2 = double(R_max) * R_max / 4;  // start wide: (R/2)^2
  for (int it = 0; it < 200; ++it) {
    for (int a = 0; a <= R_max; ++a) e[size_t(a)] = std::exp(-double(a) * a / (2 * s2));
    double sum = 0;
    for (int p = 0; p < particles; ++p) {
      const int R = maps[size_t(p) * size_t(frames)].range, n = 2 * R + 1;
      const double* l = L.data() + start[size_t(p)];
      double z = 0, m2 = 0;
      for (int dy = -R; dy <= R; ++dy)
        for (int dx = -R; dx <= R; ++dx) {
          const double w = l[size_t((dy + R) * n + dx + R)] * e[size_t(std::abs(dx))] * e[size_t(std::abs(dy))];
          z += w;
          m2 += w * double(dx * dx + dy * dy);
        }
      if (!(z > 1e-250)) {
        const double* sp = S.data() + start[size_t(p)];
        double top = -1e300;
        for (int dy = -R; dy <= R; ++dy)
          for (int dx = -R; dx <= R; ++dx)
            top = std::max(top, sp[size_t((dy + R) * n + dx + R)] - double(dx * dx + dy * dy) / (2 * s2));
        z = m2 = 0;
        for (int dy = -R; dy <= R; ++dy)
          for (int dx = -R; dx <= R; ++dx) {
            const double r2 = double(dx * dx + dy * dy);
            const double w = std::exp(sp[size_t((dy + R) * n + dx + R)] - r2 / (2 * s2) - top);
            z += w;
            m2 += w * r2;
          }
      }
      sum += m2 / z;
    }
    const double next = std::max(0.0025, sum / (2.0 * particles));
    const bool done = std::abs(next - s2) <= 1e-4 * s2;
    s2 = next;
    if (done) break;
  }
  return std::sqrt(s2);
}

namespace {

struct Problem {
  const std::vector<ShiftMap>& maps;
  int P, F, B;
  const VelocityBasis& basis;
  double acc_weight;  // s_vel^2 / s_acc^2 (0: none)
  double off_weight;  // 1 / s_off^2 (0: none)
  ThreadPool& pool;

  size_t size() const { return size_t(2 * P) + size_t(2) * size_t(std::max(0, F - 1)) * size_t(B); }
  // Parameters: o (P x 2), then c [g][axis][b].
  size_t c_index(int g, int axis, int b) const {
    return size_t(2 * P) + (size_t(g) * 2 + size_t(axis)) * size_t(B) + size_t(b);
  }

  // Displacements from the parameters. The velocities of all frame intervals are one product per
  // axis, V_a = C_a L^T ((F-1) x B times B x P; BLAS, one thread per axis), then summed over frames.
  void displacements(const std::vector<double>& x, std::vector<std::array<double, 2>>& d) const {
    d.assign(size_t(P) * size_t(F), {0.0, 0.0});
    std::vector<double> V(F > 1 ? size_t(2) * size_t(F - 1) * size_t(P) : 0);
    if (F > 1 && B > 0) {
      set_blas_single_threaded();
      pool.parallel_for(0, 2, [&](size_t axis, int) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, F - 1, P, B, 1.0, x.data() + c_index(0, int(axis), 0),
                    2 * B, basis.L.data(), B, 0.0, V.data() + axis * size_t(F - 1) * size_t(P), P);
      });
    }
    pool.parallel_for(0, size_t(P), [&](size_t p, int) {
      double pos[2] = {x[2 * p], x[2 * p + 1]};
      for (int f = 0; f < F; ++f) {
        d[p * size_t(F) + size_t(f)] = {pos[0], pos[1]};
        if (f == F - 1 || B == 0) continue;
        for (int axis = 0; axis < 2; ++axis) pos[axis] += V[(size_t(axis) * size_t(F - 1) + size_t(f)) * size_t(P) + p];
      }
    });
  }

  double evaluate(const std::vector<double>& x, std::vector<double>& grad, double* data_term = nullptr) const {
    std::vector<std::array<double, 2>> d;
    displacements(x, d);
    grad.assign(size(), 0.0);
    std::vector<double> e(size_t(P), 0.0), eo(size_t(P), 0.0);
    // Suffix sums of the data gradient per particle: S[axis][g][p] = sum_{f > g} dE/dd_pf.
    std::vector<double> S(size_t(P) * size_t(std::max(1, F - 1)) * 2, 0.0);
    auto s_at = [&](int axis, int g, size_t p) -> double& {
      return S[(size_t(axis) * size_t(std::max(1, F - 1)) + size_t(g)) * size_t(P) + p];
    };
    pool.parallel_for(0, size_t(P), [&](size_t p, int) {
      double acc[2] = {0, 0};
      double sum = 0;
      // The prior on the mean displacement m: 1/2 |m|^2 / s_off^2, gradient m / (F s_off^2) per frame.
      double pm[2] = {0, 0};
      if (off_weight > 0) {
        double m[2] = {0, 0};
        for (int f = 0; f < F; ++f)
          for (int a = 0; a < 2; ++a) m[a] += d[p * size_t(F) + size_t(f)][size_t(a)] / F;
        eo[p] = 0.5 * off_weight * (m[0] * m[0] + m[1] * m[1]);
        for (int a = 0; a < 2; ++a) pm[a] = off_weight * m[a] / F;
      }
      for (int f = F - 1; f >= 0; --f) {
        const auto& dd = d[p * size_t(F) + size_t(f)];
        double gx, gy;
        sum -= maps[p * size_t(F) + size_t(f)].interpolate(dd[0], dd[1], &gx, &gy);
        acc[0] += pm[0] - gx;
        acc[1] += pm[1] - gy;
        if (f >= 1) {
          s_at(0, f - 1, p) = acc[0];
          s_at(1, f - 1, p) = acc[1];
        }
      }
      e[p] = sum;
      grad[2 * p] = acc[0];
      grad[2 * p + 1] = acc[1];
    });
    double E = 0, Eo = 0;
    for (double v : e) E += v;
    for (double v : eo) Eo += v;
    if (data_term) *data_term = -E;
    E += Eo;
    if (F < 2) return E;
    // dE/dc_g = L^T S_g (one product per axis: (F-1) x P times P x B), plus the prior.
    if (B > 0) {
      set_blas_single_threaded();
      pool.parallel_for(0, 2, [&](size_t axis, int) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, F - 1, B, P, 1.0, &s_at(int(axis), 0, 0), P,
                    basis.L.data(), B, 0.0, grad.data() + c_index(0, int(axis), 0), 2 * B);
      });
    }
    double prior = 0;
    for (int g = 0; g < F - 1; ++g)
      for (int axis = 0; axis < 2; ++axis)
        for (int b = 0; b < B; ++b) {
          const double c = x[c_index(g, axis, b)];
          prior += 0.5 * c * c;
          grad[c_index(g, axis, b)] += c;
          if (acc_weight > 0 && g + 1 < F - 1) {
            const double diff = x[c_index(g + 1, axis, b)] - c;
            const double w = acc_weight * basis.lambda[size_t(b)];
            prior += 0.5 * w * diff * diff;
            grad[c_index(g + 1, axis, b)] += w * diff;
            grad[c_index(g, axis, b)] -= w * diff;
          }
        }
    return E + prior;
  }
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

MotionFitResult fit_particle_motion(const std::vector<ShiftMap>& maps, int particles, int frames,
                                    const VelocityBasis& basis, const MotionPrior& prior,
                                    const MotionFitOptions& opt, ThreadPool& pool) {
  if (maps.size() != size_t(particles) * size_t(frames))
    throw std::logic_error("fit_particle_motion: one map per particle and frame expected");
  if (basis.particles != particles) throw std::logic_error("fit_particle_motion: basis of another particle set");
  const double acc_weight =
      prior.sigma_acc > 0 ? prior.sigma_vel * prior.sigma_vel / (prior.sigma_acc * prior.sigma_acc) : 0.0;
  const double off_weight = prior.sigma_off > 0 ? 1.0 / (prior.sigma_off * prior.sigma_off) : 0.0;
  const Problem pr{maps, particles, frames, basis.size(), basis, acc_weight, off_weight, pool};
  const size_t n = pr.size();
  std::vector<double> x(n, 0.0), g, xn(n), gn;
  double f = pr.evaluate(x, g);
  // L-BFGS (memory 8) with a backtracking (Armijo) line search.
  std::deque<std::vector<double>> S, Y;
  std::deque<double> rho;
  MotionFitResult res;
  int it = 0;
  for (; it < opt.max_iterations; ++it) {
    std::vector<double> q = g;
    std::vector<double> alpha(S.size());
    for (size_t k = S.size(); k-- > 0;) {
      alpha[k] = rho[k] * dot(S[k], q);
      for (size_t i = 0; i < n; ++i) q[i] -= alpha[k] * Y[k][i];
    }
    double gamma = 1;
    if (!S.empty()) gamma = dot(S.back(), Y.back()) / dot(Y.back(), Y.back());
    else {
      const double gn2 = std::sqrt(dot(g, g));
      gamma = gn2 > 0 ? 0.1 / gn2 : 1.0;  // a first step of 0.1 in parameter space
    }
    for (double& v : q) v *= gamma;
    for (size_t k = 0; k < S.size(); ++k) {
      const double beta = rho[k] * dot(Y[k], q);
      for (size_t i = 0; i < n; ++i) q[i] += (alpha[k] - beta) * S[k][i];
    }
    std::vector<double>& p = q;  // direction = -p
    double slope = -dot(g, p);
    if (!(slope < 0)) {  // not a descent direction: restart along the gradient
      S.clear();
      Y.clear();
      rho.clear();
      const double gn2 = std::sqrt(dot(g, g));
      if (gn2 == 0) break;
      p = g;
      for (double& v : p) v *= 0.1 / gn2;
      slope = -dot(g, p);
    }
    double step = 1, fn = 0;
    bool accepted = false;
    for (int tries = 0; tries < 40; ++tries) {
      for (size_t i = 0; i < n; ++i) xn[i] = x[i] - step * p[i];
      fn = pr.evaluate(xn, gn);
      if (fn <= f + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
      step *= 0.5;
    }
    if (!accepted) break;
    std::vector<double> s(n), y(n);
    for (size_t i = 0; i < n; ++i) {
      s[i] = xn[i] - x[i];
      y[i] = gn[i] - g[i];
    }
    const double sy = dot(s, y);
    if (sy > 1e-12) {
      S.push_back(std::move(s));
      Y.push_back(std::move(y));
      rho.push_back(1.0 / sy);
      if (S.size() > 8) {
        S.pop_front();
        Y.pop_front();
        rho.pop_front();
      }
    }
    const double change = f - fn;
    x.swap(xn);
    g.swap(gn);
    f = fn;
    if (change <= opt.tolerance * std::max(1.0, std::abs(f))) {
      ++it;
      break;
    }
  }
  res.iterations = it;
  std::vector<double> dummy;
  res.objective = pr.evaluate(x, dummy, &res.data_term);
  pr.displacements(x, res.d);
  return res;
}

}  // namespace regula

// The per-particle motion fit of Bayesian polishing (micrograph/particle_motion.hpp) against
// analytic results: the interpolation of its log-likelihood maps, the kernel's eigenbasis, and the
// posterior mode for quadratic log-likelihoods, where the mode solves a linear system written here
// in the displacements themselves (not in the fit's velocity coefficients).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "regula/micrograph/particle_motion.hpp"

using namespace regula;

namespace {

ShiftMap quadratic_map(int range, double cx, double cy, double kappa) {
  ShiftMap m;
  m.range = range;
  m.value.resize(size_t(m.size() * m.size()));
  for (int y = -range; y <= range; ++y)
    for (int x = -range; x <= range; ++x)
      m.value[size_t((y + range) * m.size() + x + range)] =
          float(-0.5 * kappa * ((x - cx) * (x - cx) + (y - cy) * (y - cy)));
  return m;
}

// Dense Gaussian elimination with partial pivoting.
std::vector<double> solve(std::vector<double> A, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t c = 0; c < n; ++c) {
    size_t piv = c;
    for (size_t r = c + 1; r < n; ++r)
      if (std::abs(A[r * n + c]) > std::abs(A[piv * n + c])) piv = r;
    for (size_t k = 0; k < n; ++k) std::swap(A[c * n + k], A[piv * n + k]);
    std::swap(b[c], b[piv]);
    for (size_t r = c + 1; r < n; ++r) {
      const double f = A[r * n + c] / A[c * n + c];
      for (size_t k = c; k < n; ++k) A[r * n + k] -= f * A[c * n + k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> x(n);
  for (size_t c = n; c-- > 0;) {
    double s = b[c];
    for (size_t k = c + 1; k < n; ++k) s -= A[c * n + k] * x[k];
    x[c] = s / A[c * n + c];
  }
  return x;
}

}  // namespace

TEST(ParticleMotion, CubicConvolutionReproducesQuadratics) {
  // Catmull-Rom interpolation is exact for polynomials of degree 2, value and gradient.
  const ShiftMap m = quadratic_map(6, 1.3, -0.7, 2.5);
  for (double x : {-3.3, -0.5, 0.0, 0.25, 2.9})
    for (double y : {-4.1, 0.0, 1.75}) {
      double gx, gy;
      const double v = m.interpolate(x, y, &gx, &gy);
      EXPECT_NEAR(v, -1.25 * ((x - 1.3) * (x - 1.3) + (y + 0.7) * (y + 0.7)), 2e-4);
      EXPECT_NEAR(gx, -2.5 * (x - 1.3), 2e-4);
      EXPECT_NEAR(gy, -2.5 * (y + 0.7), 2e-4);
    }
  // Beyond the grid: the edge value, no gradient along the clamped axis.
  double gx, gy;
  m.interpolate(9.0, 0.0, &gx, &gy);
  EXPECT_EQ(gx, 0.0);
  EXPECT_NE(gy, 0.0);
}

TEST(ParticleMotion, BasisReproducesTheKernel) {
  const std::vector<double> x = {0, 300, 310, 1500, 40}, y = {0, 20, 800, 900, 1000};
  const MotionPrior prior{0.7, 400, 0};
  const VelocityBasis b = velocity_basis(x, y, prior);
  ASSERT_EQ(b.particles, 5);
  for (int p = 0; p < 5; ++p)
    for (int q = 0; q < 5; ++q) {
      double s = 0;
      for (int k = 0; k < b.size(); ++k) s += b.L[size_t(p * b.size() + k)] * b.L[size_t(q * b.size() + k)];
      EXPECT_NEAR(s, 0.49 * std::exp(-std::hypot(x[size_t(p)] - x[size_t(q)], y[size_t(p)] - y[size_t(q)]) / 400), 1e-12);
    }
}

TEST(ParticleMotion, ModeOfQuadraticLikelihoodsSolvesTheLinearSystem) {
  // P particles, F frames, log-likelihood -kappa/2 |d_pf - t_pf|^2 around random targets t: the
  // posterior mode minimises sum kappa/2 |d - t|^2 + 1/2 sum_g v_g^T (s_vel^2 K)^-1 v_g
  // + 1/(2 s_acc^2) sum_g |v_{g+1} - v_g|^2 per axis with v_g = d_{g+1} - d_g; the offsets free, or
  // with the prior 1/(2 s_off^2) |mean_f d_pf|^2 on each particle's mean displacement.
  for (double s_off : {0.0, 0.6})
  for (unsigned seed : {1u, 2u, 3u}) {
    const int P = 5, F = 6;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> pos(0, 1000), tgt(-1.5, 1.5);
    std::vector<double> x(P), y(P);
    for (int p = 0; p < P; ++p) {
      x[size_t(p)] = pos(rng);
      y[size_t(p)] = pos(rng);
    }
    const MotionPrior prior{0.4, 300, 0.3, s_off};
    const double kappa = 1.7;
    std::vector<ShiftMap> maps;
    std::vector<double> tx(P * F), ty(P * F);
    for (int p = 0; p < P; ++p)
      for (int f = 0; f < F; ++f) {
        tx[size_t(p * F + f)] = tgt(rng);
        ty[size_t(p * F + f)] = tgt(rng);
        maps.push_back(quadratic_map(5, tx[size_t(p * F + f)], ty[size_t(p * F + f)], kappa));
      }
    ThreadPool pool(2);
    const VelocityBasis basis = velocity_basis(x, y, prior);
    MotionFitOptions opt;
    opt.tolerance = 1e-14;
    opt.max_iterations = 2000;
    const MotionFitResult r = fit_particle_motion(maps, P, F, basis, prior, opt, pool);

    // Reference: the normal equations in d (P * F unknowns per axis). Kinv = (s_vel^2 K)^-1.
    std::vector<double> K(P * P);
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < P; ++q)
        K[size_t(p * P + q)] = prior.sigma_vel * prior.sigma_vel *
                               std::exp(-std::hypot(x[size_t(p)] - x[size_t(q)], y[size_t(p)] - y[size_t(q)]) / prior.sigma_div);
    std::vector<double> Kinv(P * P);
    for (int c = 0; c < P; ++c) {
      std::vector<double> e(P, 0.0);
      e[size_t(c)] = 1;
      const auto col = solve(K, e);
      for (int r2 = 0; r2 < P; ++r2) Kinv[size_t(r2 * P + c)] = col[size_t(r2)];
    }
    const int n = P * F;
    auto idx = [&](int p, int f) { return size_t(p * F + f); };
    // Velocity v_g = D_g d with (D_g d)_p = d_{p,g+1} - d_{p,g}; Hessian sum_g D_g^T Kinv D_g + accelerations.
    std::vector<double> H(size_t(n * n), 0.0);
    for (int i = 0; i < n; ++i) H[size_t(i * n + i)] += kappa;
    for (int g = 0; g + 1 < F; ++g)
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < P; ++q) {
          const double k = Kinv[size_t(p * P + q)];
          // v_p = d(p, g+1) - d(p, g)
          const int ip[2] = {int(idx(p, g + 1)), int(idx(p, g))};
          const int iq[2] = {int(idx(q, g + 1)), int(idx(q, g))};
          const double sp[2] = {1, -1};
          for (int a = 0; a < 2; ++a)
            for (int c = 0; c < 2; ++c) H[size_t(ip[a] * n + iq[c])] += sp[a] * sp[c] * k;
        }
    const double wa = 1.0 / (prior.sigma_acc * prior.sigma_acc);
    for (int g = 0; g + 2 < F; ++g)
      for (int p = 0; p < P; ++p) {
        // a = d(g+2) - 2 d(g+1) + d(g)
        const int i3[3] = {int(idx(p, g + 2)), int(idx(p, g + 1)), int(idx(p, g))};
        const double s3[3] = {1, -2, 1};
        for (int a = 0; a < 3; ++a)
          for (int c = 0; c < 3; ++c) H[size_t(i3[a] * n + i3[c])] += wa * s3[a] * s3[c];
      }
    if (s_off > 0)
      for (int p = 0; p < P; ++p)
        for (int f = 0; f < F; ++f)
          for (int f2 = 0; f2 < F; ++f2) H[idx(p, f) * size_t(n) + idx(p, f2)] += 1.0 / (s_off * s_off * F * F);
    std::vector<double> bx(n), by(n);
    for (int i = 0; i < n; ++i) {
      bx[size_t(i)] = kappa * tx[size_t(i)];
      by[size_t(i)] = kappa * ty[size_t(i)];
    }
    const auto dx = solve(H, bx), dy = solve(H, by);
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(r.d[size_t(i)][0], dx[size_t(i)], 1e-4) << "seed " << seed << " s_off " << s_off << " i " << i;
      EXPECT_NEAR(r.d[size_t(i)][1], dy[size_t(i)], 1e-4) << "seed " << seed << " s_off " << s_off << " i " << i;
    }
    // The prior matters here: the mode is not the data's own maximum.
    double moved = 0;
    for (int i = 0; i < n; ++i) moved = std::max(moved, std::abs(dx[size_t(i)] - tx[size_t(i)]));
    EXPECT_GT(moved, 0.2);
  }
}

TEST(ParticleMotion, SameResultForAnyThreadCount) {
  const int P = 7, F = 5;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> pos(0, 2000), tgt(-2, 2);
  std::vector<double> x(P), y(P);
  for (int p = 0; p < P; ++p) {
    x[size_t(p)] = pos(rng);
    y[size_t(p)] = pos(rng);
  }
  std::vector<ShiftMap> maps;
  for (int i = 0; i < P * F; ++i) {
    ShiftMap m = quadratic_map(4, tgt(rng), tgt(rng), 0.8);
    // a second, weaker mode: a non-quadratic landscape
    for (auto& v : m.value) v += float(0.3 * std::sin(double(&v - m.value.data())));
    maps.push_back(m);
  }
  const MotionPrior prior{0.5, 500, 1.0};
  const VelocityBasis basis = velocity_basis(x, y, prior);
  ThreadPool one(1), two(2);
  const auto a = fit_particle_motion(maps, P, F, basis, prior, {}, one);
  const auto b = fit_particle_motion(maps, P, F, basis, prior, {}, two);
  ASSERT_EQ(a.d.size(), b.d.size());
  for (size_t i = 0; i < a.d.size(); ++i) {
    EXPECT_EQ(a.d[i][0], b.d[i][0]);
    EXPECT_EQ(a.d[i][1], b.d[i][1]);
  }
}

TEST(ParticleMotion, OffsetsPriorIsTheMaximumLikelihoodWidth) {
  // Each particle's log-likelihood of a constant displacement o is -|o - u_p|^2 / (2 tau^2) (split
  // evenly over the frames) with u_p ~ N(0, (s^2 + tau^2) I): the marginal likelihood of s is
  // maximal at s^2 = mean_p |u_p|^2 / 2 - tau^2 (per axis), which EM must reach. The grid's spacing
  // (1 px) is fine for a posterior s.d. over 1 px: its moments are those of the continuous Gaussian.
  // Grids of two ranges (particles of two boxes), both wide enough for the Gaussians.
  for (unsigned seed : {11u, 12u, 13u}) {
    const int P = 400, F = 4;
    const double s_true = 2.0, tau = 1.5;
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> u(0.0, std::sqrt(s_true * s_true + tau * tau));
    std::vector<ShiftMap> maps;
    double sum2 = 0;
    for (int p = 0; p < P; ++p) {
      const double ux = u(rng), uy = u(rng);
      sum2 += ux * ux + uy * uy;
      for (int f = 0; f < F; ++f) maps.push_back(quadratic_map(p % 2 ? 14 : 18, ux, uy, 1.0 / (tau * tau * F)));
    }
    const double mle = std::sqrt(std::max(0.0, sum2 / (2.0 * P) - tau * tau));
    const double est = offset_prior_sigma(maps, P, F);
    EXPECT_NEAR(est, mle, 2e-3 * mle) << "seed " << seed;
    EXPECT_NEAR(est, s_true, 0.25) << "seed " << seed;  // the MLE's sampling spread at 400 particles: ~0.1
  }
  // Data that do not move the particles at all: the width goes to its floor, no NaN.
  std::vector<ShiftMap> maps(6, quadratic_map(5, 0.0, 0.0, 4.0));
  EXPECT_NEAR(offset_prior_sigma(maps, 3, 2), 0.05, 1e-9);
}

// The local motion model of motion correction (fit_polynomial_motion) and the periodic B-spline
// interpolation that applies it (bspline_prefilter_spectrum, bspline_add_row_periodic), against
// analytic results.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/grid.hpp"
#include "regula/micrograph/bspline.hpp"
#include "regula/micrograph/motion_model.hpp"

using namespace regula;

namespace {
constexpr double kTwoPi = 6.283185307179586;

// A periodic image: a few sinusoids below 0.2 cycles per pixel (where cubic B-splines interpolate to
// better than 1e-3 of the amplitude), evaluated at any (x, y).
struct Waves {
  double fx[3] = {3, -7, 11}, fy[3] = {5, 2, -9}, ph[3] = {0.3, 1.1, 2.0};
  int n = 96;
  double at(double x, double y) const {
    double v = 0;
    for (int k = 0; k < 3; ++k) v += std::cos(kTwoPi * (fx[k] * x + fy[k] * y) / n + ph[k]);
    return v;
  }
};

PolynomialMotion some_model() {
  PolynomialMotion m;
  for (int a = 0; a < 18; ++a) {
    m.cx[size_t(a)] = 0.3 * std::sin(1.7 * a + 0.2) / std::pow(4.0, a % 3);
    m.cy[size_t(a)] = 0.3 * std::cos(0.9 * a + 0.5) / std::pow(4.0, a % 3);
  }
  return m;
}
}  // namespace

TEST(BSplinePeriodic, ShiftsAPeriodicImageByAnyFieldOfShifts) {
  const Waves w;
  const int n = w.n;
  Grid<float> img(n, n);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) img(x, y) = float(w.at(x, y));
  Grid<cfloat> spec = fft_forward(img);
  bspline_prefilter_spectrum(spec.data(), n, n);
  const Grid<float> coeff = fft_inverse(spec, n);
  std::vector<float> dx(static_cast<size_t>(n)), dy(static_cast<size_t>(n)), out(static_cast<size_t>(n));
  double worst = 0, worst_zero = 0;
  for (int y = 0; y < n; ++y) {
    // Zero shift: the interpolant passes through the pixels.
    std::fill(dx.begin(), dx.end(), 0.0f);
    std::fill(dy.begin(), dy.end(), 0.0f);
    std::fill(out.begin(), out.end(), 0.0f);
    bspline_add_row_periodic(coeff.data(), size_t(n), n, n, y, dx.data(), dy.data(), out.data());
    for (int x = 0; x < n; ++x) worst_zero = std::max(worst_zero, double(std::abs(out[size_t(x)] - img(x, y))));
    // A smooth field of shifts up to +-3 px, across the image's edges too (periodic wrap).
    for (int x = 0; x < n; ++x) {
      dx[size_t(x)] = float(3.0 * std::sin(kTwoPi * x / n) + 0.37);
      dy[size_t(x)] = float(-2.5 * std::cos(kTwoPi * (x + y) / n) - 0.81);
    }
    std::fill(out.begin(), out.end(), 1.0f);  // it adds
    bspline_add_row_periodic(coeff.data(), size_t(n), n, n, y, dx.data(), dy.data(), out.data());
    for (int x = 0; x < n; ++x)
      worst = std::max(worst, std::abs(out[size_t(x)] - 1.0 - w.at(x - dx[size_t(x)], y - dy[size_t(x)])));
  }
  EXPECT_LT(worst_zero, 1e-4);
  // Three unit waves (sum up to 3); cubic B-spline error at <= 0.13 cycles/px: 1.3e-3 measured.
  EXPECT_LT(worst, 5e-3);
}

TEST(PolynomialMotionFit, RecoversTheModelWithAFreeOffsetPerTrack) {
  const PolynomialMotion truth = some_model();
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> off(-2, 2);
  std::vector<double> z, x, y, sx, sy, tox, toy;
  std::vector<int> track;
  for (int p = 0; p < 16; ++p) {
    const double px = (p % 4 + 0.5) / 4 - 0.5, py = (p / 4 + 0.5) / 4 - 0.5;
    tox.push_back(off(rng));
    toy.push_back(off(rng));
    for (int f = 0; f < 12; ++f) {
      double vx, vy;
      truth.shift_at(f, px, py, vx, vy);
      z.push_back(f);
      x.push_back(px);
      y.push_back(py);
      sx.push_back(vx + tox.back());
      sy.push_back(vy + toy.back());
      track.push_back(p);
    }
  }
  PolynomialMotion m;
  std::vector<double> ox, oy;
  ASSERT_TRUE(fit_polynomial_motion(z, x, y, sx, sy, m, &track, &ox, &oy));
  for (int a = 0; a < 18; ++a) {
    EXPECT_NEAR(m.cx[size_t(a)], truth.cx[size_t(a)], 1e-6 + 1e-6 * std::abs(truth.cx[size_t(a)])) << a;
    EXPECT_NEAR(m.cy[size_t(a)], truth.cy[size_t(a)], 1e-6 + 1e-6 * std::abs(truth.cy[size_t(a)])) << a;
  }
  ASSERT_EQ(ox.size(), 16u);
  for (size_t p = 0; p < 16; ++p) {
    EXPECT_NEAR(ox[p], tox[p], 1e-6);
    EXPECT_NEAR(oy[p], toy[p], 1e-6);
  }
  // Without tracks the offsets are not modelled (no constant term in z): the fit is biased.
  PolynomialMotion plain;
  ASSERT_TRUE(fit_polynomial_motion(z, x, y, sx, sy, plain));
  double diff = 0;
  for (int a = 0; a < 18; ++a) diff += std::abs(plain.cx[size_t(a)] - truth.cx[size_t(a)]);
  EXPECT_GT(diff, 1e-2);
}

TEST(PolynomialMotionFit, CrossValidatedRidgeKeepsSignalAndShrinksNoise) {
  const PolynomialMotion truth = some_model();
  std::mt19937 rng(5);
  std::normal_distribution<double> noise(0, 1);
  const auto observe = [&](double signal, double sigma, std::vector<double>& z, std::vector<double>& x,
                           std::vector<double>& y, std::vector<double>& sx, std::vector<double>& sy,
                           std::vector<int>& track) {
    for (int p = 0; p < 25; ++p) {
      const double px = (p % 5 + 0.5) / 5 - 0.5, py = (p / 5 + 0.5) / 5 - 0.5;
      for (int f = 0; f < 20; ++f) {
        double vx, vy;
        truth.shift_at(f, px, py, vx, vy);
        z.push_back(f);
        x.push_back(px);
        y.push_back(py);
        sx.push_back(signal * vx + sigma * noise(rng));
        sy.push_back(signal * vy + sigma * noise(rng));
        track.push_back(p);
      }
    }
  };
  // Model error: rms over the field and frames of the fitted minus the true shift.
  const auto error = [&](const PolynomialMotion& m, double signal) {
    double s = 0;
    int cnt = 0;
    for (int f = 0; f < 20; ++f)
      for (int j = 0; j < 9; ++j)
        for (int i = 0; i < 9; ++i) {
          double ax, ay, bx, by;
          m.shift_at(f, i / 8.0 - 0.5, j / 8.0 - 0.5, ax, ay);
          truth.shift_at(f, i / 8.0 - 0.5, j / 8.0 - 0.5, bx, by);
          s += (ax - signal * bx) * (ax - signal * bx) + (ay - signal * by) * (ay - signal * by);
          ++cnt;
        }
    return std::sqrt(s / cnt);
  };
  {  // Clean data: (almost) no shrinkage, the model recovered.
    std::vector<double> z, x, y, sx, sy;
    std::vector<int> track;
    observe(1.0, 1e-3, z, x, y, sx, sy, track);
    PolynomialMotion m;
    double ridge = -1;
    ASSERT_TRUE(fit_polynomial_motion(z, x, y, sx, sy, m, &track, nullptr, nullptr, &ridge));
    EXPECT_LT(ridge, 1e-3);
    EXPECT_LT(error(m, 1.0), 0.01);
  }
  {  // Pure noise (no motion): the ridge grows and the model stays closer to zero than least squares'.
    std::vector<double> z, x, y, sx, sy;
    std::vector<int> track;
    observe(0.0, 1.0, z, x, y, sx, sy, track);
    PolynomialMotion shrunk, plain;
    double ridge = -1;
    ASSERT_TRUE(fit_polynomial_motion(z, x, y, sx, sy, shrunk, &track, nullptr, nullptr, &ridge));
    ASSERT_TRUE(fit_polynomial_motion(z, x, y, sx, sy, plain, &track));
    EXPECT_GT(ridge, 0.01);
    EXPECT_LT(error(shrunk, 0.0), 0.5 * error(plain, 0.0));
  }
}

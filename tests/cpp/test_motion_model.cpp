// The local motion model of motion correction (fit_polynomial_motion) and the periodic B-spline
// interpolation that applies it (bspline_prefilter_spectrum, bspline_add_row_periodic), against
// analytic results; and the misplacement a frame may have in the sums with the local model
// (misplacement_tolerance).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/grid.hpp"
#include "regula/micrograph/bspline.hpp"
#include "regula/micrograph/dose.hpp"
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

// Observations of `truth` at the centres of a g x g grid of patches in frames 0 .. frames-1, each plus
// extra(patch) (its offset or noise; x and y).
struct Observations {
  std::vector<double> z, x, y, sx, sy;
  std::vector<int> track;
};
template <class Extra>
Observations observe(const PolynomialMotion& truth, int g, int frames, Extra&& extra) {
  Observations o;
  for (int p = 0; p < g * g; ++p) {
    const double px = (p % g + 0.5) / g - 0.5, py = (p / g + 0.5) / g - 0.5;
    for (int f = 0; f < frames; ++f) {
      double vx, vy, ex, ey;
      truth.shift_at(f, px, py, vx, vy);
      extra(p, ex, ey);
      o.z.push_back(f);
      o.x.push_back(px);
      o.y.push_back(py);
      o.sx.push_back(vx + ex);
      o.sy.push_back(vy + ey);
      o.track.push_back(p);
    }
  }
  return o;
}

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
  std::vector<double> tox(16), toy(16);
  for (size_t p = 0; p < 16; ++p) {
    tox[p] = off(rng);
    toy[p] = off(rng);
  }
  const Observations o = observe(truth, 4, 12, [&](int p, double& ex, double& ey) {
    ex = tox[size_t(p)];
    ey = toy[size_t(p)];
  });
  const auto& [z, x, y, sx, sy, track] = o;
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
  // The model times `signal` plus Gaussian noise of `sigma` px, on a 5 x 5 grid of patches, 20 frames.
  const auto noisy = [&](double signal, double sigma) {
    PolynomialMotion m = truth;
    for (auto& c : m.cx) c *= signal;
    for (auto& c : m.cy) c *= signal;
    return observe(m, 5, 20, [&](int, double& ex, double& ey) {
      ex = sigma * noise(rng);
      ey = sigma * noise(rng);
    });
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
    const Observations o = noisy(1.0, 1e-3);
    PolynomialMotion m;
    double ridge = -1;
    ASSERT_TRUE(fit_polynomial_motion(o.z, o.x, o.y, o.sx, o.sy, m, &o.track, nullptr, nullptr, &ridge));
    EXPECT_LT(ridge, 1e-3);
    EXPECT_LT(error(m, 1.0), 0.01);
  }
  {  // Pure noise (no motion): the ridge grows and the model stays closer to zero than least squares'.
    const Observations o = noisy(0.0, 1.0);
    PolynomialMotion shrunk, plain;
    double ridge = -1;
    ASSERT_TRUE(fit_polynomial_motion(o.z, o.x, o.y, o.sx, o.sy, shrunk, &o.track, nullptr, nullptr, &ridge));
    ASSERT_TRUE(fit_polynomial_motion(o.z, o.x, o.y, o.sx, o.sy, plain, &o.track));
    EXPECT_GT(ridge, 0.01);
    EXPECT_LT(error(shrunk, 0.0), 0.5 * error(plain, 0.0));
  }
}

TEST(MisplacementTolerance, TenthOfAPixelUndamagedAndTheLossBoundAtEveryFrequency) {
  const double loss = 1 - std::cos(0.1 * kTwoPi / 2);
  // An undamaged frame: the bound binds at Nyquist, cos(2 pi 0.5 d) = cos(0.1 pi).
  EXPECT_NEAR(misplacement_tolerance(0, 1.0, loss), 0.1, 1e-9);
  EXPECT_NEAR(misplacement_tolerance(0, 0.5, loss), 0.1, 1e-9);
  double last = 0;
  for (double extra : {2.0, 5.0, 10.0, 20.0, 39.0}) {
    for (double angpix : {0.8, 1.0, 1.6}) {
      const double d = misplacement_tolerance(extra, angpix, loss);
      EXPECT_GT(d, 0.1) << extra << " " << angpix;
      // Brute force on a finer grid of frequencies: the loss at d stays within the bound (up to the
      // function's grid of 512 frequencies), and 5% more misplacement exceeds it somewhere.
      double worst = 0, worst_more = 0;
      for (int s = 1; s <= 20000; ++s) {
        const double k = 0.5 * s / 20000;
        const double r = damage_attenuation(extra, k / angpix);
        worst = std::max(worst, r * (1 - std::cos(kTwoPi * k * d)));
        worst_more = std::max(worst_more, r * (1 - std::cos(kTwoPi * k * d * 1.05)));
      }
      EXPECT_LT(worst, loss * 1.001) << extra << " " << angpix;
      EXPECT_GT(worst_more, loss) << extra << " " << angpix;
    }
    // More exposure, more tolerance.
    const double d = misplacement_tolerance(extra, 1.0, loss);
    EXPECT_GT(d, last);
    last = d;
  }
}

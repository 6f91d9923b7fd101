// Whole-frame alignment of motion correction (align_frames) against known shifts: frames made from one
// random image moved by exact Fourier phase shifts, with noise; the shifts relative to the first frame
// come back, from the integer search or from given starting shifts, whatever the number of threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/grid.hpp"
#include "regula/core/parallel.hpp"
#include "regula/micrograph/motion_align.hpp"

using namespace regula;

namespace {
constexpr double kTwoPi = 6.283185307179586;

// T frames of n x n px: a smooth random image (a Gaussian low-pass of white noise, sigma 2 px) moved
// by (sx[f], sy[f]) (its content displaced by +s), plus white noise of `noise` rms
// relative to the image's; whole spectra (half-complex, FFT order).
std::vector<Grid<cfloat>> frames(int n, const std::vector<double>& sx, const std::vector<double>& sy, double noise,
                                 unsigned seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> N(0, 1);
  Grid<float> img(n, n);
  for (auto& v : img) v = float(N(g));
  Grid<cfloat> F = fft_forward(img);
  const int nh = n / 2 + 1;
  double power = 0;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < nh; ++i) {
      const double kx = double(i) / n, ky = double(fft_freq(j, n)) / n;
      const double a = std::exp(-2 * 9.869604401089358 * 4 * (kx * kx + ky * ky));
      F(i, j) *= float(a);
      power += (i == 0 ? 1 : 2) * std::norm(F(i, j));
    }
  const double rms = std::sqrt(power) / (double(n) * n);  // of the image (Parseval, unnormalised forward)
  std::vector<Grid<cfloat>> out;
  for (size_t f = 0; f < sx.size(); ++f) {
    Grid<cfloat> G(nh, n);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < nh; ++i) {
        const double ph = -kTwoPi * (double(i) * sx[f] + double(fft_freq(j, n)) * sy[f]) / n;
        G(i, j) = F(i, j) * cfloat(float(std::cos(ph)), float(std::sin(ph)));
      }
    Grid<float> r = fft_inverse(G, n);
    for (auto& v : r) v += float(noise * rms * N(g));
    out.push_back(fft_forward(r));
  }
  return out;
}

double rms_error(const AlignResult& a, const std::vector<double>& sx, const std::vector<double>& sy) {
  double s = 0;
  for (size_t f = 0; f < sx.size(); ++f) {
    // The shift that moves frame f onto the first: minus its content's displacement since then.
    const double dx = a.sx[f] + (sx[f] - sx[0]), dy = a.sy[f] + (sy[f] - sy[0]);
    s += dx * dx + dy * dy;
  }
  return std::sqrt(s / double(sx.size()));
}
}  // namespace

TEST(AlignFrames, RecoversKnownShiftsFromTheSearchAndFromAStart) {
  const int n = 128, T = 8;
  std::vector<double> sx(T), sy(T);
  for (int f = 0; f < T; ++f) {  // a drift that is fast at first, as beam-induced motion
    sx[size_t(f)] = 3.0 + 6.0 * (1 - std::exp(-f / 2.0)) + 0.37 * f;
    sy[size_t(f)] = -1.0 - 4.0 * (1 - std::exp(-f / 3.0));
  }
  const auto F = frames(n, sx, sy, 0.5, 7);
  std::vector<const Grid<cfloat>*> ptr;
  for (const auto& g : F) ptr.push_back(&g);
  AlignParams p;
  p.bfactor = 20;     // px^2
  p.highpass = 0;
  p.search = 20;
  p.max_iterations = 10;
  ThreadPool one(1), two(2);
  const AlignResult a = align_frames(ptr, n, n, false, p, one);
  EXPECT_TRUE(a.converged);
  EXPECT_DOUBLE_EQ(a.sx[0], 0.0);
  // Each frame's noise is half the image's rms: its position to a few hundredths of a pixel (0.018 px rms
  // at this seed; other noise seeds below).
  EXPECT_LT(rms_error(a, sx, sy), 0.05);
  for (unsigned seed : {8u, 9u, 10u}) {
    const auto Fs = frames(n, sx, sy, 0.5, seed);
    std::vector<const Grid<cfloat>*> ps;
    for (const auto& g : Fs) ps.push_back(&g);
    EXPECT_LT(rms_error(align_frames(ps, n, n, false, p, one), sx, sy), 0.05) << seed;
  }
  // The same shifts with two threads (each frame's work is one thread's).
  const AlignResult b = align_frames(ptr, n, n, false, p, two);
  for (int f = 0; f < T; ++f) {
    EXPECT_EQ(a.sx[size_t(f)], b.sx[size_t(f)]);
    EXPECT_EQ(a.sy[size_t(f)], b.sy[size_t(f)]);
  }
  // From starting shifts 0.4 px off in each frame (no integer search; the first frame's too, which the
  // result is relative to): the same answer.
  AlignResult start = a;
  for (int f = 0; f < T; ++f) {
    start.sx[size_t(f)] += (f % 2 ? 0.4 : -0.4);
    start.sy[size_t(f)] += (f % 3 ? -0.4 : 0.4);
  }
  const AlignResult c = align_frames(ptr, n, n, false, p, one, &start);
  EXPECT_TRUE(c.converged);
  for (int f = 0; f < T; ++f) {
    EXPECT_NEAR(c.sx[size_t(f)], a.sx[size_t(f)], 0.01) << f;
    EXPECT_NEAR(c.sy[size_t(f)], a.sy[size_t(f)], 0.01) << f;
  }
  // A start of another length is ignored (the integer search as without one).
  AlignResult wrong;
  wrong.sx.assign(3, 5.0);
  wrong.sy.assign(3, 5.0);
  const AlignResult d = align_frames(ptr, n, n, false, p, one, &wrong);
  for (int f = 0; f < T; ++f) EXPECT_EQ(d.sx[size_t(f)], a.sx[size_t(f)]);
}

// smooth_trajectory: the returned trajectory is the penalised least-squares solution for the lambda it
// returns (checked against a direct solution of (I + lambda P) s = m by Gaussian elimination), s_0 stays 0,
// and on a noisy smooth trajectory the lambda chosen by cross-validation brings it closer to the truth.
TEST(SmoothTrajectory, IsThePenalisedFitOfItsLambdaAndRemovesNoise) {
  for (unsigned seed : {5u, 6u, 7u, 8u}) {
    SCOPED_TRACE(seed);
    const int T = 30, first = 4;
    std::mt19937_64 g(seed);
    std::normal_distribution<double> N(0, 0.3);
    std::vector<double> tx(T), ty(T), mx(T), my(T);
    for (int f = 0; f < T; ++f) {
      tx[size_t(f)] = 8 * (1 - std::exp(-f / 3.0)) + 0.1 * f;
      ty[size_t(f)] = -3 * (1 - std::exp(-f / 5.0));
      mx[size_t(f)] = f ? tx[size_t(f)] + N(g) : 0.0;
      my[size_t(f)] = f ? ty[size_t(f)] + N(g) : 0.0;
    }
    std::vector<double> sx = mx, sy = my;
    const double lambda = smooth_trajectory(sx, sy, first);
    ASSERT_GT(lambda, 0.01);  // noise of 0.3 px: some smoothing
    EXPECT_EQ(sx[0], 0.0);
    // Direct solution: unknowns s_1..s_{T-1}; A = I + lambda sum_{c >= first} d_c d_c^T.
    const int n = T - 1;
    std::vector<double> A(size_t(n) * size_t(n), 0.0), bx(static_cast<size_t>(n)), by(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      A[size_t(i) * n + i] = 1;
      bx[size_t(i)] = mx[size_t(i + 1)];
      by[size_t(i)] = my[size_t(i + 1)];
    }
    for (int c = first; c + 1 < T; ++c) {
      const int idx[3] = {c - 1, c, c + 1};
      const double d[3] = {1, -2, 1};
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b)
          if (idx[a] > 0 && idx[b] > 0) A[size_t(idx[a] - 1) * n + (idx[b] - 1)] += lambda * d[a] * d[b];
    }
    for (int k = 0; k < n; ++k)  // elimination without pivoting (A is symmetric positive definite)
      for (int i = k + 1; i < n; ++i) {
        const double m = A[size_t(i) * n + k] / A[size_t(k) * n + k];
        for (int j = k; j < n; ++j) A[size_t(i) * n + j] -= m * A[size_t(k) * n + j];
        bx[size_t(i)] -= m * bx[size_t(k)];
        by[size_t(i)] -= m * by[size_t(k)];
      }
    for (int i = n - 1; i >= 0; --i) {
      for (int j = i + 1; j < n; ++j) {
        bx[size_t(i)] -= A[size_t(i) * n + j] * bx[size_t(j)];
        by[size_t(i)] -= A[size_t(i) * n + j] * by[size_t(j)];
      }
      bx[size_t(i)] /= A[size_t(i) * n + i];
      by[size_t(i)] /= A[size_t(i) * n + i];
    }
    double before = 0, after = 0;
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(sx[size_t(i + 1)], bx[size_t(i)], 1e-9);
      EXPECT_NEAR(sy[size_t(i + 1)], by[size_t(i)], 1e-9);
      const double ex = mx[size_t(i + 1)] - tx[size_t(i + 1)], ey = my[size_t(i + 1)] - ty[size_t(i + 1)];
      const double fx = sx[size_t(i + 1)] - tx[size_t(i + 1)], fy = sy[size_t(i + 1)] - ty[size_t(i + 1)];
      before += ex * ex + ey * ey;
      after += fx * fx + fy * fy;
    }
    EXPECT_LT(after, 0.7 * before);  // noise reduced (the early, free frames keep theirs)
    // The same for a second trajectory of that shape (the cached eigenbasis).
    std::vector<double> ux = mx, uy = my;
    EXPECT_EQ(smooth_trajectory(ux, uy, first), lambda);
    EXPECT_EQ(ux, sx);
  }
}

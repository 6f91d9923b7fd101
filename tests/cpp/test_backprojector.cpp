// BackProjector: noise-free round trip, sampling weights, symmetry, Wiener
// regularisation, deterministic reduction, the gridding kernel and the corner mask.
// (Agreement with relion_reconstruct: tests/python/test_relion_imaging.py.)
#include <gtest/gtest.h>

#include <algorithm>
#include <complex>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/sampling/symmetry.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {

struct Blob {
  double x, y, z, sigma, amp;
};

Volume blob_volume(int n, const std::vector<Blob>& blobs) {
  Volume v(n, n, n);
  const int c = n / 2;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double s = 0;
        for (const Blob& b : blobs) {
          double d2 = (x - c - b.x) * (x - c - b.x) + (y - c - b.y) * (y - c - b.y) + (z - c - b.z) * (z - c - b.z);
          s += b.amp * std::exp(-d2 / (2 * b.sigma * b.sigma));
        }
        v(x, y, z) = float(s);
      }
  return v;
}

// An asymmetric test object of several blobs (sizes down to 1.2 px so that the
// spectrum reaches Nyquist).
Volume test_volume(int n) {
  const double s = n / 32.0;
  return blob_volume(n, {{3 * s, -2 * s, 4 * s, 1.6, 1.0},
                         {-5 * s, 1 * s, -2 * s, 2.2, 0.8},
                         {1 * s, 6 * s, 0, 1.2, 0.6},
                         {-2 * s, -5 * s, 3 * s, 1.4, 0.7},
                         {0, 0, -6 * s, 2.5, 0.5}});
}

// Uniformly distributed rotation (random unit quaternion).
Mat3 random_rotation(std::mt19937_64& g) {
  double q[4], nrm = 0;
  for (double& v : q) {
    v = normal01(g);
    nrm += v * v;
  }
  nrm = std::sqrt(nrm);
  for (double& v : q) v /= nrm;
  const double w = q[0], x = q[1], y = q[2], z = q[3];
  return Mat3{{{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
               {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
               {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}}};
}

double norm2(const Grid<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

// Inserts projections of `map` at `count` uniform random orientations.
BackProjector project_and_insert(const Volume& map, int count, uint64_t seed) {
  const int n = map.nx();
  Projector P(map, 2);
  BackProjector bp(n, 2);
  auto g = make_rng(seed);
  Grid<cfloat> img;
  for (int i = 0; i < count; ++i) {
    Mat3 A = random_rotation(g);
    P.project(A, img);
    bp.insert(img, Grid<float>(), A);
  }
  return bp;
}

}  // namespace

// Noise-free round trip (acceptance point): 5,000 uniform orientations of a
// smooth map, reconstruction by iterative gridding; FSC with the original >= 0.9
// up to 0.8 x Nyquist, and the same scale (norm ratio within 5%).
TEST(BackProjector, RoundTripFscAbove09To08Nyquist) {
  for (int n : {32, 33}) {
    Volume v = test_volume(n);
    BackProjector bp = project_and_insert(v, 5000, 1);
    for (bool iterative : {true, false}) {
      ReconstructOptions opt;
      opt.iterative_gridding = iterative;
      Volume r = bp.reconstruct(opt);
      std::vector<double> f = fsc(v, r);
      const int last = int(0.8 * (n / 2));
      for (int s = 1; s <= last; ++s)
        EXPECT_GE(f[size_t(s)], 0.9) << "n " << n << " shell " << s << " iterative " << iterative;
      EXPECT_NEAR(norm2(r) / norm2(v), 1.0, 0.05) << "n " << n << " iterative " << iterative;
    }
  }
}

// The same acceptance check at n = 96 (default options: iterative gridding).
TEST(BackProjector, RoundTripFscAt96) {
  const int n = 96;
  Volume v = test_volume(n);
  BackProjector bp = project_and_insert(v, 5000, 5);
  ReconstructOptions opt;
  opt.nthreads = 2;
  Volume r = bp.reconstruct(opt);
  std::vector<double> f = fsc(v, r);
  const int last = int(0.8 * (n / 2));
  for (int s = 1; s <= last; ++s) EXPECT_GE(f[size_t(s)], 0.9) << "shell " << s;
  EXPECT_NEAR(norm2(r) / norm2(v), 1.0, 0.05);
}

// Sampling density: uniformly distributed slices through a shell of radius r
// put on average N / (2 r) samples (unit weight each) per Fourier voxel: the
// shell area 4 pi r^2 receives N rings of 2 pi r samples (half of them stored
// as Hermitian mates). mean_weight_per_shell undoes the padding (x p^3).
TEST(BackProjector, MeanWeightIsNOver2r) {
  const int n = 32, N = 2000;
  Volume v = test_volume(n);
  BackProjector bp = project_and_insert(v, N, 2);
  std::vector<double> w = bp.mean_weight_per_shell();
  for (int r = 3; r <= 14; ++r) EXPECT_NEAR(w[size_t(r)] * 2 * r / N, 1.0, 0.08) << "shell " << r;
}

// Point-group symmetry: symmetrising the accumulators of an asymmetric map
// with C4 about z reconstructs the C4 average of the map, (1/4) sum_k v(R^k x).
TEST(BackProjector, SymmetriseGivesGroupAverage) {
  const int n = 32;
  Volume v = test_volume(n);
  BackProjector bp = project_and_insert(v, 3000, 3);
  std::vector<Mat3> ops;
  for (int k = 0; k < 4; ++k) ops.push_back(euler_to_matrix(90.0 * k, 0, 0));
  bp.symmetrise(ops);
  Volume r = bp.reconstruct();
  // Real-space C4 average (exact voxel permutation about the centre n/2).
  Volume avg(n, n, n);
  const int c = n / 2;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        int dx = x - c, dy = y - c;
        double s = 0;
        for (int k = 0; k < 4; ++k) {
          int xx = c + dx, yy = c + dy;
          if (xx >= 0 && xx < n && yy >= 0 && yy < n) s += v(xx, yy, z);
          int t = dx;
          dx = -dy;
          dy = t;
        }
        avg(x, y, z) = float(s / 4);
      }
  std::vector<double> f = fsc(avg, r);
  for (int s = 1; s <= 12; ++s) EXPECT_GE(f[size_t(s)], 0.9) << "shell " << s;
  EXPECT_NEAR(norm2(r) / norm2(avg), 1.0, 0.05);
  // and it is not the unsymmetrised map
  std::vector<double> f0 = fsc(v, r);
  EXPECT_LT(f0[8], 0.8);
}

// Symmetrising on several threads (planes split among them) gives the one-thread bits (octahedral
// group: rotations mixing every axis).
TEST(BackProjector, SymmetriseIsTheSameOnAnyThreadCount) {
  const int n = 24;
  BackProjector bp = project_and_insert(test_volume(n), 500, 5);
  const std::vector<Mat3> ops = SymmetryGroup::parse("O").operators();
  BackProjector one = bp, three = bp;
  one.symmetrise(ops, 1);
  three.symmetrise(ops, 3);
  ASSERT_EQ(one.raw_weight().size(), three.raw_weight().size());
  EXPECT_EQ(0, std::memcmp(one.raw_data().data(), three.raw_data().data(), one.raw_data().size() * sizeof(cfloat)));
  EXPECT_EQ(0, std::memcmp(one.raw_weight().data(), three.raw_weight().data(), one.raw_weight().size() * sizeof(float)));
  double moved = 0;  // and the operation did something
  for (size_t i = 0; i < bp.raw_weight().size(); ++i) moved += std::abs(one.raw_weight()[i] - bp.raw_weight()[i]);
  EXPECT_GT(moved, 0.0);
}

// Symmetrisation against a plain reference written here: every stored point gets the sum over the
// operators of the trilinear interpolation of the (Hermitian-completed) lattice at S q, 0 outside
// the ball (points of the ball's margin beyond padding x r_max keep their value). For O, T, D4, D2
// and C4 every operator is a signed permutation: the sum goes through a chain of subgroups (passes
// over transversals, exact lookups); for I and C5 the operators interpolate; a set of signed
// permutations that is not a group ({E, 4-fold}) is summed as given. Agreement to float rounding
// (sums of up to 60 terms).
TEST(BackProjector, SymmetriseMatchesPlainInterpolation) {
  const int n = 24;
  const BackProjector bp = project_and_insert(test_volume(n), 400, 7);
  for (const char* group : {"O", "T", "D4", "D2", "C4", "I", "C5", "E+4fold"}) {
    const std::vector<Mat3> ops = std::string(group) == "E+4fold"
                                      ? std::vector<Mat3>{euler_to_matrix(0, 0, 0), euler_to_matrix(90, 0, 0)}
                                      : SymmetryGroup::parse(group).operators();
    BackProjector ref = bp;
    ref.make_hermitian();
    const LatticeBall& b = ref.ball();
    const auto& d0 = ref.raw_data();
    const auto& w0 = ref.raw_weight();
    auto value = [&](int x, int y, int z, std::complex<double>& d, double& w) {
      const bool flip = x < 0;
      const int64_t j = flip ? b.find(-x, -y, -z) : b.find(x, y, z);
      if (j < 0) return;
      d = flip ? std::conj(std::complex<double>(d0[size_t(j)])) : std::complex<double>(d0[size_t(j)]);
      w = w0[size_t(j)];
    };
    std::vector<std::complex<double>> want_d(b.count);
    std::vector<double> want_w(b.count);
    const double rmax = double(ref.padding()) * ref.r_max();
    b.for_each([&](size_t i, int x, int y, int z) {
      if (double(x) * x + double(y) * y + double(z) * z > rmax * rmax) {  // the ball's margin: kept
        want_d[i] = d0[i];
        want_w[i] = w0[i];
        return;
      }
      for (const Mat3& S : ops) {
        const double q[3] = {S[0][0] * x + S[0][1] * y + S[0][2] * z, S[1][0] * x + S[1][1] * y + S[1][2] * z,
                             S[2][0] * x + S[2][1] * y + S[2][2] * z};
        int f[3];
        double t[3];
        for (int k = 0; k < 3; ++k) {
          const double r = std::round(q[k]);
          f[k] = int(std::abs(q[k] - r) < 1e-6 ? r : std::floor(q[k]));
          t[k] = std::abs(q[k] - r) < 1e-6 ? 0.0 : q[k] - f[k];
        }
        for (int c = 0; c < 8; ++c) {
          const double wt = (c & 1 ? t[0] : 1 - t[0]) * (c & 2 ? t[1] : 1 - t[1]) * (c & 4 ? t[2] : 1 - t[2]);
          if (wt == 0) continue;
          std::complex<double> d(0, 0);
          double w = 0;
          value(f[0] + (c & 1), f[1] + (c & 2 ? 1 : 0), f[2] + (c & 4 ? 1 : 0), d, w);
          want_d[i] += wt * d;
          want_w[i] += wt * w;
        }
      }
    });
    BackProjector got = bp;
    got.symmetrise(ops, 2);
    double dmax = 0, wmax = 0, derr = 0, werr = 0;
    for (size_t i = 0; i < b.count; ++i) {
      dmax = std::max(dmax, std::abs(want_d[i]));
      wmax = std::max(wmax, want_w[i]);
      derr = std::max(derr, std::abs(std::complex<double>(got.raw_data()[i]) - want_d[i]));
      werr = std::max(werr, std::abs(double(got.raw_weight()[i]) - want_w[i]));
    }
    EXPECT_LT(derr, 1e-5 * dmax) << group;
    EXPECT_LT(werr, 1e-5 * wmax) << group;
    EXPECT_GT(wmax, 0.0) << group;
  }
}

// Few slices leave lattice points without weight (a short refinement's forced final iteration at
// box 192 left 5% of them empty): the unregularised reconstruction stays finite (the gridding
// factor of such points once overflowed a float, and inf x 0 made the whole map NaN), and the
// shells the slices fill are still reconstructed.
TEST(BackProjector, SparseSlicesGiveAFiniteMap) {
  const int n = 32;
  const Volume v = test_volume(n);
  const BackProjector bp = project_and_insert(v, 6, 3);
  size_t empty = 0;
  for (float w : bp.weight_values()) empty += w == 0;
  EXPECT_GT(empty, bp.weight_values().size() / 4);
  const Volume r = bp.reconstruct();
  for (size_t i = 0; i < r.size(); ++i) ASSERT_TRUE(std::isfinite(r.data()[i])) << i;
  EXPECT_GT(norm2(r), 0.0);
}

// Wiener regularisation: tau2 -> infinity gives the plain reconstruction;
// tau2 = 0 beyond shell 6 removes those frequencies. The object is white noise
// inside a sphere (power at all shells); what remains beyond the cut is the
// leakage of cropping the padded box back to n (a convolution with a sinc in
// Fourier space), bounded here by 5% of the plain map's power from shell 9 on.
// Without the corner mask: in a 24 px box the corners (r > 12) are half the
// volume, and replacing them by their mean changes the ratio of shell powers
// near the cut by 5% (measured: 1.089 instead of 1.036 at shell 5).
TEST(BackProjector, WienerLimits) {
  const int n = 24;
  Volume v(n, n, n);
  auto g = make_rng(21);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double r2 = double(x - n / 2) * (x - n / 2) + double(y - n / 2) * (y - n / 2) + double(z - n / 2) * (z - n / 2);
        v(x, y, z) = r2 < 36 ? float(normal01(g)) : 0.0f;
      }
  BackProjector bp = project_and_insert(v, 1500, 4);
  ReconstructOptions no_mask;
  no_mask.mask_corners = false;
  Volume plain = bp.reconstruct(no_mask);
  ReconstructOptions big = no_mask;
  big.tau2.assign(size_t(n / 2 + 1), 1e30);
  Volume rb = bp.reconstruct(big);
  double d = 0;
  for (size_t i = 0; i < plain.size(); ++i) d += double(plain[i] - rb[i]) * (plain[i] - rb[i]);
  EXPECT_LT(std::sqrt(d), 1e-4 * norm2(plain));
  ReconstructOptions cut = big;
  for (size_t s = 7; s < cut.tau2.size(); ++s) cut.tau2[s] = 0;
  Volume rc = bp.reconstruct(cut);
  std::vector<double> p = shell_power(rc), p0 = shell_power(plain);
  for (size_t s = 9; s < p.size(); ++s) EXPECT_LT(p[s], 0.05 * p0[s]) << "shell " << s;
  for (size_t s = 1; s <= 5; ++s) EXPECT_NEAR(p[s] / p0[s], 1.0, 0.05) << "shell " << s;
  // zero_tau2_unregularised (class3d's shells without prior, as RELION's): the same tau2 with every
  // shell's prior negligible but those of shells 7 on absent gives the plain reconstruction.
  ReconstructOptions free = cut;
  free.zero_tau2_unregularised = true;
  Volume rf = bp.reconstruct(free);
  d = 0;
  for (size_t i = 0; i < plain.size(); ++i) d += double(plain[i] - rf[i]) * (plain[i] - rf[i]);
  EXPECT_LT(std::sqrt(d), 1e-4 * norm2(plain));
}

// Per-thread accumulators added in a fixed order give bit-identical results
// however often they are rebuilt, and agree with a single accumulator to
// float rounding.
TEST(BackProjector, DeterministicReduction) {
  const int n = 16;
  Volume v = test_volume(n);
  Projector P(v, 2);
  auto run = [&](int parts) {
    std::vector<BackProjector> acc(size_t(parts), BackProjector(n, 2));
    auto g = make_rng(9);
    Grid<cfloat> img;
    for (int i = 0; i < 200; ++i) {
      Mat3 A = random_rotation(g);
      P.project(A, img);
      acc[size_t(i % parts)].insert(img, Grid<float>(), A);
    }
    for (int k = 1; k < parts; ++k) acc[0].add(acc[size_t(k)]);
    return acc[0];
  };
  BackProjector a = run(2), b = run(2), one = run(1);
  EXPECT_TRUE(std::equal(a.data_values().begin(), a.data_values().end(), b.data_values().begin()));
  EXPECT_TRUE(std::equal(a.weight_values().begin(), a.weight_values().end(), b.weight_values().begin()));
  double maxd = 0, maxw = 0;
  for (size_t i = 0; i < a.weight_values().size(); ++i) {
    maxd = std::max(maxd, double(std::abs(a.data_values()[i] - one.data_values()[i])));
    maxw = std::max(maxw, double(std::abs(one.data_values()[i])));
  }
  EXPECT_LT(maxd, 1e-5 * maxw);
}

// 2D: rotated copies of an image inserted with weight 1 reconstruct the image.
TEST(BackProjector, TwoDimensionalRoundTrip) {
  const int n = 32;
  Image img(n, n);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      double d1 = (x - 20.0) * (x - 20.0) + (y - 13.0) * (y - 13.0);
      double d2 = (x - 11.0) * (x - 11.0) + (y - 18.0) * (y - 18.0);
      img(x, y) = float(std::exp(-d1 / 4.0) + 0.6 * std::exp(-d2 / 8.0));
    }
  Projector2D P(img, 2);
  BackProjector bp(n, 2, -1, 2);
  Grid<cfloat> F;
  for (int i = 0; i < 360; ++i) {
    const double psi = i + 0.37;
    P.project_psi(psi, F);
    bp.insert(F, Grid<float>(), euler_to_matrix(0, 0, psi));
  }
  Image r = bp.reconstruct();
  std::vector<double> f = frc(img, r);
  for (int s = 1; s <= 12; ++s) EXPECT_GE(f[size_t(s)], 0.9) << "shell " << s;
  EXPECT_NEAR(norm2(r) / norm2(img), 1.0, 0.05);
}

// shell_power of white noise of variance 1: E|F(k)|^2 = number of voxels; a
// shell of radius s averages about 2 pi s^2 exponentially distributed |F|^2,
// so 4 standard errors are 4 / sqrt(2 pi s^2).
TEST(BackProjector, ShellPowerOfWhiteNoise) {
  const int n = 32;
  Volume v(n, n, n);
  auto g = make_rng(12);
  for (auto& x : v) x = float(normal01(g));
  std::vector<double> p = shell_power(v);
  for (size_t s = 2; s < p.size(); ++s)
    EXPECT_NEAR(p[s] / (double(n) * n * n), 1.0, 4.0 / std::sqrt(2 * kPi * double(s * s))) << "shell " << s;
}

// The gridding kernel's transform against direct numerical integration of the
// blob: F(w) = 4 pi int_0^a b(r) r^2 sinc(2 pi w r) dr (radial 3D transform),
// Simpson's rule with 4000 intervals (error ~1e-12 of F(0) for this smooth
// integrand, whose derivative is singular only at r = a for odd m). Both of
// RELION's orders (0 default, 2), on both sides of the I -> J switch at
// 2 pi a w = alpha (w = 0.63 for a = 3.8, alpha = 15).
TEST(BackProjector, KaiserBesselTransformMatchesQuadrature) {
  const double a = 3.8, alpha = 15.0;
  for (int m : {0, 2}) {
    auto blob = [&](double r) {
      const double t = std::sqrt(std::max(0.0, 1 - (r / a) * (r / a)));
      return std::pow(t, m) * std::cyl_bessel_i(double(m), alpha * t) / std::cyl_bessel_i(double(m), alpha);
    };
    const double f0 = kaiser_bessel_ft(0.0, a, m, alpha);
    for (double w : {0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9}) {
      const int K = 4000;
      double sum = 0;
      for (int k = 0; k <= K; ++k) {
        const double r = a * k / K;
        const double x = 2 * kPi * w * r;
        const double f = 4 * kPi * blob(r) * r * r * (x == 0 ? 1.0 : std::sin(x) / x);
        sum += (k == 0 || k == K ? 1 : (k % 2 ? 4 : 2)) * f;
      }
      const double ref = sum * (a / K) / 3;
      EXPECT_NEAR(kaiser_bessel_ft(w, a, m, alpha), ref, 1e-7 * f0) << "m " << m << " w " << w;
    }
  }
}

// The corner mask (RELION's softMaskOutsideMap with radius n/2, edge 3 px):
// inside radius n/2 the map is untouched, beyond n/2 + 3 it is the mean of the
// region r >= n/2 weighted by the raised cosine, computed here independently.
TEST(BackProjector, CornerMaskReplacesCornersByTheirMean) {
  const int n = 32;
  Volume v = test_volume(n);
  BackProjector bp = project_and_insert(v, 500, 6);
  ReconstructOptions off;
  off.mask_corners = false;
  off.gridding_correction = false;
  ReconstructOptions on = off;
  on.mask_corners = true;
  Volume a = bp.reconstruct(off), b = bp.reconstruct(on);
  const double c = n / 2, R = n / 2.0;
  double sw = 0, swv = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double r = std::sqrt((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c));
        if (r < R) continue;
        const double e = r > R + 3 ? 1.0 : 0.5 + 0.5 * std::cos(kPi * (R + 3 - r) / 3);
        sw += e;
        swv += e * a(x, y, z);
      }
  const double bg = swv / sw;
  int inside = 0, outside = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double r = std::sqrt((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c));
        if (r < R) {
          EXPECT_EQ(a(x, y, z), b(x, y, z));
          ++inside;
        } else if (r > R + 3) {
          EXPECT_NEAR(b(x, y, z), bg, 1e-6);
          ++outside;
        }
      }
  EXPECT_GT(inside, 0);
  EXPECT_GT(outside, 0);
}

// Options are checked: a bad blob is an input error naming the constraint.
TEST(BackProjector, ReconstructOptionsValidate) {
  ReconstructOptions o;
  EXPECT_EQ(o.validate(), "");
  o.blob_order = 7;
  EXPECT_NE(o.validate().find("blob order"), std::string::npos);
  BackProjector bp(16, 2);
  EXPECT_THROW(bp.reconstruct(o), InputError);
}

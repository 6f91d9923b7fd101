// FSC and resolution, masks, filters, normalisation, rescaling and windowing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mask.hpp"

using namespace regula;

namespace {

Grid<float> noise(int nx, int ny, int nz, uint64_t seed) {
  Grid<float> g(nx, ny, nz);
  auto r = make_rng(seed);
  for (auto& v : g) v = float(normal01(r));
  return g;
}

Grid<float> gaussian(int n, int nz, double sigma, double cx = 0, double cy = 0, double cz = 0) {
  Grid<float> g(n, n, nz);
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double dz = nz > 1 ? z - n / 2 - cz : 0;
        double d2 = (x - n / 2 - cx) * (x - n / 2 - cx) + (y - n / 2 - cy) * (y - n / 2 - cy) + dz * dz;
        g(x, y, z) = float(std::exp(-d2 / (2 * sigma * sigma)));
      }
  return g;
}

// Shell power of a grid (mean |F|^2 per rounded shell), computed here directly.
std::vector<double> power(const Grid<float>& g) {
  Grid<cfloat> F = fft_forward(g);
  const int n = g.nx();
  std::vector<double> p(size_t(n / 2 + 1), 0.0), c(p.size(), 0.0);
  for (int z = 0; z < F.nz(); ++z)
    for (int y = 0; y < F.ny(); ++y)
      for (int x = 0; x < F.nx(); ++x) {
        int kz = F.nz() > 1 ? fft_freq(z, n) : 0, ky = fft_freq(y, n);
        size_t s = size_t(std::lround(std::sqrt(double(x * x + ky * ky + kz * kz))));
        if (s < p.size()) {
          p[s] += std::norm(F(x, y, z));
          c[s] += 1;
        }
      }
  for (size_t s = 0; s < p.size(); ++s) p[s] /= std::max(1.0, c[s]);
  return p;
}

Grid<float> read_mrc_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  char h[1024];
  f.read(h, 1024);
  int32_t n[4], nsymbt;
  std::memcpy(n, h, 16);
  std::memcpy(&nsymbt, h + 92, 4);
  EXPECT_EQ(n[3], 2);
  f.seekg(1024 + nsymbt);
  Grid<float> g(n[0], n[1], n[2]);
  f.read(reinterpret_cast<char*>(g.data()), std::streamsize(g.size() * 4));
  return g;
}

double correlation(const Grid<float>& a, const Grid<float>& b) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= double(a.size());
  mb /= double(b.size());
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

}  // namespace

TEST(Fsc, IdenticalMapsGiveOne) {
  Grid<float> a = noise(24, 24, 24, 1);
  for (double v : fsc(a, a)) EXPECT_NEAR(v, 1.0, 1e-9);
  Grid<float> b = a;
  for (auto& x : b) x = -2 * x;  // FSC is scale invariant, sign sensitive
  auto f = fsc(a, b);
  for (size_t s = 1; s < f.size(); ++s) EXPECT_NEAR(f[s], -1.0, 1e-9);
}

// Signal + independent noise of equal power in both maps: the expected FSC is
// SNR / (1 + SNR) = 0.5; independent maps give 0. A shell of radius s has
// about 2 pi s^2 coefficients, so the standard error is ~ 1 / sqrt(2 pi s^2).
TEST(Fsc, SignalPlusNoiseGivesHalf) {
  const int n = 32;
  Grid<float> s = noise(n, n, n, 2), n1 = noise(n, n, n, 3), n2 = noise(n, n, n, 4);
  Grid<float> a = s, b = s;
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] += n1[i];
    b[i] += n2[i];
  }
  auto f = fsc(a, b), f0 = fsc(n1, n2);
  for (size_t k = 3; k < f.size(); ++k) {
    const double se = 1.0 / std::sqrt(2 * M_PI * double(k * k));
    EXPECT_NEAR(f[k], 0.5, 4 * se) << k;
    EXPECT_NEAR(f0[k], 0.0, 4 * se) << k;
  }
  // 2D FRC likewise
  Grid<float> i1 = noise(64, 64, 1, 5), i2 = noise(64, 64, 1, 6);
  auto r = frc(i1, i2);
  for (size_t k = 4; k < r.size(); ++k) EXPECT_NEAR(r[k], 0.0, 4.0 / std::sqrt(M_PI * double(k))) << k;
}

// relion_postprocess: the last shell before the first drop below 0.143.
TEST(Fsc, ResolutionAtThreshold) {
  std::vector<double> f{1.0, 0.99, 0.95, 0.8, 0.5, 0.2, 0.1, 0.3, 0.05};
  // first drop below 0.143 is at shell 6; last shell above is 5 -> 100 * 1.0 / 5
  EXPECT_DOUBLE_EQ(resolution_at(f, 0.143, 1.0, 100), 20.0);
  // interpolated crossing between shells 5 (0.2) and 6 (0.1): 5 + 0.057/0.1 = 5.57
  EXPECT_NEAR(resolution_at(f, 0.143, 1.0, 100, true), 100.0 / 5.57, 1e-9);
  EXPECT_DOUBLE_EQ(resolution_at(f, 0.5, 2.0, 100), 50.0);  // FSC(4) = 0.5 counts: 100 * 2 Å / 4
}

TEST(Fsc, ResolutionEdgeCases) {
  std::vector<double> never{1.0, 0.9, 0.9, 0.9};
  EXPECT_DOUBLE_EQ(resolution_at(never, 0.143, 1.5, 6), 6 * 1.5 / 3);
  std::vector<double> none{1.0, 0.1, 0.0};
  EXPECT_TRUE(std::isinf(resolution_at(none, 0.143, 1.0, 4)));
}

TEST(Mask, SphericalEdgeValues) {
  Grid<float> m = spherical_mask(40, 40, 40, 10.0, 6.0);
  const int c = 20;
  EXPECT_FLOAT_EQ(m(c, c, c), 1.0f);
  EXPECT_FLOAT_EQ(m(c + 10, c, c), 1.0f);                         // r = radius
  EXPECT_NEAR(m(c, c + 13, c), 0.5, 1e-6);                        // r = radius + edge / 2
  EXPECT_NEAR(m(c, c, c + 11), 0.5 + 0.5 * std::cos(M_PI / 6), 1e-6);  // r = radius + 1
  EXPECT_FLOAT_EQ(m(c + 16, c, c), 0.0f);                         // r = radius + edge
  EXPECT_FLOAT_EQ(m(0, 0, 0), 0.0f);
  // odd size: the centre is n/2
  Grid<float> m2 = spherical_mask(41, 41, 1, 5.0, 0.0);
  EXPECT_FLOAT_EQ(m2(20 + 5, 20), 1.0f);
  EXPECT_FLOAT_EQ(m2(20 - 6, 20), 0.0f);
}

// Filling with the background mean leaves a constant image unchanged; zero fill multiplies.
TEST(Mask, ApplyWithBackgroundMean) {
  Grid<float> img(32, 32, 1, 3.5f);
  apply_spherical_mask(img, 8, 5, MaskFill::BackgroundMean);
  for (float v : img) EXPECT_NEAR(v, 3.5f, 1e-5);
  Grid<float> img2(32, 32, 1, 2.0f);
  apply_spherical_mask(img2, 8, 4, MaskFill::Zero);
  EXPECT_FLOAT_EQ(img2(16 + 10, 16), 1.0f);  // r = 10: mask 0.5
  EXPECT_FLOAT_EQ(img2(0, 0), 0.0f);
}

// A shifted mask is the centred one moved: at (16 + 3, 16 - 2) it is 1, at distance 10 from there
// 0.5 (radius 8, edge 4), and at the box centre (distance sqrt(13) < 8) still 1; a background image
// fills the outside.
TEST(Mask, ShiftedCentreAndBackgroundImage) {
  const MaskCentre c{3, -2};
  Grid<float> img(32, 32, 1, 2.0f);
  apply_spherical_mask(img, 8, 4, MaskFill::Zero, c);
  EXPECT_FLOAT_EQ(img(19, 14), 2.0f);
  EXPECT_FLOAT_EQ(img(19 + 10, 14), 1.0f);
  EXPECT_FLOAT_EQ(img(19, 14 - 10), 1.0f);
  EXPECT_FLOAT_EQ(img(19 - 12, 14), 0.0f);  // distance 12 = radius + edge
  EXPECT_FLOAT_EQ(img(16 - 9, 16), 0.0f);   // distance 12 from the shifted centre (9 from the box's)
  Grid<float> centred(32, 32, 1, 2.0f);
  apply_spherical_mask(centred, 8, 4, MaskFill::Zero);
  EXPECT_GT(centred(16 - 9, 16), 0.5f);
  Grid<float> one(32, 32, 1, 1.0f), bg(32, 32, 1, 7.0f);
  apply_spherical_mask(one, 8, 4, bg, c);
  EXPECT_FLOAT_EQ(one(19, 14), 1.0f);
  EXPECT_FLOAT_EQ(one(19 + 10, 14), 4.0f);  // 0.5 * 1 + 0.5 * 7
  EXPECT_FLOAT_EQ(one(0, 31), 7.0f);
  Grid<float> wrong(16, 16, 1, 0.0f);
  EXPECT_THROW(apply_spherical_mask(one, 8, 4, wrong), std::invalid_argument);
}

// The noise has the spectrum asked for: over 400 images, the mean |F|^2 / 2 per shell is sigma2
// (a spectrum falling 100-fold over the shells), on the x = 0 column (Hermitian mates) as
// elsewhere, for even and odd boxes, and 0 beyond the last shell given. Relative standard error
// of a shell's mean: 1 / sqrt(400 * coefficients in the shell) off the x = 0 column (|F|^2
// exponential), sqrt(2 / (400 * coefficients)) on it (mates in pairs; the real DC chi-square with
// 1 degree); tolerances 4 standard errors.
namespace {
// Per shell 0..n/2 of two images' transforms: sum Re(A conj B) and sum |B|^2.
void shell_sums(const Image& a, const Image& b, std::vector<double>& ab, std::vector<double>& bb) {
  const int n = a.nx(), h = n / 2;
  const Grid<cfloat> A = fft_forward(a), B = fft_forward(b);
  ab.assign(size_t(h + 1), 0.0);
  bb.assign(size_t(h + 1), 0.0);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x <= h; ++x) {
      const int ky = fft_freq(y, n), s = int(std::lround(std::sqrt(double(x * x + ky * ky))));
      if (s > h) continue;
      const size_t k = A.index(x, y, 0);
      ab[size_t(s)] += double((A[k] * std::conj(B[k])).real());
      bb[size_t(s)] += double(std::norm(B[k]));
    }
}
CtfReach reach_of(const CtfParams& p, double angpix) {
  return CtfReach{electron_wavelength(p.voltage_kv), p.defocus_u, p.defocus_v, p.cs_mm * 1e7, angpix, 1.0};
}
}  // namespace

// The particle's signal at frequency s, moved by the CTF to a ring of radius R(s): the reach mask
// keeps it where the particle mask cuts it. Image: a point (Gaussian, sigma 1 px) at the centre
// through the CTF (underfocus 5000/4000 Å, Cs 2.7 mm, 1 Å/px, box 128): its rings reach 26 px at
// shell 48 (R = lambda df s - Cs lambda^3 s^3 = 36.9 - 10.9 px; the sum of the two terms would give
// 48 px and keep much more of the box: checked below).
TEST(Mask, ReachMaskKeepsTheDelocalisedSignal) {
  const int n = 128, r_max = 48;
  const double angpix = 1.0, radius = 8, edge = 3;
  CtfParams p;
  p.defocus_u = 5000;
  p.defocus_v = 4000;
  p.defocus_angle = 30;
  const Ctf ctf(p);
  Grid<cfloat> F = fft_forward(gaussian(n, 1, 1.0));
  const Grid<float> c = ctf.half_complex(n, angpix);
  for (size_t k = 0; k < F.size(); ++k) F[k] *= c[k];
  const Image img = fft_inverse(F, n);
  const CtfReach reach = reach_of(p, angpix);
  EXPECT_NEAR(reach.at_shell_px(48, n), 26.05, 0.05);  // 36.91 - 10.86 px
  Image wide = img, plain = img;
  const std::vector<double> kept = apply_reach_mask(wide, radius, edge, {}, reach, r_max);
  apply_spherical_mask(plain, radius, edge, MaskFill::Zero);
  std::vector<double> ab, bb, pb, pbb;
  shell_sums(wide, img, ab, bb);
  shell_sums(plain, img, pb, pbb);
  // Shares of the signal kept over groups of 8 shells (single shells near a CTF zero hold little).
  double worst = 1, plain_best = 0;
  for (int s0 = 1; s0 < r_max; s0 += 8) {
    double a = 0, b = 0, pa = 0;
    for (int s = s0; s < s0 + 8; ++s) {
      a += ab[size_t(s)];
      b += bb[size_t(s)];
      pa += pb[size_t(s)];
    }
    worst = std::min(worst, a / b);
    if (s0 >= 25) plain_best = std::max(plain_best, pa / b);
  }
  EXPECT_GT(worst, 0.98);       // the reach mask keeps the signal (0.997 measured)
  EXPECT_LT(plain_best, 0.3);   // the particle mask loses most of it at shells 25-48 (0.05)
  // And it keeps less of the box than no mask: the widened circle at shell 48 is ~34 px of 64.
  EXPECT_LT(kept[size_t(r_max)], 0.35);
  EXPECT_GT(kept[size_t(r_max)], 0.15);
  // A reach that would take the sum of the two terms (45 px) instead keeps more of the box.
  CtfReach wrong = reach;
  wrong.cs = -wrong.cs;
  Image w2 = img;
  EXPECT_GT(apply_reach_mask(w2, radius, edge, {}, wrong, r_max)[size_t(r_max)], kept[size_t(r_max)] + 0.15);
}

// No reach: the particle mask itself (to float rounding), and the share of noise it keeps is the
// mean of mask^2. A reach beyond the box: the image is left as it is.
TEST(Mask, ReachMaskLimits) {
  const int n = 96;
  const Image img = noise(n, n, 1, 5);
  Image a = img, b = img;
  const CtfReach none{0.0197, 0, 0, 0, 1.0, 1.0};
  const std::vector<double> kept = apply_reach_mask(a, 20, 4, MaskCentre{3, -2}, none, n / 2);
  apply_spherical_mask(b, 20, 4, MaskFill::Zero, MaskCentre{3, -2});
  double worst = 0, m2 = 0;
  for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, double(std::abs(a[k] - b[k])));
  EXPECT_LT(worst, 1e-4);
  const Grid<float> m = spherical_mask(n, n, 1, 20, 4);
  Image shifted(n, n, 1);
  for (auto& v : shifted) v = 1.0f;
  apply_spherical_mask(shifted, 20, 4, MaskFill::Zero, MaskCentre{3, -2});
  for (float v : shifted) m2 += double(v) * v;
  (void)m;
  for (double v : kept) EXPECT_NEAR(v, m2 / double(n * n), 1e-9);
  Image c = img;
  const CtfReach far{0.0197, 1e7, 1e7, 0, 1.0, 1.0};
  for (double v : apply_reach_mask(c, 20, 4, {}, far, n / 2)) EXPECT_EQ(v, 1.0);
  for (size_t k = 0; k < c.size(); ++k) EXPECT_NEAR(c[k], img[k], 1e-5);
}

// White noise through the reach mask keeps, per shell, about the share `kept` reports (the weights
// of the sums rest on it): the mean ratio over shells 8-40 within 5%, at three seeds.
TEST(Mask, ReachMaskNoiseShareMatches) {
  const int n = 128;
  CtfParams p;
  p.defocus_u = p.defocus_v = 8000;
  const CtfReach reach = reach_of(p, 1.0);
  for (uint64_t seed : {1u, 2u, 3u}) {
    const Image img = noise(n, n, 1, seed);
    Image out = img;
    const std::vector<double> kept = apply_reach_mask(out, 15, 4, MaskCentre{-2, 1}, reach, n / 2);
    std::vector<double> oo, ii, dummy;
    shell_sums(out, out, oo, dummy);
    shell_sums(img, img, ii, dummy);
    double ratio = 0;
    for (int s = 8; s <= 40; ++s) ratio += oo[size_t(s)] / ii[size_t(s)] / kept[size_t(s)];
    EXPECT_NEAR(ratio / 33, 1.0, 0.05) << "seed " << seed;
    EXPECT_LT(kept[8], kept[40]);
  }
}

TEST(Filter, ColouredNoiseHasTheSpectrum) {
  for (int n : {32, 33}) {
    const int hx = n / 2 + 1, last = 12;
    std::vector<double> sigma2(size_t(last) + 1);
    for (int s = 0; s <= last; ++s) sigma2[size_t(s)] = 50.0 * std::pow(0.01, s / double(last));
    std::vector<double> p(size_t(hx) * 2, 0.0), cnt(p.size(), 0.0), p0(p.size(), 0.0), c0(p.size(), 0.0);
    const int draws = 400;
    for (int d = 0; d < draws; ++d) {
      auto rng = make_rng(5, uint64_t(d));
      Grid<float> img = coloured_noise(n, sigma2, rng);
      ASSERT_EQ(img.nx(), n);
      Grid<cfloat> F = fft_forward(img);
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < hx; ++x) {
          const int fy = fft_freq(y, n);
          const size_t s = size_t(std::lround(std::sqrt(double(x * x + fy * fy))));
          if (s >= p.size()) continue;
          auto& pp = x == 0 ? p0 : p;
          auto& cc = x == 0 ? c0 : cnt;
          pp[s] += std::norm(F(x, y)) / 2;
          cc[s] += 1;
        }
    }
    for (size_t s = 0; s < p.size(); ++s) {
      for (bool col0 : {false, true}) {
        const double c = col0 ? c0[s] : cnt[s];
        if (c == 0) continue;
        const double mean = (col0 ? p0[s] : p[s]) / c;
        if (s > size_t(last)) {
          EXPECT_LT(mean, 1e-6 * sigma2[0]) << "n " << n << " shell " << s;
          continue;
        }
        const double tol = 4.0 * std::sqrt((col0 ? 2.0 : 1.0) / c);  // x = 0: mates in pairs, or real
        EXPECT_NEAR(mean / sigma2[s], 1.0, tol) << "n " << n << " shell " << s << (col0 ? " (x = 0)" : "");
      }
    }
  }
}

// The distance transform equals brute force on a random sparse binary grid.
TEST(Mask, DistanceTransformMatchesBruteForce) {
  const int n = 13;
  Grid<float> b(n, n, n);
  auto g = make_rng(8);
  for (auto& v : b) v = uniform01(g) < 0.02 ? 1.0f : 0.0f;
  Grid<float> d = squared_distance_transform(b);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double best = std::numeric_limits<double>::infinity();
        for (int k = 0; k < n; ++k)
          for (int j = 0; j < n; ++j)
            for (int i = 0; i < n; ++i)
              if (b(i, j, k) > 0.5f) best = std::min(best, double((i - x) * (i - x) + (j - y) * (j - y) + (k - z) * (k - z)));
        ASSERT_EQ(double(d(x, y, z)), best) << x << " " << y << " " << z;
      }
}

// A ball of radius 5 thresholded, extended by 3 and given a soft edge of 4:
// 1 out to r < 8, then 0.5 + 0.5 cos(pi d / 4) with d the distance to the extended ball.
TEST(Mask, CreateMaskOfBall) {
  const int n = 40, c = 20;
  Grid<float> ball(n, n, n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x)
        ball(x, y, z) = (x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c) <= 25 ? 1.0f : 0.0f;
  MaskCreateOptions opt;
  opt.ini_threshold = 0.5;
  opt.extend_px = 3;
  opt.soft_edge_px = 4;
  Grid<float> m = create_mask(ball, opt);
  EXPECT_FLOAT_EQ(m(c + 7, c, c), 1.0f);   // 7 < 5 + 3
  EXPECT_FLOAT_EQ(m(c + 9, c, c), float(0.5 + 0.5 * std::cos(M_PI * 2 / 4)));  // nearest extended voxel at 7
  EXPECT_FLOAT_EQ(m(c + 11, c, c), 0.0f);  // distance 4 = soft edge
  for (float v : m) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LE(v, 1.0f);
  }
}

// Against relion_mask_create (RELION 3.1.3) when installed: correlation >= 0.99
// and every voxel within 1e-3 (same threshold, dilation, cosine edge, low-pass).
TEST(Mask, MatchesRelionMaskCreate) {
  if (!std::filesystem::exists("/usr/bin/relion_mask_create")) GTEST_SKIP() << "relion_mask_create not installed";
  const std::string in = std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc";
  auto dir = std::filesystem::temp_directory_path() / ("regula_mask_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string out = (dir / "mask.mrc").string();
  const std::string cmd = "/usr/bin/relion_mask_create --i " + in + " --o " + out +
                          " --ini_threshold 0.0002 --extend_inimask 2 --width_soft_edge 4 --lowpass 10 --angpix 1"
                          " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  Grid<float> ref = read_mrc_f32(out);
  std::filesystem::remove_all(dir);
  MaskCreateOptions opt;
  opt.pixel_size = 1.0;
  opt.lowpass_A = 10;
  opt.ini_threshold = 0.0002;
  opt.extend_px = 2;
  opt.soft_edge_px = 4;
  Grid<float> m = create_mask(read_mrc_f32(in), opt);
  ASSERT_TRUE(m.same_shape(ref));
  EXPECT_GE(correlation(m, ref), 0.99);
  double maxd = 0;
  for (size_t i = 0; i < m.size(); ++i) maxd = std::max(maxd, double(std::abs(m[i] - ref[i])));
  EXPECT_LT(maxd, 1e-3);  // in practice identical (max difference 0 with RELION 3.1.3)
}

// Low-pass at 8 Å (1 Å/px, n = 64 -> shell 8, edge 2): shells > 9 have no
// power left, shells < 7 are untouched; high-pass is the complement.
TEST(Filter, LowPassKillsPowerBeyondCutoff) {
  const int n = 64;
  Grid<float> a = noise(n, n, 1, 10);
  Grid<float> lp = a, hp = a;
  low_pass(lp, 8.0, 1.0);
  high_pass(hp, 8.0, 1.0);
  auto p = power(a), pl = power(lp), ph = power(hp);
  for (size_t s = 10; s < p.size(); ++s) EXPECT_LT(pl[s], 1e-8 * p[s]) << s;
  for (size_t s = 1; s < 7; ++s) {
    EXPECT_NEAR(pl[s] / p[s], 1.0, 1e-4) << s;
    EXPECT_LT(ph[s], 1e-8 * p[s]) << s;
  }
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(lp[i] + hp[i], a[i], 1e-4);
}

// B-factor on a Gaussian of width sigma: its transform exp(-2 pi^2 sigma^2 s^2)
// times exp(-B s^2 / 4) is a Gaussian of sigma'^2 = sigma^2 + B / (8 pi^2).
TEST(Filter, BFactorWidensGaussian) {
  const int n = 48;
  const double px = 1.5, sigma_A = 4.0, B = 200;
  Grid<float> g = gaussian(n, n, sigma_A / px);
  apply_bfactor(g, B, px);
  double s = 0, s2 = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double r2 = (x - n / 2) * (x - n / 2) + (y - n / 2) * (y - n / 2) + (z - n / 2) * (z - n / 2);
        s += g(x, y, z);
        s2 += g(x, y, z) * r2;
      }
  const double var_A2 = s2 / s / 3 * px * px;
  EXPECT_NEAR(var_A2, sigma_A * sigma_A + B / (8 * M_PI * M_PI), 0.02);
  // and -B undoes +B
  Grid<float> h = gaussian(n, 1, 3.0), h0 = h;
  apply_bfactor(h, 50, 1.0);
  apply_bfactor(h, -50, 1.0);
  for (size_t i = 0; i < h.size(); ++i) EXPECT_NEAR(h[i], h0[i], 1e-5);
}

TEST(Filter, NormaliseBackground) {
  const int n = 64;
  Grid<float> img = noise(n, n, 1, 11);
  for (auto& v : img) v = 3.0f * v + 7.0f;
  for (int y = 28; y < 36; ++y)
    for (int x = 28; x < 36; ++x) img(x, y) = 100.0f;  // particle inside the radius
  normalise_background(img, 20);
  BackgroundStats st = background_stats(img, 20);
  EXPECT_NEAR(st.mean, 0.0, 1e-5);
  EXPECT_NEAR(st.stddev, 1.0, 1e-5);
  EXPECT_GT(img(32, 32), 20.0f);
  Grid<float> c(8, 8, 1, 2.0f);
  invert_contrast(c);
  EXPECT_FLOAT_EQ(c(3, 3), -2.0f);
}

// Fourier rescaling keeps constants and band-limited content: up then down is
// the identity for a smooth image; a Gaussian's width in pixels scales by new_n / n.
TEST(Filter, RescaleRoundTrip) {
  for (int n : {32, 33}) {
    Grid<float> g = gaussian(n, 1, 2.5, 1.3, -2.0);
    Grid<float> up = rescale(g, 2 * n + 1), back = rescale(up, n);
    for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(back[i], g[i], 1e-4) << n;
    Grid<float> one(n, n, 1, 1.0f);
    for (float v : rescale(one, 20)) EXPECT_NEAR(v, 1.0f, 1e-5);
  }
  Grid<float> v = gaussian(32, 32, 3.0);
  Grid<float> big = rescale(v, 48);  // pixel 2/3 as large: sigma 4.5 px
  double s = 0, s2 = 0;
  for (int z = 0; z < 48; ++z)
    for (int y = 0; y < 48; ++y)
      for (int x = 0; x < 48; ++x) {
        s += big(x, y, z);
        s2 += big(x, y, z) * double((x - 24) * (x - 24));
      }
  EXPECT_NEAR(std::sqrt(s2 / s), 4.5, 0.01);
  EXPECT_NEAR(big(24, 24, 24), 1.0, 1e-3);  // same peak value
}

TEST(Filter, WindowRoundTrip) {
  for (int n : {32, 33}) {
    Grid<float> g = noise(n, n, 1, 12);
    Grid<float> pad = window(g, n + 17, -1.0f), back = window(pad, n);
    EXPECT_EQ(back.vec(), g.vec());
    EXPECT_EQ(pad((n + 17) / 2, (n + 17) / 2), g(n / 2, n / 2));  // centres coincide
    EXPECT_EQ(pad(0, 0), -1.0f);
  }
  Grid<float> v = noise(20, 20, 20, 13);
  Grid<float> small = window(v, 10);
  EXPECT_EQ(small(5, 5, 5), v(10, 10, 10));
  EXPECT_EQ(small(0, 0, 0), v(5, 5, 5));
}

TEST(RealSpaceCorrelation, AffineCopiesAndConstants) {
  Grid<float> a(6, 5, 4), b(6, 5, 4), c(6, 5, 4, 3.0f);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = float(std::sin(0.7 * double(i)) + 0.01 * double(i));
    b[i] = 2 * a[i] + 3;
  }
  EXPECT_NEAR(real_space_correlation(a, b), 1.0, 1e-6);
  for (size_t i = 0; i < a.size(); ++i) b[i] = -a[i];
  EXPECT_NEAR(real_space_correlation(a, b), -1.0, 1e-6);
  EXPECT_EQ(real_space_correlation(a, c), 0.0);
  EXPECT_THROW(real_space_correlation(a, Grid<float>(3)), regula::Error);
}

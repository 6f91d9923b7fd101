// Orientation sampling: HEALPix counts and steps, asymmetric units,
// near-uniform spacing, NEST children, in-plane angles and translations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "regula/core/error.hpp"
#include "regula/sampling/healpix.hpp"

using namespace regula;

namespace {
double angle_deg(const Vec3& a, const Vec3& b) {
  const double c = std::clamp(a[0] * b[0] + a[1] * b[1] + a[2] * b[2], -1.0, 1.0);
  return rad2deg(std::acos(c));
}
Vec3 dir_of(const std::array<double, 2>& rt) { return euler_direction(rt[0], rt[1]); }
}  // namespace

TEST(Healpix, CountsAndSteps) {
  const auto c1 = SymmetryGroup::parse("C1");
  for (int k = 0; k <= 4; ++k) {
    OrientationSampling s(k, c1);
    EXPECT_EQ(long(s.num_directions()), 12L << (2 * k));
    EXPECT_EQ(s.num_psi(), size_t(6 << k));  // 360 / (60 / 2^k)
    EXPECT_DOUBLE_EQ(s.psi_step(), 60.0 / (1 << k));
  }
  // RELION: order 2 = 15 deg, order 3 = 7.5 deg.
  EXPECT_DOUBLE_EQ(healpix_angular_step(2), 15.0);
  EXPECT_DOUBLE_EQ(healpix_angular_step(3), 7.5);
  EXPECT_THROW(OrientationSampling(8, c1), InputError);
  EXPECT_THROW(OrientationSampling(-1, c1), InputError);
  OrientationSampling s(2, c1, 10.0);
  EXPECT_EQ(s.num_psi(), 36u);
  const Euler e = s.orientation(5, 3);
  EXPECT_DOUBLE_EQ(e.psi, 30.0);
  const auto rt = healpix_direction(2, s.pixel(5));
  EXPECT_DOUBLE_EQ(e.rot, rt[0]);
  EXPECT_DOUBLE_EQ(e.tilt, rt[1]);
}

TEST(Healpix, DirectionsMatchPixelCentres) {
  // NEST pixel 0 of order 0 is the centre of base face 0: z = 2/3, phi = 45 deg.
  const auto rt = healpix_direction(0, 0);
  EXPECT_NEAR(rt[0], 45.0, 1e-12);
  EXPECT_NEAR(std::cos(deg2rad(rt[1])), 2.0 / 3.0, 1e-12);
  // Faces 4-7 lie on the equator, faces 8-11 in the south.
  EXPECT_NEAR(healpix_direction(0, 4)[1], 90.0, 1e-12);
  EXPECT_NEAR(std::cos(deg2rad(healpix_direction(0, 8)[1])), -2.0 / 3.0, 1e-12);
  for (long p = 0; p < healpix_num_pixels(3); ++p) {
    const auto d = healpix_direction(3, p);
    EXPECT_GE(d[0], -180.0);
    EXPECT_LT(d[0], 180.0);
    EXPECT_GE(d[1], 0.0);
    EXPECT_LE(d[1], 180.0);
  }
}

TEST(Healpix, NearUniformSpacing) {
  // Nearest-neighbour distances of the 768 order-3 directions: HEALPix pixels
  // have equal area and centres between 0.6 and 1.1 times the nominal step apart.
  const int k = 3;
  const long np = healpix_num_pixels(k);
  std::vector<Vec3> d;
  for (long p = 0; p < np; ++p) d.push_back(dir_of(healpix_direction(k, p)));
  double maxnn = 0, minnn = 180;
  for (size_t i = 0; i < d.size(); ++i) {
    double nn = 180;
    for (size_t j = 0; j < d.size(); ++j)
      if (i != j) nn = std::min(nn, angle_deg(d[i], d[j]));
    maxnn = std::max(maxnn, nn);
    minnn = std::min(minnn, nn);
  }
  const double step = healpix_angular_step(k);
  EXPECT_LT(maxnn, 1.1 * step);
  EXPECT_GT(minnn, 0.6 * step);
}

TEST(Healpix, SymmetryReducesCountsByGroupOrder) {
  struct Case {
    const char* sym;
    int order;
  };
  for (const Case& c : {Case{"C2", 4}, Case{"C7", 4}, Case{"D3", 4}, Case{"T", 5}, Case{"O", 5}, Case{"I", 5},
                        Case{"I3", 5}}) {
    const auto g = SymmetryGroup::parse(c.sym);
    const OrientationSampling s(c.order, g);
    const double expected = double(healpix_num_pixels(c.order)) / g.order();
    EXPECT_NEAR(double(s.num_directions()), expected, 0.05 * expected) << c.sym;
  }
}

TEST(Healpix, AsymmetricUnitCoversSphereOnceUpToSymmetry) {
  // Coverage: every pixel centre lies within 1.25 max pixel radii of a
  // symmetry copy of a kept direction (the pixel grid is not symmetric, so
  // copies near the cell edges leave gaps up to about one pixel radius; 1.25
  // bounds the measured 0.73-0.97 at order 4). No duplicates: distinct kept directions are
  // never within RELION's tolerance (half the max pixel radius) of a copy.
  const int k = 4;
  for (const char* name : {"C3", "D2", "D7", "T", "O", "I2", "I3"}) {
    const auto g = SymmetryGroup::parse(name);
    const auto kept = asymmetric_unit_pixels(k, g);
    std::vector<Vec3> kd;
    for (long p : kept) kd.push_back(dir_of(healpix_direction(k, p)));
    // Every direction of the sphere is within one step of a symmetry image of a kept one.
    double worst = 0;
    for (long p = 0; p < healpix_num_pixels(k); ++p) {
      const Vec3 d = dir_of(healpix_direction(k, p));
      double best = 180;
      for (const auto& q : kd)
        for (const auto& r : g.operators()) best = std::min(best, angle_deg(d, matvec(transpose(r), q)));
      worst = std::max(worst, best);
    }
    const double rmax = healpix_max_pixel_radius(k);
    std::printf("%s: %zu kept, worst coverage %.3f deg, max pixel radius %.3f\n", name, kept.size(), worst,
                rmax);
    EXPECT_LT(worst, 1.25 * rmax) << name;
    // No two kept directions are symmetry copies of each other (closer than half a step).
    double closest = 180;
    // (A direction next to a symmetry axis is close to its own copy; like
    // RELION, such directions are kept, so i == j is not compared.)
    for (size_t i = 0; i < kd.size(); ++i)
      for (size_t j = 0; j < kd.size(); ++j)
        for (size_t r = 0; r < g.operators().size() && i != j; ++r)
          closest = std::min(closest, angle_deg(kd[i], matvec(transpose(g.operators()[r]), kd[j])));
    std::printf("%s: closest copy %.3f deg\n", name, closest);
    EXPECT_GT(closest, 0.5 * rmax) << name;
  }
}

TEST(Healpix, ChildrenAndOversampling) {
  EXPECT_EQ(healpix_children(5), (std::vector<long>{20, 21, 22, 23}));
  EXPECT_EQ(healpix_children(1, 2).size(), 16u);
  EXPECT_EQ(healpix_children(1, 2).front(), 16);
  // Children lie close to their parent (within the parent pixel's radius, about one parent step).
  const int k = 2;
  std::set<long> all;
  for (long p = 0; p < healpix_num_pixels(k); ++p) {
    const Vec3 d = dir_of(healpix_direction(k, p));
    for (long ch : healpix_children(p)) {
      all.insert(ch);
      EXPECT_LT(angle_deg(d, dir_of(healpix_direction(k + 1, ch))), healpix_angular_step(k));
    }
  }
  EXPECT_EQ(long(all.size()), healpix_num_pixels(k + 1));

  const OrientationSampling s(k, SymmetryGroup::parse("C1"));
  const auto o = s.oversampled(7, 2, 1);
  ASSERT_EQ(o.size(), 8u);
  const double step = s.psi_step();
  EXPECT_DOUBLE_EQ(o[0].psi, s.psi(2) - step / 4);
  EXPECT_DOUBLE_EQ(o[1].psi, s.psi(2) + step / 4);
  const auto c0 = healpix_direction(k + 1, healpix_children(s.pixel(7))[0]);
  EXPECT_DOUBLE_EQ(o[0].rot, c0[0]);
  EXPECT_DOUBLE_EQ(o[0].tilt, c0[1]);
  EXPECT_EQ(s.oversampled(7, 2, 2).size(), 64u);
  EXPECT_EQ(s.oversampled(7, 2, 0).size(), 1u);
}

TEST(Healpix, PsiAngles) {
  auto p = psi_angles(7.5);
  ASSERT_EQ(p.size(), 48u);
  EXPECT_DOUBLE_EQ(p[1], 7.5);
  p = psi_angles(7.0);  // ceil(360/7) = 52 angles of 360/52
  ASSERT_EQ(p.size(), 52u);
  EXPECT_DOUBLE_EQ(p[1], 360.0 / 52);
  EXPECT_THROW(psi_angles(0), InputError);
}

TEST(Healpix, Translations) {
  EXPECT_EQ(translations(0, 1).size(), 1u);
  // Integer points with x^2 + y^2 <= r^2: r=2 -> 13, r=5 -> 81 (Gauss circle counts).
  EXPECT_EQ(translations(2, 1).size(), 13u);
  EXPECT_EQ(translations(5, 1).size(), 81u);
  EXPECT_EQ(translations(6, 2).size(), 29u);  // radius 3 in units of 2 px
  const auto t = translations(4.5, 1.5);
  for (const auto& v : t) {
    EXPECT_LE(v[0] * v[0] + v[1] * v[1], 4.5 * 4.5 + 0.001);
    EXPECT_NE(std::find(t.begin(), t.end(), std::array<double, 2>{-v[0], -v[1]}), t.end());
    EXPECT_NE(std::find(t.begin(), t.end(), std::array<double, 2>{v[1], v[0]}), t.end());
  }
  EXPECT_THROW(translations(3, 0), InputError);
}

TEST(Healpix, OversampledPsiAndTranslationsAreRelionsChildren) {
  // Order 1: children at -step/4 and +step/4 (RELION's HealpixSampling); 2D angles in (-180, 180].
  const std::vector<double> psi = psi_angles(6);
  const std::vector<double> f1 = oversampled_psi_angles(psi, 6, 1);
  ASSERT_EQ(f1.size(), 2 * psi.size());
  EXPECT_DOUBLE_EQ(f1[0], -1.5);
  EXPECT_DOUBLE_EQ(f1[1], 1.5);
  EXPECT_DOUBLE_EQ(f1[2], 4.5);
  EXPECT_DOUBLE_EQ(f1[2 * 30], 178.5);   // children of 180
  EXPECT_DOUBLE_EQ(f1[2 * 30 + 1], -178.5);
  const std::vector<double> f2 = oversampled_psi_angles(psi, 6, 2);  // step/4 spacing, centred
  ASSERT_EQ(f2.size(), 4 * psi.size());
  EXPECT_DOUBLE_EQ(f2[4 + 0], 6 - 2.25);
  EXPECT_DOUBLE_EQ(f2[4 + 3], 6 + 2.25);
  EXPECT_EQ(oversampled_psi_angles(psi, 6, 0), psi);

  const std::vector<std::array<double, 2>> t = {{0, 0}, {2, -2}};
  const auto ft = oversampled_translations(t, 2, 1);
  ASSERT_EQ(ft.size(), 8u);
  const std::vector<std::array<double, 2>> want = {{-0.5, -0.5}, {-0.5, 0.5}, {0.5, -0.5}, {0.5, 0.5},
                                                   {1.5, -2.5},  {1.5, -1.5}, {2.5, -2.5}, {2.5, -1.5}};
  EXPECT_EQ(ft, want);
  // The children of each translation average to it (order 2: 16 children).
  const auto f16 = oversampled_translations(t, 2, 2);
  ASSERT_EQ(f16.size(), 32u);
  for (size_t e = 0; e < t.size(); ++e) {
    double sx = 0, sy = 0;
    for (size_t a = 0; a < 16; ++a) sx += f16[e * 16 + a][0], sy += f16[e * 16 + a][1];
    EXPECT_NEAR(sx / 16, t[e][0], 1e-12);
    EXPECT_NEAR(sy / 16, t[e][1], 1e-12);
  }
  EXPECT_THROW(oversampled_psi_angles(psi, 6, -1), InputError);
}

// Point groups: group axioms, orders, RELION's axis conventions (checked against
// relion_particle_symmetry_expand when installed) and map symmetrisation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <fmt/format.h>
#include <unistd.h>

#include "regula/core/error.hpp"
#include "regula/io/star.hpp"
#include "regula/sampling/symmetry.hpp"

using namespace regula;

namespace {

bool contains(const SymmetryGroup& g, const Mat3& m, double tol = 1e-9) {
  for (const auto& o : g.operators())
    if (max_abs_diff(o, m) < tol) return true;
  return false;
}

double det(const Mat3& a) {
  return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
         a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
}

Vec3 unit(Vec3 v) {
  const double r = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  return {v[0] / r, v[1] / r, v[2] / r};
}

// Has an n-fold rotation about `axis`.
bool has_axis(const SymmetryGroup& g, Vec3 axis, int fold) {
  return contains(g, axis_angle_matrix(unit(axis), 360.0 / fold), 1e-6);
}

const char* kAll[] = {"C1", "C2", "C7", "D1", "D2", "D3", "D7", "T", "O", "I", "I1", "I2", "I3", "I4"};

}  // namespace

TEST(Symmetry, Orders) {
  EXPECT_EQ(SymmetryGroup::parse("C1").order(), 1);
  EXPECT_EQ(SymmetryGroup::parse("c7").order(), 7);
  EXPECT_EQ(SymmetryGroup::parse("D3").order(), 6);
  EXPECT_EQ(SymmetryGroup::parse("d1").order(), 2);
  EXPECT_EQ(SymmetryGroup::parse("T").order(), 12);
  EXPECT_EQ(SymmetryGroup::parse("o").order(), 24);
  for (const char* n : {"I", "I1", "I2", "I3", "i4"}) EXPECT_EQ(SymmetryGroup::parse(n).order(), 60) << n;
  EXPECT_EQ(SymmetryGroup::parse("c07").name(), "C7");
  EXPECT_EQ(SymmetryGroup::parse(" i3 ").name(), "I3");
}

TEST(Symmetry, GroupAxioms) {
  for (const char* name : kAll) {
    const auto g = SymmetryGroup::parse(name);
    ASSERT_LT(max_abs_diff(g.operators()[0], identity3()), 1e-15) << name;
    for (const auto& a : g.operators()) {
      EXPECT_LT(max_abs_diff(matmul(a, transpose(a)), identity3()), 1e-12) << name;
      EXPECT_NEAR(det(a), 1.0, 1e-12) << name;
      EXPECT_TRUE(contains(g, transpose(a))) << name << ": inverse missing";
      for (const auto& b : g.operators()) EXPECT_TRUE(contains(g, matmul(a, b))) << name << ": not closed";
    }
    // All distinct.
    for (size_t i = 0; i < g.operators().size(); ++i)
      for (size_t j = 0; j < i; ++j) EXPECT_GT(max_abs_diff(g.operators()[i], g.operators()[j]), 1e-3) << name;
  }
}

TEST(Symmetry, ParseErrors) {
  for (const char* bad : {"", "X", "C", "C0", "Cx", "C-2", "D", "D2.5", "I5", "I0", "Oh", "C2v", "TT"}) {
    try {
      SymmetryGroup::parse(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()),
                fmt::format("unknown symmetry group '{}' (expected C<n>, D<n>, T, O, I, I1-I4)", bad));
    }
  }
}

// Axis conventions as RELION 3.1 defines the groups (src/symmetries.cpp:
// generators per group), restated here as properties of the generated sets.
TEST(Symmetry, RelionAxisConventions) {
  const Vec3 x{1, 0, 0}, y{0, 1, 0}, z{0, 0, 1};
  EXPECT_TRUE(has_axis(SymmetryGroup::parse("C7"), z, 7));
  EXPECT_TRUE(has_axis(SymmetryGroup::parse("D2"), x, 2));
  EXPECT_TRUE(has_axis(SymmetryGroup::parse("D2"), y, 2));
  EXPECT_TRUE(has_axis(SymmetryGroup::parse("D3"), x, 2));
  EXPECT_FALSE(has_axis(SymmetryGroup::parse("D3"), y, 2));
  EXPECT_TRUE(has_axis(SymmetryGroup::parse("D3"), z, 3));
  const auto t = SymmetryGroup::parse("T");
  EXPECT_TRUE(has_axis(t, z, 3));
  EXPECT_TRUE(has_axis(t, {0, 0.816496580927726, 0.577350269189626}, 2));
  const auto o = SymmetryGroup::parse("O");
  for (const Vec3& a : {x, y, z}) EXPECT_TRUE(has_axis(o, a, 4));
  EXPECT_TRUE(has_axis(o, {1, 1, 1}, 3));
  // I = I2: 2-folds on x, y, z; a 5-fold in the xz plane; no 5-fold on z.
  const auto i2 = SymmetryGroup::parse("I2");
  for (const Vec3& a : {x, y, z}) EXPECT_TRUE(has_axis(i2, a, 2));
  EXPECT_TRUE(has_axis(i2, {0.525731112119134, 0, 0.850650808352040}, 5));
  EXPECT_FALSE(has_axis(i2, z, 5));
  EXPECT_TRUE(has_axis(i2, {0, 0.356822089773090, 0.934172358962716}, 3));
  const auto i = SymmetryGroup::parse("I");
  for (const auto& m : i.operators()) EXPECT_TRUE(contains(i2, m));
  // I1: 2-folds on x, y, z and the 5-fold at (0.85, 0, -0.53): I2 rotated 90 deg about y.
  const auto i1 = SymmetryGroup::parse("I1");
  for (const Vec3& a : {x, y, z}) EXPECT_TRUE(has_axis(i1, a, 2));
  EXPECT_TRUE(has_axis(i1, {0.850650808352040, 0, -0.525731112119134}, 5));
  EXPECT_TRUE(has_axis(i1, {0.934172358962716, 0.356822089773090, 0}, 3));
  EXPECT_FALSE(has_axis(i1, {0.525731112119134, 0, 0.850650808352040}, 5));
  // I3 and I4: a 5-fold on z.
  const auto i3 = SymmetryGroup::parse("I3"), i4 = SymmetryGroup::parse("I4");
  EXPECT_TRUE(has_axis(i3, z, 5));
  EXPECT_TRUE(has_axis(i3, {-0.525731112119134, 0, 0.850650808352040}, 2));
  EXPECT_TRUE(has_axis(i3, {-0.4911234778630044, 0.3568220764705179, 0.7946544753759428}, 3));
  EXPECT_TRUE(has_axis(i4, {0.4911234778630044, 0.3568220764705179, 0.7946544753759428}, 3));
  EXPECT_TRUE(has_axis(i4, z, 5));
  EXPECT_TRUE(has_axis(i4, {0.525731112119134, 0, 0.850650808352040}, 2));
  EXPECT_TRUE(has_axis(i4, {0.894427190999916, 0, 0.447213595499958}, 5));
}

// RELION's list: every operator but the identity once; a cyclic group lists the turns by
// -90, -180, -270 deg (R^T of RELION's rotation by +k 360/n), then nothing else.
TEST(Symmetry, RelionOrderedOperatorsAreTheGroup) {
  for (const char* name : kAll) {
    const auto g = SymmetryGroup::parse(name);
    const auto list = g.relion_ordered_operators();
    ASSERT_EQ(list.size() + 1, size_t(g.order())) << name;
    for (size_t i = 0; i < list.size(); ++i) {
      EXPECT_TRUE(contains(g, list[i], 1e-5)) << name << " " << i;
      EXPECT_GT(max_abs_diff(list[i], identity3()), 1e-3) << name << " " << i;
      for (size_t j = 0; j < i; ++j) EXPECT_GT(max_abs_diff(list[i], list[j]), 1e-3) << name << " " << i << " " << j;
    }
  }
  const auto c4 = SymmetryGroup::parse("C4").relion_ordered_operators();
  for (int k = 1; k <= 3; ++k)
    EXPECT_LT(max_abs_diff(c4[size_t(k - 1)], axis_angle_matrix({0, 0, 1}, -90.0 * k)), 1e-12) << k;
}

// relion_particle_symmetry_expand on one particle at (0, 0, 0) lists the
// Euler angles of every group operator: both sets must be identical.
TEST(Symmetry, MatchesRelionSymmetryExpand) {
  if (!std::filesystem::exists("/usr/bin/relion_particle_symmetry_expand"))
    GTEST_SKIP() << "relion_particle_symmetry_expand not installed";
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("regula_sym_{}", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string in = (dir / "one.star").string();
  {
    std::ofstream f(in);
    f << "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
         "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnImageDimensionality #5\n_rlnVoltage #6\n"
         "_rlnSphericalAberration #7\n_rlnAmplitudeContrast #8\n1 opticsGroup1 1.0 64 2 300 2.7 0.1\n\n"
         "# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n"
         "_rlnAnglePsi #4\n_rlnOpticsGroup #5\n000001@x.mrcs 0.0 0.0 0.0 1\n";
  }
  for (const char* name : {"C7", "D3", "T", "O", "I", "I1", "I2", "I3", "I4"}) {
    const std::string out = (dir / fmt::format("exp_{}.star", name)).string();
    const std::string cmd = fmt::format("relion_particle_symmetry_expand --i {} --o {} --sym {} > {}/log.txt 2>&1",
                                        in, out, name, dir.string());
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const auto doc = star::read(out);
    const auto& p = doc.require("particles");
    const int cr = p.require_column("rlnAngleRot"), ct = p.require_column("rlnAngleTilt"),
              cp = p.require_column("rlnAnglePsi");
    const auto g = SymmetryGroup::parse(name);
    ASSERT_EQ(int(p.rows()), g.order()) << name;
    const std::vector<Mat3> ordered = g.relion_ordered_operators();
    ASSERT_EQ(ordered.size() + 1, p.rows()) << name;
    for (size_t r = 0; r < p.rows(); ++r) {
      const Mat3 m = euler_to_matrix(p.number(r, cr), p.number(r, ct), p.number(r, cp));
      // Angles are printed with 6 decimals: matrix elements agree to ~1e-7.
      EXPECT_TRUE(contains(g, m, 1e-5)) << name << " row " << r;
      // Row r (after the input row) is the identity times RELION's operator r-1: same order.
      if (r > 0) {
        EXPECT_LT(max_abs_diff(m, ordered[r - 1]), 1e-5) << name << " row " << r;
      }
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(Symmetry, SymmetriseC4IsExactPermutationAverage) {
  // Rotations by multiples of 90 deg about z map grid points onto grid points,
  // so symmetrise must equal the plain average of the 4 index-permuted copies.
  const int n = 16, c = n / 2;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  Volume v(n, n, n);
  for (auto& x : v) x = u(rng);
  const Volume s = symmetrise(v, SymmetryGroup::parse("C4"));
  auto at = [&](int x, int y, int z) -> double {
    return (x < 0 || y < 0 || x >= n || y >= n) ? 0.0 : double(v(x, y, z));
  };
  double maxerr = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const int dx = x - c, dy = y - c;
        const double ref = (at(c + dx, c + dy, z) + at(c - dy, c + dx, z) + at(c - dx, c - dy, z) +
                            at(c + dy, c - dx, z)) / 4.0;
        maxerr = std::max(maxerr, std::abs(ref - s(x, y, z)));
      }
  EXPECT_LT(maxerr, 1e-6);
}

TEST(Symmetry, SymmetrisedMapIsInvariant) {
  // A smooth asymmetric map: symmetrising twice changes it only by the
  // trilinear interpolation error (blobs of sigma 2 px: < 2% rms).
  const int n = 32, c = n / 2;
  Volume v(n, n, n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double a = (x - c - 5) * (x - c - 5) + (y - c - 2) * (y - c - 2) + (z - c - 3) * (z - c - 3);
        const double b = (x - c + 3) * (x - c + 3) + (y - c - 6) * (y - c - 6) + (z - c + 4) * (z - c + 4);
        v(x, y, z) = float(std::exp(-a / 8.0) + 0.5 * std::exp(-b / 8.0));
      }
  for (const char* name : {"D3", "O"}) {
    const auto g = SymmetryGroup::parse(name);
    const Volume s1 = symmetrise(v, g, 2);
    const Volume s2 = symmetrise(s1, g, 1);
    double num = 0, den = 0, change = 0;
    for (size_t i = 0; i < s1.size(); ++i) {
      num += (s1[i] - s2[i]) * (s1[i] - s2[i]);
      den += s1[i] * s1[i];
      change += (s1[i] - v[i]) * (s1[i] - v[i]);
    }
    EXPECT_LT(std::sqrt(num / den), 0.02) << name;
    EXPECT_GT(std::sqrt(change / den), 0.5) << name << ": symmetrising must change an asymmetric map";
  }
}

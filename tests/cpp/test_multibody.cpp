// Multi-body refinement's geometry (jobs/multibody.hpp) and flex_analyse's eigen-decomposition: RELION's
// body orientation convention, the bodies file, and the symmetric eigen-solver (LAPACK) against a known decomposition.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/flex_analyse.hpp"
#include "regula/jobs/multibody.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

using namespace regula;

namespace {

Mat3 random_rotation(std::mt19937_64& rng, double max_deg = 180) {
  std::normal_distribution<double> g(0, 1);
  Vec3 k{g(rng), g(rng), g(rng)};
  const double len = std::sqrt(k[0] * k[0] + k[1] * k[1] + k[2] * k[2]);
  std::uniform_real_distribution<double> u(0, max_deg);
  return axis_angle_matrix({k[0] / len, k[1] / len, k[2] / len}, u(rng));
}

}  // namespace

TEST(Multibody, AlignWithZTakesTheAxisToZ) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> g(0, 1);
  std::vector<Vec3> axes{{1, 0, 0}, {-1, 0, 0}, {0, 1, 0}, {0, 0, -2}};
  for (int t = 0; t < 50; ++t) axes.push_back({g(rng), g(rng), g(rng)});
  for (const Vec3& a : axes) {
    const Mat3 R = align_with_z(a);
    const double len = std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
    const Vec3 z = matvec(R, {a[0] / len, a[1] / len, a[2] / len});
    EXPECT_NEAR(z[0], 0, 1e-12);
    EXPECT_NEAR(z[1], 0, 1e-12);
    EXPECT_NEAR(z[2], 1, 1e-12);
    EXPECT_LT(max_abs_diff(matmul(R, transpose(R)), identity3()), 1e-12);
  }
  // A value worked by hand from RELION's alignWithZ: y goes to z, z to -y.
  const Mat3 Ry = align_with_z({0, 1, 0});
  EXPECT_LT(max_abs_diff(Ry, Mat3{{{1, 0, 0}, {0, 0, -1}, {0, 1, 0}}}), 1e-15);
}

TEST(Multibody, BodyAnglesFollowRelionsConvention) {
  std::mt19937_64 rng(5);
  for (int t = 0; t < 20; ++t) {
    const Mat3 O = random_rotation(rng);
    // (0, 90, 0) is no rotation, whatever the body's axis.
    EXPECT_LT(max_abs_diff(body_rotation_from_angles({0, 90, 0}, O), identity3()), 1e-12);
    const Euler none = body_angles_from_rotation(identity3(), O);
    EXPECT_NEAR(none.tilt, 90, 1e-9);
    EXPECT_NEAR(std::abs(wrap180(none.rot + none.psi)), 0, 1e-9);
    // Round trip of residual rotations up to 40 degrees (away from the gimbal lock at tilt 0 and 180).
    const Mat3 R = random_rotation(rng, 40);
    const Euler e = body_angles_from_rotation(R, O);
    EXPECT_GT(e.tilt, 45);
    EXPECT_LT(e.tilt, 135);
    EXPECT_LT(max_abs_diff(body_rotation_from_angles(e, O), R), 1e-10);
    // R = O^T R90 E O with R90 = E(0, 90, 0)^T (RELION's A_rot90, rotation3DMatrix(90, 'Y')).
    const Mat3 R90{{{0, 0, 1}, {0, 1, 0}, {-1, 0, 0}}};
    const Mat3 expect = matmul(matmul(transpose(O), R90), matmul(euler_to_matrix(e), O));
    EXPECT_LT(max_abs_diff(expect, R), 1e-10);
  }
}

TEST(Multibody, SymmetricEigenRecoversAKnownDecomposition) {
  std::mt19937_64 rng(11);
  for (size_t d : {1, 2, 6, 12}) {
    // A = Q^T diag(l) Q with a random orthogonal Q (Gram-Schmidt) and distinct eigenvalues.
    std::normal_distribution<double> g(0, 1);
    std::vector<std::vector<double>> Q(d, std::vector<double>(d));
    for (size_t i = 0; i < d; ++i) {
      for (double& x : Q[i]) x = g(rng);
      for (size_t j = 0; j < i; ++j) {
        double dot = 0;
        for (size_t k = 0; k < d; ++k) dot += Q[i][k] * Q[j][k];
        for (size_t k = 0; k < d; ++k) Q[i][k] -= dot * Q[j][k];
      }
      double len = 0;
      for (double x : Q[i]) len += x * x;
      for (double& x : Q[i]) x /= std::sqrt(len);
    }
    std::vector<double> l(d);
    for (size_t i = 0; i < d; ++i) l[i] = 10.0 / double(i + 1) + (i % 2 ? 0.3 : 0.0);
    std::vector<double> A(d * d, 0.0);
    for (size_t i = 0; i < d; ++i)
      for (size_t j = 0; j < d; ++j)
        for (size_t k = 0; k < d; ++k) A[i * d + j] += Q[k][i] * l[k] * Q[k][j];
    std::vector<double> values;
    std::vector<std::vector<double>> vectors;
    symmetric_eigen(A, d, values, vectors);
    ASSERT_EQ(values.size(), d);
    std::vector<double> sorted = l;
    std::sort(sorted.rbegin(), sorted.rend());
    for (size_t k = 0; k < d; ++k) {
      EXPECT_NEAR(values[k], sorted[k], 1e-10) << "d " << d << " k " << k;
      const size_t src = size_t(std::find(l.begin(), l.end(), sorted[k]) - l.begin());
      double dot = 0;
      for (size_t i = 0; i < d; ++i) dot += vectors[k][i] * Q[src][i];
      EXPECT_NEAR(std::abs(dot), 1, 1e-10);
    }
  }
}

TEST(Multibody, ReadBodiesGivesRoundedCentresAndChecksTheFile) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "regula_test_multibody";
  std::filesystem::create_directories(dir);
  const int n = 24;
  Grid<float> m1(n, n, n), m2(n, n, n), bad(n, n, 2);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        if (x >= 4 && x < 9 && y >= 10 && y < 14 && z >= 11 && z < 13) m1(x, y, z) = 1;  // centre (6, 11.5, 11.5)
        if (x >= 15 && x < 19 && y >= 12 && y < 15 && z >= 12 && z < 13) m2(x, y, z) = 0.5f;  // (16.5, 13, 12)
      }
  mrc::write((dir / "m1.mrc").string(), m1);
  mrc::write((dir / "m2.mrc").string(), m2);
  mrc::write((dir / "bad.mrc").string(), bad);
  auto write = [&](const std::string& name, const std::string& rows) {
    std::ofstream((dir / name).string()) << "data_\nloop_\n_rlnBodyMaskName\n_rlnBodyRotateRelativeTo\n"
                                            "_rlnBodySigmaAngles\n_rlnBodySigmaOffsetAngst\n"
                                         << rows;
    return (dir / name).string();
  };
  const auto bodies = read_bodies(write("ok.star", "m1.mrc 2 10 2\nm2.mrc 1 12 3\n"), n, 2.0);
  ASSERT_EQ(bodies.size(), 2u);
  // RELION rounds half away from zero: (6 - 12, 11.5 - 12, 11.5 - 12) -> (-6, -1, -1); (4.5, 1, 0) -> (5, 1, 0).
  EXPECT_EQ(bodies[0].com, (std::array<int, 3>{-6, -1, -1}));
  EXPECT_EQ(bodies[1].com, (std::array<int, 3>{5, 1, 0}));
  EXPECT_EQ(bodies[0].relative_to, 1);
  EXPECT_DOUBLE_EQ(bodies[1].sigma_ang, 12);
  EXPECT_DOUBLE_EQ(bodies[1].sigma_offset_A, 3);
  // Body 1's axis points from its centre to body 2's; O takes minus that direction to z.
  const Vec3 v{11, 2, 1};
  const double len = std::sqrt(126.0);
  const Vec3 z = matvec(bodies[0].orient, {-v[0] / len, -v[1] / len, -v[2] / len});
  EXPECT_NEAR(z[2], 1, 1e-12);
  auto message = [&](const std::string& file) {
    try {
      read_bodies(file, n, 2.0);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(write("one.star", "m1.mrc 2 10 2\n")).find("at least 2"), std::string::npos);
  EXPECT_NE(message(write("size.star", "m1.mrc 2 10 2\nbad.mrc 1 10 2\n")).find("bad.mrc"), std::string::npos);
  EXPECT_NE(message(write("self.star", "m1.mrc 1 10 2\nm2.mrc 1 10 2\n")).find("RotateRelativeTo"), std::string::npos);
  EXPECT_NE(message(write("sigma.star", "m1.mrc 2 0 2\nm2.mrc 1 10 2\n")).find("positive"), std::string::npos);
  std::filesystem::remove_all(dir);
}

// Euler angles: round trips, orthogonality, and the projection convention
// checked against relion_project (RELION 3.1.3) on a volume of Gaussian blobs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include <fmt/format.h>
#include <unistd.h>

#include "regula/io/mrc.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {

double det(const Mat3& a) {
  return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
         a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
}

}  // namespace

TEST(Euler, MatricesAreRotations) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-360, 360);
  for (int i = 0; i < 200; ++i) {
    const Mat3 a = euler_to_matrix(u(rng), u(rng), u(rng));
    EXPECT_LT(max_abs_diff(matmul(a, transpose(a)), identity3()), 1e-14);
    EXPECT_NEAR(det(a), 1.0, 1e-14);
  }
}

TEST(Euler, RoundTripAnglesMatrixAngles) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> ang(-180, 180), tilt(0.5, 179.5);
  for (int i = 0; i < 1000; ++i) {
    const double r = ang(rng), t = tilt(rng), p = ang(rng);
    const Mat3 a = euler_to_matrix(r, t, p);
    const Euler e = matrix_to_euler(a);
    // With tilt in (0, 180) the angles are unique modulo 360.
    EXPECT_NEAR(wrap180(e.rot - r), 0, 1e-9);
    EXPECT_NEAR(e.tilt, t, 1e-9);
    EXPECT_NEAR(wrap180(e.psi - p), 0, 1e-9);
    EXPECT_LT(max_abs_diff(euler_to_matrix(e), a), 1e-12);
  }
}

TEST(Euler, RoundTripAnyAnglesGivesSameMatrix) {
  // Angles outside the canonical ranges (negative tilt, tilt > 180) map to
  // different angles but the same rotation.
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-720, 720);
  for (int i = 0; i < 1000; ++i) {
    const Mat3 a = euler_to_matrix(u(rng), u(rng), u(rng));
    const Euler e = matrix_to_euler(a);
    EXPECT_GE(e.tilt, 0);
    EXPECT_LE(e.tilt, 180);
    EXPECT_LT(max_abs_diff(euler_to_matrix(e), a), 1e-12);
  }
}

TEST(Euler, GimbalLock) {
  // tilt 0: only rot + psi matters; tilt 180: only psi - rot.
  for (double r : {-170.0, -30.0, 0.0, 45.0, 120.0}) {
    for (double p : {-100.0, 0.0, 10.0, 179.0}) {
      for (double t : {0.0, 180.0}) {
        const Mat3 a = euler_to_matrix(r, t, p);
        const Euler e = matrix_to_euler(a);
        EXPECT_EQ(e.rot, 0.0);
        EXPECT_EQ(e.tilt, t);
        EXPECT_LT(max_abs_diff(euler_to_matrix(e), a), 1e-12);
        EXPECT_NEAR(wrap180(e.psi - (t == 0 ? r + p : p - r)), 0, 1e-9);
      }
    }
  }
}

TEST(Euler, KnownMatrices) {
  // Values confirmed with relion_project (see RelionProjectBlobs below):
  // rot = 90 moves a map point on +x to image -y; tilt = 90 moves map +z to
  // image -x; psi = 90 moves image +x to -y.
  Vec3 v = matvec(euler_to_matrix(90, 0, 0), {1, 0, 0});
  EXPECT_NEAR(v[0], 0, 1e-15);
  EXPECT_NEAR(v[1], -1, 1e-15);
  v = matvec(euler_to_matrix(0, 90, 0), {0, 0, 1});
  EXPECT_NEAR(v[0], -1, 1e-15);
  EXPECT_NEAR(v[2], 0, 1e-15);
  v = matvec(euler_to_matrix(0, 0, 90), {1, 0, 0});
  EXPECT_NEAR(v[1], -1, 1e-15);
  // Viewing direction = third row.
  const Mat3 a = euler_to_matrix(30, 50, -70);
  const Vec3 d = euler_direction(30, 50);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(a[2][i], d[i], 1e-15);
  EXPECT_NEAR(rotation_distance_deg(euler_to_matrix(10, 20, 30), euler_to_matrix(10, 20, 35)), 5, 1e-9);
}

// relion_project of a volume with four Gaussian blobs: each blob at (x, y, z)
// relative to the centre n/2 must appear at (A*(x,y,z))[0..1] relative to the
// image centre. The whole image is compared with 2D Gaussians at the predicted
// places (correlation), and the transposed convention must fail the same check.
TEST(Euler, RelionProjectBlobs) {
  if (!std::filesystem::exists("/usr/bin/relion_project")) GTEST_SKIP() << "relion_project not installed";
  const int n = 64, c = n / 2;
  const double s = 1.5;  // blob sigma, px
  struct Blob {
    Vec3 p;
    double a;
  };
  const Blob blobs[] = {{{10, 0, 0}, 1}, {{0, -12, 5}, 2}, {{-7, 8, -9}, 3}, {{4, 6, 14}, 4}};
  Volume vol(n, n, n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double v = 0;
        for (const auto& b : blobs) {
          const double dx = x - c - b.p[0], dy = y - c - b.p[1], dz = z - c - b.p[2];
          v += b.a * std::exp(-(dx * dx + dy * dy + dz * dz) / (2 * s * s));
        }
        vol(x, y, z) = float(v);
      }
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("regula_euler_{}", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string vol_path = (dir / "blobs.mrc").string();
  mrc::write(vol_path, vol);

  auto correlation = [&](const Image& img, const Mat3& a) {
    double sxy = 0, sxx = 0, syy = 0, sx = 0, sy = 0;
    const double m = double(n) * n;
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double pred = 0;
        for (const auto& b : blobs) {
          const Vec3 q = matvec(a, b.p);
          const double dx = x - c - q[0], dy = y - c - q[1];
          pred += b.a * std::exp(-(dx * dx + dy * dy) / (2 * s * s));
        }
        const double v = img(x, y);
        sx += pred, sy += v, sxx += pred * pred, syy += v * v, sxy += pred * v;
      }
    return (sxy - sx * sy / m) / std::sqrt((sxx - sx * sx / m) * (syy - sy * sy / m));
  };

  const Euler angles[] = {{30, 50, -70}, {90, 0, 0}, {0, 90, 0}, {-120, 135, 20}};
  int k = 0;
  for (const auto& e : angles) {
    const std::string out = (dir / fmt::format("p{}.mrc", k++)).string();
    const std::string cmd = fmt::format(
        "relion_project --i {} --o {} --rot {} --tilt {} --psi {} --angpix 1 > {}/log.txt 2>&1", vol_path, out,
        e.rot, e.tilt, e.psi, dir.string());
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    Grid<float> img = mrc::read(out);
    ASSERT_EQ(img.nx(), n);
    ASSERT_EQ(img.ny(), n);
    const Mat3 a = euler_to_matrix(e);
    // Measured 0.99986-0.99996 (relion_project's Fourier-space interpolation at padding 2).
    EXPECT_GT(correlation(img, a), 0.999) << e.rot << " " << e.tilt << " " << e.psi;
    EXPECT_LT(correlation(img, transpose(a)), 0.9) << "the transposed convention must not match";
  }
  std::filesystem::remove_all(dir);
}

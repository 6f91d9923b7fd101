// Euler angles (rot, tilt, psi) in degrees, ZYZ, with RELION's matrix
// convention: A = R_z(psi) * R_y(tilt) * R_z(rot) acting on column vectors, where
// R_z(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]] and R_y(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
// (passive rotations). A maps map (3D) coordinates to image coordinates: the
// projection of a map along z after rotation by A; equivalently the central
// slice of the 3D transform at (kx, ky) is taken at A^T * (kx, ky, 0).
//
// Checked against relion_project 3.1.3 (tests/cpp/test_euler.cpp): a voxel at
// (x, y, z) relative to the map centre (n/2, n/2, n/2) projects to the image
// point (A*(x,y,z))[0..1] relative to the image centre (n/2, n/2). The viewing
// direction in map coordinates is the third row of A,
// (cos rot sin tilt, sin rot sin tilt, cos tilt) = euler_direction(rot, tilt).
// relion_project moves the projection by MINUS the origin offset
// (rlnOriginX/YAngst): a particle with origin (ox, oy) has its map centre at
// image position (n/2 - ox, n/2 - oy) pixels.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>

namespace regula {

using Mat3 = std::array<std::array<double, 3>, 3>;
using Vec3 = std::array<double, 3>;
// 2x2 matrix acting on column vectors (kx, ky), row-major m[r][c] (e.g. image frequency maps,
// imaging/optics_model.hpp).
using Mat2 = std::array<std::array<double, 2>, 2>;
inline constexpr Mat2 kIdentity2{{{1.0, 0.0}, {0.0, 1.0}}};

inline constexpr double kPi = 3.14159265358979323846;
inline double deg2rad(double d) { return d * kPi / 180.0; }
inline double rad2deg(double r) { return r * 180.0 / kPi; }

struct Euler {
  double rot = 0, tilt = 0, psi = 0;  // degrees
};

inline Mat3 euler_to_matrix(double rot, double tilt, double psi) {
  const double ca = std::cos(deg2rad(rot)), sa = std::sin(deg2rad(rot));
  const double cb = std::cos(deg2rad(tilt)), sb = std::sin(deg2rad(tilt));
  const double cg = std::cos(deg2rad(psi)), sg = std::sin(deg2rad(psi));
  const double cc = cb * ca, cs = cb * sa, sc = sb * ca, ss = sb * sa;
  Mat3 A;
  A[0] = {cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb};
  A[1] = {-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb};
  A[2] = {sc, ss, cb};
  return A;
}
inline Mat3 euler_to_matrix(const Euler& e) { return euler_to_matrix(e.rot, e.tilt, e.psi); }

// Inverse of euler_to_matrix for a rotation matrix; tilt in [0, 180],
// rot and psi in [-180, 180]. At tilt 0 or 180 (gimbal lock, |sin tilt| below
// ~2e-6 as in RELION) only rot + psi (tilt 0) or psi - rot (tilt 180) is
// defined; the split is rot = 0 with psi carrying the whole in-plane angle,
// as RELION's Euler_matrix2angles.
inline Euler matrix_to_euler(const Mat3& A) {
  Euler e;
  double abs_sb = std::sqrt(A[0][2] * A[0][2] + A[1][2] * A[1][2]);
  if (abs_sb > 16 * 1.1920929e-7) {  // 16 * FLT_EPSILON, RELION's threshold
    e.psi = rad2deg(std::atan2(A[1][2], -A[0][2]));
    e.rot = rad2deg(std::atan2(A[2][1], A[2][0]));
    double sign_sb;
    if (std::abs(A[1][2]) > std::abs(A[0][2]))
      sign_sb = (A[1][2] * std::sin(deg2rad(e.psi)) > 0) ? 1 : -1;
    else
      sign_sb = (-A[0][2] * std::cos(deg2rad(e.psi)) > 0) ? 1 : -1;
    e.tilt = rad2deg(std::atan2(sign_sb * abs_sb, A[2][2]));
  } else {
    if (A[2][2] > 0) {
      e.rot = 0;
      e.tilt = 0;
      e.psi = rad2deg(std::atan2(-A[1][0], A[0][0]));
    } else {
      e.rot = 0;
      e.tilt = 180;
      e.psi = rad2deg(std::atan2(A[1][0], -A[0][0]));
    }
  }
  return e;
}

inline Mat3 matmul(const Mat3& a, const Mat3& b) {
  Mat3 c{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 3; ++k) c[i][j] += a[i][k] * b[k][j];
  return c;
}
inline Mat3 transpose(const Mat3& a) {
  Mat3 t;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) t[i][j] = a[j][i];
  return t;
}
inline Vec3 matvec(const Mat3& a, const Vec3& v) {
  return {a[0][0] * v[0] + a[0][1] * v[1] + a[0][2] * v[2],
          a[1][0] * v[0] + a[1][1] * v[1] + a[1][2] * v[2],
          a[2][0] * v[0] + a[2][1] * v[1] + a[2][2] * v[2]};
}
inline Mat3 identity3() { return Mat3{{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}}; }

// Unit viewing direction (map coordinates) of Euler angles (degrees): the
// third row of euler_to_matrix(rot, tilt, psi), independent of psi.
inline Vec3 euler_direction(double rot, double tilt) {
  const double r = deg2rad(rot), t = deg2rad(tilt);
  return {std::cos(r) * std::sin(t), std::sin(r) * std::sin(t), std::cos(t)};
}

// Largest absolute element of a - b (for tolerance checks of rotations).
inline double max_abs_diff(const Mat3& a, const Mat3& b) {
  double m = 0;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) m = std::max(m, std::abs(a[i][j] - b[i][j]));
  return m;
}

// Rotation angle (degrees, in [0, 180]) of R^T * S: the angular distance between two rotations.
inline double rotation_distance_deg(const Mat3& r, const Mat3& s) {
  const Mat3 d = matmul(transpose(r), s);
  const double c = std::clamp((d[0][0] + d[1][1] + d[2][2] - 1.0) / 2.0, -1.0, 1.0);
  return rad2deg(std::acos(c));
}

// Unit quaternion (w, x, y, z) of a rotation and back (for posterior-mean orientations).
std::array<double, 4> to_quaternion(const Mat3& R);
Mat3 from_quaternion(std::array<double, 4> q);  // normalises q first
// An angle (degrees) wrapped to [-180, 180).
double wrap180(double a);
// Angle (degrees) between two unit vectors.
double angle_between(const Vec3& a, const Vec3& b);

}  // namespace regula

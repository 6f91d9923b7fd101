#include "regula/sampling/euler.hpp"

namespace regula {

std::array<double, 4> to_quaternion(const Mat3& R) {
  const double tr = R[0][0] + R[1][1] + R[2][2];
  std::array<double, 4> q;
  if (tr > 0) {
    const double s = 2 * std::sqrt(tr + 1.0);
    q = {0.25 * s, (R[2][1] - R[1][2]) / s, (R[0][2] - R[2][0]) / s, (R[1][0] - R[0][1]) / s};
  } else if (R[0][0] > R[1][1] && R[0][0] > R[2][2]) {
    const double s = 2 * std::sqrt(1.0 + R[0][0] - R[1][1] - R[2][2]);
    q = {(R[2][1] - R[1][2]) / s, 0.25 * s, (R[0][1] + R[1][0]) / s, (R[0][2] + R[2][0]) / s};
  } else if (R[1][1] > R[2][2]) {
    const double s = 2 * std::sqrt(1.0 + R[1][1] - R[0][0] - R[2][2]);
    q = {(R[0][2] - R[2][0]) / s, (R[0][1] + R[1][0]) / s, 0.25 * s, (R[1][2] + R[2][1]) / s};
  } else {
    const double s = 2 * std::sqrt(1.0 + R[2][2] - R[0][0] - R[1][1]);
    q = {(R[1][0] - R[0][1]) / s, (R[0][2] + R[2][0]) / s, (R[1][2] + R[2][1]) / s, 0.25 * s};
  }
  return q;
}

Mat3 from_quaternion(std::array<double, 4> q) {
  const double nrm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  for (double& v : q) v /= nrm;
  const double w = q[0], x = q[1], y = q[2], z = q[3];
  Mat3 R;
  R[0] = {1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)};
  R[1] = {2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)};
  R[2] = {2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)};
  return R;
}

double wrap180(double a) {
  a = std::fmod(a + 180.0, 360.0);
  if (a < 0) a += 360.0;
  return a - 180.0;
}

double angle_between(const Vec3& a, const Vec3& b) {
  const double c = std::clamp(a[0] * b[0] + a[1] * b[1] + a[2] * b[2], -1.0, 1.0);
  return rad2deg(std::acos(c));
}

}  // namespace regula

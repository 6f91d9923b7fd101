#include "regula/micrograph/dose.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"

namespace regula {

double critical_exposure(double k) {
  if (k <= 0) return std::numeric_limits<double>::infinity();
  return 0.245 * std::pow(k, -1.665) + 2.81;
}

double misplacement_tolerance(double extra, double angpix, double loss) {
  double d = 1e300;
  constexpr int kSteps = 512;
  for (int s = 1; s <= kSteps; ++s) {
    const double k = 0.5 * s / kSteps;  // cycles / px
    const double r = damage_attenuation(std::max(0.0, extra), k / angpix);
    if (loss >= 2 * r) continue;  // even a half-period shift loses less
    d = std::min(d, std::acos(1 - loss / r) / (2 * std::numbers::pi * k));
  }
  return d;
}

double dose_voltage_factor(double kv) {
  if (std::abs(kv - 300) <= 2) return 1.0;
  if (std::abs(kv - 200) <= 2) return 1.0 / 0.8;
  if (std::abs(kv - 100) <= 2) return 1.0 / 0.64;
  input_error("dose weighting: voltage {} kV; only 100, 200 and 300 kV have a known critical exposure", kv);
}

DoseWeighting::DoseWeighting(int nx, int ny, double angpix, double first, double increment, int frames)
    : nx_(nx), ny_(ny), frames_(frames), angpix_(angpix), first_(first), increment_(increment) {
  const int nxh = nx / 2 + 1;
  w0_ = Grid<float>(nxh, ny);
  q_ = Grid<float>(nxh, ny);
  for (int j = 0; j < ny; ++j) {
    const double ky = fft_freq(j, ny) / (ny * angpix);
    for (int i = 0; i < nxh; ++i) {
      const double kx = i / (nx * angpix);
      const double k = std::sqrt(kx * kx + ky * ky);
      const double r = k > 0 ? 1.0 / (2.0 * critical_exposure(k)) : 0.0;  // amplitude decay per e/Å²
      // sum_g exp(-2 N_g r) = exp(-2 first r) (1 - q^(2T)) / (1 - q^2), q = exp(-increment r).
      const double t = 2 * increment * r;
      const double series = t > 1e-12 ? std::expm1(-t * frames) / std::expm1(-t) : double(frames);
      const double norm = 1.0 / std::sqrt(std::exp(-2 * first * r) * series);
      w0_(i, j) = float(std::exp(-first * r) * norm);
      q_(i, j) = float(std::exp(-increment * r));
    }
  }
}

bool DoseWeighting::same(int nx, int ny, double angpix, double first, double increment, int frames) const {
  return nx == nx_ && ny == ny_ && frames == frames_ && angpix == angpix_ && first == first_ &&
         increment == increment_;
}

float DoseWeighting::weight(int f, int i, int j) const {
  return float(double(w0_(i, j)) * std::pow(double(q_(i, j)), f));
}

}  // namespace regula

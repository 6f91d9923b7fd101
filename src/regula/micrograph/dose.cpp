#include "regula/micrograph/dose.hpp"

#include <cmath>
#include <limits>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"

namespace regula {

double critical_exposure(double k) {
  if (k <= 0) return std::numeric_limits<double>::infinity();
  return 0.245 * std::pow(k, -1.665) + 2.81;
}

double dose_voltage_factor(double kv) {
  if (std::abs(kv - 300) <= 2) return 1.0;
  if (std::abs(kv - 200) <= 2) return 1.0 / 0.8;
  if (std::abs(kv - 100) <= 2) return 1.0 / 0.64;
  input_error("dose weighting: voltage {} kV; only 100, 200 and 300 kV have a known critical exposure", kv);
}

std::vector<Grid<float>> dose_weights(int nx, int ny, double angpix, const std::vector<double>& exposures) {
  const int nxh = nx / 2 + 1;
  std::vector<Grid<float>> w(exposures.size(), Grid<float>(nxh, ny));
  std::vector<double> a(exposures.size());
  for (int j = 0; j < ny; ++j) {
    const double ky = fft_freq(j, ny) / (ny * angpix);
    for (int i = 0; i < nxh; ++i) {
      const double kx = i / (nx * angpix);
      const double k = std::sqrt(kx * kx + ky * ky);
      double s = 0;
      const double rate = k > 0 ? 1.0 / (2.0 * critical_exposure(k)) : 0.0;  // one pow per pixel
      for (size_t f = 0; f < exposures.size(); ++f) {
        a[f] = std::exp(-exposures[f] * rate);
        s += a[f] * a[f];
      }
      const double norm = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
      for (size_t f = 0; f < exposures.size(); ++f) w[f](i, j) = float(a[f] * norm);
    }
  }
  return w;
}

}  // namespace regula

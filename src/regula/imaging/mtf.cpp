#include "regula/imaging/mtf.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/io/star.hpp"

namespace regula {

Mtf Mtf::read(const std::string& path) {
  star::Document d = star::read(path);
  if (d.blocks.empty()) input_error("{}: no data block", path);
  const star::Block& b = d.blocks.front();
  Mtf m;
  m.frequency = b.numbers(b.require_column("rlnResolutionInversePixel"));
  m.value = b.numbers(b.require_column("rlnMtfValue"));
  if (m.frequency.size() < 2) input_error("{}: the MTF table needs at least 2 rows", path);
  for (size_t i = 1; i < m.frequency.size(); ++i)
    if (!(m.frequency[i] > m.frequency[i - 1]))
      input_error("{}: rlnResolutionInversePixel must increase (row {})", b.where(i), i + 1);
  return m;
}

double Mtf::at(double x) const {
  if (x <= frequency.front()) return value.front();
  if (x >= frequency.back()) return value.back();
  const size_t j = size_t(std::upper_bound(frequency.begin(), frequency.end(), x) - frequency.begin());
  return value[j - 1] + (value[j] - value[j - 1]) * (x - frequency[j - 1]) / (frequency[j] - frequency[j - 1]);
}

void divide_by_mtf(Grid<cfloat>& F, int n, double angpix, const Mtf& mtf, double detector_angpix) {
  for (int z = 0; z < F.nz(); ++z) {
    const int kz = fft_freq(z, n);
    for (int y = 0; y < F.ny(); ++y) {
      const int ky = fft_freq(y, n);
      for (int x = 0; x < F.nx(); ++x) {
        const double r = std::sqrt(double(x * x + ky * ky + kz * kz));
        const double m = mtf.at(r / (n * angpix) * detector_angpix);
        if (m > 0) F(x, y, z) /= float(m);
      }
    }
  }
}

}  // namespace regula

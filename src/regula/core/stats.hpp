// Robust statistics of a sample, shared by the jobs that screen outliers.
#pragma once
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace regula {

// The median of v (the mean of the two middle values when v has an even size; 0 when empty).
inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  const size_t h = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + long(h), v.end());
  double m = v[h];
  if (v.size() % 2 == 0) m = 0.5 * (m + *std::max_element(v.begin(), v.begin() + long(h)));
  return m;
}

// The median of v and its robust spread, 1.4826 x the median absolute deviation (the standard
// deviation for normal data).
inline std::pair<double, double> median_spread(std::vector<double> v) {
  const double m = median(v);
  for (double& x : v) x = std::abs(x - m);
  return {m, 1.4826 * median(std::move(v))};
}

}  // namespace regula

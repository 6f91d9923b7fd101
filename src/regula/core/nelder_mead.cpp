#include "regula/core/nelder_mead.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace regula {

NelderMeadResult nelder_mead_maximise(const std::function<double(const std::vector<double>&)>& f,
                                      const std::vector<double>& x0, const NelderMeadOptions& o) {
  const size_t n = x0.size();
  if (n == 0 || (o.step.size() != 1 && o.step.size() != n))
    throw std::logic_error("nelder_mead_maximise: one step, or one per coordinate, is needed");
  NelderMeadResult res;
  auto value = [&](const std::vector<double>& x) {
    ++res.evaluations;
    return f(x);
  };
  // The simplex is kept sorted, best first.
  std::vector<std::vector<double>> p(n + 1, x0);
  for (size_t d = 0; d < n; ++d) p[d + 1][d] += o.step[o.step.size() == 1 ? 0 : d];
  std::vector<double> v(n + 1);
  for (size_t j = 0; j <= n; ++j) v[j] = value(p[j]);
  std::vector<size_t> order(n + 1);
  auto sort = [&] {
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] > v[b]; });
    std::vector<std::vector<double>> ps(n + 1);
    std::vector<double> vs(n + 1);
    for (size_t j = 0; j <= n; ++j) {
      ps[j] = std::move(p[order[j]]);
      vs[j] = v[order[j]];
    }
    p = std::move(ps);
    v = std::move(vs);
  };
  sort();
  while (res.iterations < o.max_iterations && res.evaluations < o.max_evaluations) {
    double size = 0;
    for (size_t j = 1; j <= n; ++j)
      for (size_t d = 0; d < n; ++d) size = std::max(size, std::abs(p[j][d] - p[0][d]));
    if (size < o.x_tol || std::abs(v[0] - v[n]) < o.f_tol) break;
    std::vector<double> c(n, 0.0);
    for (size_t j = 0; j < n; ++j)
      for (size_t d = 0; d < n; ++d) c[d] += p[j][d] / double(n);
    auto along = [&](double t) {
      std::vector<double> x(n);
      for (size_t d = 0; d < n; ++d) x[d] = c[d] + t * (p[n][d] - c[d]);
      return x;
    };
    std::vector<double> xr = along(-1);
    const double vr = value(xr);
    if (vr > v[0]) {
      std::vector<double> xe = along(-2);
      const double ve = value(xe);
      if (ve > vr) {
        p[n] = std::move(xe);
        v[n] = ve;
      } else {
        p[n] = std::move(xr);
        v[n] = vr;
      }
    } else if (vr > v[n - 1]) {
      p[n] = std::move(xr);
      v[n] = vr;
    } else {
      std::vector<double> xc = along(vr > v[n] ? -0.5 : 0.5);
      const double vc = value(xc);
      if (vc > std::max(vr, v[n])) {
        p[n] = std::move(xc);
        v[n] = vc;
      } else {
        for (size_t j = 1; j <= n; ++j) {
          for (size_t d = 0; d < n; ++d) p[j][d] = p[0][d] + 0.5 * (p[j][d] - p[0][d]);
          v[j] = value(p[j]);
        }
      }
    }
    sort();
    ++res.iterations;
    if (o.report) o.report(res.iterations, p[0], v[0]);
  }
  res.x = p[0];
  res.value = v[0];
  return res;
}

}  // namespace regula

#include "regula/imaging/zernike.hpp"

#include <cmath>
#include <cstdlib>

namespace regula {

namespace {

double factorial(int k) {
  double f = 1;
  for (int j = 2; j <= k; ++j) f *= j;
  return f;
}

double radial(int n, int m, double rho) {
  double r = 0;
  for (int k = 0; k <= (n - m) / 2; ++k) {
    const double c = factorial(n - k) / (factorial(k) * factorial((n + m) / 2 - k) * factorial((n - m) / 2 - k));
    r += (k % 2 ? -c : c) * std::pow(rho, n - 2 * k);
  }
  return r;
}

// Sum over coefficients with (n, m) from `index`; rho and phi computed once.
template <class Index>
double sum(std::span<const double> c, double x, double y, Index index) {
  if (c.empty()) return 0.0;
  const double rho = std::hypot(x, y), phi = std::atan2(y, x);
  double s = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i] == 0) continue;
    const ZernikeIndex z = index(int(i));
    const int am = std::abs(z.m);
    const double r = radial(z.n, am, rho);
    s += c[i] * r * (z.m >= 0 ? std::cos(am * phi) : std::sin(am * phi));
  }
  return s;
}

}  // namespace

// Coefficient i of a list whose orders are n0, n0 + 2, ...; order n holds n + 1 coefficients
// (m = -n, -n + 2, ..., n).
static ZernikeIndex index_from(int i, int n) {
  while (i > n) {
    i -= n + 1;
    n += 2;
  }
  return {n, -n + 2 * i};
}

ZernikeIndex odd_zernike_index(int i) { return index_from(i, 1); }
ZernikeIndex even_zernike_index(int i) { return index_from(i, 0); }

double zernike(int n, int m, double x, double y) {
  const int am = std::abs(m);
  if (n < am || (n - am) % 2) return 0.0;
  const double rho = std::hypot(x, y), phi = std::atan2(y, x);
  return radial(n, am, rho) * (m >= 0 ? std::cos(am * phi) : std::sin(am * phi));
}

double odd_zernike_sum(std::span<const double> c, double x, double y) {
  return sum(c, x, y, odd_zernike_index);
}

double even_zernike_sum(std::span<const double> c, double x, double y) {
  return sum(c, x, y, even_zernike_index);
}

}  // namespace regula

#include "regula/core/blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

extern "C" void dsyev_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                       double* work, const int* lwork, int* info);

namespace regula {

void set_blas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void symmetric_eigen(std::vector<double> a, size_t d, std::vector<double>& values,
                     std::vector<std::vector<double>>& vectors) {
  values.clear();
  vectors.clear();
  if (d == 0) return;
  if (a.size() != d * d) throw std::runtime_error("symmetric_eigen: " + std::to_string(a.size()) + " values for a " +
                                                  std::to_string(d) + " x " + std::to_string(d) + " matrix");
  set_blas_single_threaded();
  // Row-major symmetric = column-major symmetric: dsyev returns ascending eigenvalues and column-major
  // eigenvectors (vector j in a[j d .. j d + d)).
  const int n = int(d);
  std::vector<double> w(d);
  int lwork = -1, info = 0;
  double query = 0;
  dsyev_("V", "U", &n, a.data(), &n, w.data(), &query, &lwork, &info);
  lwork = std::max(1, int(query));
  std::vector<double> work(static_cast<size_t>(lwork));
  dsyev_("V", "U", &n, a.data(), &n, w.data(), work.data(), &lwork, &info);
  if (info != 0) throw std::runtime_error("symmetric_eigen: LAPACK dsyev failed (info " + std::to_string(info) + ")");
  for (size_t k = d; k-- > 0;) {
    values.push_back(w[k]);
    std::vector<double> e(a.begin() + long(k * d), a.begin() + long(k * d + d));
    size_t big = 0;
    for (size_t i = 0; i < d; ++i)
      if (std::abs(e[i]) > std::abs(e[big])) big = i;
    if (e[big] < 0)
      for (double& x : e) x = -x;
    vectors.push_back(std::move(e));
  }
}

}  // namespace regula

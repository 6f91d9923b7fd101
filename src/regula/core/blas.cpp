#include "regula/core/blas.hpp"

#include <cblas.h>

#include <mutex>

namespace regula {

void set_blas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

}  // namespace regula

#pragma once
#include <cstddef>
#include <vector>

namespace regula {

// Sets OpenBLAS to one thread (once per process). Called before every BLAS product of the library
// (the E-step's scores and sums, the picker's paired transforms): we parallelise over batches
// ourselves, which keeps results independent of the thread count and avoids oversubscription.
void set_blas_single_threaded();

// Eigen-decomposition of a symmetric d x d matrix (row-major; LAPACK's dsyev, one thread): eigenvalues in
// decreasing order and the eigenvectors (rows), each with its largest-magnitude element positive.
void symmetric_eigen(std::vector<double> a, size_t d, std::vector<double>& values,
                     std::vector<std::vector<double>>& vectors);

}  // namespace regula

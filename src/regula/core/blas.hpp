#pragma once

namespace regula {

// Sets OpenBLAS to one thread (once per process). Called before every BLAS product of the library
// (the E-step's scores and sums, the picker's paired transforms): we parallelise over batches
// ourselves, which keeps results independent of the thread count and avoids oversubscription.
void set_blas_single_threaded();

}  // namespace regula

// Inverse 2D DFTs of two real square images at once, for sizes with a large prime factor.
//
// Template picking correlates a micrograph with every reference at every in-plane angle on RELION's
// working grid, whose size may have prime factors up to 43 (820 = 4 x 5 x 41 for a 4096 px
// micrograph at 2 Å/px low-passed to 20 Å). FFTW_ESTIMATE, the planner mode that gives the same plan
// (and so the same numbers) in every run, does such a factor by Rader's algorithm, scalar code that
// spends about half of the picker's time there. This class computes the same transforms by the
// Cooley-Tukey split n = p m along each axis: the m-point transforms by FFTW, the twiddles, then the
// p-point DFTs as matrix products (SGEMM) with the p-point transform's cosine and sine halves
// (y[t] and y[p-t] from x[k] +- x[p-k]: (p-1)^2 real multiply-adds per complex point instead of
// p^2 complex ones). Two real images go through one complex transform (A + iB: the real part of
// the result is a, the imaginary part b), the natural pairing of the picker's psi and psi + 180°.
//
// The result equals fft_inverse's (the 1/n^2 normalisation included) to single-precision rounding;
// it is deterministic (no timed planning) and independent of threads (each object is used by one
// thread; objects are not shared).
#pragma once
#include <fftw3.h>

#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

class PairedInverseDft {
 public:
  // The largest prime factor of n (n >= 2).
  static int largest_prime_factor(int n);
  // Whether this class is faster than FFTW_ESTIMATE for n x n (even n, largest prime factor >= 17).
  static bool preferred(int n);
  explicit PairedInverseDft(int n);
  ~PairedInverseDft();
  PairedInverseDft(const PairedInverseDft&) = delete;
  PairedInverseDft& operator=(const PairedInverseDft&) = delete;

  int size() const { return n_; }
  // a = fft_inverse(A, n) and b = fft_inverse(B, n): A and B are half-plane transforms of real
  // n x n images ((n/2 + 1) x n, fft_forward's layout). As FFTW's complex-to-real transform, the
  // parts of A and B that are not Hermitian (the columns kx = 0 and n/2) count through their
  // Hermitian halves.
  void inverse(const Grid<cfloat>& A, const Grid<cfloat>& B, Grid<float>& a, Grid<float>& b);

 private:
  void release();  // plans and buffers (destructor, and a constructor that fails)
  void build(const Grid<cfloat>& A, const Grid<cfloat>& B);
  void pass_columns();
  void pass_rows(Grid<float>& a, Grid<float>& b);

  int n_, p_, m_, h_;
  std::vector<cfloat> twiddle_;         // [k1 * m + t2] = exp(2 pi i k1 t2 / n)
  std::vector<float> cos_, sin_;        // h x h: cos / sin(2 pi (k + 1)(t + 1) / p)
  cfloat* z_ = nullptr;                 // n x n full-plane buffer (FFTW-allocated)
  cfloat* y_ = nullptr;                 // n x n, after the column pass
  std::vector<float> u_, v_, au_, bv_;  // the p-point stage's operands and products
  fftwf_plan cols_ = nullptr, rows_ = nullptr;
};

}  // namespace regula

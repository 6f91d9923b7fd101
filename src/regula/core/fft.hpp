// Real <-> half-complex FFTs over FFTW3 single precision.
//
// Layout: for a real grid nx*ny*nz, the transform has (nx/2+1)*ny*nz complex
// values, x fastest (FFTW's r2c layout). Frequencies along y and z are stored
// in FFT order: index j holds frequency j for j <= n/2, j - n otherwise.
//
// Convention: forward is unnormalised, F(k) = sum_x f(x) exp(-2 pi i k.x / n);
// inverse includes 1/N, so inverse(forward(f)) == f. The array origin is at
// index 0; to put the real-space origin at the image centre (n/2, as RELION),
// use centre_origin() (multiplies by (-1)^(kx+ky+kz), exact for even n).
//
// Plans are created once per (shape, threads) and cached; planning is guarded
// by a mutex and execution uses the new-array interface, so the functions are
// safe to call from several threads at once.
#pragma once
#include <cstddef>
#include <functional>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

Grid<cfloat> fft_forward(const Grid<float>& in, int nthreads = 1);
// Runs `plan` (code that creates or destroys FFTW plans of its own, e.g. fftwf_plan_guru_dft) under
// the lock that guards FFTW's planner here, with single-threaded plans: FFTW's planner is not
// thread-safe, and every plan of the process must be made under one lock.
void with_fftw_planner(const std::function<void()>& plan);
// `nx` is the real size along x (needed because nx/2+1 is ambiguous).
Grid<float> fft_inverse(const Grid<cfloat>& in, int nx, int nthreads = 1);

// In-place transforms of large grids (one buffer instead of two; FFTW's in-place layout): `buf`
// holds (nx/2+1) * ny * nz complex values; the real grid nx * ny * nz lives in the same memory with
// rows of 2 * (nx/2+1) floats (real_at). fft_forward_inplace: real -> transform (unnormalised);
// fft_inverse_inplace: transform -> real (with 1/N). Volumes go as the planes' 2D transforms and the
// z columns in blocks, split over `nthreads`: the result is the same for any thread count.
void fft_forward_inplace(Grid<cfloat>& buf, int nx, int nthreads = 1);
void fft_inverse_inplace(Grid<cfloat>& buf, int nx, int nthreads = 1);
inline float& real_at(Grid<cfloat>& buf, int x, int y, int z) {
  return reinterpret_cast<float*>(buf.data())[(size_t(z) * size_t(buf.ny()) + size_t(y)) * size_t(2 * buf.nx()) + size_t(x)];
}
// The same into existing grids, for loops that transform many grids of one shape: `out` is
// reshaped only when its shape differs (no allocation otherwise). fft_inverse_destroy overwrites
// `in` (FFTW's complex-to-real transform uses it as scratch) instead of copying it.
void fft_forward(const Grid<float>& in, Grid<cfloat>& out, int nthreads = 1);
void fft_inverse_destroy(Grid<cfloat>& in, int nx, Grid<float>& out, int nthreads = 1);
// The transforms of `count` n x n real images cropped to m x m (m <= n, m even), i.e. for each image
// fft_forward followed by imaging/filter.hpp's window_fourier(F, n, m): coefficients (kx, ky) with
// 0 <= kx <= m/2 and ky = fft_freq(iy, m) (the +m/2 row included), computed from the images' rows
// without forming their full transforms: one transform per row, kept for kx <= m/2 only, then
// transforms along y of those m/2 + 1 columns only. `rows(y, out)` writes row y (n floats) of image
// c into out[c], c < count; it is called once per y, from several threads at once when nthreads > 1.
std::vector<Grid<cfloat>> fft_forward_cropped(int n, int m, int count,
                                              const std::function<void(int y, float* const* out)>& rows,
                                              int nthreads = 1);

// In-place origin change for a transform whose real-space origin is at index
// n/2 (integer division) along every axis, as RELION's images and maps.
// After fft_forward of a centred grid, centre_origin(F, nx) makes F the
// transform about that centre (so a centred delta has a flat, real transform).
// Before fft_inverse, centre_origin(F, nx, true) undoes it, so the inverse comes
// out centred. Even sizes: a sign (-1)^(kx+ky+kz); odd sizes: the exact phase.
void centre_origin(Grid<cfloat>& F, int nx, bool undo = false);

// Memory for the in-place transforms below, aligned as FFTW's SIMD code wants. resize() keeps
// the contents only when the size does not grow; new elements are not zeroed. Blocks of 4 MB and
// more come from BigAllocator (2 MB aligned, on transparent huge pages).
template <class T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(size_t n) { resize(n); }
  ~AlignedArray() { release(); }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  AlignedArray(AlignedArray&& o) noexcept : p_(o.p_), n_(o.n_), cap_(o.cap_) {
    o.p_ = nullptr;
    o.n_ = o.cap_ = 0;
  }
  AlignedArray& operator=(AlignedArray&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_; n_ = o.n_; cap_ = o.cap_;
      o.p_ = nullptr; o.n_ = o.cap_ = 0;
    }
    return *this;
  }
  void resize(size_t n);
  size_t size() const { return n_; }
  T* data() { return p_; }
  const T* data() const { return p_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }

 private:
  void release();
  // Blocks from BigAllocator (else fftwf_malloc), decided by the capacity.
  static bool big(size_t n) { return n * sizeof(T) >= BigAllocator<T>::kThreshold; }
  T* p_ = nullptr;
  size_t n_ = 0, cap_ = 0;
};
extern template class AlignedArray<float>;
extern template class AlignedArray<cfloat>;

// In-place 2D transforms of an nx x ny image (nx, ny even) stored in FFTW's in-place layout: rows
// of 2 (nx/2 + 1) floats, the last two unused. Forward: real -> half-complex, (nx/2+1) x ny complex
// values equal (to rounding) to fft_forward's. Inverse: half-complex -> real WITHOUT the factor
// 1/(nx ny). `data` must be aligned as AlignedArray's storage (offsets that are multiples of 16
// floats keep that). Rows go through one batched 1D plan and columns in blocks copied to a
// contiguous buffer (what FFTW's measured plans do, 2x faster here than its estimated 2D plans);
// every plan is made with FFTW_ESTIMATE, so results are the same in every run. Thread-safe; each
// call is single-threaded (run several images in parallel).
void fft2_forward_inplace(float* data, int nx, int ny);
void fft2_inverse_inplace(cfloat* data, int nx, int ny);
// The forward transform out of place: `in` nx x ny floats (rows nx apart, kept) into `out`, (nx/2 + 1)
// x ny complex values (rows nx/2 + 1 apart), the same values to rounding. With FFTW_ESTIMATE's plans
// the out-of-place rows are faster than the in-place ones at every size measured (96: 10 against 18
// us, 192: 23 against 29, 240: 40 against 61, 288: 44 against 73; the in-place plans of some sizes
// copy through a buffer allocated at each call). Arrays not 16-byte aligned go through a copy.
void fft2_forward(const float* in, int nx, int ny, cfloat* out);
// The inverse out of place: `in` (nx/2 + 1) x ny complex values (destroyed when both arrays are
// 16-byte aligned; otherwise they go through a copy, as fft2_forward's) into `out`, nx x ny floats
// (rows nx apart), WITHOUT the factor 1/(nx ny), as fft2_inverse_inplace. Out-of-place c2r rows are
// faster here too (96: 10 against 21 us, 192: 19 against 34, 288: 45 against 103).
void fft2_inverse(cfloat* in, int nx, int ny, float* out);

// Signed frequency for index i of an axis of length n in FFT order.
inline int fft_freq(int i, int n) { return i <= n / 2 ? i : i - n; }
// Index in FFT order for signed frequency f of an axis of length n.
inline int fft_index(int f, int n) { return f >= 0 ? f : f + n; }

// The smallest size >= m (and >= 1) whose prime factors are all at most `largest_prime` (5: FFTW's
// fastest sizes; 7 allowed too), even when `even`.
int fft_friendly_size(int m, bool even = false, int largest_prime = 5);

}  // namespace regula

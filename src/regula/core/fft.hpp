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
#include "regula/core/grid.hpp"

namespace regula {

Grid<cfloat> fft_forward(const Grid<float>& in, int nthreads = 1);
// `nx` is the real size along x (needed because nx/2+1 is ambiguous).
Grid<float> fft_inverse(const Grid<cfloat>& in, int nx, int nthreads = 1);

// In-place transforms of large grids (one buffer instead of two; FFTW's in-place layout): `buf`
// holds (nx/2+1) * ny * nz complex values; the real grid nx * ny * nz lives in the same memory with
// rows of 2 * (nx/2+1) floats (real_at). fft_forward_inplace: real -> transform (unnormalised);
// fft_inverse_inplace: transform -> real (with 1/N).
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

// In-place origin change for a transform whose real-space origin is at index
// n/2 (integer division) along every axis, as RELION's images and maps.
// After fft_forward of a centred grid, centre_origin(F, nx) makes F the
// transform about that centre (so a centred delta has a flat, real transform).
// Before fft_inverse, centre_origin(F, nx, true) undoes it, so the inverse comes
// out centred. Even sizes: a sign (-1)^(kx+ky+kz); odd sizes: the exact phase.
void centre_origin(Grid<cfloat>& F, int nx, bool undo = false);

// Signed frequency for index i of an axis of length n in FFT order.
inline int fft_freq(int i, int n) { return i <= n / 2 ? i : i - n; }
// Index in FFT order for signed frequency f of an axis of length n.
inline int fft_index(int f, int n) { return f >= 0 ? f : f + n; }

}  // namespace regula

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
#include <functional>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

Grid<cfloat> fft_forward(const Grid<float>& in, int nthreads = 1);
// `nx` is the real size along x (needed because nx/2+1 is ambiguous).
Grid<float> fft_inverse(const Grid<cfloat>& in, int nx, int nthreads = 1);

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

// Signed frequency for index i of an axis of length n in FFT order.
inline int fft_freq(int i, int n) { return i <= n / 2 ? i : i - n; }
// Index in FFT order for signed frequency f of an axis of length n.
inline int fft_index(int f, int n) { return f >= 0 ? f : f + n; }

}  // namespace regula

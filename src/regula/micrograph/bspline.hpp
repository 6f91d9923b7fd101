// Cubic B-spline interpolation of images (Unser 1999): the image is first turned into B-spline
// coefficients by a recursive prefilter along rows and columns (pole sqrt(3) - 2, mirrored
// boundaries), after which the interpolant passes exactly through every pixel and its frequency
// response stays close to 1 up to about 0.7 Nyquist (far better than bilinear interpolation, whose
// response at half Nyquist is already 0.81 for a half-pixel shift). Used to apply or undo smooth,
// sub-pixel local motion without losing the high frequencies that matter for CTF and alignment.
#pragma once
#include "regula/core/grid.hpp"
#include "regula/core/parallel.hpp"

namespace regula {

// In place: pixel values -> cubic B-spline coefficients (nx, ny >= 2). With a pool, rows and
// columns in parallel (the same result).
void bspline_prefilter(Grid<float>& img);
void bspline_prefilter(Grid<float>& img, ThreadPool& pool);

// Value of the interpolant at (x, y) (pixels; (0, 0) is the centre of the first pixel) from
// prefiltered coefficients; positions outside the image use mirrored coefficients.
float bspline_sample(const Grid<float>& coeff, double x, double y);

// The prefilter for a periodic image, in Fourier space: multiplies the half-complex spectrum
// ((nx/2+1) x ny, FFT-order rows) of an nx x ny image by 1 / (B(kx) B(ky)), B(k) = (4 + 2 cos(2 pi k / n)) / 6,
// so that its inverse transform holds the periodic B-spline coefficients (the same as
// bspline_prefilter but for the boundaries: periodic instead of mirrored), times `scale`.
void bspline_prefilter_spectrum(cfloat* spec, int nx, int ny, float scale = 1.0f);

// Adds to out[x], x = 0 .. nx-1, the interpolant of periodic coefficients (nx x ny, row r at
// coeff + r * stride) at (x - dx[x], y - dy[x]).
void bspline_add_row_periodic(const float* coeff, size_t stride, int nx, int ny, int y, const float* dx,
                              const float* dy, float* out);

}  // namespace regula

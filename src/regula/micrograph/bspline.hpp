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

}  // namespace regula

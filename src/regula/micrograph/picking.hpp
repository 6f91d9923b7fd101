// What LoG and template picking share (RELION 3.1's AutoPicker): the working grid, the prepared
// micrograph and the picks.
//
// Working grid: a micrograph of nx x ny pixels is treated as a square of size = max(nx, ny) (the
// smaller side padded about the centre), Fourier-cropped to `work` pixels (scale = work / size):
//  * lowpass > 0 and shrink == 0: work = good size of 2 round(size * angpix / lowpass);
//  * 0 < shrink <= 1: work = good size of round(shrink * size) made even;
//  * shrink > 1: work = good size of round(shrink) made even (must be < size);
// where the good size is RELION's getGoodFourierDims (the nearest even size whose FFT, and that of
// its half + 1, have no prime factor of 43 or more, unless --skip_optimise_scale).
// A pixel (i, j) of a work-grid map (0-based, j along x) stands for the micrograph position
//   x = (j - work/2 + floor(int(nx * scale) / 2)) / scale, and the same for y with ny,
// RELION's formula (exact for square micrographs: x = j / scale; `scale` is a single-precision float
// as RELION's).
//
// Prepared micrograph (RELION's first steps of autoPickOneMicrograph): pixels farther than
// outlier_z standard deviations from the mean are set to the mean, then mean 0 and standard
// deviation 1 (population); a non-square micrograph is padded (about the centre) to the square with
// Gaussian noise N(0, 1).
#pragma once
#include <cstdint>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

struct Pick {
  double x = 0, y = 0;    // micrograph pixels
  double fom = 0;         // rlnAutopickFigureOfMerit
  int class_number = 0;   // rlnClassNumber (template picking: the reference, 1-based; LoG: 0)
  double psi = 0;         // rlnAnglePsi (degrees)
  double diameter = 0;    // LoG: the diameter (Å) of the best filter; template: 0
};

struct PickingGrid {
  int nx = 0, ny = 0;   // micrograph
  int size = 0;         // max(nx, ny)
  int work = 0;         // working size
  float scale = 1;      // work / size (single precision, as RELION)
  // Work-grid pixel -> micrograph coordinate (see above).
  double x_of(int j) const;
  double y_of(int i) const;
  // The work-grid index range [lo, hi] of pixels inside the micrograph minus `skip` work pixels.
  void valid_range(int skip, int& ilo, int& ihi, int& jlo, int& jhi) const;
};

// RELION's getGoodFourierDims(requested, limit).
int good_picking_size(int requested, int limit, bool optimise = true);

// The working grid for a micrograph (see above). InputError for a shrink that gives a size larger
// than the micrograph or below 2.
PickingGrid picking_grid(int nx, int ny, double angpix, double lowpass, double shrink, bool optimise_size);

// The prepared micrograph row by row: row y (0 <= y < size) of the prepared square times `sign`.
// The padding noise of row y is drawn from make_rng(noise_seed, y), so any row can be made alone.
class PreparedMicrograph {
 public:
  PreparedMicrograph(const Grid<float>& mic, double outlier_z, uint64_t noise_seed);
  int size() const { return size_; }
  double mean() const { return avg_; }
  double stddev() const { return sd_; }
  void row(int y, float* out, float sign = 1.0f) const;

 private:
  const Grid<float>& mic_;
  double outlier_z_, avg_ = 0, sd_ = 1;
  uint64_t seed_;
  int size_ = 0, ox_ = 0, oy_ = 0;
};

// The prepared square micrograph (size x size).
Grid<float> prepare_for_picking(const Grid<float>& mic, double outlier_z, uint64_t noise_seed);

// The transforms of the prepared micrograph (times `sign`) and, with `squared`, of its square, on the
// working grid (our unnormalised FFT of the size x size image, windowed to work x work as RELION's
// windowFourierTransform), computed from the rows (core/fft.hpp fft_forward_cropped).
std::vector<Grid<cfloat>> prepared_transforms(const Grid<float>& mic, double outlier_z, uint64_t noise_seed,
                                              const PickingGrid& grid, float sign, bool squared, int nthreads);

}  // namespace regula

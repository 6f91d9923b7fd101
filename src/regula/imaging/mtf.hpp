// Detector modulation transfer function (MTF) curves as RELION reads them (relion_postprocess --mtf):
// a STAR table with rlnResolutionInversePixel (frequency in 1/detector pixel, increasing) and
// rlnMtfValue, linearly interpolated and held constant beyond its ends.
#pragma once
#include <string>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

struct Mtf {
  std::vector<double> frequency;  // 1/detector pixel, increasing
  std::vector<double> value;

  // The first data block of a STAR file; InputError naming the file and row for a missing column,
  // fewer than 2 rows or frequencies that do not increase.
  static Mtf read(const std::string& path);
  // Linear interpolation at a frequency in 1/detector pixel (constant beyond the ends).
  double at(double frequency_per_detector_px) const;
};

// Divides every coefficient of an uncentred (or centred) half-complex transform of an n^3 map of
// pixel size `angpix` (Å) by the MTF at its frequency |k| / (n angpix) * detector_angpix;
// coefficients where the MTF is not positive are left unchanged.
void divide_by_mtf(Grid<cfloat>& F, int n, double angpix, const Mtf& mtf, double detector_angpix);

}  // namespace regula

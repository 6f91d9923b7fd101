#include "regula/micrograph/extract.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/imaging/filter.hpp"

namespace regula {

ExtractStatus extract_box(const Grid<float>& mic, double x, double y, int n, Grid<float>& out) {
  if (n < 2 || n % 2) input_error("extract: the box size must be even and at least 2 px (got {})", n);
  if (mic.nz() != 1) input_error("extract: the micrograph must be one image (got {} sections)", mic.nz());
  const int nx = mic.nx(), ny = mic.ny();
  if (!std::isfinite(x) || !std::isfinite(y) || std::abs(x) > 1e9 || std::abs(y) > 1e9) {
    out = Grid<float>();
    return ExtractStatus::Outside;
  }
  const long X = long(x), Y = long(y);  // truncation towards zero, as RELION's (long int) cast
  const long x0 = X - n / 2, y0 = Y - n / 2;
  const long x1 = x0 + n - 1, y1 = y0 + n - 1;
  if (x1 < 0 || x0 >= nx || y1 < 0 || y0 >= ny) {
    out = Grid<float>();
    return ExtractStatus::Outside;
  }
  const bool partial = x0 < 0 || y0 < 0 || x1 >= nx || y1 >= ny;
  if (out.nx() != n || out.ny() != n || out.nz() != 1) out = Grid<float>(n, n);
  for (int j = 0; j < n; ++j) {
    const long my = std::clamp<long>(y0 + j, 0, ny - 1);
    const float* row = mic.data() + size_t(my) * size_t(nx);
    float* dst = out.data() + size_t(j) * size_t(n);
    if (!partial) {
      std::copy(row + x0, row + x0 + n, dst);
      continue;
    }
    for (int i = 0; i < n; ++i) dst[i] = row[std::clamp<long>(x0 + i, 0, nx - 1)];
  }
  return partial ? ExtractStatus::Partial : ExtractStatus::Inside;
}

void apply_particle_ops(Grid<float>& img, const ParticleOps& ops, std::mt19937_64* rng) {
  if (ops.scale > 0 && ops.scale != img.nx()) img = rescale(img, ops.scale);
  if (ops.window > 0 && ops.window != img.nx()) img = window(img, ops.window);
  if (ops.norm) normalise_particle(img, ops.normalise, rng);
  if (ops.invert_contrast) invert_contrast(img);
}

}  // namespace regula

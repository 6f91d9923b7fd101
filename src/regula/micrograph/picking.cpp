#include "regula/micrograph/picking.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/filter.hpp"

namespace regula {
namespace {

int largest_prime(int q) {
  int i = 2, f = q;
  while (i * i <= f) {
    if (f % i != 0)
      ++i;
    else
      f /= i;
  }
  return f;
}

int size_prime(int n) { return std::max(largest_prime(n), largest_prime(n / 2 + 1)); }

// RELION's FIRST_XMIPP_INDEX(n): -(n / 2).
inline int first_index(int n) { return -int(float(n) / 2.0f); }

}  // namespace

int good_picking_size(int requested, int limit, bool optimise) {
  constexpr int kLargestPrime = 43;
  if (!optimise || size_prime(requested) <= kLargestPrime) return requested;
  int up = requested;
  while (size_prime(up) >= kLargestPrime && up <= limit + 2) up += 2;
  int down = requested;
  while (size_prime(down) >= kLargestPrime && down > 2) down -= 2;
  if (up - requested > requested - down || up > limit) return down;
  return up;
}

PickingGrid picking_grid(int nx, int ny, double angpix, double lowpass, double shrink, bool optimise) {
  PickingGrid g;
  g.nx = nx;
  g.ny = ny;
  g.size = std::max(nx, ny);
  const int downsize = lowpass > 0 ? 2 * int(std::lround(g.size * angpix / lowpass)) : g.size;
  int work;
  if (shrink > 1) {
    int t = int(std::lround(shrink));
    t -= t % 2;
    if (t >= g.size)
      input_error("--shrink {}: a working size of {} px is not smaller than the {} px micrograph", shrink, t, g.size);
    work = good_picking_size(t, g.size, optimise);
  } else if (shrink > 0) {
    int t = int(std::lround(shrink * g.size));
    t -= t % 2;
    work = good_picking_size(t, g.size, optimise);
  } else {
    work = good_picking_size(downsize, g.size, optimise);
  }
  work -= work % 2;
  if (work < 8) input_error("picking: a working size of {} px is too small (--lowpass/--shrink)", work);
  g.work = work;
  g.scale = float(work) / float(g.size);
  return g;
}

double PickingGrid::x_of(int j) const {
  return double(j + first_index(work) - first_index(int(float(nx) * scale))) / double(scale);
}
double PickingGrid::y_of(int i) const {
  return double(i + first_index(work) - first_index(int(float(ny) * scale))) / double(scale);
}

void PickingGrid::valid_range(int skip, int& ilo, int& ihi, int& jlo, int& jhi) const {
  const int wy = int(float(ny) * scale), wx = int(float(nx) * scale);
  // Logical (centred) indices FIRST(w) + skip .. LAST(w) - skip, LAST(w) = FIRST(w) + w - 1.
  ilo = first_index(wy) + skip - first_index(work);
  ihi = first_index(wy) + wy - 1 - skip - first_index(work);
  jlo = first_index(wx) + skip - first_index(work);
  jhi = first_index(wx) + wx - 1 - skip - first_index(work);
  ilo = std::max(ilo, 0);
  jlo = std::max(jlo, 0);
  ihi = std::min(ihi, work - 1);
  jhi = std::min(jhi, work - 1);
}

PreparedMicrograph::PreparedMicrograph(const Grid<float>& mic, double outlier_z, uint64_t noise_seed)
    : mic_(mic), outlier_z_(outlier_z), seed_(noise_seed) {
  if (mic.nz() != 1) input_error("picking: a micrograph must be one image, got {} sections", mic.nz());
  const size_t n = mic.size();
  double s = 0, s2 = 0;
  for (float v : mic) {
    s += v;
    s2 += double(v) * v;
  }
  avg_ = s / double(n);
  sd_ = std::sqrt(std::abs(s2 / double(n) - avg_ * avg_));
  if (!(sd_ > 0)) input_error("picking: the micrograph is flat (standard deviation 0)");
  size_ = std::max(mic.nx(), mic.ny());
  // The micrograph's logical centre (nx/2, ny/2) goes to (size/2, size/2).
  ox_ = size_ / 2 - mic.nx() / 2;
  oy_ = size_ / 2 - mic.ny() / 2;
}

void PreparedMicrograph::row(int y, float* out, float sign) const {
  const int nx = mic_.nx(), ny = mic_.ny();
  const int my = y - oy_;
  const bool inside_row = my >= 0 && my < ny;
  std::mt19937_64 rng;
  if (!inside_row || nx != size_) rng = make_rng(seed_, uint64_t(y));
  if (!inside_row) {
    for (int x = 0; x < size_; ++x) out[x] = sign * float(normal01(rng));
    return;
  }
  const float* src = mic_.data() + size_t(my) * size_t(nx);
  const double inv = 1.0 / sd_, lim = outlier_z_ * sd_;
  const float a = float(sign * inv), b = float(-sign * avg_ * inv);
  for (int x = 0; x < size_; ++x) {
    const int mx = x - ox_;
    if (mx < 0 || mx >= nx) {
      out[x] = sign * float(normal01(rng));
      continue;
    }
    const float v = src[mx];
    out[x] = std::abs(v - avg_) > lim ? 0.0f : a * v + b;
  }
}

Grid<float> prepare_for_picking(const Grid<float>& mic, double outlier_z, uint64_t noise_seed) {
  const PreparedMicrograph pm(mic, outlier_z, noise_seed);
  Grid<float> out(pm.size(), pm.size());
  for (int y = 0; y < pm.size(); ++y) pm.row(y, &out(0, y));
  return out;
}

std::vector<Grid<cfloat>> prepared_transforms(const Grid<float>& mic, double outlier_z, uint64_t noise_seed,
                                              const PickingGrid& g, float sign, bool squared, int nthreads) {
  const PreparedMicrograph pm(mic, outlier_z, noise_seed);
  const int size = pm.size();
  if (g.work <= size) {
    return fft_forward_cropped(size, g.work, squared ? 2 : 1, [&](int y, float* const* out) {
      pm.row(y, out[0], sign);
      if (squared)
        for (int x = 0; x < size; ++x) out[1][x] = out[0][x] * out[0][x];
    }, nthreads);
  }
  Grid<float> X(size, size);
  for (int y = 0; y < size; ++y) pm.row(y, &X(0, y), sign);
  std::vector<Grid<cfloat>> out;
  out.push_back(window_fourier(fft_forward(X, nthreads), size, g.work));
  if (squared) {
    for (auto& v : X) v *= v;
    out.push_back(window_fourier(fft_forward(X, nthreads), size, g.work));
  }
  return out;
}

}  // namespace regula

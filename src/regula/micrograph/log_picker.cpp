#include "regula/micrograph/log_picker.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

std::string LogPickOptions::validate() const {
  if (!(angpix > 0)) return fmt::format("--angpix: the micrograph pixel size must be positive (got {})", angpix);
  if (!(diam_min > 0)) return "--LoG_diam_min: the smallest particle diameter (Å) is required";
  if (!(diam_max >= diam_min))
    return fmt::format("--LoG_diam_max: the largest diameter (Å) is required and must be >= --LoG_diam_min (got {} and {})",
                       diam_max, diam_min);
  if (!(neighbour > 0)) return "--LoG_neighbour: must be positive";
  if (max_search < 1 || max_search > 20) return fmt::format("--Log_max_search: 1 to 20 (got {})", max_search);
  if (shrink < 0) return fmt::format("--shrink: must be >= 0 (got {})", shrink);
  if (outlier_z <= 0) return "--outlier_removal_zscore: must be positive";
  if (skip_side < 0) return "--skip_side: must be >= 0";
  return "";
}

std::vector<double> LogPickOptions::diameters() const {
  std::vector<double> d;
  for (int i = max_search; i > 1; --i) d.push_back(std::round(diam_min / i));
  d.push_back(diam_min);
  d.push_back((diam_max + diam_min) / 2.0);
  d.push_back(diam_max);
  for (int i = 2; i <= max_search; ++i) d.push_back(std::round(diam_max * i));
  return d;
}

namespace {

// Divides by the CTF up to its first peak (1 beyond it), as RELION's --LoG_use_ctf.
void divide_by_ctf_to_first_peak(Grid<cfloat>& F, int work, int size, double angpix, const CtfParams& p) {
  const Ctf ctf(p);
  const double inv = 1.0 / (size * angpix);
  for (int iy = 0; iy < work; ++iy) {
    const double ky = fft_freq(iy, work) * inv;
    for (int ix = 0; ix < F.nx(); ++ix) {
      const double g = ctf.gamma(ix * inv, ky);
      double c = std::abs(g) > (kPi / 2) ? 1.0 : -std::sin(g);
      if (std::abs(c) < 1e-8) c = c < 0 ? -1e-8 : 1e-8;
      F(ix, iy) /= float(c);
    }
  }
}

}  // namespace

LogPickResult pick_log(const Grid<float>& mic, const LogPickOptions& o, uint64_t noise_seed, int nthreads) {
  if (auto m = o.validate(); !m.empty()) throw InputError("LoG picking: " + m);
  LogPickResult res;
  const PickingGrid g = picking_grid(mic.nx(), mic.ny(), o.angpix, o.lowpass, o.shrink, o.optimise_size);
  res.grid = g;
  const int size = g.size, work = g.work;
  // Dark particles are inverted so that they give positive responses.
  Grid<cfloat> F = std::move(
      prepared_transforms(mic, o.outlier_z, noise_seed, g, o.white_particles ? 1.0f : -1.0f, false, nthreads)[0]);
  if (o.use_ctf) divide_by_ctf_to_first_peak(F, work, size, o.angpix, o.ctf);

  // RELION's transform is normalised by size^2 and its inverse is not; ours the other way round.
  const double norm = double(work) * work / (double(size) * size);
  const std::vector<double> diams = o.diameters();
  // Best response and its diameter per pixel over the ladder of diameters, taken in order (the first
  // diameter of the ladder wins ties); one filtered transform and one map at a time, reused.
  const size_t npx = size_t(work) * size_t(work);
  Grid<float> best(work, work, 1, -999.0f), map;
  std::vector<float> best_d(npx, -999.0f);
  Grid<cfloat> G(F.nx(), F.ny());
  ThreadPool pool(std::max(1, nthreads));
  for (double diam : diams) {
    const double is = 0.5 * size * o.angpix / diam;
    const double is2 = is * is;
    pool.parallel_for(0, size_t(work), [&](size_t y, int) {
      const int iy = int(y);
      const double ky = fft_freq(iy, work);
      for (int ix = 0; ix < G.nx(); ++ix) {
        const double r2 = double(ix) * ix + ky * ky;
        G(ix, iy) = F(ix, iy) * float(norm * r2 * std::exp(-0.5 * r2 / is2) / is2);
      }
    }, 16);
    fft_inverse_destroy(G, work, map);  // single-threaded plans: the same numbers for any --j
    const float d = float(diam);
    for (size_t p = 0; p < npx; ++p)
      if (map[p] > best[p]) {
        best[p] = map[p];
        best_d[p] = d;
      }
  }

  // Edges: RELION keeps at least half the smallest diameter from the sides.
  const int skip_px = int(std::max(double(o.skip_side), 0.5 * o.diam_min / o.angpix));
  const int skip = int(float(skip_px) * g.scale);
  if (skip > 0) {
    int ilo, ihi, jlo, jhi;
    g.valid_range(skip, ilo, ihi, jlo, jhi);
    for (int i = 0; i < work; ++i)
      for (int j = 0; j < work; ++j)
        if (i < ilo || i > ihi || j < jlo || j > jhi) best(j, i) = 0.0f;
  }
  // Diameters outside the range: 0; statistics of the pixels inside it.
  double s = 0, s2 = 0, cnt = 0;
  for (size_t p = 0; p < npx; ++p) {
    if (best_d[p] > o.diam_max || best_d[p] < o.diam_min) {
      best[p] = 0.0f;
    } else {
      s += best[p];
      s2 += double(best[p]) * best[p];
      cnt += 1;
    }
  }
  if (cnt == 0) return res;
  res.fom_mean = s / cnt;
  res.fom_stddev = std::sqrt(std::max(0.0, s2 / cnt - res.fom_mean * res.fom_mean));
  const float threshold = float(res.fom_mean + o.adjust_threshold * res.fom_stddev);
  const float upper = float(res.fom_mean + o.upper_threshold * res.fom_stddev);
  res.threshold = threshold;
  res.upper = upper;

  // Greedy picking. Repeatedly taking the first maximum in row-major order (RELION's maxIndex) is
  // the same as visiting the positive pixels by decreasing value, then increasing index, and
  // skipping those already cleared.
  std::vector<uint32_t> order;
  for (size_t p = 0; p < npx; ++p) {
    if (best[p] < threshold) best[p] = 0.0f;
    if (best[p] > 0.0f) order.push_back(uint32_t(p));
  }
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return best[a] > best[b] || (best[a] == best[b] && a < b);
  });
  for (uint32_t p : order) {
    const float v = best[p];
    if (!(v > 0.0f)) continue;
    const int i = int(p / uint32_t(work)), j = int(p % uint32_t(work));
    if (v < upper) {
      Pick pk;
      pk.x = g.x_of(j);
      pk.y = g.y_of(i);
      pk.fom = v;
      pk.diameter = best_d[p];
      res.picks.push_back(pk);
    }
    const long rad = std::lround(g.scale * (best_d[p] + o.diam_min) * o.neighbour / 2.0 / o.angpix);
    const long rad2 = rad * rad;
    for (long ii = std::max(0L, i - rad); ii <= std::min<long>(work - 1, i + rad); ++ii)
      for (long jj = std::max(0L, j - rad); jj <= std::min<long>(work - 1, j + rad); ++jj)
        if ((ii - i) * (ii - i) + (jj - j) * (jj - j) < rad2) best(int(jj), int(ii)) = 0.0f;
  }
  return res;
}

}  // namespace regula

#include "regula/imaging/local_resolution.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mask.hpp"

namespace regula {

namespace {

// A value per shell 0..n/2 of the whole box from a curve per shell 0..m/2 of a window of side m:
// linear interpolation at the same spatial frequency (shell i of n is shell i m / n of m).
std::vector<double> resample_shells(const std::vector<double>& f, int m, int n) {
  std::vector<double> out(size_t(n / 2 + 1));
  const size_t last = f.size() - 1;
  for (size_t i = 0; i < out.size(); ++i) {
    const double x = double(i) * m / n;
    const size_t j = std::min(size_t(x), last);
    const double t = x - double(j);
    out[i] = j + 1 <= last ? (1 - t) * f[j] + t * f[j + 1] : f[last];
  }
  return out;
}

// The window's weights on the cube of side 2 r2 + 1 about its centre.
struct Window {
  int r1 = 0, r2 = 0;  // flat radius, outer radius (pixels)
  int side = 1;
  std::vector<float> kernel;
  Window(int flat, int edge) : r1(flat), r2(flat + edge), side(2 * (flat + edge) + 1) {
    kernel.resize(size_t(side) * size_t(side) * size_t(side));
    size_t i = 0;
    for (int dz = -r2; dz <= r2; ++dz)
      for (int dy = -r2; dy <= r2; ++dy)
        for (int dx = -r2; dx <= r2; ++dx)
          kernel[i++] = float(soft_edge_value(std::sqrt(double(dx * dx + dy * dy + dz * dz)), flat, edge));
  }
  const float* row(int dy, int dz) const { return kernel.data() + (size_t(dz + r2) * side + size_t(dy + r2)) * side + r2; }
};

// out(x) += sum_p w_p(x) value_p (times field(x) when given) over the points `which`, in that order
// for every voxel; z-slabs in parallel.
void accumulate(Grid<float>& out, const std::vector<LocalResolutionPoint>& points, const std::vector<size_t>& which,
                const std::vector<double>& value, const Window& win, ThreadPool& pool,
                const Grid<float>* field = nullptr) {
  const int n = out.nx(), c = n / 2;
  pool.parallel_for(0, size_t(n), [&](size_t zi, int) {
    const int z = int(zi);
    for (size_t w = 0; w < which.size(); ++w) {
      const auto& p = points[which[w]].position;
      const int dz = z - c - p[2];
      if (std::abs(dz) > win.r2) continue;
      const float v = float(value[w]);
      const int y0 = std::max(0, c + p[1] - win.r2), y1 = std::min(n - 1, c + p[1] + win.r2);
      const int x0 = std::max(0, c + p[0] - win.r2), x1 = std::min(n - 1, c + p[0] + win.r2);
      const int cx = c + p[0];
      for (int y = y0; y <= y1; ++y) {
        const float* k = win.row(y - c - p[1], dz);  // k[x - cx]: the weight at box x
        float* o = out.data() + out.index(0, y, z);
        if (field) {
          const float* f = field->data() + field->index(0, y, z);
          for (int x = x0; x <= x1; ++x) o[x] += k[x - cx] * v * f[x];
        } else {
          for (int x = x0; x <= x1; ++x) o[x] += k[x - cx] * v;
        }
      }
    }
  });
}

// Buffers of one thread for window_fsc (allocated once).
struct FscWork {
  Grid<float> wa, wb;
  Grid<cfloat> A, B;
};

// The FSC of two half maps inside the window about point p, per shell 0..n/2 of the whole box: the
// windowed maps are placed in an m^3 box (about its centre; m = n: where they are in the map).
std::vector<double> window_fsc(const Grid<float>& a, const Grid<float>& b, const std::array<int, 3>& p, int m,
                               const Window& win, const std::vector<int16_t>& shells, FscWork& work) {
  const int n = a.nx(), c = n / 2;
  Grid<float>& wa = work.wa;
  Grid<float>& wb = work.wb;
  if (wa.nx() != m) wa = wb = Grid<float>(m, m, m);
  wa.fill(0);
  wb.fill(0);
  const int shift[3] = {m == n ? c + p[0] : m / 2, m == n ? c + p[1] : m / 2, m == n ? c + p[2] : m / 2};
  for (int dz = -win.r2; dz <= win.r2; ++dz) {
    const int bz = c + p[2] + dz;
    if (bz < 0 || bz >= n) continue;
    for (int dy = -win.r2; dy <= win.r2; ++dy) {
      const int by = c + p[1] + dy;
      if (by < 0 || by >= n) continue;
      const float* k = win.row(dy, dz);
      const float* ra = a.data() + a.index(0, by, bz);
      const float* rb = b.data() + b.index(0, by, bz);
      float* oa = wa.data() + wa.index(0, shift[1] + dy, shift[2] + dz);
      float* ob = wb.data() + wb.index(0, shift[1] + dy, shift[2] + dz);
      const int dx0 = std::max(-win.r2, -(c + p[0])), dx1 = std::min(win.r2, n - 1 - (c + p[0]));
      for (int dx = dx0; dx <= dx1; ++dx) {
        oa[shift[0] + dx] = k[dx] * ra[c + p[0] + dx];
        ob[shift[0] + dx] = k[dx] * rb[c + p[0] + dx];
      }
    }
  }
  fft_forward(wa, work.A);
  fft_forward(wb, work.B);
  return resample_shells(fsc_fourier(work.A, work.B, shells), m, n);
}

// The local FSCs and resolutions of every point (in parallel over points).
void point_fscs(const Grid<float>& h1, const Grid<float>& h2, LocalResolutionResult& res,
                const LocalResolutionOptions& opt, const Window& win, ThreadPool& pool) {
  const int n = h1.nx();
  const size_t nshell = size_t(n / 2 + 1);
  const std::vector<int16_t> shells = fourier_shells(res.window);
  std::vector<FscWork> work(size_t(pool.size()));
  const int K = opt.randomisations;
  Progress progress("locres: local FSCs", double(res.points.size()) * (K + 1));
  pool.parallel_for(0, res.points.size(), [&](size_t i, int thread) {
    check_cancelled();
    LocalResolutionPoint& p = res.points[i];
    p.fsc_masked = window_fsc(h1, h2, p.position, res.window, win, shells, work[size_t(thread)]);
    p.fsc_random.assign(nshell, 0.0);
    progress.advance();
  });
  for (int k = 0; k < K; ++k) {
    const Grid<float> r1 = randomize_phases(h1, res.randomize_shell, opt.seed, 2 * uint64_t(k) + 1, opt.threads);
    const Grid<float> r2 = randomize_phases(h2, res.randomize_shell, opt.seed, 2 * uint64_t(k) + 2, opt.threads);
    pool.parallel_for(0, res.points.size(), [&](size_t i, int thread) {
      check_cancelled();
      LocalResolutionPoint& p = res.points[i];
      const std::vector<double> f = window_fsc(r1, r2, p.position, res.window, win, shells, work[size_t(thread)]);
      for (size_t s = 0; s < nshell; ++s) p.fsc_random[s] += f[s] / K;
      progress.advance();
    });
  }
  for (LocalResolutionPoint& p : res.points) {
    p.fsc_true.resize(nshell);
    for (size_t s = 0; s < nshell; ++s) {
      const double t = p.fsc_masked[s], r = p.fsc_random[s];
      p.fsc_true[s] = int(s) < res.randomize_shell + 2 ? t : (t - r) / (1 - r);
    }
    double resolution = 999;
    for (size_t s = 0; s < nshell; ++s) {
      if (p.fsc_true[s] < 0.143) break;
      resolution = s > 0 ? n * opt.pixel_size / double(s) : 999;
    }
    p.resolution = std::min(opt.min_resolution, resolution);
  }
  progress.finish();
}

// The locally filtered map (before division by the summed window weights): one filter per distinct
// low-pass shell, with the mean FSC weighting of its points, weighted by the sum of their windows.
Grid<float> filtered_sum(const Grid<float>& h1, const Grid<float>& h2, const LocalResolutionResult& res,
                         const LocalResolutionOptions& opt, const Window& win, ThreadPool& pool) {
  const int n = h1.nx();
  const double px = opt.pixel_size;
  const size_t nshell = size_t(n / 2 + 1);
  Grid<cfloat> Fsum;
  {
    Grid<float> sum(n, n, n);
    for (size_t v = 0; v < sum.size(); ++v) sum[v] = h1[v] + h2[v];
    Fsum = fft_forward(sum, opt.threads);
  }
  if (opt.mtf) divide_by_mtf(Fsum, n, px, *opt.mtf, opt.mtf_pixel_size > 0 ? opt.mtf_pixel_size : px);
  if (opt.bfactor != 0) apply_bfactor(Fsum, opt.bfactor, px);
  std::map<long, std::vector<size_t>> classes;
  for (size_t i = 0; i < res.points.size(); ++i) classes[std::lround(n * px / res.points[i].resolution)].push_back(i);
  // |k| of every coefficient, for the filters.
  std::vector<float> radius(Fsum.size());
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x <= n / 2; ++x) {
        const int kz = fft_freq(z, n), ky = fft_freq(y, n);
        radius[Fsum.index(x, y, z)] = float(std::sqrt(double(x * x + ky * ky + kz * kz)));
      }
  Grid<float> out(n, n, n), M;
  Grid<cfloat> F;
  Progress progress("locres: filtering", double(classes.size()));
  for (const auto& [shell, members] : classes) {
    check_cancelled();
    std::vector<double> mean_fsc(nshell, 0.0);
    for (size_t i : members)
      for (size_t s = 0; s < nshell; ++s) mean_fsc[s] += res.points[i].fsc_true[s] / double(members.size());
    const std::vector<double> w = fsc_weights(mean_fsc);
    const double resolution = res.points[members.front()].resolution;
    F = Fsum;
    pool.parallel_for(0, size_t(n), [&](size_t z, int) {
      const size_t a = z * size_t(n) * F.nx(), b = a + size_t(n) * F.nx();
      for (size_t v = a; v < b; ++v) {
        const size_t i = size_t(std::lround(radius[v]));
        F[v] *= i < w.size() ? float(w[i] * low_pass_gain(radius[v], n, resolution, px, opt.filter_edge_width)) : 0.0f;
      }
    });
    fft_inverse_destroy(F, n, M, opt.threads);
    accumulate(out, res.points, members, std::vector<double>(members.size(), 1.0), win, pool, &M);
    progress.advance();
  }
  progress.finish();
  return out;
}

}  // namespace

LocalResolutionResult local_resolution(const Grid<float>& h1, const Grid<float>& h2,
                                       const LocalResolutionOptions& opt) {
  const int n = h1.nx();
  if (h1.ny() != n || h1.nz() != n || n % 2 || n < 8)
    input_error("local resolution: half maps must be cubic with an even box of at least 8 (got {}x{}x{})", h1.nx(),
                h1.ny(), h1.nz());
  if (!h2.same_shape(h1))
    input_error("local resolution: the half maps differ in size ({}x{}x{} and {}x{}x{})", h1.nx(), h1.ny(), h1.nz(),
                h2.nx(), h2.ny(), h2.nz());
  const double px = opt.pixel_size;
  if (!(px > 0)) input_error("local resolution: pixel size {} must be positive", px);
  if (opt.randomisations < 1) input_error("local resolution: at least one phase randomisation is needed");
  if (!(opt.sampling > 0) || !(opt.randomize_at > 0) || !(opt.min_resolution > 0))
    input_error("local resolution: sampling, randomisation resolution and lowest resolution must be positive");
  const double mask_radius = opt.mask_radius < 0 ? 0.5 * opt.sampling : opt.mask_radius;
  const double edge_width = opt.edge_width < 0 ? opt.sampling : opt.edge_width;

  LocalResolutionResult res;
  res.step = std::max(1, int(std::lround(opt.sampling / px)));
  res.mask_radius_px = int(std::lround(mask_radius / px));
  res.edge_px = int(std::lround(edge_width / px));
  res.randomize_shell = int(n * px / opt.randomize_at);
  const Window win(res.mask_radius_px, res.edge_px);
  const int myrad = n / 2 - res.mask_radius_px;
  if (myrad <= 0)
    input_error("local resolution: the window radius {} Å ({} px) leaves no sampling points in a {} px box", mask_radius,
                res.mask_radius_px, n);
  res.window = opt.fsc_box > 0 ? opt.fsc_box : std::min(n, fft_friendly_size(2 * win.r2 + 2, true));
  if (res.window < 2 * win.r2 + 2 && res.window != n)
    input_error("local resolution: a box of {} px for the local FSCs cannot hold the window (radius {} + {} px; "
                "at least {} px, or the map's box {})", res.window, res.mask_radius_px, res.edge_px, 2 * win.r2 + 2, n);
  if (res.window > n || res.window % 2)
    input_error("local resolution: the box for the local FSCs must be even and at most the map's box {} (got {})", n,
                res.window);

  // Sampling points, in RELION's order (z, then y, then x).
  for (int z = -n / 2; z <= n / 2 - 1; z += res.step)
    for (int y = -n / 2; y <= n / 2 - 1; y += res.step)
      for (int x = -n / 2; x <= n / 2 - 1; x += res.step)
        if (float(std::sqrt(double(x * x + y * y + z * z))) < float(myrad)) {
          LocalResolutionPoint p;
          p.position = {x, y, z};
          res.points.push_back(std::move(p));
        }
  if (res.points.empty()) input_error("local resolution: no sampling points (box {} px, step {} px)", n, res.step);

  ThreadPool pool(opt.threads);
  res.fsc_unmasked = fsc_fourier(fft_forward(h1, opt.threads), fft_forward(h2, opt.threads));
  point_fscs(h1, h2, res, opt, win, pool);

  // Local resolution: the weighted harmonic mean of the points' resolutions.
  std::vector<size_t> all(res.points.size());
  std::vector<double> ones(all.size(), 1.0), inverse(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    all[i] = i;
    inverse[i] = 1.0 / res.points[i].resolution;
  }
  Grid<float> sumw(n, n, n), suminv(n, n, n);
  accumulate(sumw, res.points, all, ones, win, pool);
  accumulate(suminv, res.points, all, inverse, win, pool);
  const Grid<float> fsum = filtered_sum(h1, h2, res, opt, win, pool);

  res.local_resolution = Grid<float>(n, n, n);
  res.filtered = Grid<float>(n, n, n);
  for (size_t v = 0; v < sumw.size(); ++v) {
    if (!(sumw[v] > 0)) continue;
    res.local_resolution[v] = float(sumw[v] / suminv[v]);
    res.filtered[v] = fsum[v] / sumw[v];
  }
  return res;
}

}  // namespace regula

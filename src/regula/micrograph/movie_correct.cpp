#include "regula/micrograph/movie_correct.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/micrograph/bspline.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/micrograph/motion_align.hpp"
#include "regula/micrograph/scene.hpp"

namespace regula {
namespace {

// Hot pixels (RELION's rule: above mean + 6 sd of the unaligned sum) and defects replaced by a
// random good neighbour within 2 px (or a draw of the frame's mean and sd when there are few).
void fix_pixels(CorrectInput& in, const CorrectParams& p, CorrectOutput& out, ThreadPool& pool) {
  const int nx = in.frames[0].nx(), ny = in.frames[0].ny();
  const size_t npx = size_t(nx) * size_t(ny);
  Grid<unsigned char> bad = in.bad.empty() ? Grid<unsigned char>(nx, ny) : in.bad;
  std::vector<double> sum(npx, 0.0);
  for (auto& f : in.frames)
    for (size_t k = 0; k < npx; ++k) sum[k] += f[k];
  double mean = 0, sd = 0;
  for (double v : sum) mean += v;
  mean /= double(npx);
  for (double v : sum) sd += (v - mean) * (v - mean);
  sd = std::sqrt(sd / double(npx));
  const double thr = mean + 6 * sd;
  int nhot = 0;
  for (size_t k = 0; k < npx; ++k)
    if (sum[k] > thr && !bad[k]) {
      bad[k] = 1;
      out.hot_x.push_back(int(k % size_t(nx)));
      out.hot_y.push_back(int(k / size_t(nx)));
      ++nhot;
    }
  std::vector<size_t> list;
  for (size_t k = 0; k < npx; ++k)
    if (bad[k]) list.push_back(k);
  out.log += fmt::format("unaligned sum: mean {:.4g}, sd {:.4g}; {} hot pixels above {:.4g}; {} pixels replaced\n", mean,
                         sd, nhot, thr, list.size());
  const double fmean = mean / double(in.frames.size()), fsd = sd / double(in.frames.size());
  pool.parallel_for(0, in.frames.size(), [&](size_t f, int) {
    auto g = make_rng(p.seed, p.stream, 1000 + f);
    Grid<float>& fr = in.frames[f];
    float buf[25];
    for (size_t k : list) {
      const int x = int(k % size_t(nx)), y = int(k / size_t(nx));
      int n = 0;
      for (int dy = -2; dy <= 2; ++dy)
        for (int dx = -2; dx <= 2; ++dx) {
          const int xx = x + dx, yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= nx || yy >= ny || bad(xx, yy)) continue;
          buf[n++] = fr(xx, yy);
        }
      fr[k] = n > 6 ? buf[g() % uint64_t(n)] : float(fmean + fsd * normal01(g));
    }
  });
}

// Fourier crop of a half-complex transform of nx x ny to mx x my (both even).
Grid<cfloat> crop(const Grid<cfloat>& F, int my, int mx) {
  Grid<cfloat> out(mx / 2 + 1, my);
  const int ny = F.ny();
  for (int j = 0; j < my; ++j) {
    const int ky = fft_freq(j, my);
    if (ky == my / 2) continue;  // Nyquist row of the smaller grid: left 0
    const int sj = fft_index(ky, ny);
    for (int i = 0; i < mx / 2 + 1; ++i) out(i, j) = F(i, sj);
  }
  return out;
}

// RELION's grouping: n_frames / group groups, the remainder spread over the last groups (never
// the first, where motion is fastest).
void make_groups(int n, int group, std::vector<int>& start, std::vector<int>& size) {
  const int ng = n / group;
  start.assign(size_t(ng), 0);
  size.assign(size_t(ng), group);
  int rem = n % group;
  while (rem > 0)
    for (int i = ng - 1; i >= 1 && rem > 0; --i, --rem) ++size[size_t(i)];
  for (int i = 1; i < ng; ++i) start[size_t(i)] = start[size_t(i) - 1] + size[size_t(i) - 1];
}

// The power spectrum as RELION writes it: sum over groups of |F| of the group's (unaligned)
// sum, on the centred grid, resampled (by averaging into output bins) to ps_size at no less than
// 1.4 Å per pixel.
Grid<float> power_spectrum(const std::vector<Grid<cfloat>>& F, int nx, int ny, double angpix, int grouping, int ps_size,
                           double& ps_angpix) {
  const int nxh = nx / 2 + 1;
  Grid<double> amp(nxh, ny);
  for (size_t f0 = 0; f0 < F.size(); f0 += size_t(grouping)) {
    Grid<cfloat> s = F[f0];
    for (size_t f = f0 + 1; f < std::min(F.size(), f0 + size_t(grouping)); ++f)
      for (size_t k = 0; k < s.size(); ++k) s[k] += F[f][k];
    for (size_t k = 0; k < s.size(); ++k) amp[k] += std::abs(s[k]);
  }
  // Output grid: frequencies up to 1 / (2 max(angpix, 1.4)).
  const int sq = std::min(nx, ny);
  double pa = angpix;
  int needed = sq;
  if (angpix < 1.4) {
    needed = int(std::ceil(sq * angpix / 1.4));
    needed += needed % 2;
    pa = sq * angpix / needed;
  }
  ps_angpix = pa * double(needed) / ps_size;
  Grid<double> acc(ps_size, ps_size), cnt(ps_size, ps_size);
  const double scale = double(ps_size) * ps_angpix * angpix;  // output px per (cycle/px of the input) ... below
  (void)scale;
  for (int j = 0; j < ny; ++j) {
    const int ky = fft_freq(j, ny);
    for (int i = 0; i < nxh; ++i) {
      // frequency (1/Å) and its output pixel, for (i, ky) and its Hermitian mate.
      const double fx = i / (nx * angpix), fy = ky / (ny * angpix);
      for (int mate = 0; mate < 2; ++mate) {
        const double gx = mate ? -fx : fx, gy = mate ? -fy : fy;
        if (mate && (i == 0 || (nx % 2 == 0 && i == nx / 2))) continue;
        const int ox = int(std::lround(gx * ps_size * ps_angpix)) + ps_size / 2;
        const int oy = int(std::lround(gy * ps_size * ps_angpix)) + ps_size / 2;
        if (ox < 0 || oy < 0 || ox >= ps_size || oy >= ps_size) continue;
        acc(ox, oy) += amp(i, j);
        cnt(ox, oy) += 1;
      }
    }
  }
  Grid<float> ps(ps_size, ps_size);
  for (size_t k = 0; k < ps.size(); ++k) ps[k] = cnt[k] > 0 ? float(acc[k] / cnt[k]) : 0.0f;
  return ps;
}

}  // namespace

CorrectOutput correct_movie(CorrectInput& in, const CorrectParams& p, ThreadPool& pool) {
  CorrectOutput out;
  const int T = int(in.frames.size());
  if (T < 1) input_error("no frames to correct");
  const int nx0 = in.frames[0].nx(), ny0 = in.frames[0].ny();
  if (!p.skip_defect || !in.bad.empty()) fix_pixels(in, p, out, pool);

  // Fourier transforms, binned by cropping.
  const double bin = p.bin_factor;
  int nx = nx0, ny = ny0;
  if (std::abs(bin - 1) > 0.01) {
    nx = int(nx0 / bin);
    ny = int(ny0 / bin);
    nx -= nx % 2;
    ny -= ny % 2;
  }
  const double prescale = double(nx0) / nx;  // movie px per binned px
  std::vector<Grid<cfloat>> F(static_cast<size_t>(T));
  pool.parallel_for(0, size_t(T), [&](size_t f, int) {
    Grid<cfloat> full = fft_forward(in.frames[f]);
    in.frames[f] = Grid<float>();
    F[f] = (nx == nx0 && ny == ny0) ? std::move(full) : crop(full, ny, nx);
  });
  in.frames.clear();
  const double apix = p.angpix * prescale;
  out.out_angpix = apix;
  if (p.grouping_for_ps > 0) out.ps = power_spectrum(F, nx, ny, apix, p.grouping_for_ps, p.ps_size, out.ps_angpix);

  // Global alignment.
  AlignParams ap;
  ap.bfactor = p.bfactor / (prescale * prescale);
  ap.max_iterations = p.max_iter;
  std::vector<const Grid<cfloat>*> ptr;
  for (auto& g : F) ptr.push_back(&g);
  AlignParams gp = ap;
  gp.smoothness = p.smoothness;
  AlignResult g = align_frames(ptr, nx, ny, gp, pool);
  out.log += fmt::format("global alignment: {} iterations{}\n", g.iterations, g.converged ? "" : " (not converged)");
  out.shift_x.resize(size_t(T));
  out.shift_y.resize(size_t(T));
  for (int f = 0; f < T; ++f) {
    out.shift_x[size_t(f)] = g.sx[size_t(f)] * prescale;
    out.shift_y[size_t(f)] = g.sy[size_t(f)] * prescale;
  }
  // Globally aligned transforms (in place).
  pool.parallel_for(0, size_t(T), [&](size_t f, int) { shift_half_complex(F[f], nx, g.sx[f], g.sy[f]); });

  // Patches.
  if (p.patch_x > 2 && p.patch_y > 2) {
    std::vector<int> gs, gz;
    make_groups(T, std::max(1, p.group_frames), gs, gz);
    const int ng = int(gs.size());
    if (ng < 3) input_error("too few frames ({}) for groups of {}: at least 3 groups are needed", T, p.group_frames);
    std::vector<Grid<float>> groups(static_cast<size_t>(ng));
    pool.parallel_for(0, size_t(ng), [&](size_t gi, int) {
      Grid<cfloat> s = F[size_t(gs[gi])];
      for (int f = gs[gi] + 1; f < gs[gi] + gz[gi]; ++f)
        for (size_t k = 0; k < s.size(); ++k) s[k] += F[size_t(f)][k];
      groups[gi] = fft_inverse(s, nx);
    });
    const int pnx = (nx / p.patch_x) & ~1, pny = (ny / p.patch_y) & ~1;
    std::vector<double> oz, ox, oy, osx, osy;
    for (int iy = 0; iy < p.patch_y; ++iy)
      for (int ix = 0; ix < p.patch_x; ++ix) {
        const int x0 = ix * (nx / p.patch_x), y0 = iy * (ny / p.patch_y);
        std::vector<Grid<cfloat>> PF(static_cast<size_t>(ng));
        pool.parallel_for(0, size_t(ng), [&](size_t gi, int) {
          Grid<float> patch(pnx, pny);
          for (int y = 0; y < pny; ++y)
            for (int x = 0; x < pnx; ++x) patch(x, y) = groups[gi](x0 + x, y0 + y);
          PF[gi] = fft_forward(patch);
        });
        std::vector<const Grid<cfloat>*> pp;
        for (auto& q : PF) pp.push_back(&q);
        AlignResult a = align_frames(pp, pnx, pny, ap, pool);
        if (!a.converged)
          out.log += fmt::format("patch ({}, {}): not converged in {} iterations; used as it is\n", ix + 1, iy + 1,
                                 a.iterations);
        // Shifts at the groups' middle frames, re-centred so that the shift interpolated at the
        // first frame is 0 (RELION).
        const double c0 = gs[0] + gz[0] / 2.0, c1 = gs[1] + gz[1] / 2.0;
        const double sx0 = (a.sx[0] * c1 - a.sx[1] * c0) / (c1 - c0), sy0 = (a.sy[0] * c1 - a.sy[1] * c0) / (c1 - c0);
        const double cx = (x0 + x0 + pnx - 1) / 2, cy = (y0 + y0 + pny - 1) / 2;
        for (int gi = 0; gi < ng; ++gi) {
          oz.push_back(gs[size_t(gi)] + gz[size_t(gi)] / 2.0);
          ox.push_back(cx / nx - 0.5);
          oy.push_back(cy / ny - 0.5);
          osx.push_back(a.sx[size_t(gi)] - sx0);
          osy.push_back(a.sy[size_t(gi)] - sy0);
          out.local.push_back({oz.back() + in.frame_index[0] + 1, cx * prescale, cy * prescale,
                               osx.back() * prescale, osy.back() * prescale});
        }
      }
    groups.clear();
    PolynomialMotion m;
    if (fit_polynomial_motion(oz, ox, oy, osx, osy, m)) {
      double rx = 0, ry = 0;
      for (size_t i = 0; i < oz.size(); ++i) {
        double fx, fy;
        m.shift_at(oz[i], ox[i], oy[i], fx, fy);
        rx += (osx[i] - fx) * (osx[i] - fx);
        ry += (osy[i] - fy) * (osy[i] - fy);
      }
      rx = std::sqrt(rx / double(oz.size())) * prescale;
      ry = std::sqrt(ry / double(oz.size())) * prescale;
      out.log += fmt::format("local model: rms misfit {:.3f} / {:.3f} px over {} observations\n", rx, ry, oz.size());
      if (rx < 10 && ry < 10) {
        out.has_model = true;
        out.model = m;
      }
    } else {
      out.log += "local model: too few patch observations; none\n";
    }
  }

  // Sums: with the local model, the remaining shift of frame f at (x, y) is the model's.
  auto make_sum = [&](const std::vector<Grid<float>>* weights) {
    if (!out.has_model) {
      Grid<cfloat> s(nx / 2 + 1, ny);
      for (int f = 0; f < T; ++f)
        for (size_t k = 0; k < s.size(); ++k) s[k] += weights ? F[size_t(f)][k] * (*weights)[size_t(f)][k] : F[size_t(f)][k];
      return fft_inverse(s, nx, 2);
    }
    // Runs of consecutive frames whose model shifts differ by < 0.05 px everywhere.
    auto model_at = [&](double z, double x, double y, double& sx, double& sy) { out.model.shift_at(z, x, y, sx, sy); };
    std::vector<std::pair<int, int>> runs;
    for (int f = 0; f < T;) {
      int e = f + 1;
      while (e < T) {
        double worst = 0;
        for (int j = 0; j <= 4; ++j)
          for (int i = 0; i <= 4; ++i) {
            double ax, ay, bx, by;
            model_at(f, i / 4.0 - 0.5, j / 4.0 - 0.5, ax, ay);
            model_at(e, i / 4.0 - 0.5, j / 4.0 - 0.5, bx, by);
            worst = std::max(worst, std::hypot(ax - bx, ay - by));
          }
        if (worst >= 0.05) break;
        ++e;
      }
      runs.emplace_back(f, e);
      f = e;
    }
    Grid<float> total(nx, ny);
    std::vector<Grid<float>> parts(runs.size());
    pool.parallel_for(0, runs.size(), [&](size_t r, int) {
      const auto [f0, f1] = runs[r];
      Grid<cfloat> s(nx / 2 + 1, ny);
      for (int f = f0; f < f1; ++f)
        for (size_t k = 0; k < s.size(); ++k) s[k] += weights ? F[size_t(f)][k] * (*weights)[size_t(f)][k] : F[size_t(f)][k];
      Grid<float> img = fft_inverse(s, nx);
      bspline_prefilter(img);
      const double z = 0.5 * (f0 + f1 - 1);
      Grid<float> o(nx, ny);
      for (int y = 0; y < ny; ++y)
        for (int x = 0; x < nx; ++x) {
          double sx, sy;
          model_at(z, double(x) / nx - 0.5, double(y) / ny - 0.5, sx, sy);
          o(x, y) = bspline_sample(img, x - sx, y - sy);
        }
      parts[r] = std::move(o);
    });
    for (auto& q : parts)
      for (size_t k = 0; k < total.size(); ++k) total[k] += q[k];
    return total;
  };
  if (!p.dose_weighting || p.save_noDW) {
    Grid<float> s = make_sum(nullptr);
    (p.dose_weighting ? out.sum_noDW : out.sum) = std::move(s);
  }
  if (p.dose_weighting) {
    const double factor = dose_voltage_factor(p.voltage);
    std::vector<double> exposures(static_cast<size_t>(T));
    for (int f = 0; f < T; ++f)
      exposures[size_t(f)] = (p.preexposure + p.dose_per_frame * (in.frame_index[size_t(f)] + 1)) * factor;
    const std::vector<Grid<float>> w = dose_weights(nx, ny, apix, exposures);
    out.sum = make_sum(&w);
  }
  return out;
}

}  // namespace regula

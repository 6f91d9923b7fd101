#include "regula/micrograph/movie_correct.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>

#include <fmt/format.h>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/micrograph/bspline.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/micrograph/frame_sum.hpp"
#include "regula/micrograph/motion_align.hpp"

namespace regula {
namespace {

// Frames into the store (rows padded for the in-place transforms), times the gain; with several
// threads, each reads its frames with a reader of its own.
void read_frames(const CorrectInput& in, FrameStore& st, ThreadPool& pool) {
  const int nx = st.nx(), ny = st.ny();
  std::vector<std::unique_ptr<MovieReader>> readers(static_cast<size_t>(pool.size()));
  pool.parallel_for(0, size_t(in.count), [&](size_t f, int thread) {
    MovieReader* r = in.movie;
    if (thread > 0) {
      if (!readers[size_t(thread)]) readers[size_t(thread)] = std::make_unique<MovieReader>(in.movie->path());
      r = readers[size_t(thread)].get();
    }
    r->read_into(in.first + int(f), st.real(int(f)), st.row_stride());
    if (in.gain) {
      float* p = st.real(int(f));
      for (int y = 0; y < ny; ++y) {
        float* row = p + size_t(y) * st.row_stride();
        const float* g = in.gain->data() + size_t(y) * size_t(nx);
        for (int x = 0; x < nx; ++x) row[x] *= g[x];
      }
    }
    check_cancelled();
  });
}

// Hot pixels (RELION's rule: above mean + 6 sd of the unaligned sum) and defects replaced by a
// random good neighbour within 2 px (or a draw of the frame's mean and sd when there are few).
void fix_pixels(FrameStore& st, const Grid<unsigned char>* defects, const CorrectParams& p, CorrectOutput& out,
                ThreadPool& pool) {
  const int nx = st.nx(), ny = st.ny(), T = st.frames();
  const size_t npx = size_t(nx) * size_t(ny), stride = st.row_stride();
  Grid<float> sum(nx, ny);
  std::vector<double> row_sum(static_cast<size_t>(ny)), row_ss(static_cast<size_t>(ny));  // (added in row order)
  pool.parallel_for(0, size_t(ny), [&](size_t y, int) {
    float* s = sum.data() + y * size_t(nx);
    for (int f = 0; f < T; ++f) {
      const float* r = st.real(f) + y * stride;
      for (int x = 0; x < nx; ++x) s[x] += r[x];
    }
    double a = 0;
    for (int x = 0; x < nx; ++x) a += s[x];
    row_sum[y] = a;
  }, 16);
  double mean = 0, sd = 0;
  for (const double v : row_sum) mean += v;
  mean /= double(npx);
  pool.parallel_for(0, size_t(ny), [&](size_t y, int) {
    const float* s = sum.data() + y * size_t(nx);
    double a = 0;
    for (int x = 0; x < nx; ++x) a += (s[x] - mean) * (s[x] - mean);
    row_ss[y] = a;
  }, 16);
  for (const double v : row_ss) sd += v;
  sd = std::sqrt(sd / double(npx));
  const double thr = mean + 6 * sd;
  Grid<unsigned char> bad = defects && !defects->empty() ? *defects : Grid<unsigned char>(nx, ny);
  int nhot = 0;
  if (!p.skip_defect)
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
  if (list.empty()) return;
  const double fmean = mean / double(T), fsd = sd / double(T);
  pool.parallel_for(0, size_t(T), [&](size_t f, int) {
    auto g = make_rng(p.seed, p.stream, 1000 + f);
    float* fr = st.real(int(f));
    float buf[25];
    for (size_t k : list) {
      const int x = int(k % size_t(nx)), y = int(k / size_t(nx));
      int n = 0;
      for (int dy = -2; dy <= 2; ++dy)
        for (int dx = -2; dx <= 2; ++dx) {
          const int xx = x + dx, yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= nx || yy >= ny || bad(xx, yy)) continue;
          buf[n++] = fr[size_t(yy) * stride + size_t(xx)];
        }
      fr[size_t(y) * stride + size_t(x)] = n > 6 ? buf[g() % uint64_t(n)] : float(fmean + fsd * normal01(g));
    }
  });
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

// Band-limited resampling of a centred n x m image (origin at (n/2, m/2)) to p x q samples over
// the same field (Fourier cropping, or zero-padding where p > n or q > m; even sizes); the values
// are kept (mean preserved) and sample p/2 of the output lies where sample n/2 of the input did.
Grid<float> fourier_resample(const Grid<float>& img, int p, int q) {
  const int n = img.nx(), m = img.ny();
  if (p == n && q == m) return img;
  const Grid<cfloat> F = fft_forward(img);
  Grid<cfloat> G(p / 2 + 1, q);
  const int hx = std::min(n, p) / 2, hy = std::min(m, q) / 2;  // shared frequencies |k| < h (and h itself when equal)
  for (int j = 0; j < q; ++j) {
    const int ky = fft_freq(j, q);
    if (std::abs(ky) > hy || (std::abs(ky) == hy && q != m)) continue;
    for (int i = 0; i < p / 2 + 1; ++i) {
      if (i > hx || (i == hx && p != n)) continue;
      G(i, j) = F(i, fft_index(ky, m));
    }
  }
  // fft_forward is unnormalised and fft_inverse divides by p q.
  Grid<float> out = fft_inverse(G, p);
  const float s = float(double(p) * q / (double(n) * m));
  for (auto& v : out) v *= s;
  return out;
}

// The power spectrum as RELION writes it (relion_run_motioncorr --grouping_for_ps): the sum over
// groups of |F| of the group's sum on the centred grid; made square by resampling; the
// centre cropped to frequencies up to 1 / (2 x 1.4 Å) when the pixels are smaller than 1.4 Å (the
// spectrum's pixel size becomes ps_angpix = sq angpix / cropped size); resampled to ps_size. Pixel
// (i, j) of the result is at frequency ((i - ps_size/2), (j - ps_size/2)) / (ps_size ps_angpix) 1/Å,
// and ps_angpix is the pixel size written in its header. Unlike RELION, which sums each group's
// frames as they were recorded, the frames are moved by their global shifts (sx, sy) first: drift
// within a group (several pixels in the first frames) would blur the Thon rings along its direction
// and bias the astigmatism fitted to the spectrum.
Grid<float> power_spectrum(const FrameStore& st, double angpix, int grouping, int ps_size, const std::vector<double>& sx,
                           const std::vector<double>& sy, double& ps_angpix, ThreadPool& pool) {
  const int nx = st.nx(), ny = st.ny(), nxh = st.nxh(), T = st.frames();
  Grid<float> amp(nxh, ny);
  AlignedArray<cfloat> group(size_t(nxh) * size_t(ny));
  for (int f0 = 0; f0 < T; f0 += grouping) {
    sum_frames(st, f0, std::min(T, f0 + grouping), sx, sy, nullptr, nullptr, group.data(), pool);
    pool.parallel_for(0, size_t(ny), [&](size_t j, int) {
      float* a = amp.data() + j * size_t(nxh);
      const cfloat* g = group.data() + j * size_t(nxh);
      for (int i = 0; i < nxh; ++i) a[i] += std::abs(g[i]);
    }, 8);
  }
  // The whole spectrum on the centred nx x ny grid (frequency (x - nx/2, y - ny/2)).
  Grid<float> full(nx, ny);
  for (int y = 0; y < ny; ++y)
    for (int x = 0; x < nx; ++x) {
      const int kx = x - nx / 2, ky = y - ny / 2;
      full(x, y) = kx >= 0 ? amp(kx, fft_index(ky, ny)) : amp(-kx, fft_index(-ky, ny));  // |F(-k)| = |F(k)|
    }
  const int sq = std::min(nx, ny);
  Grid<float> square = fourier_resample(full, sq, sq);
  ps_angpix = angpix;
  int needed = sq;
  constexpr double kTarget = 1.4;  // Å, as RELION (from CTFFIND 4.1)
  if (angpix < kTarget) {
    needed = int(std::ceil(sq * angpix / kTarget));
    needed += needed % 2;
    ps_angpix = sq * angpix / needed;
  }
  Grid<float> crop(needed, needed);
  for (int y = 0; y < needed; ++y)
    for (int x = 0; x < needed; ++x) crop(x, y) = square(x - needed / 2 + sq / 2, y - needed / 2 + sq / 2);
  return fourier_resample(crop, ps_size, ps_size);
}

// The low-frequency crop of every frame for alignment, without the smooth component.
void alignment_spectra(const FrameStore& st, MovieWorkspace& ws, int nx0, int ny0, int cx, int cy, ThreadPool& pool) {
  const int T = st.frames();
  ws.crops.resize(size_t(T));
  pool.parallel_for(0, size_t(T), [&](size_t f, int) {
    Grid<cfloat>& c = ws.crops[f];
    if (c.nx() != cx / 2 + 1 || c.ny() != cy) c = Grid<cfloat>(cx / 2 + 1, cy);
    crop_spectrum(st.spectrum(int(f)), st.nx(), st.ny(), cx, cy, c.data());
    remove_smooth_component(c.data(), cx, cy, nx0, ny0, ws.edge_rows.data() + f * size_t(nx0),
                            ws.edge_cols.data() + f * size_t(ny0));
  });
}

// Spatial weights for the second global alignment. The frames' crops summed at the shifts `g` (binned
// px) and filtered as the alignment filters them (B-factor and high-pass): its local rms r over a
// Gaussian window of `window` binned px, and w = min(1, median(r) / r), on the crops' grid (cx x cy).
// A region of more alignment contrast than the typical one (a carbon edge, an ice crystal, an
// aggregate) then counts no more than a typical region of the window's size: a whole-frame alignment
// otherwise follows such a region's own local motion rather than the field's.
Grid<float> contrast_weights(const std::vector<Grid<cfloat>>& crops, const AlignResult& g, int nx, int ny, int cx,
                             int cy, const AlignParams& ap, double window, ThreadPool& pool) {
  const int cxh = cx / 2 + 1;
  const size_t T = crops.size(), nk = size_t(cxh) * size_t(cy);
  AlignedArray<cfloat> S(nk);
  // Phase factors along x per frame (the rows' along y are one number each).
  std::vector<cfloat> px(T * size_t(cxh));
  for (size_t f = 0; f < T; ++f)
    for (int i = 0; i < cxh; ++i) {
      const double a = -6.283185307179586 * double(i) / nx * g.sx[f];
      px[f * size_t(cxh) + size_t(i)] = cfloat(float(std::cos(a)), float(std::sin(a)));
    }
  pool.parallel_for(0, size_t(cy), [&](size_t j, int) {
    const double ky = double(fft_freq(int(j), cy)) / ny;
    cfloat* s = S.data() + j * size_t(cxh);
    std::fill(s, s + cxh, cfloat(0));
    for (size_t f = 0; f < T; ++f) {
      const cfloat* c = crops[f].data() + j * size_t(cxh);
      const cfloat* p = px.data() + f * size_t(cxh);
      const double a = -6.283185307179586 * ky * g.sy[f];
      const cfloat py(float(std::cos(a)), float(std::sin(a)));
      for (int i = 0; i < cxh; ++i) s[i] += c[i] * (p[i] * py);
    }
    for (int i = 0; i < cxh; ++i) {
      const double kx = double(i) / nx, k2 = kx * kx + ky * ky;
      double v = std::exp(-ap.bfactor * k2);
      if (ap.highpass > 0) v *= 1 - std::exp(-k2 / (2 * ap.highpass * ap.highpass));
      s[i] *= float(v);
    }
  });
  AlignedArray<float> e(size_t(cx) * size_t(cy));
  fft2_inverse(S.data(), cx, cy, e.data());
  for (size_t k = 0; k < e.size(); ++k) e[k] *= e[k];
  // Local mean of e^2: a Gaussian of `window` binned px (window * cx / nx crop px), periodic.
  fft2_forward(e.data(), cx, cy, S.data());
  const double sgx = window * cx / nx, sgy = window * cy / ny, norm = 1.0 / (double(cx) * cy);
  for (int j = 0; j < cy; ++j) {
    const double qy = double(fft_freq(j, cy)) / cy;
    for (int i = 0; i < cxh; ++i) {
      const double qx = double(i) / cx;
      const double a = 2 * 9.869604401089358 * (sgx * sgx * qx * qx + sgy * sgy * qy * qy);
      S[size_t(j) * size_t(cxh) + size_t(i)] *= float(std::exp(-a) * norm);
    }
  }
  fft2_inverse(S.data(), cx, cy, e.data());
  Grid<float> w(cx, cy);
  std::vector<float> r(e.size());
  for (size_t k = 0; k < e.size(); ++k) r[k] = std::sqrt(std::max(e[k], 0.0f));
  std::vector<float> sorted = r;
  std::nth_element(sorted.begin(), sorted.begin() + ptrdiff_t(sorted.size() / 2), sorted.end());
  const float med = sorted[sorted.size() / 2];
  for (size_t k = 0; k < r.size(); ++k) w.data()[k] = r[k] > med ? med / r[k] : 1.0f;
  return w;
}

// Each frame's crop weighted in space by w (in the sum's frame: frame f's pixel x at x + s_f) and
// transformed back, its smooth component removed again; in place.
void weight_crops(std::vector<Grid<cfloat>>& crops, const AlignResult& g, int nx, int ny, int cx, int cy,
                  const Grid<float>& w, ThreadPool& pool) {
  const int cxh = cx / 2 + 1;
  std::vector<AlignedArray<cfloat>> cbuf(static_cast<size_t>(pool.size()));
  std::vector<AlignedArray<float>> ibuf(static_cast<size_t>(pool.size()));
  std::vector<std::vector<int>> wxbuf(static_cast<size_t>(pool.size()));
  pool.parallel_for(0, crops.size(), [&](size_t f, int thread) {
    AlignedArray<cfloat>& c = cbuf[size_t(thread)];
    AlignedArray<float>& img = ibuf[size_t(thread)];
    c.resize(size_t(cxh) * size_t(cy));
    img.resize(size_t(cx) * size_t(cy));
    std::copy(crops[f].data(), crops[f].data() + c.size(), c.data());
    fft2_inverse(c.data(), cx, cy, img.data());
    const int ox = int(std::lround(g.sx[f] * cx / nx)), oy = int(std::lround(g.sy[f] * cy / ny));
    std::vector<int>& wx = wxbuf[size_t(thread)];  // column of w for each x (periodic)
    wx.resize(size_t(cx));
    for (int x = 0; x < cx; ++x) wx[size_t(x)] = ((x + ox) % cx + cx) % cx;
    const float norm = 1.0f / (float(cx) * float(cy));
    for (int y = 0; y < cy; ++y) {
      const float* wr = &w(0, ((y + oy) % cy + cy) % cy);
      float* row = img.data() + size_t(y) * size_t(cx);
      for (int x = 0; x < cx; ++x) row[x] *= norm * wr[wx[size_t(x)]];
    }
    std::vector<float> er(static_cast<size_t>(cx)), ec(static_cast<size_t>(cy));
    edge_differences(img.data(), size_t(cx), cx, cy, er.data(), ec.data());
    fft2_forward(img.data(), cx, cy, crops[f].data());
    remove_smooth_component(crops[f].data(), cx, cy, cx, cy, er.data(), ec.data());
    if (cy < ny) std::fill(crops[f].data() + size_t(cy / 2) * size_t(cxh), crops[f].data() + size_t(cy / 2 + 1) * size_t(cxh), cfloat(0));
  });
}

// Patch alignment and the polynomial model (RELION's scheme on images binned to the alignment
// crop: the frames' information above the crop's frequency is weighted away by the B-factor).
void local_motion(const FrameStore& st, const std::vector<double>& gx, const std::vector<double>& gy, int cx, int cy,
                  const CorrectParams& p, const AlignParams& ap, int first_frame, double prescale, CorrectOutput& out,
                  MovieWorkspace& ws, ThreadPool& pool) {
  AlignBuffers& align = ws.align;
  const int T = st.frames(), nx = st.nx(), ny = st.ny(), cxh = cx / 2 + 1;
  std::vector<int> gs, gz;
  make_groups(T, std::max(1, p.group_frames), gs, gz);
  const int ng = int(gs.size());
  if (ng < 3) input_error("too few frames ({}) for groups of {}: at least 3 groups are needed", T, p.group_frames);
  // Group sums, globally aligned, as images binned to cx x cy.
  std::vector<AlignedArray<cfloat>>& groups = ws.groups;
  if (groups.size() < size_t(ng)) groups.resize(size_t(ng));
  if (ws.group_crops.size() < size_t(pool.size())) ws.group_crops.resize(size_t(pool.size()));
  pool.parallel_for(0, size_t(ng), [&](size_t g, int thread) {
    AlignedArray<cfloat>& a = groups[g];
    a.resize(size_t(cxh) * size_t(cy));
    std::fill(a.data(), a.data() + a.size(), cfloat(0));
    AlignedArray<cfloat>& c = ws.group_crops[size_t(thread)];
    c.resize(size_t(cxh) * size_t(cy));
    std::vector<cfloat> px(static_cast<size_t>(cxh));
    for (int f = gs[g]; f < gs[g] + gz[g]; ++f) {
      crop_spectrum(st.spectrum(f), nx, ny, cx, cy, c.data());
      for (int i = 0; i < cxh; ++i) {
        const double ax = -6.283185307179586 * i * gx[size_t(f)] / nx;
        px[size_t(i)] = cfloat(float(std::cos(ax)), float(std::sin(ax)));
      }
      for (int j = 0; j < cy; ++j) {
        const double ay = -6.283185307179586 * fft_freq(j, cy) * gy[size_t(f)] / ny;
        const cfloat py(float(std::cos(ay)), float(std::sin(ay)));
        for (int i = 0; i < cxh; ++i) {
          const size_t k = size_t(j) * size_t(cxh) + size_t(i);
          a[k] += c[k] * (px[size_t(i)] * py);
        }
      }
    }
    fft2_inverse_inplace(a.data(), cx, cy);
  });
  const double sx = double(nx) / cx, sy = double(ny) / cy;  // binned frame px per crop px
  const int pnx = nx / p.patch_x, pny = ny / p.patch_y;
  // The patches are globally aligned already: only the local residual is searched for (a wide search
  // in a noisy patch finds noise peaks), and each patch's trajectory is smoothed as the global one
  // (curvature free in the groups that end before early_exposure).
  AlignParams patch_ap = ap;
  patch_ap.search = std::min(ap.search, p.patch_search);
  // At most 3 rounds: a patch's frames hold too few counts for its trajectory to settle (on 2048 px movies
  // of 1 e/Å² per frame and 5 x 5 patches, 80-90% of the patches still moved by more than 0.2 px rms in
  // the fifth round), and rounds 4 and 5 made the local model no better (docs/benchmarks.md).
  patch_ap.max_iterations = std::min(ap.max_iterations, 3);
  int first_penalised_group = 1;
  while (first_penalised_group < ng &&
         p.preexposure + p.dose_per_frame * (gs[size_t(first_penalised_group - 1)] + gz[size_t(first_penalised_group - 1)]) <=
             p.early_exposure)
    ++first_penalised_group;
  std::vector<double> oz, ox, oy, osx, osy;
  std::vector<int> opatch;
  for (int iy = 0; iy < p.patch_y; ++iy)
    for (int ix = 0; ix < p.patch_x; ++ix) {
      // The patch in crop pixels.
      const int x0 = int(std::lround(ix * pnx / sx)), y0 = int(std::lround(iy * pny / sy));
      const int w = (int(std::lround((ix + 1) * pnx / sx)) - x0) & ~1, h = (int(std::lround((iy + 1) * pny / sy)) - y0) & ~1;
      if (w < 8 || h < 8) input_error("patches of {} x {} px are too small to align", pnx, pny);
      std::vector<Grid<cfloat>> PF(static_cast<size_t>(ng));
      pool.parallel_for(0, size_t(ng), [&](size_t g, int) {
        AlignedArray<float> buf(size_t(w + 2) * size_t(h));
        const float* img = reinterpret_cast<const float*>(groups[g].data());
        const size_t in_stride = size_t(2 * cxh), stride = size_t(w + 2);
        for (int y = 0; y < h; ++y)
          std::copy(img + size_t(y0 + y) * in_stride + size_t(x0), img + size_t(y0 + y) * in_stride + size_t(x0 + w),
                    buf.data() + size_t(y) * stride);
        std::vector<float> er(static_cast<size_t>(w)), ec(static_cast<size_t>(h));
        edge_differences(buf.data(), stride, w, h, er.data(), ec.data());
        fft2_forward_inplace(buf.data(), w, h);
        PF[g] = Grid<cfloat>(w / 2 + 1, h);
        const cfloat* spec = reinterpret_cast<const cfloat*>(buf.data());
        std::copy(spec, spec + PF[g].size(), PF[g].data());
        remove_smooth_component(PF[g].data(), w, h, w, h, er.data(), ec.data());
      });
      std::vector<const Grid<cfloat>*> pp;
      for (auto& q : PF) pp.push_back(&q);
      AlignResult a = align_frames(pp, w * sx, h * sy, false, patch_ap, pool, nullptr, &align);
      if (!a.converged)
        out.log += fmt::format("patch ({}, {}): not converged in {} iterations; used as it is\n", ix + 1, iy + 1,
                               a.iterations);
      if (p.smooth) smooth_trajectory(a.sx, a.sy, first_penalised_group);
      // Shifts at the groups' centres (the mean of their frames' indices: the model is applied at
      // z = frame index), re-centred so that the shift extrapolated to the first frame is 0 (RELION).
      const double c0 = gs[0] + (gz[0] - 1) / 2.0, c1 = gs[1] + (gz[1] - 1) / 2.0;
      const double sx0 = (a.sx[0] * c1 - a.sx[1] * c0) / (c1 - c0), sy0 = (a.sy[0] * c1 - a.sy[1] * c0) / (c1 - c0);
      const double pcx = (x0 + (w - 1) / 2.0) * sx, pcy = (y0 + (h - 1) / 2.0) * sy;  // centre, binned frame px
      for (int g = 0; g < ng; ++g) {
        oz.push_back(gs[size_t(g)] + (gz[size_t(g)] - 1) / 2.0);
        opatch.push_back(iy * p.patch_x + ix);
        ox.push_back(pcx / nx - 0.5);
        oy.push_back(pcy / ny - 0.5);
        osx.push_back(a.sx[size_t(g)] - sx0);
        osy.push_back(a.sy[size_t(g)] - sy0);
        out.local.push_back({oz.back() + first_frame + 1, pcx * prescale, pcy * prescale, osx.back() * prescale,
                             osy.back() * prescale});
      }
      check_cancelled();
    }
  // Least-squares fit (each patch's trajectory known up to a constant: the error of its first
  // group's position), then twice: observations further from the fit than 4 times the median
  // distance (at least 0.25 px; for Gaussian errors 1 in 60,000 lies so far) are left out and the
  // model fitted again. A patch whose peak was noise gives such outliers.
  PolynomialMotion m;
  std::vector<char> used(oz.size(), 1);
  std::vector<double> offx, offy;
  const auto misfit = [&](size_t i, double& dx, double& dy) {
    double fx, fy;
    m.shift_at(oz[i], ox[i], oy[i], fx, fy);
    dx = osx[i] - offx[size_t(opatch[i])] - fx;
    dy = osy[i] - offy[size_t(opatch[i])] - fy;
  };
  size_t dropped = 0;
  double ridge = 0;
  for (int round = 0;; ++round) {
    std::vector<double> z, x, y, vx, vy;
    std::vector<int> tr;
    for (size_t i = 0; i < oz.size(); ++i)
      if (used[i]) {
        z.push_back(oz[i]);
        x.push_back(ox[i]);
        y.push_back(oy[i]);
        vx.push_back(osx[i]);
        vy.push_back(osy[i]);
        tr.push_back(opatch[i]);
      }
    if (!fit_polynomial_motion(z, x, y, vx, vy, m, &tr, &offx, &offy, &ridge)) {
      out.log += "local model: too few patch observations; none\n";
      return;
    }
    offx.resize(size_t(p.patch_x * p.patch_y), 0.0);  // (a patch with no observation left)
    offy.resize(size_t(p.patch_x * p.patch_y), 0.0);
    if (round == 2) break;
    std::vector<double> dist(oz.size()), kept;
    for (size_t i = 0; i < oz.size(); ++i) {
      double dx, dy;
      misfit(i, dx, dy);
      dist[i] = std::hypot(dx, dy);
      if (used[i]) kept.push_back(dist[i]);
    }
    std::nth_element(kept.begin(), kept.begin() + long(kept.size() / 2), kept.end());
    const double limit = std::max(4 * kept[kept.size() / 2], 0.25 / prescale);
    size_t now = 0;
    for (size_t i = 0; i < oz.size(); ++i) {
      used[i] = dist[i] <= limit;
      now += used[i] ? 0 : 1;
    }
    if (now == dropped) break;
    dropped = now;
  }
  double rx = 0, ry = 0;
  size_t n_used = 0;
  for (size_t i = 0; i < oz.size(); ++i) {
    if (!used[i]) continue;
    double dx, dy;
    misfit(i, dx, dy);
    rx += dx * dx;
    ry += dy * dy;
    ++n_used;
  }
  rx = std::sqrt(rx / double(n_used)) * prescale;
  ry = std::sqrt(ry / double(n_used)) * prescale;
  out.log += fmt::format("local model: rms misfit {:.3f} / {:.3f} px over {} observations ({} left out as outliers), "
                         "ridge {:.3g}\n", rx, ry, n_used, oz.size() - n_used, ridge);
  if (rx < 10 && ry < 10) {
    out.has_model = true;
    out.model = m;
  }
}

// Image of a half-complex sum (consumed), scaled by 1 / (nx ny).
Grid<float> to_image(AlignedArray<cfloat>& spec, int nx, int ny) {
  fft2_inverse_inplace(spec.data(), nx, ny);
  Grid<float> img(nx, ny);
  const float* r = reinterpret_cast<const float*>(spec.data());
  const float s = 1.0f / (float(nx) * float(ny));
  const size_t stride = size_t(2 * (nx / 2 + 1));
  for (int y = 0; y < ny; ++y)
    for (int x = 0; x < nx; ++x) img(x, y) = r[size_t(y) * stride + size_t(x)] * s;
  return img;
}

// The sums with the local model: runs of consecutive frames are summed in Fourier space (global
// shifts, dose weights), then moved by the model at the run's middle by cubic B-spline interpolation;
// added in run order. A run is as long as every frame in it stays, at every point of the field,
// within its tolerance of the model at the middle: misplacement_tolerance() with a loss of
// 1 - cos(0.1 pi) = 0.049, i.e. 0.1 px for an undamaged frame (its signal at Nyquist attenuated by
// at most cos(0.1 pi) = 0.95) and more for damaged frames in a dose-weighted sum, whose high
// frequencies carry little weight (the same bound at every frequency). Without dose weighting (or
// when the plain sum is made too) every frame gets 0.1 px.
constexpr double kRunLoss = 0.04894348370484647;  // 1 - cos(0.1 pi)
// Returns the number of runs.
size_t local_sums(const FrameStore& st, const std::vector<double>& gx, const std::vector<double>& gy,
                  const PolynomialMotion& model, const DoseWeighting* dose, Grid<float>* weighted, Grid<float>* plain,
                  const std::vector<double>& tolerance, std::vector<MovieWorkspace::RunSlot>& slot, ThreadPool& pool) {
  const int T = st.frames(), nx = st.nx(), ny = st.ny(), nxh = st.nxh();
  // Model shifts on a 5 x 5 grid over the field, per frame and at half frames.
  constexpr int G = 5;
  const auto at = [&](double z, int p, double& sx, double& sy) {
    model.shift_at(z, (p % G) / double(G - 1) - 0.5, (p / G) / double(G - 1) - 0.5, sx, sy);
  };
  const auto fits = [&](int f, int e) {  // frames f .. e - 1 as one run
    const double z = 0.5 * (f + e - 1);
    for (int p = 0; p < G * G; ++p) {
      double mx, my;
      at(z, p, mx, my);
      for (int g = f; g < e; ++g) {
        double sx, sy;
        at(g, p, sx, sy);
        if (std::hypot(sx - mx, sy - my) > tolerance[size_t(g)]) return false;
      }
    }
    return true;
  };
  std::vector<std::pair<int, int>> runs;
  for (int f = 0; f < T;) {
    int e = f + 1;
    while (e < T && fits(f, e + 1)) ++e;
    runs.emplace_back(f, e);
    f = e;
  }
  if (weighted) *weighted = Grid<float>(nx, ny);
  if (plain) *plain = Grid<float>(nx, ny);
  // Runs in batches of one per thread: each run's frames summed by all threads (rows), then each run's
  // prefilter and inverse transform by one thread (2D transforms are single-threaded), then the batch
  // interpolated into the sums row by row, the rows over the threads and each row's runs in run order:
  // the result does not depend on the number of threads. Memory: per thread a spectrum for each sum.
  const size_t P = std::min(size_t(pool.size()), runs.size()), stride = size_t(2 * nxh);
  if (slot.size() < P) slot.resize(P);
  Grid<float>* totals[2] = {weighted, plain};
  for (size_t r0 = 0; r0 < runs.size(); r0 += P) {
    const size_t nb = std::min(P, runs.size() - r0);
    for (size_t b = 0; b < nb; ++b) {
      const auto [f0, f1] = runs[r0 + b];
      MovieWorkspace::RunSlot& sl = slot[b];
      for (int w = 0; w < 2; ++w)
        if (totals[w]) sl.spec[w].resize(size_t(nxh) * size_t(ny));
      sum_frames(st, f0, f1, gx, gy, dose, weighted ? sl.spec[0].data() : nullptr,
                 plain ? sl.spec[1].data() : nullptr, pool);
    }
    pool.parallel_for(0, nb, [&](size_t b, int) {
      MovieWorkspace::RunSlot& sl = slot[b];
      // The B-spline prefilter in Fourier space (the frames' spectra are periodic anyway) with the
      // 1 / (nx ny) of the inverse transform.
      for (int w = 0; w < 2; ++w) {
        if (!totals[w]) continue;
        bspline_prefilter_spectrum(sl.spec[w].data(), nx, ny, 1.0f / (float(nx) * float(ny)));
        fft2_inverse_inplace(sl.spec[w].data(), nx, ny);
      }
    });
    // Each run's sum moved by the model at the run's middle, added into the sums row by row.
    pool.parallel_for(0, size_t(ny), [&](size_t yy, int) {
      const int y = int(yy);
      thread_local std::vector<float> dx, dy;
      dx.resize(size_t(nx));
      dy.resize(size_t(nx));
      for (size_t b = 0; b < nb; ++b) {
        const auto [f0, f1] = runs[r0 + b];
        const double z = 0.5 * (f0 + f1 - 1);
        double ax[3], ay[3];
        model.row_quadratic(z, double(y) / ny - 0.5, ax, ay);
        for (int x = 0; x < nx; ++x) {
          const double u = double(x) / nx - 0.5;
          dx[size_t(x)] = float(ax[0] + u * (ax[1] + u * ax[2]));
          dy[size_t(x)] = float(ay[0] + u * (ay[1] + u * ay[2]));
        }
        for (int w = 0; w < 2; ++w)
          if (totals[w])
            bspline_add_row_periodic(reinterpret_cast<const float*>(slot[b].spec[w].data()), stride, nx, ny, y,
                                     dx.data(), dy.data(), totals[w]->data() + size_t(y) * size_t(nx));
      }
    }, 8);
    check_cancelled();
  }
  return runs.size();
}

}  // namespace

CorrectOutput correct_movie(const CorrectInput& in, const CorrectParams& p, MovieWorkspace& ws, ThreadPool& pool) {
  CorrectOutput out;
  // Wall time of each step, for ROOT.log.
  auto t_last = std::chrono::steady_clock::now();
  std::string times;
  auto lap = [&](const char* what) {
    const auto t = std::chrono::steady_clock::now();
    times += fmt::format("{}{} {:.2f} s", times.empty() ? "" : ", ", what, std::chrono::duration<double>(t - t_last).count());
    t_last = t;
  };
  const int T = in.count;
  if (T < 1 || !in.movie) input_error("no frames to correct");
  const int nx0 = in.movie->nx(), ny0 = in.movie->ny();
  if (nx0 % 2 || ny0 % 2) input_error("{}: frames of {} x {} px; even sizes are needed", in.movie->path(), nx0, ny0);
  FrameStore& st = ws.store;
  st.reset(T, nx0, ny0);
  read_frames(in, st, pool);
  lap("read");
  if (!p.skip_defect || (in.bad && !in.bad->empty())) fix_pixels(st, in.bad, p, out, pool);
  lap("defects");

  // Edges (for the periodic part of each frame), then the transforms, binned by cropping.
  ws.edge_rows.resize(size_t(T) * size_t(nx0));
  ws.edge_cols.resize(size_t(T) * size_t(ny0));
  pool.parallel_for(0, size_t(T), [&](size_t f, int) {
    edge_differences(st.real(int(f)), st.row_stride(), nx0, ny0, ws.edge_rows.data() + f * size_t(nx0),
                     ws.edge_cols.data() + f * size_t(ny0));
    st.transform(int(f));
  });
  check_cancelled();
  lap("transforms");
  int nx = nx0, ny = ny0;
  if (std::abs(p.bin_factor - 1) > 0.01) {
    nx = int(nx0 / p.bin_factor) & ~1;
    ny = int(ny0 / p.bin_factor) & ~1;
    st.crop_spectra(nx, ny);
  }
  const double prescale = double(nx0) / nx;  // movie px per binned px
  const double apix = p.angpix * prescale;
  out.out_angpix = apix;

  // Global alignment (binned pixels), then the smoothed trajectory.
  AlignParams ap;
  ap.bfactor = p.bfactor / (prescale * prescale);
  ap.highpass = p.highpass;
  ap.max_iterations = p.max_iter;
  ap.tolerance = p.tolerance;
  int cx, cy;
  alignment_crop(nx, ny, ap.bfactor, cx, cy);
  alignment_spectra(st, ws, nx0, ny0, cx, cy, pool);
  std::vector<const Grid<cfloat>*> ptr;
  for (int f = 0; f < T; ++f) ptr.push_back(&ws.crops[size_t(f)]);
  lap("crops");
  // With local motion the contrast weights' pass below refines these shifts: the first pass needs only
  // to place the weights (smooth over contrast_window), and one round does that.
  const bool local = p.patch_x > 2 && p.patch_y > 2;
  const bool weighted = local && p.contrast_window > 0 && T > 1;
  AlignParams first_ap = ap;
  if (weighted) first_ap.max_iterations = 1;
  AlignResult g = align_frames(ptr, nx, ny, cx < nx, first_ap, pool, nullptr, &ws.align);
  lap("global alignment");
  if (!weighted) {
    out.log += fmt::format("global alignment: {} iterations{}\n", g.iterations, g.converged ? "" : " (not converged)");
  } else {
    // With a local model the global trajectory is the field's mean motion, not that of its strongest
    // features (contrast_weights); without one it follows the signal wherever it is (less noise).
    const Grid<float> w = contrast_weights(ws.crops, g, nx, ny, cx, cy, ap, p.contrast_window / apix, pool);
    double mean = 0;
    for (size_t k = 0; k < w.size(); ++k) mean += w.data()[k];
    weight_crops(ws.crops, g, nx, ny, cx, cy, w, pool);
    g = align_frames(ptr, nx, ny, cx < nx, ap, pool, &g, &ws.align);
    out.log += fmt::format("global alignment with contrast weights (mean {:.3f}): {} iterations{}\n",
                           mean / double(w.size()), g.iterations, g.converged ? "" : " (not converged)");
    lap("weighted alignment");
  }
  if (p.smooth) {
    // Curvature is free while the exposure at the end of frame c - 1 is below early_exposure.
    int first_penalised = 1;
    while (first_penalised < T && p.preexposure + p.dose_per_frame * first_penalised <= p.early_exposure)
      ++first_penalised;
    const double lambda = smooth_trajectory(g.sx, g.sy, first_penalised);
    out.log += fmt::format("trajectory smoothed from frame {} with lambda {:.3g}\n", first_penalised + 1, lambda);
  }
  if (p.grouping_for_ps > 0)
    out.ps = power_spectrum(st, apix, p.grouping_for_ps, p.ps_size, g.sx, g.sy, out.ps_angpix, pool);
  lap("power spectrum");
  out.shift_x.resize(size_t(T));
  out.shift_y.resize(size_t(T));
  for (int f = 0; f < T; ++f) {
    out.shift_x[size_t(f)] = g.sx[size_t(f)] * prescale;
    out.shift_y[size_t(f)] = g.sy[size_t(f)] * prescale;
  }
  check_cancelled();

  if (local) local_motion(st, g.sx, g.sy, cx, cy, p, ap, in.first, prescale, out, ws, pool);
  lap("patches");

  // Sums.
  const DoseWeighting* dose = nullptr;
  if (p.dose_weighting) {
    const double factor = dose_voltage_factor(p.voltage);
    const double first = (p.preexposure + p.dose_per_frame * (in.first + 1)) * factor, step = p.dose_per_frame * factor;
    if (!ws.dose.same(nx, ny, apix, first, step, T)) ws.dose = DoseWeighting(nx, ny, apix, first, step, T);
    dose = &ws.dose;
  }
  const bool want_plain = !p.dose_weighting || p.save_noDW;
  if (out.has_model) {
    // Each frame's tolerance (binned px): by its extra exposure when only the dose-weighted sum is made.
    std::vector<double> tolerance(size_t(T), misplacement_tolerance(0, apix, kRunLoss));
    if (dose && !want_plain)
      for (int f = 1; f < T; ++f)
        tolerance[size_t(f)] =
            misplacement_tolerance(p.dose_per_frame * dose_voltage_factor(p.voltage) * f, apix, kRunLoss);
    const size_t runs = local_sums(st, g.sx, g.sy, out.model, dose, dose ? &out.sum : nullptr,
                                   want_plain ? (dose ? &out.sum_noDW : &out.sum) : nullptr, tolerance, ws.run_slots,
                                   pool);
    out.log += fmt::format("sums with the local model: {} runs of frames\n", runs);
  } else {
    AlignedArray<cfloat> sw, sp;
    const size_t n = size_t(st.nxh()) * size_t(ny);
    if (dose) sw.resize(n);
    if (want_plain) sp.resize(n);
    sum_frames(st, 0, T, g.sx, g.sy, dose, dose ? sw.data() : nullptr, want_plain ? sp.data() : nullptr, pool);
    if (dose) out.sum = to_image(sw, nx, ny);
    if (want_plain) (dose ? out.sum_noDW : out.sum) = to_image(sp, nx, ny);
  }
  lap("sums");
  out.log += "wall time: " + times + "\n";
  return out;
}

}  // namespace regula

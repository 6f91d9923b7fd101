#include "regula/micrograph/movie_render.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/random.hpp"
#include "regula/micrograph/bspline.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

Drift::Drift(const DriftOptions& opt, int frames, int nx, int ny, std::mt19937_64& g) : nx_(nx), ny_(ny) {
  const int T = std::max(frames, 2);
  const double total = opt.total_min + (opt.total_max - opt.total_min) * uniform01(g);
  const double a1 = 2 * kPi * uniform01(g);
  const double a2 = a1 + deg2rad(60.0 * uniform01(g) - 30.0);
  const double tau = 2.0 + 4.0 * uniform01(g);  // frames
  const double fast = 0.55 + 0.25 * uniform01(g);
  const double wob = 0.25 * uniform01(g), period = 8 + 10 * uniform01(g), ph = 2 * kPi * uniform01(g);
  gx_.assign(size_t(frames), 0);
  gy_.assign(size_t(frames), 0);
  h_.assign(size_t(frames), 0);
  for (int f = 0; f < frames; ++f) {
    const double e = 1 - std::exp(-f / tau), l = double(f) / (T - 1);
    gx_[size_t(f)] = fast * e * std::cos(a1) + (1 - fast) * l * std::cos(a2);
    gy_[size_t(f)] = fast * e * std::sin(a1) + (1 - fast) * l * std::sin(a2);
    h_[size_t(f)] = e / (1 - std::exp(-(T - 1) / tau));
  }
  // A one-frame movie has no drift; otherwise scale so that |G_last| is the drawn total.
  const double last = std::hypot(gx_.back(), gy_.back());
  const double scale = last > 0 ? total / last : 0.0;
  for (int f = 0; f < frames; ++f) {
    // Scale to the drawn total, then a wobble of up to 0.25 px (zero at frame 0).
    gx_[size_t(f)] = gx_[size_t(f)] * scale + (frames > 1 ? wob : 0.0) * (std::sin(2 * kPi * f / period + ph) - std::sin(ph));
    gy_[size_t(f)] = gy_[size_t(f)] * scale + (frames > 1 ? wob : 0.0) * (std::cos(2 * kPi * f / period + ph) - std::cos(ph));
  }
  // Local modes: random coefficients, zero mean over the field, largest magnitude local_max.
  for (int m = 0; m < kModes; ++m) {
    cx_[size_t(m)] = normal01(g);
    cy_[size_t(m)] = normal01(g);
  }
  const int G = 32;
  for (int m = 0; m < kModes; ++m) {
    double s = 0;
    for (int j = 0; j < G; ++j)
      for (int i = 0; i < G; ++i) s += basis(m, (i + 0.5) * nx / G, (j + 0.5) * ny / G);
    mean_[size_t(m)] = s / (G * G);
  }
  double big = 0;
  for (int j = 0; j <= G; ++j)
    for (int i = 0; i <= G; ++i) {
      double lx = 0, ly = 0;
      for (int m = 0; m < kModes; ++m) {
        const double b = basis(m, double(i) * nx / G, double(j) * ny / G) - mean_[size_t(m)];
        lx += cx_[size_t(m)] * b;
        ly += cy_[size_t(m)] * b;
      }
      big = std::max(big, std::hypot(lx, ly));
    }
  const double k = big > 0 ? opt.local_max / big : 0.0;
  for (int m = 0; m < kModes; ++m) {
    cx_[size_t(m)] *= k;
    cy_[size_t(m)] *= k;
  }
}

double Drift::basis(int m, double x, double y) const {
  const double u = x / nx_ - 0.5, v = y / ny_ - 0.5;
  switch (m) {
    case 0: return u;
    case 1: return v;
    case 2: return u * u;
    case 3: return v * v;
    case 4: return std::sin(kPi * u) * std::sin(kPi * v);
    default: return std::cos(2 * kPi * u) * std::cos(kPi * v);
  }
}

void Drift::local(int f, double x, double y, double& lx, double& ly) const {
  lx = ly = 0;
  for (int m = 0; m < kModes; ++m) {
    const double b = basis(m, x, y) - mean_[size_t(m)];
    lx += cx_[size_t(m)] * b;
    ly += cy_[size_t(m)] * b;
  }
  lx *= h_[size_t(f)];
  ly *= h_[size_t(f)];
}

void Drift::displacement(int f, double x, double y, double& dx, double& dy) const {
  local(f, x, y, dx, dy);
  dx += gx_[size_t(f)];
  dy += gy_[size_t(f)];
}

SceneSpectrum scene_spectrum(const Scene& s, int nthreads) {
  SceneSpectrum sp;
  sp.signal = fft_forward(s.phase, nthreads);
  const int px = s.canvas_x, py = s.canvas_y, nxh = px / 2 + 1;
  sp.damage_rate = Grid<float>(nxh, py);
  Ctf ctf(s.ctf);
  for (int j = 0; j < py; ++j) {
    const double ky = fft_freq(j, py) / (py * s.angpix);
    for (int i = 0; i < nxh; ++i) {
      const double kx = i / (px * s.angpix);
      const double k = std::sqrt(kx * kx + ky * ky);
      sp.signal(i, j) *= float(-2.0 * ctf.value(kx, ky));
      sp.damage_rate(i, j) = k > 0 ? float(1.0 / (2.0 * critical_exposure(k))) : 0.0f;
    }
  }
  sp.signal(0, 0) = 0;
  return sp;
}

namespace {

// Inverse transform of spec.signal damaged by `exposure` and moved by (gx, gy) px.
Grid<float> canvas_image(const Scene& s, const SceneSpectrum& sp, double exposure, double gx, double gy,
                         int nthreads) {
  const int px = s.canvas_x, py = s.canvas_y, nxh = px / 2 + 1;
  std::vector<cfloat> phx(static_cast<size_t>(nxh)), phy(static_cast<size_t>(py));
  for (int i = 0; i < nxh; ++i) {
    const double a = -2 * kPi * i * gx / px;
    phx[size_t(i)] = cfloat(float(std::cos(a)), float(std::sin(a)));
  }
  for (int j = 0; j < py; ++j) {
    const double a = -2 * kPi * fft_freq(j, py) * gy / py;
    phy[size_t(j)] = cfloat(float(std::cos(a)), float(std::sin(a)));
  }
  Grid<cfloat> F(nxh, py);
  ThreadPool pool(nthreads);
  pool.parallel_for(0, size_t(py), [&](size_t j, int) {
    for (int i = 0; i < nxh; ++i) {
      cfloat v = sp.signal(i, int(j)) * phx[size_t(i)] * phy[j];
      if (exposure > 0) v *= std::exp(-float(exposure) * sp.damage_rate(i, int(j)));
      F(i, int(j)) = v;
    }
  }, 16);
  return fft_inverse(F, px, nthreads);
}

float bilinear(const Grid<float>& g, double x, double y) {
  x = std::clamp(x, 0.0, double(g.nx() - 1) - 1e-9);
  y = std::clamp(y, 0.0, double(g.ny() - 1) - 1e-9);
  const int ix = int(x), iy = int(y);
  const double fx = x - ix, fy = y - iy;
  const int ix1 = std::min(ix + 1, g.nx() - 1), iy1 = std::min(iy + 1, g.ny() - 1);
  return float((1 - fy) * ((1 - fx) * g(ix, iy) + fx * g(ix1, iy)) + fy * ((1 - fx) * g(ix, iy1) + fx * g(ix1, iy1)));
}

}  // namespace

Grid<float> render_frame(const Scene& s, const SceneSpectrum& sp, const Drift& drift, int f, double exposure_mid,
                         double dose_per_pixel, int nthreads) {
  const double gx = drift.global_x(f), gy = drift.global_y(f);
  Grid<float> c = canvas_image(s, sp, exposure_mid, gx, gy, nthreads);
  bool has_local = false;
  for (int y = 0; y <= 1 && !has_local; ++y)
    for (int x = 0; x <= 1 && !has_local; ++x) {
      double lx, ly;
      drift.local(f, x * s.nx, y * s.ny, lx, ly);
      has_local = std::abs(lx) > 1e-6 || std::abs(ly) > 1e-6;
    }
  if (has_local) bspline_prefilter(c);
  Grid<float> out(s.nx, s.ny);
  ThreadPool pool(nthreads);
  pool.parallel_for(0, size_t(s.ny), [&](size_t yy, int) {
    const int y = int(yy);
    for (int x = 0; x < s.nx; ++x) {
      double lx = 0, ly = 0;
      if (has_local) drift.local(f, x, y, lx, ly);
      const double cx = x + s.off_x - lx, cy = y + s.off_y - ly;
      const float g = has_local ? bspline_sample(c, cx, cy) : c(x + s.off_x, y + s.off_y);
      const float a = bilinear(s.absorption, cx - gx, cy - gy);
      out(x, y) = std::max(0.0f, float(dose_per_pixel) * a * (1.0f + g));
    }
  }, 16);
  return out;
}

Grid<float> ideal_image(const Scene& s, const SceneSpectrum& sp, int nthreads) {
  Grid<float> c = canvas_image(s, sp, -1, 0, 0, nthreads);
  Grid<float> out(s.nx, s.ny);
  for (int y = 0; y < s.ny; ++y)
    for (int x = 0; x < s.nx; ++x)
      out(x, y) = s.absorption(x + s.off_x, y + s.off_y) * (1.0f + c(x + s.off_x, y + s.off_y));
  return out;
}

}  // namespace regula

#include "regula/imaging/filter.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"

namespace regula {
namespace {

void check_square(const Grid<float>& g, const char* what) {
  if (g.nx() != g.ny() || (g.nz() != 1 && g.nz() != g.nx()) || g.nx() < 1)
    input_error("{}: grid is {}x{}x{}, expected a square image or a cubic map", what, g.nx(), g.ny(), g.nz());
}

// Calls f(value&, |k| in Fourier pixels) for every coefficient of a half transform (n = ny).
template <class F>
void for_each_freq(Grid<cfloat>& G, F f) {
  const int n = G.ny();
  for (int z = 0; z < G.nz(); ++z) {
    const int kz = G.nz() > 1 ? fft_freq(z, G.nz()) : 0;
    for (int y = 0; y < n; ++y) {
      const int ky = fft_freq(y, n);
      for (int x = 0; x < G.nx(); ++x) f(G(x, y, z), std::sqrt(double(x) * x + double(ky) * ky + double(kz) * kz));
    }
  }
}

// The high-pass gain (0 below the edge, 1 above, a raised cosine between) at |k| = k px.
double high_pass_gain(double k, int n, double resolution, double pixel, int edge) {
  const int ishell = int(std::lround(n * pixel / resolution));
  const int half = std::max(0, edge) / 2;
  const double lo = std::max(0.0, double(ishell - half));
  const double hi = double(ishell + half);
  const double width = hi - lo;
  if (k < lo) return 0.0;
  if (k > hi || width <= 0) return 1.0;
  return 0.5 - 0.5 * std::cos(M_PI * (k - lo) / width);
}

void pass_filter(Grid<cfloat>& F, double resolution, double pixel, int edge, bool high) {
  if (!(resolution > 0) || !(pixel > 0))
    input_error("filter: resolution {} Å and pixel size {} Å must be positive", resolution, pixel);
  const int n = F.ny();
  for_each_freq(F, [&](cfloat& v, double k) {
    double g = high_pass_gain(k, n, resolution, pixel, edge);
    if (!high) g = 1.0 - g;
    v *= float(g);
  });
}

template <class Fn>
void via_fourier(Grid<float>& img, Fn fn) {
  check_square(img, "filter");
  Grid<cfloat> F = fft_forward(img);
  fn(F);
  img = fft_inverse(F, img.nx());
}

}  // namespace

void low_pass(Grid<cfloat>& F, double res, double px, int edge) { pass_filter(F, res, px, edge, false); }
double low_pass_gain(double k, int n, double res, double px, int edge) {
  return 1.0 - high_pass_gain(k, n, res, px, edge);
}
void high_pass(Grid<cfloat>& F, double res, double px, int edge) { pass_filter(F, res, px, edge, true); }
void low_pass(Grid<float>& img, double res, double px, int edge) {
  via_fourier(img, [&](Grid<cfloat>& F) { low_pass(F, res, px, edge); });
}
void high_pass(Grid<float>& img, double res, double px, int edge) {
  via_fourier(img, [&](Grid<cfloat>& F) { high_pass(F, res, px, edge); });
}

void apply_bfactor(Grid<cfloat>& F, double b, double px) {
  const double n = F.ny();
  for_each_freq(F, [&](cfloat& v, double k) {
    const double s = k / (n * px);
    v *= float(std::exp(-b * s * s / 4.0));
  });
}
void apply_bfactor(Grid<float>& img, double b, double px) {
  via_fourier(img, [&](Grid<cfloat>& F) { apply_bfactor(F, b, px); });
}

BackgroundStats background_stats(const Grid<float>& img, double bg_radius) {
  const int cx = img.nx() / 2, cy = img.ny() / 2, cz = img.nz() / 2;
  const double r2max = bg_radius * bg_radius;
  double s = 0, s2 = 0;
  size_t cnt = 0;
  for (int z = 0; z < img.nz(); ++z)
    for (int y = 0; y < img.ny(); ++y)
      for (int x = 0; x < img.nx(); ++x) {
        const double dz = img.nz() > 1 ? z - cz : 0;
        const double r2 = double(x - cx) * (x - cx) + double(y - cy) * (y - cy) + dz * dz;
        if (r2 <= r2max) continue;
        const double v = img(x, y, z);
        s += v;
        s2 += v * v;
        ++cnt;
      }
  BackgroundStats st;
  st.count = cnt;
  if (cnt == 0) return st;
  st.mean = s / double(cnt);
  st.stddev = std::sqrt(std::max(0.0, s2 / double(cnt) - st.mean * st.mean));
  return st;
}

BackgroundStats normalise_background(Grid<float>& img, double bg_radius) {
  BackgroundStats st = background_stats(img, bg_radius);
  if (st.count == 0)
    input_error("normalise: background radius {} px leaves no pixels outside it in a {}x{} image", bg_radius,
                img.nx(), img.ny());
  const double scale = st.stddev > 0 ? 1.0 / st.stddev : 1.0;
  for (auto& v : img) v = float((v - st.mean) * scale);
  return st;
}

void invert_contrast(Grid<float>& img) {
  for (auto& v : img) v = -v;
}

Grid<float> coloured_noise(int n, const std::vector<double>& sigma2, std::mt19937_64& rng) {
  if (n < 2) input_error("coloured_noise: box size {} must be >= 2", n);
  const int hx = n / 2 + 1;
  std::vector<double> sd(sigma2.size());
  for (size_t s = 0; s < sd.size(); ++s) sd[s] = std::sqrt(std::max(0.0, sigma2[s]));
  Grid<cfloat> F(hx, n, 1);
  for (int y = 0; y < n; ++y) {
    const int fy = fft_freq(y, n);
    for (int x = 0; x < hx; ++x) {
      const auto [a, b] = normal_pair(rng);  // drawn for every coefficient: the stream does not depend on sigma2
      const size_t s = size_t(std::lround(std::sqrt(double(x * x + fy * fy))));
      F(x, y) = s < sd.size() ? cfloat(float(sd[s] * a), float(sd[s] * b)) : cfloat(0, 0);
    }
  }
  // Columns whose Hermitian mates are in the half grid (x = 0, and x = n/2 for even n): make them
  // exact mates, and the self-conjugate coefficients real with the full variance.
  std::vector<int> self_mated = {0};
  if (n % 2 == 0) self_mated.push_back(n / 2);
  for (int x : self_mated) {
    for (int y = n / 2 + 1; y < n; ++y) F(x, y) = std::conj(F(x, n - y));
    for (int y : self_mated) F(x, y) = cfloat(float(std::sqrt(2.0) * F(x, y).real()), 0.0f);
  }
  return fft_inverse(F, n);
}

void window_fourier(const Grid<cfloat>& F, int n, int new_n, Grid<cfloat>& G) {
  const bool vol = F.nz() > 1;
  if (G.nx() != new_n / 2 + 1 || G.ny() != new_n || G.nz() != (vol ? new_n : 1))
    G = Grid<cfloat>(new_n / 2 + 1, new_n, vol ? new_n : 1);
  if (new_n == n) {
    std::copy(F.begin(), F.end(), G.begin());
  } else if (new_n < n) {
    // Every coefficient of the smaller transform from the same frequency of the larger one,
    // including the new Nyquist row/column (+new_n/2 in FFT order).
    for (int iz = 0; iz < G.nz(); ++iz) {
      const int kz = vol ? fft_freq(iz, new_n) : 0;
      for (int iy = 0; iy < new_n; ++iy) {
        const int ky = fft_freq(iy, new_n);
        const cfloat* src = &F(0, fft_index(ky, n), vol ? fft_index(kz, n) : 0);
        std::copy(src, src + G.nx(), &G(0, iy, iz));
      }
    }
  } else {
    // Enlarging: the coefficients with |k| <= n/2 (a sphere, in FFT order of the old transform,
    // so its +n/2 entries included).
    std::fill(G.begin(), G.end(), cfloat(0));
    const double r2max = double(F.nx() - 1) * (F.nx() - 1);
    for (int iz = 0; iz < F.nz(); ++iz) {
      const int kz = vol ? fft_freq(iz, n) : 0;
      for (int iy = 0; iy < n; ++iy) {
        const int ky = fft_freq(iy, n);
        for (int kx = 0; kx < F.nx(); ++kx)
          if (double(kx) * kx + double(ky) * ky + double(kz) * kz <= r2max)
            G(kx, fft_index(ky, new_n), vol ? fft_index(kz, new_n) : 0) = F(kx, iy, iz);
      }
    }
  }
}

Grid<cfloat> window_fourier(const Grid<cfloat>& F, int n, int new_n) {
  if (new_n == n) return F;
  Grid<cfloat> G;
  window_fourier(F, n, new_n, G);
  return G;
}

Grid<float> rescale(const Grid<float>& img, int new_n) {
  check_square(img, "rescale");
  if (new_n < 2) input_error("rescale: new box size {} must be >= 2", new_n);
  const int n = img.nx();
  const bool vol = img.nz() > 1;
  if (new_n == n) return img;
  Grid<cfloat> F = fft_forward(img);
  centre_origin(F, n);
  Grid<cfloat> G = window_fourier(F, n, new_n);
  const float scale = float(vol ? std::pow(double(new_n) / n, 3) : std::pow(double(new_n) / n, 2));
  for (auto& v : G) v *= scale;
  centre_origin(G, new_n, true);
  return fft_inverse(G, new_n);
}

Grid<float> window(const Grid<float>& img, int new_n, float fill) {
  check_square(img, "window");
  if (new_n < 1) input_error("window: new box size {} must be >= 1", new_n);
  const int n = img.nx();
  const bool vol = img.nz() > 1;
  Grid<float> out(new_n, new_n, vol ? new_n : 1, fill);
  const int off = n / 2 - new_n / 2;  // old index = new index + off
  for (int z = 0; z < out.nz(); ++z) {
    const int oz = vol ? z + off : 0;
    if (oz < 0 || oz >= img.nz()) continue;
    for (int y = 0; y < new_n; ++y) {
      const int oy = y + off;
      if (oy < 0 || oy >= n) continue;
      for (int x = 0; x < new_n; ++x) {
        const int ox = x + off;
        if (ox < 0 || ox >= n) continue;
        out(x, y, z) = img(ox, oy, oz);
      }
    }
  }
  return out;
}

Grid<float> shift_wrapped(const Grid<float>& img, int dx, int dy, int dz) {
  const int nx = img.nx(), ny = img.ny(), nz = img.nz();
  Grid<float> out(nx, ny, nz);
  auto mod = [](int a, int n) { return ((a % n) + n) % n; };
  for (int z = 0; z < nz; ++z) {
    const int tz = mod(z + dz, nz);
    for (int y = 0; y < ny; ++y) {
      const int ty = mod(y + dy, ny);
      const float* src = img.data() + img.index(0, y, z);
      float* dst = out.data() + out.index(0, ty, tz);
      for (int x = 0; x < nx; ++x) dst[mod(x + dx, nx)] = src[x];
    }
  }
  return out;
}

Grid<float> randomize_phases(const Grid<float>& map, double radius_px, uint64_t seed, uint64_t stream,
                             int nthreads) {
  check_square(map, "randomize_phases");
  const int n = map.nx();
  Grid<cfloat> F = fft_forward(map, nthreads);
  auto rng = make_rng(seed, stream, 0x50484153);  // "PHAS"
  const double r2min = radius_px * radius_px;
  for (int z = 0; z < F.nz(); ++z) {
    const int kz = F.nz() > 1 ? fft_freq(z, n) : 0;
    for (int y = 0; y < F.ny(); ++y) {
      const int ky = fft_freq(y, n);
      for (int x = 0; x < F.nx(); ++x) {
        if (double(x * x + ky * ky + kz * kz) < r2min) continue;
        cfloat& v = F(x, y, z);
        v = std::polar(std::abs(v), float(2 * 3.14159265358979323846 * uniform01(rng)));
      }
    }
  }
  Grid<float> out;
  fft_inverse_destroy(F, n, out, nthreads);
  return out;
}

Grid<float> transform_map(const Grid<float>& in, const Mat3& R, const Vec3& c, const Vec3& t) {
  const int n = in.nx();
  if (in.ny() != n || in.nz() != n) runtime_error("transform_map: {}x{}x{} is not a cube", in.nx(), in.ny(), in.nz());
  const double h = n / 2;
  Grid<float> out(n, n, n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double X = x - h - c[0] - t[0], Y = y - h - c[1] - t[1], Z = z - h - c[2] - t[2];
        const double sx = R[0][0] * X + R[1][0] * Y + R[2][0] * Z + h + c[0];  // R^T (y - h - c - t) + h + c
        const double sy = R[0][1] * X + R[1][1] * Y + R[2][1] * Z + h + c[1];
        const double sz = R[0][2] * X + R[1][2] * Y + R[2][2] * Z + h + c[2];
        const int x0 = int(std::floor(sx)), y0 = int(std::floor(sy)), z0 = int(std::floor(sz));
        const double fx = sx - x0, fy = sy - y0, fz = sz - z0;
        double v = 0;
        for (int dz = 0; dz < 2; ++dz)
          for (int dy = 0; dy < 2; ++dy)
            for (int dx = 0; dx < 2; ++dx) {
              const int xi = x0 + dx, yi = y0 + dy, zi = z0 + dz;
              if (xi < 0 || yi < 0 || zi < 0 || xi >= n || yi >= n || zi >= n) continue;
              v += (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * (dz ? fz : 1 - fz) * in(xi, yi, zi);
            }
        out(x, y, z) = float(v);
      }
  return out;
}

}  // namespace regula

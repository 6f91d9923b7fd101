#include "regula/imaging/mask.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/filter.hpp"

namespace regula {

double soft_edge_value(double r, double radius, double edge) {
  if (r <= radius) return 1.0;
  if (edge <= 0 || r >= radius + edge) return 0.0;
  return 0.5 + 0.5 * std::cos(M_PI * (r - radius) / edge);
}

double CtfReach::at_shell_px(double shell, int n) const {
  const double f = shell / (n * pixel_size), c = cs * wavelength * wavelength * wavelength * f * f * f;
  const double r = std::max(std::abs(wavelength * defocus_u * f - c), std::abs(wavelength * defocus_v * f - c));
  return factor * r / pixel_size;
}

namespace {
template <class F>
void for_each_radius(const Grid<float>& g, F f, MaskCentre c = {}) {
  const double cx = g.nx() / 2 + c.dx, cy = g.ny() / 2 + c.dy, cz = g.nz() / 2 + c.dz;
  for (int z = 0; z < g.nz(); ++z)
    for (int y = 0; y < g.ny(); ++y)
      for (int x = 0; x < g.nx(); ++x) {
        const double dz = g.nz() > 1 ? z - cz : 0;
        f(g.index(x, y, z), std::sqrt((x - cx) * (x - cx) + (y - cy) * (y - cy) + dz * dz));
      }
}
}  // namespace

Grid<float> spherical_mask(int nx, int ny, int nz, double radius, double edge) {
  Grid<float> m(nx, ny, nz);
  for_each_radius(m, [&](size_t i, double r) { m[i] = float(soft_edge_value(r, radius, edge)); });
  return m;
}

void apply_spherical_mask(Grid<float>& img, double radius, double edge, MaskFill fill, MaskCentre c) {
  double bg = 0;
  if (fill == MaskFill::BackgroundMean) {
    double s = 0, sw = 0;
    for_each_radius(img, [&](size_t i, double r) {
      if (r <= radius) return;
      const double w = 1.0 - soft_edge_value(r, radius, edge);
      s += w * img[i];
      sw += w;
    }, c);
    bg = sw > 0 ? s / sw : 0.0;
  } else if (fill == MaskFill::EdgeMean) {
    double s = 0, cnt = 0;
    for_each_radius(img, [&](size_t i, double r) {
      if (r > radius - 2 && r <= radius) s += img[i], cnt += 1;
    }, c);
    bg = cnt > 0 ? s / cnt : 0.0;
  }
  for_each_radius(img, [&](size_t i, double r) {
    const double m = soft_edge_value(r, radius, edge);
    img[i] = float(m * img[i] + (1.0 - m) * bg);
  }, c);
}

void apply_spherical_mask(Grid<float>& img, double radius, double edge, const Grid<float>& background, MaskCentre c) {
  if (background.nx() != img.nx() || background.ny() != img.ny() || background.nz() != img.nz())
    throw std::invalid_argument("apply_spherical_mask: background and image differ in shape");
  for_each_radius(img, [&](size_t i, double r) {
    const double m = soft_edge_value(r, radius, edge);
    img[i] = float(m * img[i] + (1.0 - m) * background[i]);
  }, c);
}

void apply_particle_mask(Grid<float>& img, double radius, double edge, MaskCentre at, const ParticleSolvent& solvent) {
  if (solvent.zero) {
    apply_spherical_mask(img, radius, edge, MaskFill::Zero, at);
  } else if (!solvent.noise_sigma2) {
    apply_spherical_mask(img, radius, edge, MaskFill::BackgroundMean, at);
  } else {
    if (img.nz() != 1 || img.nx() != img.ny())
      throw std::invalid_argument("apply_particle_mask: noise fill needs a square image");
    constexpr uint64_t kSolventNoiseStream = 1;  // substream 0 is the particle's other random choices
    auto rng = make_rng(solvent.seed, solvent.particle, kSolventNoiseStream);
    apply_spherical_mask(img, radius, edge, coloured_noise(img.nx(), *solvent.noise_sigma2, rng), at);
  }
}

namespace {
// 1D squared distance transform (lower envelope of parabolas, Felzenszwalb &
// Huttenlocher 2012) of f (length n) with stride, in place.
void edt_1d(float* f, int n, size_t stride, std::vector<double>& d, std::vector<int>& v,
            std::vector<double>& z) {
  const double inf = std::numeric_limits<double>::infinity();
  d.assign(size_t(n), 0.0);
  v.assign(size_t(n), 0);
  z.assign(size_t(n) + 1, 0.0);
  int k = -1;
  for (int q = 0; q < n; ++q) {
    const double fq = f[size_t(q) * stride];
    if (std::isinf(fq)) continue;
    while (k >= 0) {
      const int p = v[size_t(k)];
      const double fp = f[size_t(p) * stride];
      const double s = ((fq + double(q) * q) - (fp + double(p) * p)) / (2.0 * (q - p));
      if (s <= z[size_t(k)]) {
        --k;
        continue;
      }
      ++k;
      v[size_t(k)] = q;
      z[size_t(k)] = s;
      z[size_t(k) + 1] = inf;
      break;
    }
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -inf;
      z[1] = inf;
    }
  }
  if (k < 0) return;  // all infinite
  int j = 0;
  for (int q = 0; q < n; ++q) {
    while (z[size_t(j) + 1] < q) ++j;
    const int p = v[size_t(j)];
    d[size_t(q)] = double(q - p) * (q - p) + f[size_t(p) * stride];
  }
  for (int q = 0; q < n; ++q) f[size_t(q) * stride] = float(d[size_t(q)]);
}
}  // namespace

Grid<float> squared_distance_transform(const Grid<float>& binary) {
  const float inf = std::numeric_limits<float>::infinity();
  Grid<float> g(binary.nx(), binary.ny(), binary.nz());
  for (size_t i = 0; i < g.size(); ++i) g[i] = binary[i] > 0.5f ? 0.0f : inf;
  std::vector<double> d, z;
  std::vector<int> v;
  const int nx = g.nx(), ny = g.ny(), nz = g.nz();
  const size_t sy = size_t(nx), sz = size_t(nx) * ny;
  for (int k = 0; k < nz; ++k)
    for (int j = 0; j < ny; ++j) edt_1d(g.data() + k * sz + j * sy, nx, 1, d, v, z);
  if (ny > 1)
    for (int k = 0; k < nz; ++k)
      for (int i = 0; i < nx; ++i) edt_1d(g.data() + k * sz + size_t(i), ny, sy, d, v, z);
  if (nz > 1)
    for (int j = 0; j < ny; ++j)
      for (int i = 0; i < nx; ++i) edt_1d(g.data() + j * sy + size_t(i), nz, sz, d, v, z);
  return g;
}

Grid<float> create_mask(const Grid<float>& map, const MaskCreateOptions& opt) {
  if (map.empty()) input_error("mask_create: empty map");
  Grid<float> src = map;
  if (opt.lowpass_A > 0) low_pass(src, opt.lowpass_A, opt.pixel_size);
  Grid<float> m(map.nx(), map.ny(), map.nz());
  for (size_t i = 0; i < m.size(); ++i) m[i] = src[i] >= opt.ini_threshold ? 1.0f : 0.0f;
  if (opt.extend_px > 0) {
    Grid<float> d2 = squared_distance_transform(m);
    const double e2 = opt.extend_px * opt.extend_px;
    for (size_t i = 0; i < m.size(); ++i)
      if (d2[i] < e2) m[i] = 1.0f;
  } else if (opt.extend_px < 0) {
    // shrink: remove voxels at distance < |extend| from the outside
    Grid<float> outside(m.nx(), m.ny(), m.nz());
    for (size_t i = 0; i < m.size(); ++i) outside[i] = 1.0f - m[i];
    Grid<float> d2 = squared_distance_transform(outside);
    const double e2 = opt.extend_px * opt.extend_px;
    for (size_t i = 0; i < m.size(); ++i)
      if (d2[i] < e2) m[i] = 0.0f;
  }
  if (opt.soft_edge_px > 0) {
    Grid<float> d2 = squared_distance_transform(m);
    const double w2 = opt.soft_edge_px * opt.soft_edge_px;
    for (size_t i = 0; i < m.size(); ++i)
      if (m[i] < 0.5f && d2[i] < w2) m[i] = float(0.5 + 0.5 * std::cos(M_PI * std::sqrt(double(d2[i])) / opt.soft_edge_px));
  }
  return m;
}

std::array<double, 3> centre_of_mass(const Grid<float>& map) {
  const int cx = map.nx() / 2, cy = map.ny() / 2, cz = map.nz() / 2;
  double sum = 0, sx = 0, sy = 0, sz = 0;
  for (int z = 0; z < map.nz(); ++z)
    for (int y = 0; y < map.ny(); ++y) {
      const float* row = map.data() + map.index(0, y, z);
      for (int x = 0; x < map.nx(); ++x) {
        const double v = row[x];
        if (!(v > 0)) continue;
        sum += v;
        sx += v * (x - cx);
        sy += v * (y - cy);
        sz += v * (z - cz);
      }
    }
  if (sum == 0) input_error("centre of mass: the map has no positive values");
  return {sx / sum, sy / sum, sz / sum};
}

std::vector<double> apply_reach_mask(Grid<float>& img, double radius, double edge, MaskCentre at,
                                     const CtfReach& reach, int r_max) {
  const int n = img.nx();
  if (img.ny() != n || img.nz() != 1) throw std::invalid_argument("apply_reach_mask: a square image is expected");
  const int h = n / 2;
  r_max = std::clamp(r_max, 0, h);
  const double cx = h + at.dx, cy = h + at.dy;
  std::vector<float> dist(size_t(n) * size_t(n));
  double far = 0;  // the farthest pixel from the centre
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const double d = std::hypot(x - cx, y - cy);
      dist[size_t(y) * size_t(n) + size_t(x)] = float(d);
      far = std::max(far, d);
    }
  // Bands of shells [lo, hi] masked at radius rad (infinity: unmasked); the last holds every shell
  // above r_max too.
  struct Band {
    int lo, hi;
    double rad;
  };
  constexpr double kAll = std::numeric_limits<double>::infinity();
  auto rad_at = [&](int s) { return radius + reach.at_shell_px(s, n); };
  std::vector<Band> bands;
  // Bands of w shells: a band of w shells has a real-space packet about n / w px wide, and the
  // reach grows by `slope` px per shell, so w = sqrt(n / slope) balances the two (the circle of a
  // band is then as much wider than the ring it must hold as the packet is).
  const double slope = r_max > 0 ? std::max(1e-6, (reach.at_shell_px(r_max, n) - reach.at_shell_px(0, n)) / r_max) : 1.0;
  const int w = std::clamp(int(std::lround(std::sqrt(n / slope))), 2, std::max(2, h));
  for (int s = 0; s <= h;) {
    Band b{s, std::min(s + w - 1, h), 0.0};
    for (int t = b.lo; t <= std::min(b.hi, r_max); ++t) b.rad = std::max(b.rad, rad_at(t));
    if (b.rad >= far || b.hi >= r_max) b.hi = h;
    if (b.rad >= far) b.rad = kAll;
    bands.push_back(b);
    s = b.hi + 1;
  }
  std::vector<double> kept(size_t(h + 1), 1.0);
  if (bands.size() == 1 && bands[0].rad == kAll) return kept;
  // Smooth windows over |k| (a partition of unity: band b rises from the centre of band b-1 to its
  // own and falls to the centre of band b+1), so that no band's image has the long real-space tails
  // of a sharp band-pass; each band's circle covers the reach of every shell its window touches.
  const size_t B = bands.size();
  std::vector<double> c(B);
  for (size_t b = 0; b < B; ++b) c[b] = b + 1 < B ? 0.5 * (bands[b].lo + bands[b].hi) : bands[b].lo;
  if (B > 1) c[0] = std::min(c[0], 0.5 * c[1]);
  for (size_t b = 0; b < B; ++b) {
    if (bands[b].rad == kAll) continue;
    const int s0 = b > 0 ? int(std::floor(c[b - 1])) : 0, s1 = std::min(b + 1 < B ? int(std::ceil(c[b + 1])) : h, r_max);
    for (int s = s0; s <= s1; ++s) bands[b].rad = std::max(bands[b].rad, rad_at(s));
    if (bands[b].rad >= far) bands[b].rad = kAll;
  }
  auto window = [&](size_t b, double k) {
    if (k <= c[b]) return b == 0 ? 1.0 : std::clamp((k - c[b - 1]) / (c[b] - c[b - 1]), 0.0, 1.0);
    return b + 1 == B ? 1.0 : std::clamp((c[b + 1] - k) / (c[b + 1] - c[b]), 0.0, 1.0);
  };
  const Grid<cfloat> F = fft_forward(img);
  std::vector<double> kabs(F.size());
  for (int y = 0; y < n; ++y)
    for (int x = 0; x <= h; ++x) {
      const int ky = fft_freq(y, n);
      kabs[F.index(x, y, 0)] = std::sqrt(double(x * x + ky * ky));
    }
  Grid<double> acc(n, n, 1);
  Grid<cfloat> G(F.nx(), F.ny(), 1);
  Grid<float> g;
  std::vector<float> m_prev, m_cur(acc.size());
  std::vector<double> m2(B, 0.0), mm(B, 0.0);  // mean m_b^2, mean m_b m_{b+1}
  for (size_t b = 0; b < B; ++b) {
    for (size_t k = 0; k < F.size(); ++k) {
      const double w = window(b, kabs[k]);
      G[k] = w > 0 ? F[k] * float(w) : cfloat(0, 0);
    }
    fft_inverse_destroy(G, n, g);
    for (size_t k = 0; k < acc.size(); ++k) {
      const double m = bands[b].rad == kAll ? 1.0 : soft_edge_value(dist[k], bands[b].rad, edge);
      m_cur[k] = float(m);
      acc[k] += m * g[k];
      m2[b] += m * m;
      if (b > 0) mm[b - 1] += m * m_prev[k];
    }
    std::swap(m_prev, m_cur);
    m_cur.resize(acc.size());
  }
  const double N = double(acc.size());
  for (int s = 0; s <= h; ++s) {
    double v = 0;
    for (size_t b = 0; b < B; ++b) {
      const double w = window(b, s);
      if (w == 0) continue;
      v += w * w * m2[b] / N;
      if (b + 1 < B) v += 2 * w * window(b + 1, s) * mm[b] / N;
    }
    kept[size_t(s)] = v;
  }
  for (size_t k = 0; k < acc.size(); ++k) img[k] = float(acc[k]);
  return kept;
}

}  // namespace regula

#include "regula/imaging/mask.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/filter.hpp"

namespace regula {

double soft_edge_value(double r, double radius, double edge) {
  if (r <= radius) return 1.0;
  if (edge <= 0 || r >= radius + edge) return 0.0;
  return 0.5 + 0.5 * std::cos(M_PI * (r - radius) / edge);
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

}  // namespace regula

#include "regula/micrograph/scene.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/random.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

int good_fft_size(int n) { return fft_friendly_size(n, true, 7); }

double interaction_constant(double kv) {
  const double e0 = 510.99895;  // electron rest energy, keV
  const double lambda = electron_wavelength(kv);
  return 2.0 * kPi / (lambda * kv * 1e3) * (e0 + kv) / (2.0 * e0 + kv);
}

SceneMap make_scene_map(const Grid<float>& map, const std::string& name, double angpix, double voltage_kv) {
  if (map.nx() != map.ny() || map.nx() != map.nz() || map.nx() < 8)
    input_error("{}: a particle map must be cubic and at least 8 px, got {}x{}x{}", name, map.nx(), map.ny(),
                map.nz());
  float mx = 0;
  for (float v : map) mx = std::max(mx, v);
  if (!(mx > 0)) input_error("{}: the map has no positive density", name);
  const int n = map.nx(), c = n / 2;
  double sum = 0, r2max = 0;
  long count = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const float v = map(x, y, z);
        if (v > 0.1f * mx) {
          sum += v;
          ++count;
          r2max = std::max(r2max, double((x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c)));
        }
      }
  SceneMap m;
  m.name = name;
  m.box = n;
  m.radius_px = std::sqrt(r2max) + 1;
  const double mean = sum / double(count);
  m.phase_scale = interaction_constant(voltage_kv) * 2.5 / mean * angpix;
  m.projector = Projector(map, 2);
  return m;
}

namespace {

struct Disc {
  double x, y, r;
};

// A Gaussian random field on the canvas with power spectrum spectrum(k in 1/Å), scaled to `rms`.
Grid<float> random_field(int px, int py, double angpix, double rms, std::mt19937_64& rng,
                         double (*spectrum)(double), int nthreads) {
  Grid<cfloat> F(px / 2 + 1, py);
  for (int j = 0; j < py; ++j) {
    const double ky = fft_freq(j, py) / (py * angpix);
    for (int i = 0; i < px / 2 + 1; ++i) {
      const double kx = i / (px * angpix);
      const double a = std::sqrt(spectrum(std::sqrt(kx * kx + ky * ky)));
      auto [g1, g2] = normal_pair(rng);
      F(i, j) = cfloat(float(a * g1), float(a * g2));
    }
  }
  F(0, 0) = 0;
  Grid<float> f = fft_inverse(F, px, nthreads);
  double s2 = 0;
  for (float v : f) s2 += double(v) * v;
  const double scale = rms / std::sqrt(std::max(1e-30, s2 / double(f.size())));
  for (auto& v : f) v = float(v * scale);
  return f;
}

// Amorphous water: low at small k (incompressible), rising to the peak at 1/3.7 Å.
double ice_spectrum(double k) {
  const double rise = 1.0 - std::exp(-(k / 0.12) * (k / 0.12));
  const double peak = std::exp(-(k - 0.27) * (k - 0.27) / (2 * 0.03 * 0.03));
  return 0.15 + rise + 1.5 * peak;
}
// Amorphous carbon: flatter, with more low-frequency texture.
double carbon_spectrum(double k) { return 1.0 / (1.0 + (k / 0.05) * (k / 0.05)) + 0.3; }

inline double smoothstep(double d, double w) {  // 0 for d <= -w, 1 for d >= w
  const double t = std::clamp((d + w) / (2 * w), 0.0, 1.0);
  return t * t * (3 - 2 * t);
}

ScenePlacement random_pose(int type, double x, double y, std::mt19937_64& g) {
  ScenePlacement p;
  p.type = type;
  p.x = x;
  p.y = y;
  p.rot = 360.0 * uniform01(g) - 180.0;
  p.tilt = rad2deg(std::acos(2.0 * uniform01(g) - 1.0));
  p.psi = 360.0 * uniform01(g) - 180.0;
  return p;
}

int draw_type(const std::vector<double>& cum, std::mt19937_64& g) {
  const double u = uniform01(g) * cum.back();
  for (size_t t = 0; t < cum.size(); ++t)
    if (u < cum[t]) return int(t);
  return int(cum.size()) - 1;
}

}  // namespace

Scene make_scene(const SceneOptions& opt, const std::vector<SceneMap>& maps, std::mt19937_64& rng, int nthreads) {
  if (maps.empty()) input_error("simulated micrograph: at least one particle map is needed");
  Scene s;
  s.nx = opt.nx;
  s.ny = opt.ny;
  s.angpix = opt.angpix;
  s.canvas_x = good_fft_size(opt.nx + 2 * opt.margin);
  s.canvas_y = good_fft_size(opt.ny + 2 * opt.margin);
  s.off_x = (s.canvas_x - opt.nx) / 2;
  s.off_y = (s.canvas_y - opt.ny) / 2;
  // CTF of the micrograph.
  s.ctf.voltage_kv = opt.voltage_kv;
  s.ctf.cs_mm = opt.cs_mm;
  s.ctf.amplitude_contrast = opt.amplitude_contrast;
  s.ctf.bfactor = opt.bfactor;
  const double mean_df = opt.defocus_min + (opt.defocus_max - opt.defocus_min) * uniform01(rng);
  const double astig = opt.astigmatism_max * uniform01(rng);
  s.ctf.defocus_u = mean_df + astig / 2;
  s.ctf.defocus_v = mean_df - astig / 2;
  s.ctf.defocus_angle = 180.0 * uniform01(rng) - 90.0;

  // Ice everywhere.
  s.phase = random_field(s.canvas_x, s.canvas_y, opt.angpix, opt.ice_rms, rng, ice_spectrum, nthreads);
  s.absorption = Grid<float>(s.canvas_x, s.canvas_y, 1, 1.0f);

  // Carbon edge: a straight line through the field; the carbon lies on the side of the normal.
  bool carbon = uniform01(rng) < opt.carbon_probability;
  double cnx = 0, cny = 0, cdist = 0;  // carbon where (x, y).(cnx, cny) > cdist (micrograph px)
  if (carbon) {
    const double ang = 2 * kPi * uniform01(rng);
    cnx = std::cos(ang);
    cny = std::sin(ang);
    // The edge passes at 55-80% of the way from the centre to the border along the normal.
    const double half = 0.5 * std::abs(cnx) * opt.nx + 0.5 * std::abs(cny) * opt.ny;
    cdist = (0.5 * opt.nx * cnx + 0.5 * opt.ny * cny) + (0.55 + 0.25 * uniform01(rng)) * half;
    SceneJunk j;
    j.kind = "carbon";
    j.x = 0.5 * opt.nx + cnx * (cdist - (0.5 * opt.nx * cnx + 0.5 * opt.ny * cny));
    j.y = 0.5 * opt.ny + cny * (cdist - (0.5 * opt.nx * cnx + 0.5 * opt.ny * cny));
    j.angle = rad2deg(ang);
    s.junk.push_back(j);
    Grid<float> tex = random_field(s.canvas_x, s.canvas_y, opt.angpix, 3 * opt.ice_rms, rng, carbon_spectrum, nthreads);
    for (int y = 0; y < s.canvas_y; ++y)
      for (int x = 0; x < s.canvas_x; ++x) {
        const double d = (x - s.off_x) * cnx + (y - s.off_y) * cny - cdist;
        const double m = smoothstep(d, 2.0);
        if (m <= 0) continue;
        s.phase(x, y) += float(m * (1.0 + tex(x, y)));
        s.absorption(x, y) *= float(1.0 - 0.15 * m);
      }
  }
  auto in_carbon = [&](double x, double y, double r) { return carbon && x * cnx + y * cny - cdist > -r; };

  std::vector<double> cum;
  double acc = 0;
  for (size_t t = 0; t < maps.size(); ++t) {
    acc += t < opt.type_fractions.size() ? opt.type_fractions[t] : 1.0;
    cum.push_back(acc);
  }
  double rmax = 0;
  for (auto& m : maps) rmax = std::max(rmax, m.radius_px);

  // Ice crystals: absorbing discs.
  std::vector<Disc> blocked;
  for (int c = 0; c < opt.ice_crystals; ++c) {
    const double r = 30 + 90 * uniform01(rng);
    const double x = opt.nx * uniform01(rng), y = opt.ny * uniform01(rng);
    blocked.push_back({x, y, r});
    s.junk.push_back({"ice_crystal", x, y, r, 0});
    const int x0 = std::max(0, int(x - r - 4) + s.off_x), x1 = std::min(s.canvas_x - 1, int(x + r + 4) + s.off_x);
    const int y0 = std::max(0, int(y - r - 4) + s.off_y), y1 = std::min(s.canvas_y - 1, int(y + r + 4) + s.off_y);
    for (int yy = y0; yy <= y1; ++yy)
      for (int xx = x0; xx <= x1; ++xx) {
        const double d = r - std::hypot(xx - s.off_x - x, yy - s.off_y - y);
        const double m = smoothstep(d, 1.5);
        s.phase(xx, yy) += float(0.5 * m);
        s.absorption(xx, yy) *= float(1.0 - 0.5 * m);
      }
  }

  // Aggregates: clumps of overlapping particles (junk, not in the particle list).
  std::vector<ScenePlacement> placed;  // everything projected (particles and aggregate members)
  for (int a = 0; a < opt.aggregates; ++a) {
    const double x = opt.nx * uniform01(rng), y = opt.ny * uniform01(rng);
    const int k = 4 + int(uniform01(rng) * 9);
    const double r = 1.3 * rmax;
    for (int i = 0; i < k; ++i) {
      const double rr = r * std::sqrt(uniform01(rng)), aa = 2 * kPi * uniform01(rng);
      placed.push_back(random_pose(draw_type(cum, rng), x + rr * std::cos(aa), y + rr * std::sin(aa), rng));
    }
    blocked.push_back({x, y, r + rmax});
    s.junk.push_back({"aggregate", x, y, r + rmax, 0});
  }
  const size_t n_junk_particles = placed.size();

  // Particles: random positions, no overlap with each other or with junk, inside the micrograph.
  long attempts = 0;
  while (int(s.particles.size()) < opt.particles && attempts < 200L * std::max(1, opt.particles)) {
    ++attempts;
    const int type = draw_type(cum, rng);
    const double r = maps[size_t(type)].radius_px;
    const double x = r + (opt.nx - 2 * r) * uniform01(rng), y = r + (opt.ny - 2 * r) * uniform01(rng);
    if (in_carbon(x, y, r)) continue;
    bool ok = true;
    for (auto& b : blocked)
      if (std::hypot(x - b.x, y - b.y) < b.r + r) {
        ok = false;
        break;
      }
    for (auto& p : s.particles)
      if (ok && std::hypot(x - p.x, y - p.y) < 0.95 * (r + maps[size_t(p.type)].radius_px)) ok = false;
    if (!ok) continue;
    s.particles.push_back(random_pose(type, x, y, rng));
  }
  placed.insert(placed.end(), s.particles.begin(), s.particles.end());
  (void)n_junk_particles;

  // Project everything (in parallel), then add to the canvas in a fixed order.
  std::vector<Image> images(placed.size());
  ThreadPool pool(nthreads);
  pool.parallel_for(0, placed.size(), [&](size_t i, int) {
    const ScenePlacement& p = placed[i];
    const double cx = p.x + s.off_x, cy = p.y + s.off_y;
    images[i] = maps[size_t(p.type)].projector.project_real(euler_to_matrix(p.rot, p.tilt, p.psi),
                                                            cx - std::floor(cx), cy - std::floor(cy));
  });
  for (size_t i = 0; i < placed.size(); ++i) {
    const ScenePlacement& p = placed[i];
    const SceneMap& m = maps[size_t(p.type)];
    const int ix = int(std::floor(p.x + s.off_x)) - m.box / 2, iy = int(std::floor(p.y + s.off_y)) - m.box / 2;
    for (int y = 0; y < m.box; ++y) {
      const int cy = iy + y;
      if (cy < 0 || cy >= s.canvas_y) continue;
      for (int x = 0; x < m.box; ++x) {
        const int cx = ix + x;
        if (cx < 0 || cx >= s.canvas_x) continue;
        s.phase(cx, cy) += float(m.phase_scale * images[i](x, y));
      }
    }
  }
  return s;
}

}  // namespace regula

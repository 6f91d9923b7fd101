#include "regula/jobs/simulate.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <filesystem>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace regula {

std::string SimulateOptions::validate() const {
  if (map.empty()) return "--i: a map is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (n <= 0) return fmt::format("--n: the number of particles must be positive (got {})", n);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (box < 0 || box == 1) return fmt::format("--box: must be at least 2 (got {})", box);
  if (frac2 < 0 || frac2 > 1) return fmt::format("--frac2: must be in [0, 1] (got {})", frac2);
  if (micrographs < 0 || micrographs > n) return fmt::format("--micrographs: 0 to --n (got {})", micrographs);
  if (defocus_spread < 0) return fmt::format("--defocus_spread: must be >= 0 (got {})", defocus_spread);
  if (defocus_spread > 0 && micrographs == 0) return "--defocus_spread needs --micrographs";
  if (defocus_min <= 0 || defocus_max < defocus_min)
    return fmt::format("--defocus_min/--defocus_max: need 0 < min <= max (got {} and {})", defocus_min, defocus_max);
  if (max_shift < 0) return fmt::format("--max_shift: must be >= 0 (got {})", max_shift);
  if (views < 0) return fmt::format("--views: must be >= 0 (got {})", views);
  if (views > 0 && !map2.empty()) return "--views and --i2 cannot be combined (rlnClassNumber holds one or the other)";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (amplitude_contrast < 0 || amplitude_contrast >= 1)
    return fmt::format("--Q0: amplitude contrast must be in [0, 1) (got {})", amplitude_contrast);
  if (!mag.empty() && mag.size() != 4)
    return fmt::format("--mag: give the 4 elements m00,m01,m10,m11 (got {})", mag.size());
  if (mag.size() == 4 && !(std::abs(mag[0] * mag[3] - mag[1] * mag[2]) > 1e-6)) return "--mag: the matrix is singular";
  if (!ctf && (beamtilt_x != 0 || beamtilt_y != 0 || !odd_zernike.empty() || !even_zernike.empty() || premultiply))
    return "--beamtilt_x/y, --odd_zernike, --even_zernike and --premultiply need the CTF (not with --no_ctf)";
  if (og2_fraction < 0 || og2_fraction > 1)
    return fmt::format("--og2_fraction: must be in [0, 1] (got {})", og2_fraction);
  if (og2_angpix < 0) return fmt::format("--og2_angpix: must be positive (got {})", og2_angpix);
  if (og2_box < 0 || og2_box == 1) return fmt::format("--og2_box: must be at least 2 (got {})", og2_box);
  if (og2_fraction == 0 && (og2_angpix > 0 || og2_box > 0)) return "--og2_angpix/--og2_box need --og2_fraction";
  if (!(noise_spread >= 1)) return fmt::format("--noise_spread: max/min noise ratio, >= 1 (got {})", noise_spread);
  if (noise_spread > 1 && micrographs == 0) return "--noise_spread needs --micrographs";
  if (!(noise_bfactor >= 0) || !std::isfinite(noise_bfactor))
    return fmt::format("--noise_bfactor: must be >= 0 Å^2 (got {})", noise_bfactor);
  if (junk_fraction < 0 || junk_fraction >= 1)
    return fmt::format("--junk_fraction: must be in [0, 1) (got {})", junk_fraction);
  if (!junk_map.empty() && junk_fraction == 0) return "--junk_map needs --junk_fraction";
  return "";
}

namespace {

struct Truth {
  double rot, tilt, psi, dx, dy, du, dv, dangle;
  int cls;
};

Volume load_map(const std::string& path, int box, double& angpix) {
  mrc::Header h;
  Volume v = mrc::read(path, &h);
  if (v.nx() != v.ny() || v.nx() != v.nz())
    input_error("{}: the map must be cubic, got {}x{}x{}", path, v.nx(), v.ny(), v.nz());
  if (angpix <= 0) {
    angpix = h.pixel_size();
    if (angpix <= 0) input_error("{}: the header has no pixel size; give --angpix", path);
  }
  if (box > 0 && box != v.nx()) {
    // Window in real space about the centre n/2 (zero fill), as relion_image_handler --new_box.
    Volume w(box, box, box, 0.0f);
    int c_old = v.nx() / 2, c_new = box / 2;
    for (int z = 0; z < box; ++z)
      for (int y = 0; y < box; ++y)
        for (int x = 0; x < box; ++x) {
          int xs = x - c_new + c_old, ys = y - c_new + c_old, zs = z - c_new + c_old;
          if (xs >= 0 && ys >= 0 && zs >= 0 && xs < v.nx() && ys < v.nx() && zs < v.nx())
            w(x, y, z) = v(xs, ys, zs);
        }
    v = std::move(w);
  }
  return v;
}

double variance(const Image& img) {
  double s = 0, s2 = 0;
  for (float v : img) { s += v; s2 += double(v) * v; }
  double m = s / double(img.size());
  return s2 / double(img.size()) - m * m;
}

// The amplitude filter of --noise_bfactor on the half-complex grid of an n x n image (F(x, y) with
// 0 <= x <= n/2): exp(-B s^2 / 4) at spatial frequency s (1/Å), divided by sqrt(mean of its square
// over the full n x n transform), so that white noise of unit per-pixel variance keeps it.
Grid<float> noise_filter(int n, double bfactor, double angpix) {
  auto filter = [&](double kx, double ky) {
    const double s2 = (kx * kx + ky * ky) / (double(n) * n * angpix * angpix);
    return std::exp(-bfactor * s2 / 4);
  };
  double mean2 = 0;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) mean2 += std::pow(filter(fft_freq(x, n), fft_freq(y, n)), 2);
  mean2 /= double(n) * n;
  Grid<float> f(n / 2 + 1, n, 1);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x <= n / 2; ++x) f(x, y, 0) = float(filter(x, fft_freq(y, n)) / std::sqrt(mean2));
  return f;
}

// White noise filtered by `filter` (noise_filter).
Image colour_noise(const Image& white, const Grid<float>& filter) {
  Grid<cfloat> F = fourier_centred(white);
  for (size_t k = 0; k < F.size(); ++k) F[k] *= filter[k];
  return from_fourier_centred(F, white.nx());
}

star::Block& make_loop(star::Document& doc, const std::string& name, size_t rows) {
  star::Block& b = doc.add_block(name, true);
  for (size_t i = 0; i < rows; ++i) b.add_row();
  return b;
}

}  // namespace

namespace {

std::string vector_text(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{}", i ? "," : "", v[i]);
  return s + "]";
}

}  // namespace

SimulateResult simulate(const SimulateOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("simulate: " + msg);
  double angpix = opt.angpix;
  Volume map1 = load_map(opt.map, opt.box, angpix);
  const int n = map1.nx();
  Volume map2;
  if (!opt.map2.empty()) {
    double a2 = angpix;
    map2 = load_map(opt.map2, opt.box, a2);
    if (map2.nx() != n)
      input_error("{}: size {} differs from --i map size {} (after --box)", opt.map2, map2.nx(), n);
  }
  std::error_code ec;
  std::filesystem::create_directories(opt.out_dir, ec);
  if (ec) runtime_error("{}: cannot create directory: {}", opt.out_dir, ec.message());

  Projector proj1(map1, 2, -1, opt.threads);
  Projector proj2;
  if (!map2.empty()) proj2 = Projector(map2, 2, -1, opt.threads);
  Projector proj_junk;
  if (!opt.junk_map.empty()) {
    double aj = angpix;
    Volume vj = load_map(opt.junk_map, opt.box, aj);
    if (vj.nx() != n) input_error("{}: size {} differs from --i map size {} (after --box)", opt.junk_map, vj.nx(), n);
    proj_junk = Projector(vj, 2, -1, opt.threads);
  }

  // Fixed viewing directions for --views, drawn from their own stream.
  std::vector<std::pair<double, double>> view_dirs;
  if (opt.views > 0) {
    auto g = make_rng(opt.seed, ~uint64_t(0));
    for (int v = 0; v < opt.views; ++v) {
      double rot = 360.0 * uniform01(g) - 180.0;
      double tilt = rad2deg(std::acos(2.0 * uniform01(g) - 1.0));
      view_dirs.emplace_back(rot, tilt);
    }
  }

  auto draw = [&](std::mt19937_64& g) {
    Truth t{};
    if (opt.views > 0) {
      int v = int(g() % uint64_t(opt.views));
      t.rot = view_dirs[size_t(v)].first;
      t.tilt = view_dirs[size_t(v)].second;
      t.cls = v + 1;
    } else {
      t.rot = 360.0 * uniform01(g) - 180.0;
      t.tilt = rad2deg(std::acos(2.0 * uniform01(g) - 1.0));
      t.cls = (!map2.empty() && uniform01(g) < opt.frac2) ? 2 : 1;
    }
    t.psi = 360.0 * uniform01(g) - 180.0;
    double r = opt.max_shift * std::sqrt(uniform01(g)), a = 2 * kPi * uniform01(g);
    t.dx = r * std::cos(a);
    t.dy = r * std::sin(a);
    t.du = opt.defocus_min + (opt.defocus_max - opt.defocus_min) * uniform01(g);
    t.dv = t.du - 300.0 * uniform01(g);
    t.dangle = 180.0 * uniform01(g);
    return t;
  };

  // Every particle's truth and optics group (own streams: the data do not depend on --j).
  const size_t N = size_t(opt.n);
  auto micrograph_of = [&](size_t i) { return opt.micrographs > 0 ? i * size_t(opt.micrographs) / N : 0; };
  std::vector<Truth> truth(N);
  std::vector<int> group(N, 1), junk(N, 0);
  std::vector<double> noise_factor(N, 1.0);
  const int junk_kinds = opt.junk_map.empty() ? 4 : 5;
  for (size_t i = 0; i < N; ++i) {
    auto g = make_rng(opt.seed, i);
    truth[i] = draw(g);
    if (opt.junk_fraction > 0) {
      auto gj = make_rng(opt.seed, i, 5);
      if (uniform01(gj) < opt.junk_fraction) junk[i] = 1 + int(gj() % uint64_t(junk_kinds));
    }
    if (opt.micrographs > 0) {
      // The micrograph's defocus and astigmatism (its own stream), then the particle's height in the ice.
      auto gm = make_rng(opt.seed, micrograph_of(i), 3);
      Truth m{};
      m.du = opt.defocus_min + (opt.defocus_max - opt.defocus_min) * uniform01(gm);
      m.dv = m.du - 300.0 * uniform01(gm);
      m.dangle = 180.0 * uniform01(gm);
      auto gz = make_rng(opt.seed, i, 4);
      const double dz = opt.defocus_spread * (uniform01(gz) - 0.5);
      truth[i].du = m.du + dz;
      truth[i].dv = m.dv + dz;
      truth[i].dangle = m.dangle;
      if (opt.noise_spread > 1) noise_factor[i] = std::pow(opt.noise_spread, uniform01(gm) - 0.5);
    }
    if (opt.og2_fraction > 0) {
      auto go = make_rng(opt.seed, i, 2);
      group[i] = uniform01(go) < opt.og2_fraction ? 2 : 1;
    }
  }
  const bool two_groups = std::find(group.begin(), group.end(), 2) != group.end();
  const double angpix2 = opt.og2_angpix > 0 ? opt.og2_angpix : angpix;
  const int n2 = opt.og2_box > 0 ? opt.og2_box : n;

  SimulateResult res;
  namespace fs = std::filesystem;
  res.stack = (fs::path(opt.out_dir) / "particles.mrcs").string();
  if (two_groups) res.stack2 = (fs::path(opt.out_dir) / "particles_og2.mrcs").string();
  res.particles_star = (fs::path(opt.out_dir) / "particles.star").string();
  res.truth_star = (fs::path(opt.out_dir) / "truth.star").string();

  // STAR files: optics + particles (CTF only), and the truth (poses and classes).
  auto make_doc = [&](bool with_truth) {
    star::Document doc;
    const size_t ng = two_groups ? 2 : 1;
    star::Block& optics = make_loop(doc, "optics", ng);
    auto per_group = [&](auto a, auto b) { return two_groups ? std::vector<decltype(a)>{a, b} : std::vector<decltype(a)>{a}; };
    optics.set_column("rlnOpticsGroup", per_group(1, 2));
    optics.set_column("rlnOpticsGroupName", per_group(std::string("opticsGroup1"), std::string("opticsGroup2")));
    optics.set_column("rlnAmplitudeContrast", per_group(opt.amplitude_contrast, opt.amplitude_contrast));
    optics.set_column("rlnSphericalAberration", per_group(opt.cs, opt.cs));
    optics.set_column("rlnVoltage", per_group(opt.voltage, opt.voltage));
    optics.set_column("rlnImagePixelSize", per_group(angpix, angpix2));
    optics.set_column("rlnImageSize", per_group(n, n2));
    optics.set_column("rlnImageDimensionality", per_group(2, 2));
    if (opt.premultiply) optics.set_column("rlnCtfDataAreCtfPremultiplied", per_group(1, 1));
    if (opt.beamtilt_x != 0 || opt.beamtilt_y != 0) {
      optics.set_column("rlnBeamTiltX", per_group(opt.beamtilt_x, opt.beamtilt_x));
      optics.set_column("rlnBeamTiltY", per_group(opt.beamtilt_y, opt.beamtilt_y));
    }
    if (!opt.odd_zernike.empty())
      optics.set_column("rlnOddZernike", per_group(vector_text(opt.odd_zernike), vector_text(opt.odd_zernike)));
    if (!opt.even_zernike.empty())
      optics.set_column("rlnEvenZernike", per_group(vector_text(opt.even_zernike), vector_text(opt.even_zernike)));
    if (opt.mag.size() == 4) {
      const char* labels[4] = {"rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"};
      for (size_t k = 0; k < 4; ++k) optics.set_column(labels[k], per_group(opt.mag[k], opt.mag[k]));
    }
    star::Block& parts = make_loop(doc, "particles", N);
    std::vector<std::string> names(N);
    std::vector<double> du(N), dv(N), da(N), rot(N), tilt(N), psi(N), ox(N), oy(N);
    std::vector<int> cls(N);
    long next1 = 1, next2 = 1;
    for (size_t i = 0; i < N; ++i) {
      names[i] = group[i] == 2 ? fmt::format("{:06d}@{}", next2++, res.stack2)
                               : fmt::format("{:06d}@{}", next1++, res.stack);
      const Truth& t = truth[i];
      du[i] = std::round(t.du * 100) / 100;
      dv[i] = std::round(t.dv * 100) / 100;
      da[i] = std::round(t.dangle * 100) / 100;
      rot[i] = t.rot; tilt[i] = t.tilt; psi[i] = t.psi;
      const double px = group[i] == 2 ? angpix2 : angpix;
      ox[i] = -t.dx * px;
      oy[i] = -t.dy * px;
      cls[i] = t.cls;
    }
    parts.set_column("rlnImageName", names);
    std::vector<std::string> mics(N, "simulated.mrc");
    if (opt.micrographs > 0)
      for (size_t i = 0; i < N; ++i) mics[i] = fmt::format("mic{:04d}.mrc", micrograph_of(i) + 1);
    parts.set_column("rlnMicrographName", mics);
    parts.set_column("rlnOpticsGroup", group);
    if (opt.ctf) {
      parts.set_column("rlnDefocusU", du);
      parts.set_column("rlnDefocusV", dv);
      parts.set_column("rlnDefocusAngle", da);
    }
    if (with_truth) {
      parts.set_column("rlnAngleRot", rot);
      parts.set_column("rlnAngleTilt", tilt);
      parts.set_column("rlnAnglePsi", psi);
      parts.set_column("rlnOriginXAngst", ox);
      parts.set_column("rlnOriginYAngst", oy);
      parts.set_column("rlnClassNumber", cls);
      if (opt.junk_fraction > 0) parts.set_column("rlnRegulaTruthKind", junk);
    }
    return doc;
  };

  // The image model of the truth (imaging/optics_model.hpp), as `project` and `reconstruct` use it.
  star::Document truth_doc = make_doc(true);
  truth_doc.source = res.truth_star;
  const ParticleTable table = ParticleTable::from_document(truth_doc);
  OpticsModel optics(table);
  optics.set_reference(n, angpix);

  // Noise-free image of particle i: projection at its group's sampling, CTF (with even
  // Zernikes and magnification) and aberration phase, moved by its shift (group px).
  auto signal = [&](size_t i) {
    const Truth& t = truth[i];
    const Projector& p = t.cls == 2 && !map2.empty() ? proj2 : proj1;
    const OpticsGroupModel& g = optics.group_of(i);
    const Mat3 A = euler_to_matrix(t.rot, t.tilt, t.psi);
    Grid<cfloat> F;
    if (g.maps_to_reference() || g.box != n) p.project_mapped(A, g.to_reference, F, g.box);
    else p.project(A, F);
    if (opt.ctf) {
      Grid<float> c;
      optics.particle(i).ctf_half(c);
      for (size_t k = 0; k < F.size(); ++k) F[k] *= c[k];
      g.modulate(F);
    }
    shift_phase(F, t.dx, t.dy, g.box);
    return from_fourier_centred(F, g.box);
  };

  // A junk image (noise-free, with its CTF): kind junk[i], drawn on a canvas twice the box (so the
  // CTF spreads it without wrapping around the box) and cut to the box, then scaled to a multiple of
  // the particles' signal variance where it has no scale of its own; from the image's own stream.
  auto junk_signal = [&](size_t i, double var_particles) {
    const OpticsGroupModel& g = optics.group_of(i);
    const int m = g.box, P = 2 * m;
    auto gj = make_rng(opt.seed, i, 6);
    Image canvas(P, P, 1, 0.0f);
    auto finish = [&](double target_var) {
      Grid<cfloat> F = fourier_centred(canvas);
      if (opt.ctf) {
        const ParticleOptics po = optics.particle(i);
        for (int y = 0; y < P; ++y)
          for (int x = 0; x <= P / 2; ++x) F(x, y, 0) *= float(po.ctf_value(0.5 * x, 0.5 * fft_freq(y, P)));
      }
      const Image big = from_fourier_centred(F, P);
      Image out(m, m, 1);
      for (int y = 0; y < m; ++y)
        for (int x = 0; x < m; ++x) out(x, y, 0) = big(x + m / 2, y + m / 2, 0);
      const double v = variance(out);
      if (target_var > 0 && v > 0)
        for (float& x : out) x = float(x * std::sqrt(target_var / v));
      return out;
    };
    const double c = P / 2;
    switch (junk[i]) {
      case 1: return Image(m, m, 1, 0.0f);  // empty ice: noise only
      case 2: {                            // carbon edge
        const double a = 2 * kPi * uniform01(gj), d = (uniform01(gj) - 0.5) * m / 2;
        Image tex(P, P, 1);
        for (auto& x : tex) x = float(normal01(gj));
        low_pass(tex, 8.0, 1.0);  // texture of a few pixels
        const double tv = std::sqrt(std::max(1e-12, variance(tex)));
        for (int y = 0; y < P; ++y)
          for (int x = 0; x < P; ++x) {
            const double t = (x - c) * std::cos(a) + (y - c) * std::sin(a) - d;
            const double step = 0.5 * (1 + std::tanh(t / 3.0));
            // Carbon fades out at the canvas edge, so it has no edge of its own there.
            const double fade = std::min(1.0, std::min({x, y, P - 1 - x, P - 1 - y}) / (0.25 * m));
            canvas(x, y, 0) = float(step * fade * (1 + 0.3 * tex(x, y, 0) / tv));
          }
        return finish(3 * var_particles);
      }
      case 3: {  // aggregate
        const int copies = 2 + int(gj() % 3);
        for (int k = 0; k < copies; ++k) {
          const double rot = 360 * uniform01(gj), tilt = rad2deg(std::acos(2 * uniform01(gj) - 1)),
                       psi = 360 * uniform01(gj);
          const double r = k > 0 ? (0.15 + 0.2 * uniform01(gj)) * m : 0.0, b = 2 * kPi * uniform01(gj);
          Grid<cfloat> F;
          const Mat3 A = euler_to_matrix(rot, tilt, psi);
          if (g.maps_to_reference() || g.box != n) proj1.project_mapped(A, g.to_reference, F, g.box);
          else proj1.project(A, F);
          const Image one = from_fourier_centred(F, m);
          const int ox = int(std::lround(r * std::cos(b))), oy = int(std::lround(r * std::sin(b)));
          for (int y = 0; y < m; ++y)
            for (int x = 0; x < m; ++x) canvas(x + m / 2 + ox, y + m / 2 + oy, 0) += one(x, y, 0);
        }
        return finish(0);
      }
      case 4: {  // contamination: a dense disc
        const double rad = (0.08 + 0.17 * uniform01(gj)) * m, off = uniform01(gj) * m / 3, b = 2 * kPi * uniform01(gj);
        const double cx = c + off * std::cos(b), cy = c + off * std::sin(b);
        for (int y = 0; y < P; ++y)
          for (int x = 0; x < P; ++x)
            canvas(x, y, 0) = float(0.5 * (1 - std::tanh((std::hypot(x - cx, y - cy) - rad) / 2.0)));
        return finish(4 * var_particles);
      }
      default: {  // a wrong particle
        const Truth& t = truth[i];
        Grid<cfloat> F;
        const Mat3 A = euler_to_matrix(t.rot, t.tilt, t.psi);
        if (g.maps_to_reference() || g.box != n) proj_junk.project_mapped(A, g.to_reference, F, g.box);
        else proj_junk.project(A, F);
        shift_phase(F, t.dx, t.dy, m);
        const Image one = from_fourier_centred(F, m);
        for (int y = 0; y < m; ++y)
          for (int x = 0; x < m; ++x) canvas(x + m / 2, y + m / 2, 0) = one(x, y, 0);
        return finish(var_particles);
      }
    }
  };

  // Pass 1: signal variance per optics group from its first particles (deterministic).
  ThreadPool pool(opt.threads);
  double var_signal[2] = {0, 0};
  for (int gi = 1; gi <= 2; ++gi) {
    std::vector<size_t> first;
    for (size_t i = 0; i < N && first.size() < 200; ++i)
      if (group[i] == gi && junk[i] == 0) first.push_back(i);
    if (first.empty()) continue;
    std::vector<double> vars(first.size());
    pool.parallel_for(0, first.size(), [&](size_t k, int) { vars[k] = variance(signal(first[k])); });
    for (double v : vars) var_signal[gi - 1] += v;
    var_signal[gi - 1] /= double(vars.size());
    if (!(var_signal[gi - 1] > 0)) input_error("{}: the map projects to empty images (zero variance)", opt.map);
  }
  // Group 2's SNR per pixel is --snr on group 1's box: the variance of a box's signal falls as the
  // box grows around the same particle, so group 2's noise per pixel is that of its signal variance
  // times (n2 / n)^2 (at one pixel size, the same noise per pixel in both boxes, as one dose gives).
  const double box2 = double(n2) / double(n);
  const double sigma[2] = {opt.snr > 0 ? std::sqrt(var_signal[0] / opt.snr) : 0.0,
                           opt.snr > 0 ? std::sqrt(var_signal[1] / opt.snr) * box2 : 0.0};
  res.noise_sigma = sigma[0];
  res.signal_variance = var_signal[0];

  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  wo.is_stack = true;
  mrc::StackWriter writer(res.stack, n, n, wo);
  std::unique_ptr<mrc::StackWriter> writer2;
  if (two_groups) {
    mrc::WriteOptions wo2 = wo;
    wo2.pixel_size = angpix2;
    writer2 = std::make_unique<mrc::StackWriter>(res.stack2, n2, n2, wo2);
  }
  const size_t batch = 256;
  Progress progress("simulate: particles", double(opt.n));
  std::vector<Image> images(batch);
  std::vector<double> grey(N, 0.0);  // the factor that put each image on its grey scale
  std::array<Grid<float>, 2> filters;  // --noise_bfactor, per optics group
  if (opt.noise_bfactor > 0) {
    filters[0] = noise_filter(n, opt.noise_bfactor, angpix);
    if (two_groups) filters[1] = noise_filter(n2, opt.noise_bfactor, angpix2);
  }
  for (size_t b0 = 0; b0 < N; b0 += batch) {
    size_t b1 = std::min(N, b0 + batch);
    pool.parallel_for(b0, b1, [&](size_t i, int) {
      const OpticsGroupModel& g = optics.group_of(i);
      Image img = junk[i] ? junk_signal(i, var_signal[group[i] - 1]) : signal(i);
      auto gn = make_rng(opt.seed, i, 1);  // noise stream
      const double s = sigma[group[i] - 1] * noise_factor[i];
      if (s > 0 && opt.noise_bfactor > 0) {
        Image noise(g.box, g.box, 1);
        for (auto& v : noise) v = float(normal01(gn));
        noise = colour_noise(noise, filters[size_t(group[i] - 1)]);
        for (size_t k = 0; k < img.size(); ++k) img[k] += float(s * noise[k]);
      } else if (s > 0) {
        for (auto& v : img) v += float(s * normal01(gn));
      }
      if (opt.premultiply) {  // the whole (noisy) image times its CTF, as extraction with premultiplication
        Grid<cfloat> F = fourier_centred(img);
        Grid<float> c;
        optics.particle(i).ctf_half(c);
        for (size_t k = 0; k < F.size(); ++k) F[k] *= c[k];
        img = from_fourier_centred(F, g.box);
      }
      const double bg = opt.bg_radius > 0 ? opt.bg_radius : 0.75 * (g.box / 2);
      const BackgroundStats st = normalise_background(img, bg);
      grey[i] = st.stddev > 0 ? 1.0 / st.stddev : 1.0;
      images[i - b0] = std::move(img);
    });
    for (size_t i = b0; i < b1; ++i) (group[i] == 2 ? *writer2 : writer).append(images[i - b0]);
    progress.advance(double(b1 - b0));
    check_cancelled();  // SIGINT/SIGTERM: stop; the unfinished stack is removed
  }

  // The ground-truth maps as projected (after --box), for FSC against results, on the particles'
  // grey scale (times the mean normalisation factor of optics group 1's images): a reference on the
  // absolute grey scale, as a map refined from these particles would be.
  double grey_sum = 0, grey_count = 0;
  for (size_t i = 0; i < N; ++i)
    if (group[i] == 1 && junk[i] == 0) grey_sum += grey[i], grey_count += 1;
  res.map_scale = grey_count > 0 ? grey_sum / grey_count : 1.0;
  for (float& v : map1) v = float(v * res.map_scale);
  for (float& v : map2) v = float(v * res.map_scale);
  mrc::WriteOptions mo;
  mo.pixel_size = angpix;
  mrc::write((fs::path(opt.out_dir) / "truth_map1.mrc").string(), map1, mo);
  if (!map2.empty()) mrc::write((fs::path(opt.out_dir) / "truth_map2.mrc").string(), map2, mo);
  star::write(res.particles_star, make_doc(false));
  star::write(res.truth_star, make_doc(true));
  writer.commit();
  if (writer2) writer2->commit();
  progress.finish();
  if (opt.junk_fraction > 0) {
    size_t count[6] = {0, 0, 0, 0, 0, 0};
    for (int k : junk) ++count[k];
    spdlog::info("simulate: junk: {} empty, {} carbon edges, {} aggregates, {} contamination, {} wrong particles "
                 "(rlnRegulaTruthKind in {})", count[1], count[2], count[3], count[4], count[5], res.truth_star);
  }
  spdlog::info("simulate: {} particles of {} px at {} Å/px{}, SNR {}, noise sigma {:.4g}, truth map scale {:.4g}; wrote {}, {}, {}",
               opt.n, n, angpix,
               two_groups ? fmt::format(" (optics group 2: {} px at {} Å/px)", n2, angpix2) : std::string(),
               opt.snr, sigma[0], res.map_scale, res.stack, res.particles_star, res.truth_star);
  return res;
}

}  // namespace regula

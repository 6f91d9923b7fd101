#include "regula/jobs/simulate.hpp"

#include <cmath>
#include <filesystem>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula {

std::string SimulateOptions::validate() const {
  if (map.empty()) return "--i: a map is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (n <= 0) return fmt::format("--n: the number of particles must be positive (got {})", n);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (box < 0 || box == 1) return fmt::format("--box: must be at least 2 (got {})", box);
  if (frac2 < 0 || frac2 > 1) return fmt::format("--frac2: must be in [0, 1] (got {})", frac2);
  if (defocus_min <= 0 || defocus_max < defocus_min)
    return fmt::format("--defocus_min/--defocus_max: need 0 < min <= max (got {} and {})", defocus_min, defocus_max);
  if (max_shift < 0) return fmt::format("--max_shift: must be >= 0 (got {})", max_shift);
  if (views < 0) return fmt::format("--views: must be >= 0 (got {})", views);
  if (views > 0 && !map2.empty()) return "--views and --i2 cannot be combined (rlnClassNumber holds one or the other)";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (amplitude_contrast < 0 || amplitude_contrast >= 1)
    return fmt::format("--Q0: amplitude contrast must be in [0, 1) (got {})", amplitude_contrast);
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

star::Block& make_loop(star::Document& doc, const std::string& name, size_t rows) {
  star::Block& b = doc.add_block(name, true);
  for (size_t i = 0; i < rows; ++i) b.add_row();
  return b;
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

  auto draw = [&](long i, std::mt19937_64& g) {
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
    (void)i;
    return t;
  };

  auto signal = [&](const Truth& t) {
    const Projector& p = t.cls == 2 && !map2.empty() ? proj2 : proj1;
    Grid<cfloat> F = p.project(euler_to_matrix(t.rot, t.tilt, t.psi));
    if (opt.ctf) {
      CtfParams cp;
      cp.voltage_kv = opt.voltage;
      cp.cs_mm = opt.cs;
      cp.amplitude_contrast = opt.amplitude_contrast;
      cp.defocus_u = t.du;
      cp.defocus_v = t.dv;
      cp.defocus_angle = t.dangle;
      Grid<float> c = Ctf(cp).half_complex(n, angpix);
      for (size_t k = 0; k < F.size(); ++k) F[k] *= c[k];
    }
    shift_phase(F, t.dx, t.dy, n);
    return from_fourier_centred(F, n);
  };

  // Pass 1: signal variance from the first particles (deterministic).
  const long nvar = std::min<long>(opt.n, 200);
  std::vector<double> vars(static_cast<size_t>(nvar));
  ThreadPool pool(opt.threads);
  pool.parallel_for(0, size_t(nvar), [&](size_t i, int) {
    auto g = make_rng(opt.seed, i);
    vars[i] = variance(signal(draw(long(i), g)));
  });
  double var_signal = 0;
  for (double v : vars) var_signal += v;
  var_signal /= double(nvar);
  if (!(var_signal > 0)) input_error("{}: the map projects to empty images (zero variance)", opt.map);
  const double sigma = opt.snr > 0 ? std::sqrt(var_signal / opt.snr) : 0.0;
  const double bg_radius = opt.bg_radius > 0 ? opt.bg_radius : 0.75 * (n / 2);

  SimulateResult res;
  res.noise_sigma = sigma;
  res.signal_variance = var_signal;
  namespace fs = std::filesystem;
  res.stack = (fs::path(opt.out_dir) / "particles.mrcs").string();
  res.particles_star = (fs::path(opt.out_dir) / "particles.star").string();
  res.truth_star = (fs::path(opt.out_dir) / "truth.star").string();

  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  wo.is_stack = true;
  mrc::StackWriter writer(res.stack, n, n, wo);
  std::vector<Truth> truth(size_t(opt.n));
  const size_t batch = 256;
  Progress progress("simulate: particles", double(opt.n));
  std::vector<Image> images(batch);
  for (size_t b0 = 0; b0 < size_t(opt.n); b0 += batch) {
    size_t b1 = std::min(size_t(opt.n), b0 + batch);
    pool.parallel_for(b0, b1, [&](size_t i, int) {
      auto g = make_rng(opt.seed, i);
      Truth t = draw(long(i), g);
      Image img = signal(t);
      auto gn = make_rng(opt.seed, i, 1);  // noise stream
      if (sigma > 0)
        for (auto& v : img) v += float(sigma * normal01(gn));
      normalise_background(img, bg_radius);
      truth[i] = t;
      images[i - b0] = std::move(img);
    });
    for (size_t i = b0; i < b1; ++i) writer.append(images[i - b0]);
    progress.advance(double(b1 - b0));
    check_cancelled();  // SIGINT/SIGTERM: stop; the unfinished stack is removed
  }

  // STAR files: optics + particles (CTF only), and the truth (poses and classes).
  auto make_doc = [&](bool with_truth) {
    star::Document doc;
    star::Block& optics = make_loop(doc, "optics", 1);
    optics.set_column("rlnOpticsGroup", std::vector<int>{1});
    optics.set_column("rlnOpticsGroupName", std::vector<std::string>{"opticsGroup1"});
    optics.set_column("rlnAmplitudeContrast", std::vector<double>{opt.amplitude_contrast});
    optics.set_column("rlnSphericalAberration", std::vector<double>{opt.cs});
    optics.set_column("rlnVoltage", std::vector<double>{opt.voltage});
    optics.set_column("rlnImagePixelSize", std::vector<double>{angpix});
    optics.set_column("rlnImageSize", std::vector<int>{n});
    optics.set_column("rlnImageDimensionality", std::vector<int>{2});
    const size_t N = size_t(opt.n);
    star::Block& parts = make_loop(doc, "particles", N);
    std::vector<std::string> names(N);
    std::vector<double> du(N), dv(N), da(N), rot(N), tilt(N), psi(N), ox(N), oy(N);
    std::vector<int> og(N, 1), cls(N);
    for (size_t i = 0; i < N; ++i) {
      names[i] = fmt::format("{:06d}@{}", i + 1, res.stack);
      const Truth& t = truth[i];
      du[i] = std::round(t.du * 100) / 100;
      dv[i] = std::round(t.dv * 100) / 100;
      da[i] = std::round(t.dangle * 100) / 100;
      rot[i] = t.rot; tilt[i] = t.tilt; psi[i] = t.psi;
      ox[i] = -t.dx * angpix;
      oy[i] = -t.dy * angpix;
      cls[i] = t.cls;
    }
    parts.set_column("rlnImageName", names);
    parts.set_column("rlnMicrographName", std::vector<std::string>(N, "simulated.mrc"));
    parts.set_column("rlnOpticsGroup", og);
    if (opt.ctf) {
      parts.set_column("rlnDefocusU", du);
      parts.set_column("rlnDefocusV", dv);
      parts.set_column("rlnDefocusAngle", da);
    } else {
      // RELION needs CTF columns only with --ctf; write defocus 0 for clarity.
    }
    if (with_truth) {
      parts.set_column("rlnAngleRot", rot);
      parts.set_column("rlnAngleTilt", tilt);
      parts.set_column("rlnAnglePsi", psi);
      parts.set_column("rlnOriginXAngst", ox);
      parts.set_column("rlnOriginYAngst", oy);
      parts.set_column("rlnClassNumber", cls);
    }
    return doc;
  };
  // The ground-truth maps as projected (after --box), for FSC against results.
  mrc::WriteOptions mo;
  mo.pixel_size = angpix;
  mrc::write((fs::path(opt.out_dir) / "truth_map1.mrc").string(), map1, mo);
  if (!map2.empty()) mrc::write((fs::path(opt.out_dir) / "truth_map2.mrc").string(), map2, mo);
  star::write(res.particles_star, make_doc(false));
  star::write(res.truth_star, make_doc(true));
  writer.commit();
  progress.finish();
  spdlog::info("simulate: {} particles of {} px at {} Å/px, SNR {}, noise sigma {:.4g}; wrote {}, {}, {}",
               opt.n, n, angpix, opt.snr, sigma, res.stack, res.particles_star, res.truth_star);
  return res;
}

}  // namespace regula

#include "regula/jobs/simulate_movies.hpp"

#include <cmath>
#include <filesystem>
#include <memory>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/io/tiff.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/micrograph/gain.hpp"
#include "regula/micrograph/movie_render.hpp"
#include "regula/micrograph/scene.hpp"

namespace regula {
namespace fs = std::filesystem;

std::string SimulateMoviesOptions::validate() const {
  if (maps.empty()) return "--i: at least one map is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (movies < 1) return fmt::format("--n: the number of movies must be positive (got {})", movies);
  if (nx < 64 || ny < 64 || nx % 2 || ny % 2) return fmt::format("--size: need even sizes >= 64 (got {}x{})", nx, ny);
  if (!(angpix > 0)) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (frames < 1) return fmt::format("--frames: must be positive (got {})", frames);
  if (!(dose_per_frame > 0)) return fmt::format("--dose_per_frame: must be positive (got {})", dose_per_frame);
  if (preexposure < 0) return fmt::format("--preexposure: must be >= 0 (got {})", preexposure);
  if (!(defocus_min > 0) || defocus_max < defocus_min)
    return fmt::format("--defocus_min/--defocus_max: need 0 < min <= max (got {} and {})", defocus_min, defocus_max);
  if (astigmatism_max < 0 || astigmatism_max / 2 >= defocus_min)
    return fmt::format("--astigmatism_max: need 0 <= max < 2 x --defocus_min (got {})", astigmatism_max);
  if (particles < 0) return fmt::format("--particles: must be >= 0 (got {})", particles);
  if (ice_rms < 0) return fmt::format("--ice_rms: must be >= 0 (got {})", ice_rms);
  if (aggregates < 0 || ice_crystals < 0) return "--aggregates/--ice_crystals: must be >= 0";
  if (carbon < 0 || carbon > 1) return fmt::format("--carbon: a probability in [0, 1] (got {})", carbon);
  if (drift_min < 0 || drift_max < drift_min)
    return fmt::format("--drift_min/--drift_max: need 0 <= min <= max (got {} and {})", drift_min, drift_max);
  if (local_max < 0) return fmt::format("--local_max: must be >= 0 (got {})", local_max);
  if (gain_rot < 0 || gain_rot > 3) return fmt::format("--gain_rot: 0, 1, 2 or 3 (got {})", gain_rot);
  if (gain_flip < 0 || gain_flip > 2) return fmt::format("--gain_flip: 0, 1 or 2 (got {})", gain_flip);
  if ((gain_rot || gain_flip) && !gain) return "--gain_rot/--gain_flip need --gain";
  if (hot_pixels < 0) return fmt::format("--hot_pixels: must be >= 0 (got {})", hot_pixels);
  if (format != "mrc" && format != "tiff") return fmt::format("--format: mrc or tiff (got '{}')", format);
  if (mode != 0 && mode != 1 && mode != 2 && mode != 6 && mode != 12)
    return fmt::format("--mode: 0, 1, 2, 6 or 12 (got {})", mode);
  if (tiff_bits != 8 && tiff_bits != 16 && tiff_bits != 32)
    return fmt::format("--tiff_bits: 8, 16 or 32 (got {})", tiff_bits);
  if (gain && (mode == 0 || mode == 1) && format == "mrc")
    return "--gain with --mode 0 or 1: counts are stored unsigned (use --mode 6, 2 or 12)";
  if (!fractions.empty() && fractions.size() != maps.size())
    return fmt::format("--fractions: {} values for {} maps", fractions.size(), maps.size());
  for (double f : fractions)
    if (!(f >= 0)) return "--fractions: values must be >= 0";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  return "";
}

namespace {

struct Detector {
  Grid<float> efficiency;           // q(r)
  std::vector<size_t> hot;          // pixel indices
};

Detector make_detector(const SimulateMoviesOptions& o) {
  Detector d;
  auto g = make_rng(o.seed, ~uint64_t(0), 7);
  d.efficiency = Grid<float>(o.nx, o.ny, 1, 1.0f);
  if (o.gain)
    for (auto& v : d.efficiency) v = float(0.85 + 0.3 * uniform01(g));
  for (int i = 0; i < o.hot_pixels; ++i) d.hot.push_back(size_t(g() % uint64_t(size_t(o.nx) * size_t(o.ny))));
  return d;
}

// Writes frames as they come (MRC stack or TIFF) under a temporary name.
class FrameSink {
 public:
  FrameSink(const std::string& path, const SimulateMoviesOptions& o) {
    if (o.format == "tiff") {
      tiff::TiffWriteOptions t;
      t.bits = o.tiff_bits;
      t.lzw = o.lzw;
      t.pixel_size = o.angpix;
      tif_ = std::make_unique<tiff::TiffWriter>(path, o.nx, o.ny, t);
    } else {
      mrc::WriteOptions w;
      w.mode = mrc::Mode(o.mode);
      w.pixel_size = o.angpix;
      w.is_stack = true;
      mrc_ = std::make_unique<mrc::StackWriter>(path, o.nx, o.ny, w);
    }
  }
  void append(const float* f) {
    if (tif_)
      tif_->append(f);
    else
      mrc_->append(f);
  }
  void commit() {
    if (tif_)
      tif_->commit();
    else
      mrc_->commit();
  }

 private:
  std::unique_ptr<tiff::TiffWriter> tif_;
  std::unique_ptr<mrc::StackWriter> mrc_;
};

star::Block& loop(star::Document& d, const std::string& name) { return d.add_block(name, true); }

void optics_block(star::Document& d, const SimulateMoviesOptions& o, bool movies) {
  auto& b = loop(d, "optics");
  b.add_row();
  b.set_column("rlnOpticsGroupName", std::vector<std::string>{"opticsGroup1"});
  b.set_column("rlnOpticsGroup", std::vector<int>{1});
  b.set_column("rlnMicrographOriginalPixelSize", std::vector<double>{o.angpix});
  b.set_column("rlnVoltage", std::vector<double>{o.voltage});
  b.set_column("rlnSphericalAberration", std::vector<double>{o.cs});
  b.set_column("rlnAmplitudeContrast", std::vector<double>{o.amplitude_contrast});
  if (!movies) {
    b.set_column("rlnMicrographPixelSize", std::vector<double>{o.angpix});
  }
}

// Truth of one movie's motion: global shifts (RELION's sign) and the total shift on a grid.
void write_motion_truth(const std::string& path, const Drift& drift, int nx, int ny) {
  star::Document d;
  auto& g = loop(d, "global_shift");
  const int T = drift.frames();
  std::vector<int> fr;
  std::vector<double> sx, sy;
  for (int f = 0; f < T; ++f) {
    g.add_row();
    fr.push_back(f + 1);
    sx.push_back(-drift.global_x(f));
    sy.push_back(-drift.global_y(f));
  }
  g.set_column("rlnMicrographFrameNumber", fr);
  g.set_column("rlnMicrographShiftX", sx);
  g.set_column("rlnMicrographShiftY", sy);
  auto& l = loop(d, "local_shift");
  std::vector<int> lf;
  std::vector<double> cx, cy, lx, ly;
  const int G = 8;
  for (int f = 0; f < T; ++f)
    for (int j = 0; j < G; ++j)
      for (int i = 0; i < G; ++i) {
        const double x = (i + 0.5) * nx / G, y = (j + 0.5) * ny / G;
        double dx, dy;
        drift.displacement(f, x, y, dx, dy);
        l.add_row();
        lf.push_back(f + 1);
        cx.push_back(x);
        cy.push_back(y);
        lx.push_back(-dx);
        ly.push_back(-dy);
      }
  l.set_column("rlnMicrographFrameNumber", lf);
  l.set_column("rlnCoordinateX", cx);
  l.set_column("rlnCoordinateY", cy);
  l.set_column("rlnMicrographShiftX", lx);
  l.set_column("rlnMicrographShiftY", ly);
  star::write(path, d);
}


// Truth of every particle's motion in RELION's tracks format (relion_motion_refine's
// <micrograph>_tracks.star): data_general with rlnParticleNumber, then per particle (in the order
// of truth_particles.star) a block data_<k> with one row per frame: rlnOriginXAngst/YAngst, the
// displacement D_f at the particle's position in Å (0 in the first frame).
void write_tracks_truth(const std::string& path, const Drift& drift, const Scene& scene, double angpix) {
  star::Document d;
  d.add_block("general", false).set("rlnParticleNumber", std::to_string(scene.particles.size()));
  for (size_t k = 0; k < scene.particles.size(); ++k) {
    auto& b = d.add_block(std::to_string(k), true);
    for (int f = 0; f < drift.frames(); ++f) b.add_row();
    std::vector<double> tx, ty;
    for (int f = 0; f < drift.frames(); ++f) {
      double dx, dy;
      drift.displacement(f, scene.particles[k].x, scene.particles[k].y, dx, dy);
      tx.push_back(dx * angpix);
      ty.push_back(dy * angpix);
    }
    b.set_column("rlnOriginXAngst", tx);
    b.set_column("rlnOriginYAngst", ty);
  }
  star::write(path, d);
}

}  // namespace

SimulateMoviesResult simulate_movies(const SimulateMoviesOptions& o) {
  if (auto msg = o.validate(); !msg.empty()) throw InputError("simulate_movies: " + msg);
  // Maps: each must have the micrograph's pixel size.
  std::vector<SceneMap> maps;
  int biggest = 0;
  for (auto& path : o.maps) {
    mrc::Header h;
    Grid<float> m = mrc::read(path, &h);
    const double px = h.pixel_size();
    if (px > 0 && std::abs(px - o.angpix) > 0.01 * o.angpix)
      input_error("{}: pixel size {} Å differs from --angpix {} Å (resample it with regula convert --rescale_angpix)",
                  path, px, o.angpix);
    maps.push_back(make_scene_map(m, path, o.angpix, o.voltage));
    biggest = std::max(biggest, maps.back().box);
  }
  const double dose_factor = dose_voltage_factor(o.voltage);  // also refuses voltages without damage data
  fs::create_directories(fs::path(o.out_dir) / "Movies");
  fs::create_directories(fs::path(o.out_dir) / "Truth");

  SceneOptions so;
  so.nx = o.nx;
  so.ny = o.ny;
  so.margin = int(std::ceil(o.drift_max + o.local_max)) + std::max(64, biggest / 2);
  so.angpix = o.angpix;
  so.voltage_kv = o.voltage;
  so.cs_mm = o.cs;
  so.amplitude_contrast = o.amplitude_contrast;
  so.defocus_min = o.defocus_min;
  so.defocus_max = o.defocus_max;
  so.astigmatism_max = o.astigmatism_max;
  so.bfactor = o.bfactor;
  so.particles = o.particles;
  so.type_fractions = o.fractions;
  so.ice_rms = o.ice_rms;
  so.aggregates = o.aggregates;
  so.ice_crystals = o.ice_crystals;
  so.carbon_probability = o.carbon;
  DriftOptions dopt;
  dopt.total_min = o.drift_min;
  dopt.total_max = o.drift_max;
  dopt.local_max = o.local_max;

  const Detector det = make_detector(o);
  const double dose_px = o.dose_per_frame * o.angpix * o.angpix;
  SimulateMoviesResult res;
  res.movies_star = (fs::path(o.out_dir) / "movies.star").string();
  res.truth_micrographs = (fs::path(o.out_dir) / "truth_micrographs.star").string();
  res.truth_particles = (fs::path(o.out_dir) / "truth_particles.star").string();
  const std::string ext = o.format == "tiff" ? ".tif" : ".mrc";

  star::Document tmics, tparts, tjunk;
  auto& mb = loop(tmics, "micrographs");
  optics_block(tparts, o, false);
  auto& pb = loop(tparts, "particles");
  auto& jb = loop(tjunk, "junk");
  std::vector<std::string> m_names, p_names, j_names, j_kind;
  std::vector<double> m_du, m_dv, m_da, m_ast, m_drift, m_local, p_x, p_y, p_rot, p_tilt, p_psi, p_du, p_dv, p_da,
      j_x, j_y, j_r, j_a;
  std::vector<int> m_np, p_cls, p_og;

  ThreadPool pool(o.threads);
  Progress progress("simulate_movies: frames", double(o.movies) * o.frames);
  for (int i = 0; i < o.movies; ++i) {
    const std::string stem = fmt::format("movie_{:03d}", i + 1);
    const std::string path = (fs::path(o.out_dir) / "Movies" / (stem + ext)).string();
    auto rs = make_rng(o.seed, uint64_t(i), 0);
    Scene scene = make_scene(so, maps, rs, o.threads);
    auto rd = make_rng(o.seed, uint64_t(i), 1);
    Drift drift(dopt, o.frames, o.nx, o.ny, rd);
    const SceneSpectrum spec = scene_spectrum(scene, o.threads);
    {
      FrameSink sink(path, o);
      Grid<float> counts(o.nx, o.ny);
      for (int f = 0; f < o.frames; ++f) {
        const double exposure = o.damage ? (o.preexposure + o.dose_per_frame * (f + 0.5)) * dose_factor : -1.0;
        const Grid<float> e = render_frame(scene, spec, drift, f, exposure, dose_px, o.threads);
        pool.parallel_for(0, size_t(o.ny), [&](size_t y, int) {
          auto g = make_rng(o.seed ^ 0x6d6f766965ULL, (uint64_t(i) << 20) | uint64_t(f), y);
          for (int x = 0; x < o.nx; ++x) {
            const size_t k = y * size_t(o.nx) + size_t(x);
            counts[k] = float(poisson(g, double(e[k]) * det.efficiency[k]));
          }
        }, 16);
        auto gh = make_rng(o.seed ^ 0x686f74ULL, (uint64_t(i) << 20) | uint64_t(f), 0);
        for (size_t k : det.hot) counts[k] += float(poisson(gh, 20 * dose_px));
        sink.append(counts.data());
        progress.advance();
        check_cancelled();
      }
      sink.commit();
    }
    write_motion_truth((fs::path(o.out_dir) / "Truth" / (stem + "_motion.star")).string(), drift, o.nx, o.ny);
    write_tracks_truth((fs::path(o.out_dir) / "Truth" / (stem + "_tracks.star")).string(), drift, scene, o.angpix);
    if (o.ideal) {
      mrc::WriteOptions w;
      w.pixel_size = o.angpix;
      mrc::write((fs::path(o.out_dir) / "Truth" / (stem + "_ideal.mrc")).string(), ideal_image(scene, spec, o.threads),
                 w);
    }
    res.movie_files.push_back(path);
    m_names.push_back(path);
    m_du.push_back(scene.ctf.defocus_u);
    m_dv.push_back(scene.ctf.defocus_v);
    m_da.push_back(scene.ctf.defocus_angle);
    m_ast.push_back(std::abs(scene.ctf.defocus_u - scene.ctf.defocus_v));
    m_drift.push_back(std::hypot(drift.global_x(o.frames - 1), drift.global_y(o.frames - 1)));
    m_local.push_back(o.local_max);
    m_np.push_back(int(scene.particles.size()));
    for (auto& p : scene.particles) {
      p_names.push_back(path);
      p_x.push_back(p.x);
      p_y.push_back(p.y);
      p_rot.push_back(p.rot);
      p_tilt.push_back(p.tilt);
      p_psi.push_back(p.psi);
      p_cls.push_back(p.type + 1);
      p_og.push_back(1);
      p_du.push_back(scene.ctf.defocus_u);
      p_dv.push_back(scene.ctf.defocus_v);
      p_da.push_back(scene.ctf.defocus_angle);
    }
    for (auto& j : scene.junk) {
      j_names.push_back(path);
      j_kind.push_back(j.kind);
      j_x.push_back(j.x);
      j_y.push_back(j.y);
      j_r.push_back(j.radius);
      j_a.push_back(j.angle);
    }
    spdlog::info("simulate_movies: {} ({} particles, defocus {:.0f}/{:.0f} Å at {:.1f}°, drift {:.1f} px)", path,
                 scene.particles.size(), scene.ctf.defocus_u, scene.ctf.defocus_v, scene.ctf.defocus_angle,
                 m_drift.back());
  }

  // Gain reference: 1/q, stored so that RELION's --gain_rot/--gain_flip recover it.
  if (o.gain) {
    Grid<float> g(o.nx, o.ny);
    for (size_t k = 0; k < g.size(); ++k) g[k] = 1.0f / det.efficiency[k];
    res.gain = (fs::path(o.out_dir) / "gain.mrc").string();
    mrc::WriteOptions w;
    w.pixel_size = o.angpix;
    mrc::write(res.gain, unorient_gain(g, o.gain_rot, o.gain_flip), w);
  }

  for (size_t r = 0; r < m_names.size(); ++r) mb.add_row();
  mb.set_column("rlnMicrographMovieName", m_names);
  mb.set_column("rlnOpticsGroup", std::vector<int>(m_names.size(), 1));
  mb.set_column("rlnVoltage", std::vector<double>(m_names.size(), o.voltage));
  mb.set_column("rlnSphericalAberration", std::vector<double>(m_names.size(), o.cs));
  mb.set_column("rlnAmplitudeContrast", std::vector<double>(m_names.size(), o.amplitude_contrast));
  mb.set_column("rlnDefocusU", m_du);
  mb.set_column("rlnDefocusV", m_dv);
  mb.set_column("rlnDefocusAngle", m_da);
  mb.set_column("rlnCtfAstigmatism", m_ast);
  mb.set_column("rlnCtfBfactor", std::vector<double>(m_names.size(), o.bfactor));
  mb.set_column("rlnAccumMotionTotal", m_drift);
  mb.set_column("regulaLocalMotionMax", m_local);
  mb.set_column("regulaNumberOfParticles", m_np);
  for (size_t r = 0; r < p_names.size(); ++r) pb.add_row();
  pb.set_column("rlnMicrographMovieName", p_names);
  pb.set_column("rlnCoordinateX", p_x);
  pb.set_column("rlnCoordinateY", p_y);
  pb.set_column("rlnAngleRot", p_rot);
  pb.set_column("rlnAngleTilt", p_tilt);
  pb.set_column("rlnAnglePsi", p_psi);
  pb.set_column("rlnClassNumber", p_cls);
  pb.set_column("rlnOpticsGroup", p_og);
  pb.set_column("rlnDefocusU", p_du);
  pb.set_column("rlnDefocusV", p_dv);
  pb.set_column("rlnDefocusAngle", p_da);
  for (size_t r = 0; r < j_names.size(); ++r) jb.add_row();
  jb.set_column("rlnMicrographMovieName", j_names);
  jb.set_column("regulaJunkKind", j_kind);
  jb.set_column("rlnCoordinateX", j_x);
  jb.set_column("rlnCoordinateY", j_y);
  jb.set_column("regulaJunkRadius", j_r);
  jb.set_column("regulaJunkAngle", j_a);
  star::write(res.truth_micrographs, tmics);
  star::write(res.truth_particles, tparts);
  star::write((fs::path(o.out_dir) / "truth_junk.star").string(), tjunk);

  star::Document mv;
  optics_block(mv, o, true);
  auto& movies = loop(mv, "movies");
  for (size_t r = 0; r < m_names.size(); ++r) movies.add_row();
  movies.set_column("rlnMicrographMovieName", m_names);
  movies.set_column("rlnOpticsGroup", std::vector<int>(m_names.size(), 1));
  star::write(res.movies_star, mv);
  res.particles = long(p_names.size());
  progress.finish();
  spdlog::info("simulate_movies: {} movies of {}x{}x{} at {} Å/px; wrote {}", o.movies, o.nx, o.ny, o.frames, o.angpix,
               res.movies_star);
  return res;
}

}  // namespace regula

#include "regula/jobs/motioncorr.hpp"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/movie.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/micrograph_set.hpp"
#include "regula/micrograph/gain.hpp"
#include "regula/micrograph/movie_correct.hpp"

namespace regula {
namespace fs = std::filesystem;

std::string MotioncorrOptions::validate() const {
  if (input.empty()) return "--i: a movies STAR file, wildcard or list is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (first_frame < 1) return fmt::format("--first_frame_sum: at least 1 (got {})", first_frame);
  if (last_frame > 0 && last_frame < first_frame)
    return fmt::format("--last_frame_sum {} is before --first_frame_sum {}", last_frame, first_frame);
  if (!(bin_factor >= 1)) return fmt::format("--bin_factor: at least 1 (got {})", bin_factor);
  if (!(bfactor > 0)) return fmt::format("--bfactor: must be positive (got {})", bfactor);
  if (gain_rot < 0 || gain_rot > 3) return fmt::format("--gain_rot: 0, 1, 2 or 3 (got {})", gain_rot);
  if (gain_flip < 0 || gain_flip > 2) return fmt::format("--gain_flip: 0, 1 or 2 (got {})", gain_flip);
  if (patch_x < 1 || patch_y < 1) return "--patch_x/--patch_y: the number of patches must be positive";
  if (group_frames < 1) return fmt::format("--group_frames: at least 1 (got {})", group_frames);
  if (dose_per_frame < 0 || preexposure < 0) return "--dose_per_frame/--preexposure: must be >= 0";
  if (dose_weighting && !(dose_per_frame > 0)) return "--dose_weighting needs --dose_per_frame > 0";
  if (!(contrast_window >= 0)) return fmt::format("--contrast_window: 0 or more Å (got {})", contrast_window);
  if (max_iter < 1) return fmt::format("--max_iter: at least 1 (got {})", max_iter);
  if (ps_size < 32 || ps_size % 2) return fmt::format("--ps_size: an even number >= 32 (got {})", ps_size);
  if (threads < 1) return fmt::format("--j: at least 1 (got {})", threads);
  return "";
}

std::string motioncorr_output_name(const std::string& movie, const std::string& out_dir) {
  std::string root = without_extension(fs::path(movie).lexically_normal().string());
  while (root.rfind("../", 0) == 0) root = root.substr(3);
  if (!root.empty() && root[0] == '/') root = root.substr(1);
  for (auto& c : root)
    if (c == '.') c = '_';
  return out_dir + root + ".mrc";
}

namespace {

// Defect mask from MotionCor2's text (x y w h per line) or a map (non-zero = bad).
Grid<unsigned char> read_defects(const std::string& path, int nx, int ny) {
  Grid<unsigned char> bad(nx, ny);
  if (path.empty()) return bad;
  if (fs::path(path).extension() == ".txt") {
    std::ifstream f(path);
    if (!f) input_error("{}: cannot read the defect file", path);
    std::string line;
    size_t ln = 0;
    while (std::getline(f, line)) {
      ++ln;
      if (line.find("CameraSize") != std::string::npos || line.find("Bad") != std::string::npos)
        input_error("{}:{}: a SerialEM defect file; expected MotionCor2's 'x y w h' lines", path, ln);
      std::istringstream is(line);
      int x, y, w, h;
      if (!(is >> x >> y >> w >> h)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        input_error("{}:{}: expected 'x y w h', got '{}'", path, ln, line);
      }
      for (int yy = std::max(0, y); yy < std::min(ny, y + h); ++yy)
        for (int xx = std::max(0, x); xx < std::min(nx, x + w); ++xx) bad(xx, yy) = 1;
    }
  } else {
    MovieReader r(path);
    if (r.nx() != nx || r.ny() != ny)
      input_error("{}: defect map is {}x{}, the movie {}x{}", path, r.nx(), r.ny(), nx, ny);
    Grid<float> m = r.read(0);
    for (size_t k = 0; k < m.size(); ++k) bad[k] = m[k] != 0;
  }
  return bad;
}

// Trajectory picture: global (blue, from the red start), patches (observed grey, model black),
// shifts scaled 20x about the micrograph's centre / the patch centres.
std::string trajectory_png(const CorrectOutput& c, int nx, int ny, double prescale, int first) {
  const int W = 600;
  std::vector<uint8_t> rgb(size_t(W) * W * 3, 255);
  const double sc = double(W) / std::max(nx, ny), amp = 20;
  auto plot = [&](double x, double y, std::array<uint8_t, 3> col) {
    const int px = int(std::lround(x * sc)), py = W - 1 - int(std::lround(y * sc));
    for (int dy = 0; dy <= 1; ++dy)
      for (int dx = 0; dx <= 1; ++dx) {
        const int X = px + dx, Y = py + dy;
        if (X < 0 || Y < 0 || X >= W || Y >= W) continue;
        for (int k = 0; k < 3; ++k) rgb[(size_t(Y) * W + size_t(X)) * 3 + size_t(k)] = col[size_t(k)];
      }
  };
  auto line = [&](double x0, double y0, double x1, double y1, std::array<uint8_t, 3> col) {
    const int n = 1 + int(std::hypot(x1 - x0, y1 - y0) * sc);
    for (int i = 0; i <= n; ++i) plot(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, col);
  };
  const double cx = nx / 2.0, cy = ny / 2.0;
  for (size_t f = 1; f < c.shift_x.size(); ++f)
    line(cx + amp * c.shift_x[f - 1], cy + amp * c.shift_y[f - 1], cx + amp * c.shift_x[f], cy + amp * c.shift_y[f],
         {0, 0, 255});
  for (int d = -3; d <= 3; ++d) {
    plot(cx + d / sc, cy, {255, 0, 0});
    plot(cx, cy + d / sc, {255, 0, 0});
  }
  for (size_t i = 1; i < c.local.size(); ++i) {
    const auto& a = c.local[i - 1];
    const auto& b = c.local[i];
    if (a.x != b.x || a.y != b.y) continue;
    line(a.x + amp * a.sx, a.y + amp * a.sy, b.x + amp * b.sx, b.y + amp * b.sy, {150, 150, 150});
    if (c.has_model) {
      double ax, ay, bx, by;
      c.model.shift_at(a.frame - first, a.x / (nx / prescale) / prescale - 0.5, a.y / (ny / prescale) / prescale - 0.5,
                       ax, ay);
      c.model.shift_at(b.frame - first, b.x / (nx / prescale) / prescale - 0.5, b.y / (ny / prescale) / prescale - 0.5,
                       bx, by);
      line(a.x + amp * ax * prescale, a.y + amp * ay * prescale, b.x + amp * bx * prescale, b.y + amp * by * prescale,
           {0, 0, 0});
    }
  }
  return encode_png_rgb(rgb, W, W);
}

struct Movie {
  std::string name, out;  // movie and ROOT.mrc
  int group = 1;
  double angpix = 1, voltage = 300;
};

bool finished(const Movie& m, const MotioncorrOptions& o) {
  const std::string root = without_extension(m.out);
  return fs::exists(m.out) && fs::exists(root + ".star") && (o.grouping_for_ps <= 0 || fs::exists(root + "_PS.mrc"));
}

void process(const Movie& m, const MotioncorrOptions& o, const std::optional<Grid<float>>& gain, size_t index,
             MovieWorkspace& ws, ThreadPool& pool) {
  MovieReader r(m.name);
  const int n = r.frames();
  const int first = o.first_frame, last = o.last_frame > 0 ? o.last_frame : n;
  if (last > n)
    input_error("{}: has {} frames, but --last_frame_sum is {} (a truncated movie or the wrong frame count)", m.name, n,
                last);
  if (first > n) input_error("{}: has {} frames, but --first_frame_sum is {}", m.name, n, first);
  const int used = last - first + 1;
  if (used / o.group_frames < 3)
    input_error("{}: {} frames used in groups of {} leave fewer than 3 groups", m.name, used, o.group_frames);
  if (gain && (gain->nx() != r.nx() || gain->ny() != r.ny()))
    input_error("{}: the movie is {}x{} but the gain reference {} is {}x{} (after --gain_rot {} --gain_flip {})", m.name,
                r.nx(), r.ny(), o.gainref, gain->nx(), gain->ny(), o.gain_rot, o.gain_flip);
  Grid<unsigned char> bad;
  if (!o.defect_file.empty() || gain) {
    bad = read_defects(o.defect_file, r.nx(), r.ny());
    if (gain)
      for (size_t k = 0; k < gain->size(); ++k)
        if ((*gain)[k] == 0) bad[k] = 1;
  }
  CorrectInput in;
  in.movie = &r;
  in.first = first - 1;
  in.count = used;
  in.gain = gain ? &*gain : nullptr;
  in.bad = &bad;
  CorrectParams p;
  p.bin_factor = o.bin_factor;
  p.bfactor = o.bfactor;
  p.patch_x = o.patch_x;
  p.patch_y = o.patch_y;
  p.group_frames = o.group_frames;
  p.max_iter = o.max_iter;
  p.contrast_window = o.contrast_window;
  p.dose_weighting = o.dose_weighting;
  p.save_noDW = o.save_noDW;
  p.skip_defect = o.skip_defect;
  p.angpix = m.angpix;
  p.voltage = m.voltage;
  p.dose_per_frame = o.dose_per_frame;
  p.preexposure = o.preexposure;
  p.grouping_for_ps = o.grouping_for_ps;
  p.ps_size = o.ps_size;
  p.seed = o.seed;
  p.stream = index;
  const int nx0 = r.nx(), ny0 = r.ny();
  CorrectOutput c = correct_movie(in, p, ws, pool);

  const std::string root = without_extension(m.out);
  fs::create_directories(fs::path(m.out).parent_path());
  mrc::WriteOptions w;
  w.pixel_size = c.out_angpix;
  if (!c.sum_noDW.empty()) mrc::write(root + "_noDW.mrc", c.sum_noDW, w);
  if (!c.ps.empty()) {
    mrc::WriteOptions wp;
    wp.pixel_size = c.ps_angpix;
    mrc::write(root + "_PS.mrc", c.ps, wp);
  }
  MovieMotion mm;
  mm.width = nx0;
  mm.height = ny0;
  mm.frames = n;
  mm.movie = m.name;
  mm.gain = gain ? o.gainref : "";
  mm.defect = o.defect_file;
  mm.binning = o.bin_factor;
  mm.angpix = m.angpix;
  mm.dose_per_frame = o.dose_per_frame;
  mm.preexposure = o.preexposure;
  mm.voltage = m.voltage;
  mm.first_frame = first;
  mm.shift_x.assign(size_t(n), -9999);
  mm.shift_y.assign(size_t(n), -9999);
  for (int f = 0; f < used; ++f) {
    mm.shift_x[size_t(first - 1 + f)] = c.shift_x[size_t(f)];
    mm.shift_y[size_t(first - 1 + f)] = c.shift_y[size_t(f)];
  }
  mm.has_model = c.has_model;
  mm.model = c.model;
  mm.hot_x = c.hot_x;
  mm.hot_y = c.hot_y;
  mm.local = c.local;
  write_movie_motion(root + ".star", mm);
  write_file_atomic(root + "_shifts.png", trajectory_png(c, nx0, ny0, double(nx0) / c.sum.nx(), first));
  write_file_atomic(root + ".log", fmt::format("{}\n{}", m.name, c.log));
  mrc::write(m.out, c.sum, w);  // last: its presence marks the movie done
}

}  // namespace

MotioncorrResult motioncorr(const MotioncorrOptions& o) {
  if (auto msg = o.validate(); !msg.empty()) throw InputError("motioncorr: " + msg);
  MicrographSet set = read_micrograph_set(o.input, "movies", "rlnMicrographMovieName");
  std::string dir = o.out_dir;
  if (dir.back() != '/') dir += '/';
  std::vector<Movie> movies(set.names.size());
  for (size_t i = 0; i < movies.size(); ++i) {
    movies[i].name = set.names[i];
    movies[i].out = motioncorr_output_name(set.names[i], dir);
    movies[i].group = set.groups[i];
    movies[i].angpix = set.optics_value(set.groups[i], "rlnMicrographOriginalPixelSize", o.angpix, "--angpix");
    movies[i].voltage = set.optics_value(set.groups[i], "rlnVoltage", o.voltage, "--voltage");
  }
  fs::create_directories(dir);
  std::optional<Grid<float>> gain;
  std::string gain_used = o.gainref;
  if (!o.gainref.empty()) {
    MovieReader gr(o.gainref);
    gain = orient_gain(gr.read(0), o.gain_rot, o.gain_flip);
    if (o.gain_rot || o.gain_flip) {
      // As RELION: the oriented gain is written to DIR/gain.mrc and named in the outputs.
      gain_used = dir + "gain.mrc";
      if (mpi::rank() == 0) mrc::write(gain_used, *gain);
    }
  }
  MotioncorrOptions eff = o;
  eff.gainref = gain_used;

  std::vector<size_t> todo;
  for (size_t i = 0; i < movies.size(); ++i) {
    if (int(i % size_t(mpi::size())) != mpi::rank()) continue;
    if (o.only_unfinished && finished(movies[i], o)) continue;
    todo.push_back(i);
  }
  MotioncorrResult res;
  res.skipped = int(movies.size()) - int(todo.size());
  ThreadPool pool(o.threads);
  MovieWorkspace ws;  // memory reused from movie to movie
  // One movie at a time (the threads work inside each movie).
  const BatchOutcome batch = run_micrograph_batch(
      todo.size(), 1, "motioncorr", "movies", [&](size_t k) { return movies[todo[k]].name; },
      [&](size_t k, int) {
        const size_t i = todo[k];
        const auto t0 = std::chrono::steady_clock::now();
        process(movies[i], eff, gain, i, ws, pool);
        spdlog::info("motioncorr: {} -> {} ({:.1f} s)", movies[i].name, movies[i].out,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      });
  res.done = batch.done;
  res.failed = batch.failed;

  res.star = dir + "corrected_micrographs.star";
  if (mpi::rank() == 0) {
    star::Document d;
    star::Block optics = set.optics;
    optics.set_name("optics");
    if (!optics.has("rlnMicrographOriginalPixelSize"))
      optics.set_column("rlnMicrographOriginalPixelSize", std::vector<double>(optics.rows(), o.angpix));
    if (!optics.has("rlnVoltage")) optics.set_column("rlnVoltage", std::vector<double>(optics.rows(), o.voltage));
    std::vector<double> px;
    const int pc = optics.column("rlnMicrographOriginalPixelSize");
    for (size_t r = 0; r < optics.rows(); ++r) px.push_back(optics.number(r, pc) * o.bin_factor);
    optics.set_column("rlnMicrographPixelSize", px);
    d.blocks.push_back(optics);
    auto& b = d.add_block("micrographs", true);
    std::vector<std::string> nodw, ps, name, meta;
    std::vector<int> og;
    std::vector<double> tot, early, late;
    for (size_t i = 0; i < movies.size(); ++i) {
      const Movie& m = movies[i];
      const std::string root = without_extension(m.out);
      if (!fs::exists(m.out) || !fs::exists(root + ".star")) {
        spdlog::warn("motioncorr: no corrected micrograph for {}: left out of {}", m.name, res.star);
        continue;
      }
      b.add_row();
      nodw.push_back(root + "_noDW.mrc");
      ps.push_back(root + "_PS.mrc");
      name.push_back(m.out);
      meta.push_back(root + ".star");
      og.push_back(m.group);
      // Accumulated motion as RELION: frame-to-frame distances of the global shifts, early up to
      // the frame where the exposure reaches --dose_motionstats_cutoff.
      const MovieMotion mm = read_movie_motion(root + ".star");
      const double cutoff = (o.dose_motionstats_cutoff - mm.preexposure) / mm.dose_per_frame;
      double t = 0, e = 0, l = 0, xo = 0, yo = 0;
      bool have = false;
      for (int f = 1; f <= mm.frames; ++f) {
        const double x = mm.shift_x[size_t(f - 1)], y = mm.shift_y[size_t(f - 1)];
        if (x == -9999 || y == -9999) continue;
        if (have && f >= 2) {
          const double dd = std::hypot(x - xo, y - yo);
          t += dd;
          (f <= cutoff ? e : l) += dd;
        }
        xo = x;
        yo = y;
        have = true;
      }
      tot.push_back(t);
      early.push_back(e);
      late.push_back(l);
    }
    if (o.dose_weighting && o.save_noDW) b.set_column("rlnMicrographNameNoDW", nodw);
    if (o.grouping_for_ps > 0) b.set_column("rlnCtfPowerSpectrum", ps);
    b.set_column("rlnMicrographName", name);
    b.set_column("rlnMicrographMetadata", meta);
    b.set_column("rlnOpticsGroup", og);
    b.set_column("rlnAccumMotionTotal", tot);
    b.set_column("rlnAccumMotionEarly", early);
    b.set_column("rlnAccumMotionLate", late);
    star::write(res.star, d);
    spdlog::info("motioncorr: {} movies corrected, {} already done, {} failed; wrote {}", res.done, res.skipped,
                 res.failed, res.star);
  }
  return res;
}

}  // namespace regula

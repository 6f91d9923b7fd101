#include "regula/jobs/ctffind.hpp"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
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
#include "regula/io/mrc.hpp"
#include "regula/jobs/micrograph_set.hpp"
#include "regula/micrograph/ctf_fit.hpp"

namespace regula {
namespace fs = std::filesystem;

std::string CtffindOptions::validate() const {
  if (input.empty()) return "--i: a STAR file, wildcard or list of micrographs is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (box < 32) return fmt::format("--Box: at least 32 px (got {})", box);
  if (!(res_min > res_max && res_max > 0))
    return fmt::format("--ResMin/--ResMax: need ResMin > ResMax > 0 Å (got {} and {})", res_min, res_max);
  if (!(df_min > 0 && df_max > df_min)) return fmt::format("--dFMin/--dFMax: need 0 < min < max (got {} and {})", df_min, df_max);
  if (!(df_step > 0)) return fmt::format("--FStep: must be positive (got {})", df_step);
  if ((df_max - df_min) / df_step > 100000) return "--FStep: too many defocus steps";
  if (astigmatism < 0) return fmt::format("--dAst: must be >= 0 (got {})", astigmatism);
  if (use_given_ps && use_noDW) return "--use_given_ps and --use_noDW cannot be combined";
  if (threads < 1) return fmt::format("--j: at least 1 (got {})", threads);
  return "";
}

namespace {

struct Item {
  std::string name;      // rlnMicrographName (as in the input)
  std::string source;    // the file the spectrum comes from
  std::string root;      // output root (DIR/.../name without extension)
  int group = 1;
  double voltage = 300, cs = 2.7, q0 = 0.1, angpix = 1;
};

struct Found {
  bool ok = false;
  double du = 0, dv = 0, angle = 0, fom = 0, maxres = 0;
};

// Reads ROOT.txt (CTFFIND4's format).
Found read_result(const std::string& root) {
  Found r;
  std::ifstream f(root + ".txt");
  if (!f) return r;
  std::string line;
  bool next = false;
  while (std::getline(f, line)) {
    if (line.find("Columns: ") != std::string::npos) {
      next = true;
      continue;
    }
    if (next) {
      std::istringstream is(line);
      double num, ph;
      if (is >> num >> r.du >> r.dv >> r.angle >> ph >> r.fom >> r.maxres) r.ok = true;
      break;
    }
  }
  return r;
}

void write_result(const Item& it, const CtffindOptions& o, const CtfFitResult& r) {
  std::string txt = fmt::format(
      "# Output from Regula ctffind (CTFFIND4's format)\n# Input file: {} ; Number of micrographs: 1\n"
      "# Pixel size: {:.6f} Angstroms ; acceleration voltage: {:.1f} keV ; spherical aberration: {:.2f} mm ; "
      "amplitude contrast: {:.2f}\n"
      "# Box size: {} pixels ; min. res.: {:.1f} Angstroms ; max. res.: {:.1f} Angstroms ; min. def.: {:.1f} um; "
      "max. def. {:.1f} um\n"
      "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of "
      "astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up "
      "to which CTF rings were fit successfully\n"
      "1.000000 {:.6f} {:.6f} {:.6f} 0.000000 {:.6f} {:.6f}\n",
      it.source, it.angpix, it.voltage, it.cs, it.q0, o.box, o.res_min, o.res_max, o.df_min / 1e4, o.df_max / 1e4,
      r.defocus_u, r.defocus_v, r.defocus_angle, r.figure_of_merit, r.max_resolution);
  write_file_atomic(it.root + ".txt", txt);
  write_file_atomic(it.root + "_ctffind4.log",
                    fmt::format("Regula ctffind\nSummary of results                          : {}.txt\n", it.root));
}

// Grey-scale PNG of the diagnostic image (each half scaled to its own range).
void write_png(const std::string& path, const Grid<float>& d) {
  const int n = d.nx();
  std::vector<uint8_t> rgb(size_t(n) * size_t(n) * 3);
  for (int half = 0; half < 2; ++half) {
    float lo = 1e30f, hi = -1e30f;
    for (int y = 0; y < n; ++y)
      for (int x = half * n / 2; x < (half + 1) * n / 2; ++x) {
        lo = std::min(lo, d(x, y));
        hi = std::max(hi, d(x, y));
      }
    const float s = hi > lo ? 255.0f / (hi - lo) : 0.0f;
    for (int y = 0; y < n; ++y)
      for (int x = half * n / 2; x < (half + 1) * n / 2; ++x) {
        const uint8_t v = uint8_t(std::clamp((d(x, y) - lo) * s, 0.0f, 255.0f));
        const size_t k = (size_t(n - 1 - y) * size_t(n) + size_t(x)) * 3;
        rgb[k] = rgb[k + 1] = rgb[k + 2] = v;
      }
  }
  write_file_atomic(path, encode_png_rgb(rgb, n, n));
}

CtfFitResult process(const Item& it, const CtffindOptions& o, int threads) {
  Grid<float> spectrum;
  double angpix = it.angpix;
  if (o.use_given_ps) {
    mrc::Header h;
    spectrum = mrc::read(it.source, &h);
    if (spectrum.nz() != 1) input_error("{}: a power spectrum must be one image, got {} sections", it.source, spectrum.nz());
    if (h.pixel_size() > 0) angpix = h.pixel_size();
  } else {
    mrc::Header h;
    Grid<float> mic = mrc::read(it.source, &h);
    if (mic.nz() != 1) input_error("{}: a micrograph must be one image, got {} sections (a movie?)", it.source, mic.nz());
    spectrum = average_spectrum(mic, o.box, threads);
  }
  CtfFitOptions f;
  f.res_min = o.res_min;
  f.res_max = o.res_max;
  f.df_min = o.df_min;
  f.df_max = o.df_max;
  f.df_step = o.df_step;
  f.astigmatism = o.astigmatism;
  f.voltage_kv = it.voltage;
  f.cs_mm = it.cs;
  f.amplitude_contrast = it.q0;
  CtfFitResult r = fit_ctf(spectrum, angpix, f, threads);
  fs::create_directories(fs::path(it.root).parent_path());
  mrc::WriteOptions w;
  w.pixel_size = angpix;
  mrc::write(it.root + ".ctf", r.diagnostic, w);
  write_png(it.root + ".png", r.diagnostic);
  Item used = it;
  used.angpix = angpix;
  write_result(used, o, r);
  return r;
}

}  // namespace

CtffindResult ctffind(const CtffindOptions& o) {
  if (auto m = o.validate(); !m.empty()) throw InputError("ctffind: " + m);
  MicrographSet set = read_micrograph_set(o.input, "micrographs", "rlnMicrographName");
  std::string dir = o.out_dir;
  if (dir.back() != '/') dir += '/';
  const int ps_col = set.rows.column("rlnCtfPowerSpectrum");
  const int nodw_col = set.rows.column("rlnMicrographNameNoDW");
  if (o.use_given_ps && ps_col < 0)
    input_error("{}: --use_given_ps needs _rlnCtfPowerSpectrum (motion correction with --grouping_for_ps)", o.input);
  if (o.use_noDW && nodw_col < 0) input_error("{}: --use_noDW needs _rlnMicrographNameNoDW", o.input);
  std::vector<Item> items(set.names.size());
  for (size_t i = 0; i < items.size(); ++i) {
    Item& it = items[i];
    it.name = set.names[i];
    it.source = o.use_given_ps ? std::string(set.rows.value(i, ps_col))
                : o.use_noDW   ? std::string(set.rows.value(i, nodw_col))
                               : it.name;
    it.root = without_extension(pipeline_output_name(it.name, dir));
    it.group = set.groups[i];
    it.voltage = set.optics_value(it.group, "rlnVoltage", o.voltage, "--HT");
    it.cs = set.optics_value(it.group, "rlnSphericalAberration", o.cs, "--CS");
    it.q0 = set.optics_value(it.group, "rlnAmplitudeContrast", o.amplitude_contrast, "--AmpCnst");
    it.angpix = set.optics_value(it.group, "rlnMicrographPixelSize", o.angpix, "--angpix");
  }
  fs::create_directories(dir);

  // Which to do: this rank's share of those not finished.
  std::vector<size_t> todo;
  for (size_t i = 0; i < items.size(); ++i) {
    if (int(i % size_t(mpi::size())) != mpi::rank()) continue;
    if (o.only_unfinished && read_result(items[i].root).ok) continue;
    todo.push_back(i);
  }
  CtffindResult res;
  res.skipped = int(items.size()) - int(todo.size());
  const int outer = int(std::min<size_t>(size_t(o.threads), std::max<size_t>(1, todo.size())));
  const int inner = std::max(1, o.threads / outer);
  const BatchOutcome batch = run_micrograph_batch(
      todo.size(), outer, "ctffind", "micrographs", [&](size_t k) { return items[todo[k]].name; },
      [&](size_t k, int) {
        const Item& it = items[todo[k]];
        const auto t0 = std::chrono::steady_clock::now();
        const CtfFitResult r = process(it, o, inner);
        spdlog::info("ctffind: {}: defocus {:.0f} / {:.0f} Å at {:.1f}°, figure of merit {:.3f}, fit to {:.1f} Å ({:.2f} s)",
                     it.name, r.defocus_u, r.defocus_v, r.defocus_angle, r.figure_of_merit, r.max_resolution,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      });
  res.done = batch.done;
  res.failed = batch.failed;

  // Join (rank 0): every micrograph with a result.
  res.star = dir + "micrographs_ctf.star";
  if (mpi::rank() == 0) {
    star::Document d;
    star::Block optics = set.optics;
    optics.set_name("optics");
    if (!optics.has("rlnMicrographPixelSize") && o.angpix > 0)
      optics.set_column("rlnMicrographPixelSize", std::vector<double>(optics.rows(), o.angpix));
    for (auto [label, v] : {std::pair{"rlnVoltage", o.voltage}, {"rlnSphericalAberration", o.cs},
                            {"rlnAmplitudeContrast", o.amplitude_contrast}})
      if (!optics.has(label) && v >= 0) optics.set_column(label, std::vector<double>(optics.rows(), v));
    d.blocks.push_back(optics);
    star::Block out = set.rows;
    out.set_name("micrographs");
    std::vector<size_t> keep;
    std::vector<std::string> img;
    std::vector<double> du, dv, ast, ang, fom, mres;
    for (size_t i = 0; i < items.size(); ++i) {
      const Found f = read_result(items[i].root);
      if (!f.ok) {
        if (mpi::size() > 1 || std::find(todo.begin(), todo.end(), i) == todo.end())
          spdlog::warn("ctffind: no result for {}: left out of {}", items[i].name, res.star);
        continue;
      }
      keep.push_back(i);
      img.push_back(items[i].root + ".ctf:mrc");
      du.push_back(f.du);
      dv.push_back(f.dv);
      ast.push_back(std::abs(f.du - f.dv));
      ang.push_back(f.angle);
      fom.push_back(f.fom);
      mres.push_back(f.maxres);
    }
    out.select_rows(keep);
    out.set_column("rlnCtfImage", img);
    out.set_column("rlnDefocusU", du);
    out.set_column("rlnDefocusV", dv);
    out.set_column("rlnCtfAstigmatism", ast);
    out.set_column("rlnDefocusAngle", ang);
    out.set_column("rlnCtfFigureOfMerit", fom);
    out.set_column("rlnCtfMaxResolution", mres);
    d.blocks.push_back(out);
    star::write(res.star, d);
    spdlog::info("ctffind: {} micrographs estimated, {} already done, {} failed; wrote {}", res.done, res.skipped,
                 res.failed, res.star);
  }
  return res;
}

}  // namespace regula

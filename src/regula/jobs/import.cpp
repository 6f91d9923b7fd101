#include "regula/jobs/import.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/micrograph_set.hpp"
#include "regula/model/particles.hpp"

namespace regula {
namespace fs = std::filesystem;

namespace {

std::string lower_extension(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return e;
}

std::string with_slash(std::string d) {
  if (!d.empty() && d.back() != '/') d += '/';
  return d;
}

// Copies `from` to `to` (directories made) through a temporary name, so a reader never sees half a file.
void copy_atomic(const std::string& from, const std::string& to) {
  const fs::path dst(to);
  if (dst.has_parent_path()) fs::create_directories(dst.parent_path());
  const std::string tmp = fmt::format("{}.tmp.{}", to, ::getpid());
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (ec) {
    fs::remove(tmp);
    input_error("import: cannot copy {} to {}: {}", from, to, ec.message());
  }
  fs::rename(tmp, to);
}

std::vector<std::string> matches_or_fail(const ImportOptions& o, bool allow_none) {
  std::vector<std::string> files;
  for (auto& f : glob_files(o.input))
    if (fs::is_regular_file(f)) files.push_back(f);
  if (files.empty() && !allow_none)
    input_error("import: --i '{}': no file matches (a wildcard such as \"Movies/*.tiff\", relative to the project)",
                o.input);
  return files;
}

std::string num(double v) { return fmt::format("{}", v); }

ImportResult import_list(const ImportOptions& o) {
  const bool movies = o.kind == "movies";
  const std::string block = movies ? "movies" : "micrographs";
  const std::string name_label = movies ? "rlnMicrographMovieName" : "rlnMicrographName";
  const std::string out = with_slash(o.out_dir) + (o.out_file.empty() ? block + ".star" : o.out_file);
  if (!(o.angpix > 0) || !(o.voltage > 0) || !(o.cs >= 0) || !(o.q0 >= 0 && o.q0 < 1))
    input_error("import: expected --angpix > 0, --kV > 0, --Cs >= 0 and 0 <= --Q0 < 1 (got {}, {}, {}, {})", o.angpix,
                o.voltage, o.cs, o.q0);
  if (o.optics_group_name.empty() || o.optics_group_name.find_first_of(" \t\"'") != std::string::npos)
    input_error("import: --optics_group_name '{}': expected a name without spaces or quotes", o.optics_group_name);
  const bool existing = o.continue_run && fs::exists(out);
  std::vector<std::string> files = matches_or_fail(o, existing);
  for (auto& f : files) {
    const std::string e = lower_extension(f);
    if (e == ".eer")
      input_error("import: {}: EER movies are not read by Regula (no well-kept EER library; convert them to TIFF)", f);
    if (e != ".mrc" && e != ".mrcs" && e != ".tif" && e != ".tiff")
      input_error("import: {}: expected an MRC (.mrc, .mrcs) or TIFF (.tif, .tiff) file", f);
  }

  star::Document doc;
  if (existing) {
    doc = star::read(out);
    if (!doc.find("optics") || !doc.find(block))
      input_error("{}: --continue expects data_optics and data_{} (as this job writes)", out, block);
    doc.find(block)->require_column(name_label);
    doc.find("optics")->require_column("rlnOpticsGroupName");
    doc.find("optics")->require_column("rlnOpticsGroup");
  } else {
    doc.add_block("optics", true);
    doc.add_block(block, true);
    auto& mb = *doc.find(block);
    mb.add_column(name_label);
    mb.add_column("rlnOpticsGroup");
  }
  star::Block& optics = *doc.find("optics");
  star::Block& list = *doc.find(block);

  // This run's optics group: relion_import's columns, in its order.
  const bool tilt = o.beamtilt_x != 0 || o.beamtilt_y != 0;
  std::vector<std::pair<std::string, std::string>> cells{{"rlnOpticsGroupName", o.optics_group_name}};
  cells.push_back({"rlnOpticsGroup", ""});
  if (!o.optics_group_mtf.empty()) cells.push_back({"rlnMtfFileName", o.optics_group_mtf});
  if (!movies) cells.push_back({"rlnMicrographPixelSize", num(o.angpix)});
  cells.push_back({"rlnMicrographOriginalPixelSize", num(o.angpix)});
  cells.push_back({"rlnVoltage", num(o.voltage)});
  cells.push_back({"rlnSphericalAberration", num(o.cs)});
  cells.push_back({"rlnAmplitudeContrast", num(o.q0)});
  if (tilt) {
    cells.push_back({"rlnBeamTiltX", num(o.beamtilt_x)});
    cells.push_back({"rlnBeamTiltY", num(o.beamtilt_y)});
  }

  // The group of that name, if the output has one: its values must be these.
  const int name_col = optics.column("rlnOpticsGroupName"), num_col = optics.column("rlnOpticsGroup");
  int group = 0, max_group = 0;
  size_t group_row = 0;
  for (size_t r = 0; r < optics.rows(); ++r) {
    const int g = int(optics.integer(r, num_col));
    max_group = std::max(max_group, g);
    if (optics.value(r, name_col) == o.optics_group_name) group = g, group_row = r;
  }
  if (group > 0) {
    for (auto& [label, v] : cells) {
      if (label == "rlnOpticsGroup" || label == "rlnOpticsGroupName") continue;
      const int c = optics.column(label);
      const bool numeric = label != "rlnMtfFileName";
      const bool same = c >= 0 && (numeric ? std::abs(optics.number(group_row, c) - std::stod(v)) <= 1e-9 * std::max(1.0, std::abs(std::stod(v)))
                                           : optics.value(group_row, c) == v);
      if (!same)
        input_error("{}: optics group '{}' has {} {}, not {} as given now: import into another optics group name",
                    out, o.optics_group_name, label, c >= 0 ? std::string(optics.value(group_row, c)) : "absent", v);
    }
    for (const char* label : {"rlnMtfFileName", "rlnBeamTiltX", "rlnBeamTiltY"}) {
      const int c = optics.column(label);
      const bool given = std::any_of(cells.begin(), cells.end(), [&](auto& p) { return p.first == label; });
      if (c >= 0 && !given && !optics.value(group_row, c).empty() && !(label[3] == 'B' && optics.number(group_row, c) == 0))
        input_error("{}: optics group '{}' has {} {}, not given now: import into another optics group name", out,
                    o.optics_group_name, label, optics.value(group_row, c));
    }
  } else {
    group = max_group + 1;
    const size_t r = optics.add_row();
    for (auto& [label, v] : cells) {
      const int c = optics.add_column(label);
      optics.set_value(r, c, label == "rlnOpticsGroup" ? std::to_string(group) : v);
    }
    // Columns other groups have and this one does not: RELION's empty MTF, no beam tilt.
    for (int c = 0; c < int(optics.columns()); ++c)
      if (optics.value(r, c).empty() && optics.label(c) != "rlnMtfFileName") optics.set_value(r, c, "0");
    for (size_t q = 0; q < r; ++q)
      for (auto& [label, v] : cells)
        if (optics.value(q, optics.column(label)).empty() && label != "rlnMtfFileName") {
          if (label == "rlnMicrographPixelSize")
            optics.set_value(q, optics.column(label), optics.value(q, optics.column("rlnMicrographOriginalPixelSize")));
          else
            optics.set_value(q, optics.column(label), "0");
        }
  }

  std::set<std::string> have;
  const int lc = list.column(name_label), gc = list.add_column("rlnOpticsGroup");
  for (size_t r = 0; r < list.rows(); ++r) have.insert(std::string(list.value(r, lc)));
  ImportResult res;
  res.output = out;
  res.optics_group = group;
  for (auto& f : files) {
    if (have.count(f)) continue;
    const size_t r = list.add_row();
    list.set_value(r, lc, f);
    list.set_value(r, gc, std::to_string(group));
    ++res.new_items;
  }
  res.items = list.rows();
  fs::create_directories(with_slash(o.out_dir));
  star::write(out, doc);
  res.files.push_back(out);
  spdlog::info("import: {} with {} {} ({} new, optics group {} '{}')", out, res.items, block, res.new_items, group,
               o.optics_group_name);
  return res;
}

ImportResult import_coordinates(const ImportOptions& o) {
  const std::string suffix_file = o.out_file.empty() ? "coords_suffix_autopick.star" : o.out_file;
  const std::string prefix = "coords_suffix";
  if (suffix_file.rfind(prefix, 0) != 0 || suffix_file.size() <= prefix.size())
    input_error("import: --ofile '{}': coordinates are imported as coords_suffix<SUFFIX> (e.g. "
                "coords_suffix_autopick.star: the coordinate files end in _autopick.star)", suffix_file);
  const std::string suffix = suffix_file.substr(prefix.size());
  const std::vector<std::string> files = matches_or_fail(o, false);
  std::string dir;
  ImportResult res;
  for (auto& f : files) {
    if (f.size() <= suffix.size() || f.compare(f.size() - suffix.size(), suffix.size(), suffix) != 0)
      input_error("import: {}: does not end in '{}' (the suffix of --ofile {})", f, suffix, suffix_file);
    if (fs::path(f).is_absolute() || f.find("..") != std::string::npos)
      input_error("import: {}: coordinates are copied under their relative path; give a wildcard relative to the "
                  "project, inside it", f);
    if (lower_extension(f) == ".star") {
      star::Document d = star::read(f);
      bool ok = false;
      for (auto& b : d.blocks) ok = ok || (b.has("rlnCoordinateX") && b.has("rlnCoordinateY"));
      if (!ok) input_error("{}: expected a loop with rlnCoordinateX and rlnCoordinateY", f);
    }
    const std::string to = with_slash(o.out_dir) + fs::path(f).lexically_normal().string();
    copy_atomic(f, to);
    res.files.push_back(to);
    const std::string d = fs::path(f).parent_path().string();
    if (dir.empty()) dir = d;
    else if (d != dir)
      input_error("import: --i '{}' matches files in {} and {}: import one folder of coordinates at a time", o.input,
                  dir, d);
  }
  // RELION 3.1's node: the micrographs the coordinates belong to (the same folder, *.mrc).
  res.output = with_slash(o.out_dir) + suffix_file;
  write_file_atomic(res.output, (dir.empty() ? std::string() : dir + "/") + "*.mrc\n");
  res.files.push_back(res.output);
  res.items = res.new_items = files.size();
  spdlog::info("import: {} coordinate files into {} ({})", files.size(), o.out_dir, res.output);
  return res;
}

// The header of an MRC file; InputError with the file and what is wrong.
mrc::Header check_map(const std::string& f) {
  const std::string e = lower_extension(f);
  if (e != ".mrc" && e != ".mrcs" && e != ".map") input_error("import: {}: expected an MRC file (.mrc, .mrcs, .map)", f);
  return mrc::read_header(f);
}

ImportResult import_halfmaps(const ImportOptions& o) {
  const std::string& h1 = o.input;
  const std::string name = fs::path(h1).filename().string();
  const size_t at = name.rfind("half1");
  if (at == std::string::npos)
    input_error("import: --i {}: expected the first unfiltered half map, a name with 'half1' (its partner has "
                "'half2')", h1);
  const std::string h2 = (fs::path(h1).parent_path() / (name.substr(0, at) + "half2" + name.substr(at + 5))).string();
  for (auto& f : {h1, h2})
    if (!fs::is_regular_file(f)) input_error("import: {}: no such file (half maps come in pairs: {} and {})", f, h1, h2);
  const mrc::Header a = check_map(h1), b = check_map(h2);
  if (a.nx != b.nx || a.ny != b.ny || a.nz != b.nz)
    input_error("import: {} is {}x{}x{} and {} is {}x{}x{}: half maps of one refinement are the same size", h1, a.nx,
                a.ny, a.nz, h2, b.nx, b.ny, b.nz);
  ImportResult res;
  for (auto& f : {h1, h2}) {
    const std::string to = with_slash(o.out_dir) + fs::path(f).filename().string();
    copy_atomic(f, to);
    res.files.push_back(to);
  }
  res.output = res.files[0];
  res.items = res.new_items = 2;
  return res;
}

ImportResult import_particles(const ImportOptions& o) {
  if (!fs::is_regular_file(o.input)) input_error("import: --i {}: no such file (a particle STAR file)", o.input);
  ParticleTable t = ParticleTable::read(o.input);
  if (t.size() == 0) input_error("{}: no particles", o.input);
  if (!o.particles_optics_group_name.empty()) {
    if (t.optics.size() != 1)
      input_error("import: --particles_optics_group_name renames the one optics group; {} has {}", o.input,
                  t.optics.size());
    t.optics[0].name = o.particles_optics_group_name;
  }
  ImportResult res;
  res.output = with_slash(o.out_dir) + (o.out_file.empty() ? "particles.star" : o.out_file);
  fs::create_directories(with_slash(o.out_dir));
  t.write(res.output);
  res.files.push_back(res.output);
  res.items = res.new_items = t.size();
  spdlog::info("import: {} particles in {} optics group(s) into {}", t.size(), t.optics.size(), res.output);
  return res;
}

ImportResult import_other(const ImportOptions& o) {
  if (!fs::is_regular_file(o.input)) input_error("import: --i {}: no such file", o.input);
  const std::string e = lower_extension(o.input);
  if (e == ".mrc" || e == ".mrcs" || e == ".map") check_map(o.input);
  if (e == ".star") (void)star::read(o.input);
  ImportResult res;
  res.output = with_slash(o.out_dir) + (o.out_file.empty() ? fs::path(o.input).filename().string() : o.out_file);
  copy_atomic(o.input, res.output);
  res.files.push_back(res.output);
  res.items = res.new_items = 1;
  return res;
}

}  // namespace

ImportResult run_import(const ImportOptions& o) {
  if (o.input.empty()) input_error("import: --i is required");
  if (o.out_dir.empty()) input_error("import: --odir is required");
  const bool list = o.kind == "movies" || o.kind == "micrographs";
  if (o.continue_run && !list)
    input_error("import: --continue adds movies or micrographs to an existing list; the other kinds are imported "
                "once");
  if (!o.particles_optics_group_name.empty() && o.kind != "particles")
    input_error("import: --particles_optics_group_name is for --do_particles");
  if (list) return import_list(o);
  if (o.kind == "coordinates") return import_coordinates(o);
  if (o.kind == "halfmaps") return import_halfmaps(o);
  if (o.kind == "particles") return import_particles(o);
  if (o.kind == "other") return import_other(o);
  input_error("import: kind '{}': expected movies, micrographs, coordinates, halfmaps, particles or other", o.kind);
}

}  // namespace regula

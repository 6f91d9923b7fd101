#include "regula/jobs/extract.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/coordinates.hpp"
#include "regula/jobs/micrograph_set.hpp"
#include "regula/micrograph/extract.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {
namespace fs = std::filesystem;

int ExtractOptions::final_box() const { return window > 0 ? window : scale > 0 ? scale : extract_size; }

std::string ExtractOptions::validate() const {
  if (input.empty()) return "--i: a micrographs STAR file (e.g. micrographs_ctf.star), wildcard or list is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  const int sources = int(!coord_suffix.empty()) + int(!coord_list.empty()) + int(!reextract.empty());
  if (sources != 1)
    return "give exactly one of --coord_suffix (with --coord_dir), --coord_list or --reextract_data_star";
  if (!coord_dir.empty() && coord_suffix.empty()) return "--coord_dir needs --coord_suffix";
  if (extract_size < 2 || extract_size % 2)
    return fmt::format("--extract_size: an even box size of at least 2 px is required (got {})", extract_size);
  if (scale != -1 && (scale < 2 || scale % 2)) return fmt::format("--scale: an even size of at least 2 px (got {})", scale);
  if (window != -1 && (window < 2 || window % 2))
    return fmt::format("--window: an even size of at least 2 px (got {})", window);
  if (norm && bg_radius >= 0 && !(bg_radius > 0)) return "--bg_radius: must be positive";
  if (norm && 2 * bg_radius > final_box())
    return fmt::format("--bg_radius {} px: larger than half the {} px box of the particles", bg_radius, final_box());
  if (!norm && bg_radius > 0) return "--bg_radius needs --norm";
  if (!norm && (white_dust > 0 || black_dust > 0)) return "--white_dust/--black_dust need --norm";
  if (!norm && no_ramp) return "--no_ramp needs --norm";
  if ((recenter || reset_offsets || keep_ctfs_micrographs) && reextract.empty())
    return "--recenter, --reset_offsets and --keep_ctfs_micrographs need --reextract_data_star";
  if (recenter && reset_offsets) return "--recenter and --reset_offsets cannot be combined";
  if (!recenter && (recenter_x != 0 || recenter_y != 0 || recenter_z != 0))
    return "--recenter_x/y/z need --recenter";
  if (angpix != -1 && !(angpix > 0)) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (threads < 1) return fmt::format("--j: at least 1 (got {})", threads);
  return "";
}

namespace {

struct Mic {
  std::string name;     // rlnMicrographName as in the input
  std::string root;     // DIR/<name without Type/jobNNN/, without extension>
  std::string coords;   // coordinate file ("" for re-extraction)
  size_t row = 0;       // row in the micrographs table
  int group = 1;
  double angpix = 0;    // Å
};

struct Done {
  long count = 0, outside = 0;
  bool wrote = false;
};

// Labels of the micrograph's CTF copied into particle rows (RELION's ctf.write and the extras).
const char* kCtfLabels[] = {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor",
                            "rlnPhaseShift"};
const double kCtfDefaults[] = {0, 0, 0, 0, 1, 0};

// Sets `label` to a number in every row of `b`.
void set_all(star::Table& b, const std::string& label, double v) {
  const int c = b.add_column(label);
  for (size_t r = 0; r < b.rows(); ++r) b.set_number(r, c, v);
}

void copy_mic_value(const star::Table& mics, size_t row, star::Table& out, const std::string& label,
                    double fallback, bool always) {
  const int c = mics.column(label);
  if (c < 0 && !always) return;
  set_all(out, label, c < 0 ? fallback : mics.number(row, c));
}

class Extractor {
 public:
  Extractor(const ExtractOptions& o, const MicrographSet& set) : o_(o), set_(set) {
    ops_.scale = o.scale;
    ops_.window = o.window;
    ops_.norm = o.norm;
    ops_.invert_contrast = o.invert_contrast;
    ops_.normalise.bg_radius_px = o.bg_radius;
    ops_.normalise.ramp = !o.no_ramp;
    ops_.normalise.white_dust = o.white_dust;
    ops_.normalise.black_dust = o.black_dust;
    mics_have_ctf_ = set.rows.has("rlnDefocusU");
  }

  // Writes <root>.mrcs and <root>_extract.star for the particles `rows` of micrograph `m`.
  Done run(const Mic& m, size_t index, star::Block rows, bool rows_have_ctf) const {
    Done d;
    mrc::Header h;
    Grid<float> mic = mrc::read(m.name, &h);
    if (mic.nz() != 1)
      input_error("{}: a micrograph must be one image, got {} sections (a movie?)", m.name, mic.nz());
    const int cx = rows.require_column("rlnCoordinateX"), cy = rows.require_column("rlnCoordinateY");
    const int n_out = o_.final_box();
    mrc::WriteOptions wo;
    wo.mode = o_.float16 ? mrc::Mode::Float16 : mrc::Mode::Float32;
    wo.pixel_size = m.angpix * (o_.scale > 0 ? double(o_.extract_size) / o_.scale : 1.0);
    wo.is_stack = true;
    fs::create_directories(fs::path(m.root).parent_path());
    const std::string stack = m.root + ".mrcs";
    mrc::StackWriter writer(stack, n_out, n_out, wo);
    std::vector<size_t> keep;
    std::vector<std::string> names;
    Grid<float> box;
    for (size_t r = 0; r < rows.rows(); ++r) {
      const double x = rows.number(r, cx) + o_.bias_x, y = rows.number(r, cy) + o_.bias_y;
      if (extract_box(mic, x, y, o_.extract_size, box) == ExtractStatus::Outside) {
        spdlog::warn("extract: {}: particle {} at ({}, {}) lies entirely outside the {}x{} micrograph: skipped",
                     m.name, r + 1, x, y, mic.nx(), mic.ny());
        ++d.outside;
        continue;
      }
      auto rng = make_rng(o_.seed, index, r);
      apply_particle_ops(box, ops_, &rng);
      writer.append(box);
      keep.push_back(r);
      names.push_back(fmt::format("{:06d}@{}", keep.size(), stack));
    }
    rows.select_rows(keep);
    d.count = long(keep.size());
    if (d.count == 0) {
      spdlog::warn("extract: {}: no particles to extract", m.name);
      return d;  // the writer's temporary is removed
    }
    if (o_.bias_x != 0 || o_.bias_y != 0) {
      for (size_t r = 0; r < rows.rows(); ++r) {
        rows.set_number(r, cx, rows.number(r, cx) + o_.bias_x);
        rows.set_number(r, cy, rows.number(r, cy) + o_.bias_y);
      }
    }
    rows.set_column("rlnImageName", names);
    rows.set_column("rlnMicrographName", std::vector<std::string>(rows.rows(), m.name));
    if (!rows.has("rlnOpticsGroup") || o_.keep_ctfs_micrographs) set_all(rows, "rlnOpticsGroup", m.group);
    if (mics_have_ctf_ && (!rows_have_ctf || o_.keep_ctfs_micrographs)) {
      copy_mic_value(set_.rows, m.row, rows, "rlnCtfMaxResolution", 0, false);
      copy_mic_value(set_.rows, m.row, rows, "rlnCtfFigureOfMerit", 0, false);
      for (size_t k = 0; k < std::size(kCtfLabels); ++k)
        copy_mic_value(set_.rows, m.row, rows, kCtfLabels[k], kCtfDefaults[k], true);
    }
    if (mics_have_ctf_)
      for (const char* bt : {"rlnBeamTiltX", "rlnBeamTiltY"})
        if (!rows.has(bt) || o_.keep_ctfs_micrographs) copy_mic_value(set_.rows, m.row, rows, bt, 0, false);
    star::Document doc;
    rows.set_name("images");
    doc.blocks.push_back(std::move(rows));
    const std::string text = star::to_string(doc);
    writer.commit();
    write_file_atomic(m.root + "_extract.star", text);
    d.wrote = true;
    return d;
  }

 private:
  const ExtractOptions& o_;
  const MicrographSet& set_;
  ParticleOps ops_;
  bool mics_have_ctf_ = false;
};

// Re-extraction: the particle rows of each micrograph, with origins folded into the coordinates.
struct Reextraction {
  ParticleTable table;
  std::map<std::string, std::vector<size_t>> by_mic;  // micrograph key -> particle indices
};

std::string mic_key(const std::string& name) { return pipeline_output_name(name, ""); }

// A new loop with the columns of `src` and its rows `keep` (values copied; costs the rows kept only).
star::Block subset(const star::Table& src, const std::vector<size_t>& keep, const std::string& name) {
  star::Block out(name, true);
  const auto labels = src.labels();
  for (auto& l : labels) out.add_column(l);
  for (size_t r : keep) {
    const size_t row = out.add_row();
    for (int c = 0; c < int(labels.size()); ++c) out.set_value(row, c, src.value(r, c));
  }
  return out;
}

Reextraction read_reextraction(const ExtractOptions& o) {
  Reextraction r{ParticleTable::read(o.reextract), {}};
  const star::Block& pb = r.table.particles_block();
  const int mc = pb.column("rlnMicrographName");
  if (mc < 0) input_error("{}: re-extraction needs _rlnMicrographName in the particles", o.reextract);
  if (!pb.has("rlnCoordinateX") || !pb.has("rlnCoordinateY"))
    input_error("{}: re-extraction needs _rlnCoordinateX and _rlnCoordinateY in the particles", o.reextract);
  for (size_t i = 0; i < r.table.size(); ++i) r.by_mic[mic_key(std::string(pb.value(i, mc)))].push_back(i);
  if (o.recenter && !pb.has("rlnOriginXAngst") && !pb.has("rlnOriginX"))
    input_error("{}: --recenter needs the refined origins (_rlnOriginXAngst/YAngst)", o.reextract);
  return r;
}

// The particle rows of micrograph m (all columns), with --recenter/--reset_offsets applied.
star::Block reextraction_rows(const ExtractOptions& o, const Reextraction& re, const Mic& m) {
  star::Block rows("images", true);
  const auto it = re.by_mic.find(mic_key(m.name));
  const star::Block& pb = re.table.particles_block();
  if (it == re.by_mic.end()) return rows;
  rows = subset(pb, it->second, "images");
  rows.remove_column("rlnOriginX");  // pixels (RELION 3.0): the table's origins are in Å
  rows.remove_column("rlnOriginY");
  const int cx = rows.require_column("rlnCoordinateX"), cy = rows.require_column("rlnCoordinateY");
  std::vector<double> ox(rows.rows()), oy(rows.rows());
  for (size_t k = 0; k < rows.rows(); ++k) {
    const size_t i = it->second[k];
    ox[k] = re.table.origin_x[i];
    oy[k] = re.table.origin_y[i];
    if (o.reset_offsets) {
      ox[k] = oy[k] = 0;
      continue;
    }
    if (!o.recenter) continue;
    const double pa = re.table.optics_of(i).pixel_size;
    if (!(pa > 0)) input_error("{}: --recenter needs the particles' pixel size (rlnImagePixelSize)", re.table.where(i));
    double x = ox[k] / pa, y = oy[k] / pa;  // particle pixels
    if (o.recenter_x != 0 || o.recenter_y != 0 || o.recenter_z != 0) {
      const double f = o.ref_angpix > 0 ? o.ref_angpix / pa : 1.0;
      const Vec3 c = matvec(euler_to_matrix(re.table.rot[i], re.table.tilt[i], re.table.psi[i]),
                            Vec3{o.recenter_x * f, o.recenter_y * f, o.recenter_z * f});
      x -= c[0];
      y -= c[1];
    }
    x *= pa / m.angpix;  // micrograph pixels
    y *= pa / m.angpix;
    const double rx = std::round(x), ry = std::round(y);
    rows.set_number(k, cx, rows.number(k, cx) - rx);
    rows.set_number(k, cy, rows.number(k, cy) - ry);
    ox[k] = (x - rx) * m.angpix;
    oy[k] = (y - ry) * m.angpix;
  }
  if (o.recenter || o.reset_offsets || pb.has("rlnOriginXAngst") || pb.has("rlnOriginX")) {
    rows.set_column("rlnOriginXAngst", ox);
    rows.set_column("rlnOriginYAngst", oy);
  }
  return rows;
}

// The optics block of particles.star.
star::Block output_optics(const ExtractOptions& o, const MicrographSet& set, const Reextraction* re,
                          const std::vector<Mic>& mics) {
  const double factor = o.scale > 0 ? double(o.extract_size) / o.scale : 1.0;
  std::map<int, double> mic_angpix;  // micrograph optics group -> Å
  std::map<std::string, double> mic_angpix_by_name;
  for (const Mic& m : mics) mic_angpix[m.group] = m.angpix;
  const int mg = set.optics.column("rlnOpticsGroup"), mn = set.optics.column("rlnOpticsGroupName");
  for (size_t r = 0; r < set.optics.rows(); ++r) {
    const int g = mg < 0 ? int(r) + 1 : int(set.optics.integer(r, mg));
    const auto a = mic_angpix.find(g);
    if (mn >= 0 && a != mic_angpix.end()) mic_angpix_by_name[std::string(set.optics.value(r, mn))] = a->second;
  }
  star::Block optics;
  if (re && !o.keep_ctfs_micrographs) {
    const star::Block* po = re->table.document().find("optics");
    if (!po) input_error("{}: no data_optics block (a RELION 3.1 particle file is needed for re-extraction)", o.reextract);
    optics = *po;
    const int gc = optics.column("rlnOpticsGroup"), nc = optics.column("rlnOpticsGroupName");
    std::vector<double> px(optics.rows());
    for (size_t r = 0; r < optics.rows(); ++r) {
      double a = -1;
      if (nc >= 0) {
        const auto f = mic_angpix_by_name.find(std::string(optics.value(r, nc)));
        if (f != mic_angpix_by_name.end()) a = f->second;
      }
      if (a < 0 && gc >= 0) {
        const auto f = mic_angpix.find(int(optics.integer(r, gc)));
        if (f != mic_angpix.end()) a = f->second;
      }
      if (a < 0 && !mic_angpix.empty()) a = mic_angpix.begin()->second;
      px[r] = a * factor;
    }
    optics.set_column("rlnImagePixelSize", px);
  } else {
    optics = set.optics;
    const int gc = optics.column("rlnOpticsGroup");
    std::vector<double> px(optics.rows());
    for (size_t r = 0; r < optics.rows(); ++r) {
      const int g = gc < 0 ? int(r) + 1 : int(optics.integer(r, gc));
      const auto f = mic_angpix.find(g);
      px[r] = (f != mic_angpix.end() ? f->second : set.optics_value(g, "rlnMicrographPixelSize", o.angpix, "--angpix")) *
              factor;
    }
    optics.remove_column("rlnMicrographPixelSize");
    optics.set_column("rlnImagePixelSize", px);
  }
  optics.set_column("rlnImageSize", std::vector<int>(optics.rows(), o.final_box()));
  optics.set_column("rlnImageDimensionality", std::vector<int>(optics.rows(), 2));
  optics.set_name("optics");
  optics.more.clear();
  return optics;
}

// Joins the per-micrograph _extract.star files (in micrograph order) into one particles block.
star::Block join(const std::vector<Mic>& mics, const std::vector<bool>& present, long& count) {
  star::Block out("particles", true);
  count = 0;
  std::vector<star::Block> parts;
  std::vector<std::string> labels;
  std::set<std::string> seen;
  for (size_t k = 0; k < mics.size(); ++k) {
    if (!present[k]) continue;
    star::Document d = star::read(mics[k].root + "_extract.star");
    if (d.blocks.empty()) continue;
    for (auto& l : d.blocks[0].labels())
      if (seen.insert(l).second) labels.push_back(l);
    parts.push_back(std::move(d.blocks[0]));
  }
  for (auto& l : labels) out.add_column(l);
  for (auto& p : parts) {
    std::vector<int> src(labels.size());
    for (size_t c = 0; c < labels.size(); ++c) src[c] = p.column(labels[c]);
    for (size_t r = 0; r < p.rows(); ++r) {
      const size_t row = out.add_row();
      for (size_t c = 0; c < labels.size(); ++c)
        out.set_value(row, int(c), src[c] >= 0 ? p.value(r, src[c]) : std::string_view("0"));
    }
    count += long(p.rows());
  }
  return out;
}

}  // namespace

ExtractResult extract(const ExtractOptions& o_in) {
  ExtractOptions o = o_in;
  if (auto m = o.validate(); !m.empty()) throw InputError("extract: " + m);
  if (o.norm && o.bg_radius < 0) o.bg_radius = double(int(0.75 * o.final_box() / 2.0));  // RELION's GUI default
  MicrographSet set = read_micrograph_set(o.input, "micrographs", "rlnMicrographName");
  std::string dir = o.out_dir;
  if (dir.back() != '/') dir += '/';
  std::map<std::string, std::string> list;
  if (!o.coord_list.empty()) list = read_coordinate_list(o.coord_list);
  std::unique_ptr<Reextraction> re;
  if (!o.reextract.empty()) re = std::make_unique<Reextraction>(read_reextraction(o));

  std::vector<Mic> mics(set.names.size());
  for (size_t i = 0; i < mics.size(); ++i) {
    Mic& m = mics[i];
    m.name = set.names[i];
    m.row = i;
    m.group = set.groups[i];
    m.angpix = set.optics_value(m.group, "rlnMicrographPixelSize", o.angpix, "--angpix");
    m.root = without_extension(pipeline_output_name(m.name, dir));
    if (!o.coord_suffix.empty()) m.coords = coordinate_file_name(m.name, o.coord_dir, o.coord_suffix);
    if (!o.coord_list.empty()) {
      const auto f = list.find(m.name);
      if (f != list.end()) m.coords = f->second;
    }
  }
  fs::create_directories(dir);

  std::vector<size_t> todo;
  for (size_t i = 0; i < mics.size(); ++i) {
    if (int(i % size_t(mpi::size())) != mpi::rank()) continue;
    if (o.only_unfinished && fs::exists(mics[i].root + "_extract.star")) continue;
    todo.push_back(i);
  }
  ExtractResult res;
  res.skipped = int(mics.size()) - int(todo.size());
  Extractor ex(o, set);
  std::vector<Done> done(todo.size());
  const BatchOutcome batch = run_micrograph_batch(
      todo.size(), int(std::min<size_t>(size_t(o.threads), std::max<size_t>(1, todo.size()))), "extract",
      "micrographs", [&](size_t k) { return mics[todo[k]].name; },
      [&](size_t k, int) {
        const Mic& m = mics[todo[k]];
        star::Block rows;
        bool rows_have_ctf = false;
        if (re) {
          rows = reextraction_rows(o, *re, m);
          rows_have_ctf = rows.has("rlnDefocusU");
        } else {
          if (m.coords.empty()) input_error("no coordinate file listed in {}", o.coord_list);
          if (!fs::exists(m.coords)) input_error("no coordinate file {}", m.coords);
          rows = read_coordinates(m.coords);
        }
        if (rows.rows() == 0) {
          spdlog::warn("extract: {}: no particles", m.name);
        } else {
          done[k] = ex.run(m, todo[k], std::move(rows), rows_have_ctf);
        }
      });
  res.done = batch.done;
  res.failed = batch.failed;
  for (size_t k = 0; k < todo.size(); ++k)
    if (batch.ok[k]) res.outside += done[k].outside;

  res.star = dir + "particles.star";
  if (mpi::rank() == 0) {
    std::vector<bool> present(mics.size());
    for (size_t i = 0; i < mics.size(); ++i) present[i] = fs::exists(mics[i].root + "_extract.star");
    star::Document d;
    d.blocks.push_back(output_optics(o, set, re.get(), mics));
    d.blocks.push_back(join(mics, present, res.particles));
    star::write(res.star, d);
    res.micrographs = int(std::count(present.begin(), present.end(), true));
    spdlog::info("extract: {} particles from {} micrographs ({} extracted now, {} already done, {} failed{}); wrote {}",
                 res.particles, res.micrographs, res.done, res.skipped, res.failed,
                 res.outside ? fmt::format(", {} particles outside their micrograph", res.outside) : "", res.star);
  }
  return res;
}

}  // namespace regula

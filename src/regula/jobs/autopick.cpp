#include "regula/jobs/autopick.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <mutex>

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
#include "regula/jobs/micrograph_set.hpp"
#include "regula/micrograph/log_picker.hpp"
#include "regula/micrograph/template_picker.hpp"
#include "regula/model/particles.hpp"

namespace regula {
namespace fs = std::filesystem;

std::string AutopickOptions::validate() const {
  if (input.empty()) return "--i: a micrographs STAR file (e.g. micrographs_ctf.star), wildcard or list is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (pickname.empty() || pickname.find('/') != std::string::npos) return "--pickname: a name without '/'";
  if (log == !ref.empty()) return "give either --LoG (Laplacian-of-Gaussian picking) or --ref (templates)";
  if (log) {
    if (!(log_diam_min > 0)) return "--LoG_diam_min: the smallest particle diameter (Å) is required";
    if (!(log_diam_max >= log_diam_min)) return "--LoG_diam_max: the largest diameter (Å), >= --LoG_diam_min, is required";
    if (!(log_neighbour > 0)) return "--LoG_neighbour: must be positive";
    if (log_max_search < 1 || log_max_search > 20) return "--Log_max_search: 1 to 20";
    if (ctf || invert || ctf_intact_first_peak || !select_classes.empty())
      return "--ctf, --invert, --ctf_intact_first_peak and --select_classes are template options (not with --LoG)";
  } else {
    if (log_use_ctf || log_invert) return "--LoG_use_ctf and --Log_invert need --LoG";
    if (!(psi_step > 0) || psi_step > 360) return "--ang: an in-plane step in (0, 360] degrees";
    if (healpix_order < 0 || healpix_order > 4) return "--healpix_order: 0 to 4";
    if (ctf_intact_first_peak && !ctf) return "--ctf_intact_first_peak needs --ctf";
    for (int c : select_classes)
      if (c < 1) return "--select_classes: class numbers start at 1";
  }
  if (shrink < 0) return "--shrink: must be >= 0";
  if (angpix != -1 && !(angpix > 0)) return "--angpix: must be positive";
  if (outlier_removal_zscore <= 0) return "--outlier_removal_zscore: must be positive";
  if (skip_side < 0) return "--skip_side: must be >= 0";
  if (shrink_particle_mask < 0) return "--shrink_particle_mask: must be >= 0";
  if (threads < 1) return fmt::format("--j: at least 1 (got {})", threads);
  return "";
}

namespace {

struct Item {
  std::string name, root, pick_file;
  int group = 1;
  size_t row = 0;
};

double row_number(const star::Table& t, size_t r, const char* label, double fallback) {
  const int c = t.column(label);
  return c < 0 ? fallback : t.number(r, c);
}

CtfParams micrograph_ctf(const MicrographSet& set, const Item& it) {
  if (!set.rows.has("rlnDefocusU"))
    input_error("{}: no CTF (rlnDefocusU) for the micrographs: use the output of a CtfFind job", set.source);
  CtfParams p;
  p.voltage_kv = set.optics_value(it.group, "rlnVoltage", -1, "(no option)");
  p.cs_mm = set.optics_value(it.group, "rlnSphericalAberration", -1, "(no option)");
  p.amplitude_contrast = set.optics_value(it.group, "rlnAmplitudeContrast", -1, "(no option)");
  p.defocus_u = row_number(set.rows, it.row, "rlnDefocusU", 0);
  p.defocus_v = row_number(set.rows, it.row, "rlnDefocusV", p.defocus_u);
  p.defocus_angle = row_number(set.rows, it.row, "rlnDefocusAngle", 0);
  p.bfactor = row_number(set.rows, it.row, "rlnCtfBfactor", 0);
  p.scale = row_number(set.rows, it.row, "rlnCtfScalefactor", 1);
  p.phase_shift = row_number(set.rows, it.row, "rlnPhaseShift", 0);
  return p;
}

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// The 2D references of --ref (and their pixel size, <= 0 when the files do not say).
std::vector<Grid<float>> read_references(const AutopickOptions& o, const std::string& dir, double angpix_mic,
                                         double& angpix_ref) {
  std::vector<Grid<float>> refs;
  angpix_ref = o.angpix_ref;
  if (ends_with(o.ref, ".star")) {
    if (!o.select_classes.empty()) input_error("--select_classes: select from an MRC stack, not a STAR file");
    const star::Document d = star::read(o.ref);
    const star::Block* b = nullptr;
    for (auto& blk : d.blocks)
      if (!b && (blk.has("rlnReferenceImage") || blk.has("rlnImageName"))) b = &blk;
    if (!b) input_error("{}: no _rlnReferenceImage or _rlnImageName (expected a list of reference images)", o.ref);
    const int c = b->has("rlnReferenceImage") ? b->column("rlnReferenceImage") : b->column("rlnImageName");
    for (size_t r = 0; r < b->rows(); ++r) {
      const ImageRef ir = parse_image_name(b->value(r, c), b->where(r));
      mrc::StackReader sr(resolve_image_path(ir.path));
      refs.push_back(sr.read(ir.index > 0 ? int(ir.index - 1) : 0));
      if (refs.size() == 1 && angpix_ref <= 0) angpix_ref = sr.header().pixel_size();
    }
    if (refs.empty()) input_error("{}: lists no reference images", o.ref);
    return refs;
  }
  mrc::Header h = mrc::read_header(o.ref);
  const bool stack = ends_with(o.ref, ".mrcs") || h.is_stack() || h.size_z() == 1;
  const double header_px = h.pixel_size();
  if (!stack) {
    if (!o.select_classes.empty()) input_error("--select_classes: {} is a 3D map, not a stack of classes", o.ref);
    const Grid<float> map = mrc::read(o.ref);
    if (angpix_ref <= 0) {
      angpix_ref = angpix_mic;  // RELION assumes the micrographs' pixel size for a map
      if (header_px > 0 && std::abs(header_px - angpix_mic) > 1e-3)
        spdlog::warn("autopick: {} has {} Å/px in its header; taking the micrographs' {} Å/px (give --angpix_ref "
                     "to use another)", o.ref, header_px, angpix_mic);
    }
    refs = project_for_picking(map, angpix_ref, o.lowpass, o.healpix_order, o.sym, o.threads);
    if (mpi::rank() == 0) {
      mrc::WriteOptions w;
      w.pixel_size = angpix_ref;
      w.is_stack = true;
      mrc::StackWriter sw(dir + "reference_projections.mrcs", refs[0].nx(), refs[0].ny(), w);
      for (auto& r : refs) sw.append(r);
      sw.commit();
    }
    spdlog::info("autopick: {} projections of {} (HEALPix order {}, {})", refs.size(), o.ref, o.healpix_order, o.sym);
    return refs;
  }
  mrc::StackReader sr(o.ref);
  if (o.select_classes.empty()) {
    for (int i = 0; i < sr.count(); ++i) refs.push_back(sr.read(i));
  } else {
    for (int c : o.select_classes) {
      if (c > sr.count()) input_error("--select_classes: {} has {} images, no class {}", o.ref, sr.count(), c);
      refs.push_back(sr.read(c - 1));
    }
  }
  if (angpix_ref <= 0) {
    angpix_ref = angpix_mic;  // RELION assumes the micrographs' pixel size for a stack
    if (header_px > 0 && std::abs(header_px - angpix_mic) > 1e-3)
      spdlog::warn("autopick: {} has {} Å/px in its header; taking the micrographs' {} Å/px (give --angpix_ref to "
                   "use another)", o.ref, header_px, angpix_mic);
  }
  return refs;
}

// Reads a micrograph (one image) into `out`, reusing its memory when the size is the same.
void read_micrograph(const std::string& path, Grid<float>& out) {
  mrc::StackReader r(path);
  if (r.count() != 1) input_error("{}: a micrograph must be one image, got {} sections (a movie?)", path, r.count());
  if (out.nx() != r.nx() || out.ny() != r.ny() || out.nz() != 1) out = Grid<float>(r.nx(), r.ny());
  r.read_into(0, out.data());
}

void write_picks(const std::string& path, const std::vector<Pick>& picks, bool log) {
  star::Document d;
  auto& b = d.add_block("", true);
  std::vector<double> x, y, fom, psi;
  std::vector<int> cls;
  for (const Pick& p : picks) {
    b.add_row();
    x.push_back(p.x);
    y.push_back(p.y);
    fom.push_back(p.fom);
    cls.push_back(p.class_number);
    psi.push_back(p.psi);
  }
  b.set_column("rlnCoordinateX", x);
  b.set_column("rlnCoordinateY", y);
  if (log) {
    b.set_column("rlnAutopickFigureOfMerit", fom);
    b.set_column("rlnClassNumber", cls);
  } else {
    b.set_column("rlnClassNumber", cls);
    b.set_column("rlnAutopickFigureOfMerit", fom);
  }
  b.set_column("rlnAnglePsi", psi);
  fs::create_directories(fs::path(path).parent_path());
  star::write(path, d);
}

}  // namespace

AutopickResult autopick(const AutopickOptions& o) {
  if (auto m = o.validate(); !m.empty()) throw InputError("autopick: " + m);
  MicrographSet set = read_micrograph_set(o.input, "micrographs", "rlnMicrographName");
  std::string dir = o.out_dir;
  if (dir.back() != '/') dir += '/';
  fs::create_directories(dir);
  std::vector<Item> items(set.names.size());
  double angpix = -1;
  for (size_t i = 0; i < items.size(); ++i) {
    Item& it = items[i];
    it.name = set.names[i];
    it.row = i;
    it.group = set.groups[i];
    it.root = without_extension(pipeline_output_name(it.name, dir));
    it.pick_file = it.root + "_" + o.pickname + ".star";
    const double a = set.optics_value(it.group, "rlnMicrographPixelSize", o.angpix, "--angpix");
    if (angpix < 0) angpix = a;
    if (std::abs(a - angpix) > 0.01)
      input_error("{}: optics groups of different pixel sizes ({} and {} Å): pick them in separate runs", o.input,
                  angpix, a);
  }
  if (items.empty()) input_error("{}: no micrographs", o.input);

  std::vector<size_t> todo;
  for (size_t i = 0; i < items.size(); ++i) {
    if (int(i % size_t(mpi::size())) != mpi::rank()) continue;
    if (o.only_unfinished && fs::exists(items[i].pick_file)) continue;
    todo.push_back(i);
  }
  AutopickResult res;
  res.skipped = int(items.size()) - int(todo.size());

  LogPickOptions lo;
  TemplatePickOptions to;
  std::unique_ptr<TemplateReferences> refs;
  std::vector<Grid<float>> ref_images;
  if (o.log) {
    lo.angpix = angpix;
    lo.diam_min = o.log_diam_min;
    lo.diam_max = o.log_diam_max;
    lo.neighbour = o.log_neighbour / 100.0;
    lo.white_particles = o.log_invert;
    lo.adjust_threshold = o.log_adjust_threshold;
    lo.upper_threshold = o.log_upper_threshold;
    lo.max_search = o.log_max_search;
    lo.lowpass = o.lowpass;
    lo.shrink = o.shrink;
    lo.optimise_size = !o.skip_optimise_scale;
    lo.outlier_z = o.outlier_removal_zscore;
    lo.skip_side = o.skip_side;
    lo.use_ctf = o.log_use_ctf;
    spdlog::info("autopick: Laplacian-of-Gaussian picking, diameters {} Å", fmt::join(lo.diameters(), ", "));
  } else {
    to.angpix = angpix;
    to.particle_diameter = o.particle_diameter;
    to.shrink_mask = o.shrink_particle_mask;
    to.psi_step = o.psi_step;
    to.lowpass = o.lowpass;
    to.highpass = o.highpass;
    to.shrink = o.shrink;
    to.optimise_size = !o.skip_optimise_scale;
    to.invert = o.invert;
    to.ctf = o.ctf;
    to.ctf_intact_first_peak = o.ctf_intact_first_peak;
    to.threshold = o.threshold;
    to.min_distance = o.min_distance;
    to.max_stddev_noise = o.max_stddev_noise;
    to.min_avg_noise = o.min_avg_noise;
    to.skip_side = o.skip_side;
    to.outlier_z = o.outlier_removal_zscore;
    if (auto m = to.validate(); !m.empty()) throw InputError("autopick: " + m);
    if (!todo.empty()) {
      ref_images = read_references(o, dir, angpix, to.angpix_ref);
      // The references are prepared for the size of the first readable micrograph.
      int nx = 0, ny = 0;
      for (size_t k : todo) {
        try {
          const mrc::Header h = mrc::read_header(items[k].name);
          nx = h.size_x();
          ny = h.size_y();
          break;
        } catch (const std::exception&) {
          // reported when that micrograph's turn comes
        }
      }
      if (nx > 0) refs = std::make_unique<TemplateReferences>(ref_images, to, nx, ny, o.threads);
      if (refs)
        spdlog::info("autopick: {} references of {} px, mask diameter {} Å, minimum distance {} Å, working size {} px",
                     refs->count(), refs->box(), refs->particle_diameter(), refs->min_distance(), refs->grid().work);
    }
  }

  const int outer = int(std::min<size_t>(size_t(o.threads), std::max<size_t>(1, todo.size())));
  const int inner = std::max(1, o.threads / outer);
  std::vector<long> counts(todo.size(), 0);
  std::vector<Grid<float>> buffers(static_cast<size_t>(outer));  // one micrograph per thread, reused
  const BatchOutcome batch = run_micrograph_batch(
      todo.size(), outer, "autopick", "micrographs", [&](size_t k) { return items[todo[k]].name; },
      [&](size_t k, int thread) {
        const Item& it = items[todo[k]];
        const auto t0 = std::chrono::steady_clock::now();
        Grid<float>& mic = buffers[size_t(thread)];
        read_micrograph(it.name, mic);
        const uint64_t noise_seed = splitmix64(o.seed ^ splitmix64(todo[k]));
        std::vector<Pick> picks;
        if (o.log) {
          LogPickOptions l = lo;
          if (l.use_ctf) l.ctf = micrograph_ctf(set, it);
          picks = pick_log(mic, l, noise_seed, inner).picks;
        } else {
          if (!refs) input_error("{}: no readable micrograph to prepare the references for", it.name);
          const CtfParams ctf = o.ctf ? micrograph_ctf(set, it) : CtfParams{};
          picks = pick_templates(mic, *refs, to, ctf, noise_seed, inner).picks;
        }
        write_picks(it.pick_file, picks, o.log);
        counts[k] = long(picks.size());
        spdlog::info("autopick: {}: {} particles ({:.2f} s)", it.name, picks.size(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      });
  res.done = batch.done;
  res.failed = batch.failed;
  for (size_t k = 0; k < todo.size(); ++k)
    if (batch.ok[k]) res.picks += counts[k];

  res.list_star = dir + o.pickname + ".star";
  res.pick_files.resize(items.size());
  if (mpi::rank() == 0) {
    star::Document list, summary;
    auto& lb = list.add_block("coordinate_files", true);
    auto& sb = summary.add_block("", true);
    std::vector<std::string> mics, files, smics;
    std::vector<double> mean_fom;
    std::vector<int> npicks;
    long total = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!fs::exists(items[i].pick_file)) continue;
      res.pick_files[i] = items[i].pick_file;
      mics.push_back(items[i].name);
      files.push_back(items[i].pick_file);
      lb.add_row();
      try {
        const star::Document d = star::read(items[i].pick_file);
        const star::Block& b = d.blocks.at(0);
        const int fc = b.column("rlnAutopickFigureOfMerit");
        double s = 0;
        for (size_t r = 0; fc >= 0 && r < b.rows(); ++r) s += b.number(r, fc);
        sb.add_row();
        smics.push_back(items[i].name);
        npicks.push_back(int(b.rows()));
        mean_fom.push_back(b.rows() ? s / double(b.rows()) : 0.0);
        total += long(b.rows());
      } catch (const std::exception& e) {
        spdlog::warn("autopick: {}: {}", items[i].pick_file, e.what());
      }
    }
    lb.set_column("rlnMicrographName", mics);
    lb.set_column("rlnMicrographCoordinates", files);
    sb.set_column("rlnMicrographName", smics);
    sb.set_column("rlnAutopickFigureOfMerit", mean_fom);
    sb.set_column("rlnGroupNrParticles", npicks);
    star::write(res.list_star, list);
    star::write(dir + "summary.star", summary);
    write_file_atomic(dir + "coords_suffix_" + o.pickname + ".star", o.input + "\n");
    spdlog::info("autopick: {} micrographs picked now ({} already done, {} failed); {} particles in {} micrographs; "
                 "wrote {}", res.done, res.skipped, res.failed, total, mics.size(), res.list_star);
  }
  return res;
}

}  // namespace regula

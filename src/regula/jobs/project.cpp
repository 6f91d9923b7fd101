#include "regula/jobs/project.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace regula {

std::string ProjectOptions::validate() const {
  if (map.empty()) return "--i: a map is required";
  if (out_root.empty()) return "--o: an output root name is required";
  if (ang_star.empty() == (nr_uniform <= 0))
    return ang_star.empty() ? "give either --ang STAR or --nr_uniform N (a positive number of poses)"
                            : "--ang and --nr_uniform cannot be combined";
  if (nr_uniform < 0) return fmt::format("--nr_uniform: must be positive (got {})", nr_uniform);
  if (ctf && ang_star.empty()) return "--ctf needs --ang (the CTF parameters come from the STAR file)";
  if (ctf_phase_flip && !ctf) return "--ctf_phase_flip needs --ctf";
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (white_noise < 0) return fmt::format("--white_noise: must be >= 0 (got {})", white_noise);
  if (add_noise && !(white_noise > 0)) return "--add_noise needs --white_noise SIGMA > 0";
  if (maxres < 0) return fmt::format("--maxres: must be positive (got {})", maxres);
  if (pad < 1 || pad > 4) return fmt::format("--pad: must be 1 to 4 (got {})", pad);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  return "";
}


namespace {

// Random poses uniform on SO(3): rot, psi uniform, cos(tilt) uniform; one
// stream per particle, so the poses do not depend on the thread count.
star::Document uniform_poses(long count, uint64_t seed, int n, double angpix, const std::string& stack) {
  star::Document doc;
  star::Block& optics = doc.add_block("optics", true);
  optics.add_row();
  optics.set_column("rlnOpticsGroup", std::vector<int>{1});
  optics.set_column("rlnOpticsGroupName", std::vector<std::string>{"opticsGroup1"});
  optics.set_column("rlnImagePixelSize", std::vector<double>{angpix});
  optics.set_column("rlnImageSize", std::vector<int>{n});
  optics.set_column("rlnImageDimensionality", std::vector<int>{2});
  const size_t N = size_t(count);
  star::Block& parts = doc.add_block("particles", true);
  for (size_t i = 0; i < N; ++i) parts.add_row();
  std::vector<std::string> names(N);
  std::vector<double> rot(N), tilt(N), psi(N), zero(N, 0.0);
  for (size_t i = 0; i < N; ++i) {
    auto g = make_rng(seed, i, 2);
    rot[i] = 360.0 * uniform01(g) - 180.0;
    tilt[i] = rad2deg(std::acos(std::clamp(2.0 * uniform01(g) - 1.0, -1.0, 1.0)));
    psi[i] = 360.0 * uniform01(g) - 180.0;
    names[i] = fmt::format("{:06d}@{}", i + 1, stack);
  }
  parts.set_column("rlnImageName", names);
  parts.set_column("rlnAngleRot", rot);
  parts.set_column("rlnAngleTilt", tilt);
  parts.set_column("rlnAnglePsi", psi);
  parts.set_column("rlnOriginXAngst", zero);
  parts.set_column("rlnOriginYAngst", zero);
  parts.set_column("rlnOpticsGroup", std::vector<int>(N, 1));
  return doc;
}

}  // namespace

ProjectResult project(const ProjectOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("project: " + msg);
  mrc::Header header;
  Volume map = mrc::read(opt.map, &header);
  if (map.nx() != map.ny() || map.nx() != map.nz())
    input_error("{}: the map must be cubic, got {}x{}x{}", opt.map, map.nx(), map.ny(), map.nz());
  const int n = map.nx();
  double angpix = opt.angpix > 0 ? opt.angpix : header.pixel_size();
  if (!(angpix > 0)) input_error("{}: the header has no pixel size; give --angpix", opt.map);

  ProjectResult res;
  res.stack = opt.out_root + ".mrcs";
  res.star = opt.out_root + ".star";
  res.box = n;
  res.angpix = angpix;

  ParticleTable table;
  if (!opt.ang_star.empty()) {
    ParticleReadOptions ro;
    ro.angpix = angpix;
    table = ParticleTable::read(opt.ang_star, ro);
    if (table.size() == 0) input_error("{}: no particles (the particles table has no rows)", opt.ang_star);
  } else {
    star::Document doc = uniform_poses(opt.nr_uniform, opt.seed, n, angpix, res.stack);
    doc.source = "uniform poses";
    table = ParticleTable::from_document(std::move(doc));
  }
  // Each particle at its optics group's sampling (rlnImagePixelSize, rlnImageSize; else the map's).
  OpticsOptions oo;
  oo.phase_flipped = opt.ctf_phase_flip;
  OpticsModel optics(table, oo);
  for (size_t g = 0; g < optics.groups(); ++g)
    if (optics.group(g).box <= 0) optics.set_box(g, n);
  optics.set_reference(n, angpix);
  if (opt.ctf)
    for (size_t i = 0; i < table.size(); ++i) (void)optics.particle(i);  // fail early
  for (size_t g = 0; g < optics.groups(); ++g) {
    table.optics[g].image_size = optics.group(g).box;
    table.optics[g].dimensionality = 2;
  }
  const size_t count = table.size();
  res.count = long(count);

  // One stack when every group has the same box, else one per optics group.
  std::vector<int> boxes;
  for (size_t g = 0; g < optics.groups(); ++g) boxes.push_back(optics.group(g).box);
  const bool one_stack = std::all_of(boxes.begin(), boxes.end(), [&](int b) { return b == boxes[0]; });
  std::vector<size_t> writer_of(optics.groups(), 0);
  if (one_stack) {
    res.stacks = {res.stack};
  } else {
    for (size_t g = 0; g < optics.groups(); ++g) {
      writer_of[g] = g;
      res.stacks.push_back(fmt::format("{}_opticsgroup{}.mrcs", opt.out_root, optics.group(g).number));
    }
    res.stack = res.stacks.front();
  }
  std::vector<long> next(res.stacks.size(), 1);
  for (size_t i = 0; i < count; ++i) {
    const size_t w = writer_of[size_t(table.optics_index[i])];
    table.set_image(i, next[w]++, res.stacks[w]);
  }

  int r_max = n / 2;
  if (opt.maxres > 0) r_max = std::clamp(int(std::lround(n * angpix / opt.maxres)), 1, n / 2);
  Projector projector(map, opt.pad, r_max, opt.threads);
  map = Volume();

  std::vector<std::unique_ptr<mrc::StackWriter>> writers;
  for (size_t w = 0; w < res.stacks.size(); ++w) {
    size_t g = 0;
    while (writer_of[g] != w && !one_stack) ++g;
    mrc::WriteOptions wo;
    wo.pixel_size = optics.group(g).pixel_size;
    wo.is_stack = true;
    writers.push_back(std::make_unique<mrc::StackWriter>(res.stacks[w], boxes[g], boxes[g], wo));
  }
  ThreadPool pool(opt.threads);
  Progress progress("project: images", double(count));
  const size_t batch = 256;
  std::vector<Image> images(batch);
  for (size_t b0 = 0; b0 < count; b0 += batch) {
    const size_t b1 = std::min(count, b0 + batch);
    pool.parallel_for(b0, b1, [&](size_t i, int) {
      const OpticsGroupModel& g = optics.group_of(i);
      const Mat3 A = euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]);
      Grid<cfloat> F;
      if (g.maps_to_reference() || g.box != n) projector.project_mapped(A, g.to_reference, F, g.box);
      else projector.project(A, F);
      if (opt.ctf) {
        // As RELION's observation model: C (|C| phase-flipped, C^2 premultiplied) and the
        // antisymmetric aberrations' phase.
        const ParticleOptics po = optics.particle(i);
        Grid<float> c;
        po.ctf_half(c);
        for (size_t k = 0; k < F.size(); ++k) F[k] *= po.predicted(c[k]);
        g.modulate(F);
      }
      shift_phase(F, -table.origin_x[i] / g.pixel_size, -table.origin_y[i] / g.pixel_size, g.box);
      Image img = from_fourier_centred(F, g.box);
      if (opt.add_noise) {
        auto rng = make_rng(opt.seed, i, 1);
        for (float& v : img) v += float(opt.white_noise * normal01(rng));
      }
      images[i - b0] = std::move(img);
    });
    for (size_t i = b0; i < b1; ++i) writers[writer_of[size_t(table.optics_index[i])]]->append(images[i - b0]);
    progress.advance(double(b1 - b0));
  }
  const std::string star_text = star::to_string(table.sync());
  for (auto& w : writers) w->commit();
  write_file_atomic(res.star, star_text);
  progress.finish();
  spdlog::info("project: {} images of {} px at {} Å/px; wrote {} and {}", count, n, angpix, res.stack, res.star);
  return res;
}

}  // namespace regula

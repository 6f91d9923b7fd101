#include "regula/jobs/project.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
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
    if (opt.ctf) {
      const char* what = opt.angpix > 0 ? "--angpix" : "the map header";
      for (const OpticsGroup& og : table.optics)
        if (og.pixel_size > 0 && std::abs(og.pixel_size - angpix) > 0.01 * angpix)
          input_error("{}: optics group {} has pixel size {} Å but {} gives {} Å (they must agree within 1%)",
                      opt.ang_star, og.number, og.pixel_size, what, angpix);
      for (size_t i = 0; i < table.size(); ++i) (void)particle_ctf_params(table, i);  // fail early
    }
    for (OpticsGroup& og : table.optics) {
      if (!(og.pixel_size > 0)) og.pixel_size = angpix;
      og.image_size = n;
      og.dimensionality = 2;
    }
    for (size_t i = 0; i < table.size(); ++i) table.set_image(i, long(i) + 1, res.stack);
  } else {
    star::Document doc = uniform_poses(opt.nr_uniform, opt.seed, n, angpix, res.stack);
    doc.source = "uniform poses";
    table = ParticleTable::from_document(std::move(doc));
  }
  const size_t count = table.size();
  res.count = long(count);

  int r_max = n / 2;
  if (opt.maxres > 0) r_max = std::clamp(int(std::lround(n * angpix / opt.maxres)), 1, n / 2);
  Projector projector(map, opt.pad, r_max, opt.threads);
  map = Volume();

  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  wo.is_stack = true;
  mrc::StackWriter writer(res.stack, n, n, wo);
  ThreadPool pool(opt.threads);
  Progress progress("project: images", double(count));
  const size_t batch = 256;
  std::vector<Image> images(batch);
  for (size_t b0 = 0; b0 < count; b0 += batch) {
    const size_t b1 = std::min(count, b0 + batch);
    pool.parallel_for(b0, b1, [&](size_t i, int) {
      Grid<cfloat> F = projector.project(euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]));
      const double px = table.optics_of(i).pixel_size > 0 ? table.optics_of(i).pixel_size : angpix;
      if (opt.ctf) {
        Grid<float> c = Ctf(particle_ctf_params(table, i)).half_complex(n, px);
        for (size_t k = 0; k < F.size(); ++k) F[k] *= c[k];
      }
      shift_phase(F, -table.origin_x[i] / px, -table.origin_y[i] / px, n);
      Image img = from_fourier_centred(F, n);
      if (opt.add_noise) {
        auto g = make_rng(opt.seed, i, 1);
        for (float& v : img) v += float(opt.white_noise * normal01(g));
      }
      images[i - b0] = std::move(img);
    });
    for (size_t i = b0; i < b1; ++i) writer.append(images[i - b0]);
    progress.advance(double(b1 - b0));
  }
  const std::string star_text = star::to_string(table.sync());
  writer.commit();
  write_file_atomic(res.star, star_text);
  progress.finish();
  spdlog::info("project: {} images of {} px at {} Å/px; wrote {} and {}", count, n, angpix, res.stack, res.star);
  return res;
}

}  // namespace regula

#include "regula/jobs/reconstruct.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

std::string ReconstructJobOptions::validate() const {
  if (star.empty()) return "--i: a particle STAR file is required";
  if (out_map.empty()) return "--o: an output map name is required";
  if (maxres < 0) return fmt::format("--maxres: must be positive (got {})", maxres);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (pad < 1 || pad > 4) return fmt::format("--pad: must be 1 to 4 (got {})", pad);
  if (gridding_iterations < 0) return fmt::format("--iter: must be >= 0 (got {})", gridding_iterations);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (newbox < 0 || newbox == 1) return fmt::format("--newbox: must be at least 2 (got {})", newbox);
  if (ctf_phase_flipped && !ctf) return "--ctf_phase_flipped needs --ctf";
  ReconstructOptions ro;
  ro.blob_radius = blob_r;
  ro.blob_order = blob_m;
  ro.blob_alpha = blob_a;
  if (auto msg = ro.validate(); !msg.empty()) return "--blob_r/--blob_m/--blob_a: " + msg;
  return "";
}

namespace {

// Box of every optics group: rlnImageSize, else the first image of the group; the output box is
// --newbox or the first particle's image (as relion_reconstruct).
int image_sizes(const ParticleTable& table, OpticsModel& optics, int newbox) {
  ParticleImages images(table, 1);
  int first = 0;
  std::vector<bool> seen(optics.groups(), false);
  for (size_t i = 0; i < table.size(); ++i) {
    const size_t g = size_t(table.optics_index[i]);
    if (i > 0 && (seen[g] || optics.group(g).box > 0)) continue;
    seen[g] = true;
    Image img = images.read(i);
    if (img.nx() != img.ny() || img.nz() != 1)
      input_error("{}: image is {}x{}x{}, expected a square 2D image", table.where(i), img.nx(), img.ny(), img.nz());
    if (optics.group(g).box <= 0) optics.set_box(g, img.nx());
    if (i == 0) first = img.nx();
  }
  return newbox > 0 ? newbox : first;
}

}  // namespace

ReconstructResult reconstruct(const ReconstructJobOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("reconstruct: " + msg);
  const SymmetryGroup sym = SymmetryGroup::parse(opt.sym);
  ParticleReadOptions ro;
  ro.angpix = opt.angpix;
  ParticleTable table = ParticleTable::read(opt.star, ro);
  const size_t count = table.size();
  if (count == 0) input_error("{}: no particles (the particles table has no rows)", opt.star);
  OpticsOptions oo;
  oo.phase_flipped = opt.ctf_phase_flipped;
  OpticsModel optics(table, oo);
  for (const OpticsGroup& og : table.optics)
    if (!(og.pixel_size > 0))
      input_error("{}: optics group {} has no rlnImagePixelSize; give --angpix", opt.star, og.number);

  // The map's sampling: --newbox or the first particle's box; --angpix or the first optics group's.
  const int n = image_sizes(table, optics, opt.newbox);
  const double angpix = opt.angpix > 0 ? opt.angpix : table.optics.front().pixel_size;
  optics.set_reference(n, angpix);
  if (opt.ctf)
    for (size_t i = 0; i < count; ++i) (void)optics.particle(i);  // fail before the long part
  int r_max = n / 2;
  if (opt.maxres > 0) r_max = std::clamp(int(std::ceil(n * angpix / opt.maxres)), 1, n / 2);

  // Fixed ranges of consecutive particles, their number set by the particle count alone (at most 64,
  // of at least 256 particles each): each is back-projected from zero by one thread, in particle order,
  // and the ranges are added into the total in range order, so the sums are the same whatever the
  // threads and ranks. They go in waves of one range per thread and rank (range r to rank r mod
  // ranks); after a wave every rank adds the wave's ranges in order, each sent by its owner, so memory
  // holds at most a wave's ranges (one per thread, reused from wave to wave) and one received range
  // besides the total.
  const size_t nranges = std::min<size_t>(64, (count + 255) / 256);
  const size_t ranks = size_t(mpi::size()), rank = size_t(mpi::rank());
  const size_t per_wave = size_t(opt.threads) * ranks;
  ThreadPool pool(opt.threads);
  Progress progress("reconstruct: back-projecting", double(count) / double(ranks));
  std::unique_ptr<BackProjector> sum, received;
  std::vector<std::unique_ptr<BackProjector>> slot(size_t(opt.threads));  // this rank's ranges of a wave
  for (size_t w0 = 0; w0 < nranges; w0 += per_wave) {
    const size_t w1 = std::min(nranges, w0 + per_wave);
    std::vector<size_t> mine;
    for (size_t r = w0; r < w1; ++r)
      if (r % ranks == rank) mine.push_back(r);
    pool.parallel_for(0, mine.size(), [&](size_t u, int) {
      const size_t r = mine[u];
      const size_t i0 = count * r / nranges, i1 = count * (r + 1) / nranges;
      if (!slot[u]) slot[u] = std::make_unique<BackProjector>(n, opt.pad, r_max, 3);
      BackProjector& bp = *slot[u];
      ParticleImages images(table);
      Grid<float> ctf, weight;
      for (size_t i = i0; i < i1; ++i) {
        const OpticsGroupModel& g = optics.group_of(i);
        const int m = g.box;
        Image img = images.read(i);
        if (img.nx() != m || img.ny() != m || img.nz() != 1)
          input_error("{}: image is {}x{}x{}, expected {}x{} (the box of optics group {})", table.where(i), img.nx(),
                      img.ny(), img.nz(), m, m, g.number);
        Grid<cfloat> F = fourier_centred(img);
        shift_phase(F, table.origin_x[i] / g.pixel_size, table.origin_y[i] / g.pixel_size, m);
        if (opt.ctf) {
          // As relion_reconstruct: aberration phases corrected, data times C (not for premultiplied
          // images, which carry it), weights C^2; C is |C| for phase-flipped images.
          const ParticleOptics po = optics.particle(i);
          po.ctf_half(ctf);
          g.demodulate(F);
          if (!weight.same_shape(ctf)) weight = Grid<float>(ctf.nx(), ctf.ny());
          for (size_t k = 0; k < F.size(); ++k) {
            F[k] *= po.backprojected(ctf[k]);
            weight[k] = ParticleOptics::weight(ctf[k]);
          }
        } else {
          weight = Grid<float>();
        }
        F(0, 0) = cfloat(0, 0);  // the image's mean carries no signal (relion_reconstruct zeroes it too)
        const Mat3 A = euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]);
        if (g.maps_to_reference() || m != n) bp.insert_mapped(F, weight, A, g.to_reference);
        else bp.insert(F, weight, A);
        if ((i - i0) % 64 == 63) progress.advance(64);
      }
    });
    for (size_t r = w0; r < w1; ++r) {
      const size_t owner = r % ranks;
      std::unique_ptr<BackProjector>* a = nullptr;
      if (owner == rank) {
        a = &slot[size_t(std::find(mine.begin(), mine.end(), r) - mine.begin())];
      } else {
        if (!received) received = std::make_unique<BackProjector>(n, opt.pad, r_max, 3);
        a = &received;
      }
      if (ranks > 1) {
        mpi::bcast((*a)->raw_data().data(), (*a)->raw_data().size() * sizeof(cfloat), int(owner));
        mpi::bcast((*a)->raw_weight().data(), (*a)->raw_weight().size() * sizeof(float), int(owner));
      }
      if (!sum) {
        sum = std::move(*a);  // the first range is the total's start (its slot is made again if needed)
      } else {
        sum->add(**a);
        (*a)->clear();
      }
    }
  }
  progress.finish();
  BackProjector& total = *sum;
  if (!sym.is_c1()) total.symmetrise(sym.operators(), opt.threads);
  ReconstructOptions rec;
  rec.iterative_gridding = opt.gridding_iterations > 0;
  rec.gridding_iterations = opt.gridding_iterations;
  rec.blob_radius = opt.blob_r;
  rec.blob_order = opt.blob_m;
  rec.blob_alpha = opt.blob_a;
  rec.max_frequency = r_max;
  rec.nthreads = opt.threads;
  Volume map = total.reconstruct(rec);

  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  wo.is_stack = false;
  if (mpi::rank() == 0) mrc::write(opt.out_map, map, wo);
  spdlog::info("reconstruct: {} particles, box {} px, {} Å/px, symmetry {}, frequencies up to {} px; wrote {}",
               count, n, angpix, sym.name(), r_max, opt.out_map);
  ReconstructResult res;
  res.particles = long(count);
  res.box = n;
  res.angpix = angpix;
  res.r_max = r_max;
  return res;
}

}  // namespace regula

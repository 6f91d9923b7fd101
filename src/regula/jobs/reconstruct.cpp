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
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/imaging/particle_ctf.hpp"
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
  ReconstructOptions ro;
  ro.blob_radius = blob_r;
  ro.blob_order = blob_m;
  ro.blob_alpha = blob_a;
  if (auto msg = ro.validate(); !msg.empty()) return "--blob_r/--blob_m/--blob_a: " + msg;
  return "";
}

ReconstructResult reconstruct(const ReconstructJobOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("reconstruct: " + msg);
  const SymmetryGroup sym = SymmetryGroup::parse(opt.sym);
  ParticleReadOptions ro;
  ro.angpix = opt.angpix;
  ParticleTable table = ParticleTable::read(opt.star, ro);
  const size_t count = table.size();
  if (count == 0) input_error("{}: no particles (the particles table has no rows)", opt.star);

  // Box and pixel size from the first particle (its image and optics group).
  int n = 0;
  {
    ParticleImages images(table, 1);
    Image first = images.read(0);
    if (first.nx() != first.ny() || first.nz() != 1)
      input_error("{}: image of particle 1 is {}x{}x{}, expected a square 2D image", table.where(0), first.nx(),
                  first.ny(), first.nz());
    n = first.nx();
  }
  double angpix = opt.angpix > 0 ? opt.angpix : table.optics_of(0).pixel_size;
  if (!(angpix > 0)) input_error("{}: no rlnImagePixelSize in the optics group; give --angpix", opt.star);
  if (opt.ctf)
    for (size_t i = 0; i < count; ++i) (void)particle_ctf_params(table, i);  // fail before the long part
  int r_max = n / 2;
  if (opt.maxres > 0) r_max = std::clamp(int(std::ceil(n * angpix / opt.maxres)), 1, n / 2);

  // Fixed contiguous ranges, one accumulator each, reduced in order. Under mpirun the ranges are
  // spread over the ranks (range k on rank k mod size) and sent to every rank in order.
  const size_t nranges = std::min(size_t(opt.threads) * size_t(mpi::size()), count);
  std::vector<std::unique_ptr<BackProjector>> acc(nranges);
  std::vector<size_t> mine;
  for (size_t r = 0; r < nranges; ++r)
    if (int(r % size_t(mpi::size())) == mpi::rank()) mine.push_back(r);
  ThreadPool pool(opt.threads);
  Progress progress("reconstruct: back-projecting", double(count) / mpi::size());
  pool.parallel_for(0, mine.size(), [&](size_t u, int) {
    const size_t r = mine[u];
    const size_t i0 = count * r / nranges, i1 = count * (r + 1) / nranges;
    acc[r] = std::make_unique<BackProjector>(n, opt.pad, r_max, 3);
    BackProjector& bp = *acc[r];
    ParticleImages images(table);
    Grid<float> ctf, weight;
    for (size_t i = i0; i < i1; ++i) {
      Image img = images.read(i);
      if (img.nx() != n || img.ny() != n || img.nz() != 1)
        input_error("{}: image is {}x{}x{}, expected {}x{} as particle 1", table.where(i), img.nx(), img.ny(),
                    img.nz(), n, n);
      Grid<cfloat> F = fourier_centred(img);
      const double px = table.optics_of(i).pixel_size > 0 ? table.optics_of(i).pixel_size : angpix;
      shift_phase(F, table.origin_x[i] / px, table.origin_y[i] / px, n);
      if (opt.ctf) {
        Ctf(particle_ctf_params(table, i)).evaluate_half_complex(ctf, n, px);
        if (!weight.same_shape(ctf)) weight = Grid<float>(ctf.nx(), ctf.ny());
        for (size_t k = 0; k < F.size(); ++k) {
          F[k] *= ctf[k];
          weight[k] = ctf[k] * ctf[k];
        }
      }
      bp.insert(F, weight, euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]));
      if ((i - i0) % 64 == 63) progress.advance(64);
    }
  });
  progress.finish();
  for (size_t r = 0; r < nranges && mpi::active(); ++r) {
    const int owner = int(r % size_t(mpi::size()));
    if (!acc[r]) acc[r] = std::make_unique<BackProjector>(n, opt.pad, r_max, 3);
    mpi::bcast(acc[r]->raw_data().data(), acc[r]->raw_data().size() * sizeof(cfloat), owner);
    mpi::bcast(acc[r]->raw_weight().data(), acc[r]->raw_weight().size() * sizeof(float), owner);
  }
  BackProjector& total = *acc[0];
  for (size_t r = 1; r < nranges; ++r) {
    total.add(*acc[r]);
    acc[r].reset();
  }
  if (!sym.is_c1()) total.symmetrise(sym.operators());
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

#include "regula/jobs/initial_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/class3d.hpp"
#include "regula/model/particles.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

std::string InitialModelOptions::validate() const {
  if (continue_from.empty() && input.empty()) return "--i: a particles STAR file is required (or --continue)";
  if (out_root.empty()) return "--o: an output root is required";
  if (classes < 1) return fmt::format("--K: must be at least 1 (got {})", classes);
  if (iterations < 1) return fmt::format("--iter: must be at least 1 (got {})", iterations);
  if (!(ini_high > 0)) return fmt::format("--ini_high: must be positive Å (got {})", ini_high);
  if (particle_diameter < 0) return fmt::format("--particle_diameter: must be >= 0 Å (got {})", particle_diameter);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (max_significants == 0 || max_significants < -1)
    return fmt::format("--maxsig: -1 (no bound) or at least 1 (got {})", max_significants);
  if (grad_em_iters < 0) return fmt::format("--grad_em_iters: must be >= 0 (got {})", grad_em_iters);
  if (grad_ini_subset == 0 || grad_ini_subset < -1)
    return fmt::format("--grad_ini_subset: -1 (from the data set's size) or at least 1 (got {})", grad_ini_subset);
  if (grad_fin_subset == 0 || grad_fin_subset < -1)
    return fmt::format("--grad_fin_subset: -1 (from the data set's size) or at least 1 (got {})", grad_fin_subset);
  if (!(grad_ini_frac >= 0 && grad_fin_frac >= 0 && grad_ini_frac + grad_fin_frac <= 1))
    return fmt::format("--grad_ini_frac, --grad_fin_frac: >= 0 with a sum of at most 1 (got {}, {})", grad_ini_frac,
                       grad_fin_frac);
  if (!(grad_ini_stepsize > 0 && grad_ini_stepsize <= 1))
    return fmt::format("--grad_ini_stepsize: must be in (0, 1] (got {})", grad_ini_stepsize);
  if (!(grad_stepsize > 0 && grad_stepsize <= 1)) return fmt::format("--grad_stepsize: must be in (0, 1] (got {})", grad_stepsize);
  if (grad_write_iter < 1) return fmt::format("--grad_write_iter: must be at least 1 (got {})", grad_write_iter);
  if (!(tau2_fudge > 0)) return fmt::format("--tau2_fudge: must be positive (got {})", tau2_fudge);
  std::string error;
  initial_tau2_fudge(&error);
  return error;
}

double InitialModelOptions::initial_tau2_fudge(std::string* error) const {
  if (tau2_fudge_scheme == "plain") return 0.0;
  const size_t at = tau2_fudge_scheme.find("-step");
  double deflate = 0;
  if (at != std::string::npos && at + 5 == tau2_fudge_scheme.size()) {
    const std::string d = tau2_fudge_scheme.substr(0, at);
    char* end = nullptr;
    deflate = std::strtod(d.c_str(), &end);
    if (d.empty() || end != d.c_str() + d.size()) deflate = 0;
  }
  if (!(deflate > 0) || !std::isfinite(deflate)) {
    if (error)
      *error = fmt::format("--tau2_fudge_scheme: \"plain\" or \"D-step\" with D a positive number (got \"{}\")",
                           tau2_fudge_scheme);
    return 0.0;
  }
  return tau2_fudge / deflate;
}

Volume rotate_map(const Volume& in, const Mat3& R) { return transform_map(in, R); }


// The rotation R that best aligns the map's features with the symmetry axes of `sym` (as
// relion_align_symmetry): R maximising the correlation of rotate(map, R) with its symmetrised self,
// on a copy Fourier-cropped to at most 32 px; a coarse search (HEALPix order 1 directions, in-plane
// steps of 30° unless the group is Cn, whose axis needs no in-plane angle) refined locally twice.
Mat3 align_symmetry(const Volume& map, const SymmetryGroup& sym, double& corr_out, int threads) {
  const int n = map.nx();
  Volume small = n > 32 ? rescale(map, 32) : map;
  const bool cn = sym.name()[0] == 'C';
  auto score = [&](const Mat3& R) {
    Volume r = rotate_map(small, R);
    return real_space_correlation(r, symmetrise(r, sym, 1));
  };
  struct Cand {
    double rot, tilt, psi, s;
  };
  std::vector<Cand> cands;
  const int order = 1;
  const long np = healpix_num_pixels(order);
  for (long p = 0; p < np; ++p) {
    const auto rt = healpix_direction(order, p);
    for (double psi = 0; psi < (cn ? 1 : 360); psi += 30) cands.push_back({rt[0], rt[1], psi, 0});
  }
  (void)threads;
  for (auto& c : cands) c.s = score(euler_to_matrix(c.rot, c.tilt, c.psi));
  Cand best = *std::max_element(cands.begin(), cands.end(), [](auto& a, auto& b) { return a.s < b.s; });
  for (double step : {10.0, 3.0}) {
    Cand b0 = best;
    for (int a = -2; a <= 2; ++a)
      for (int t = -2; t <= 2; ++t)
        for (int q = (cn ? 0 : -2); q <= (cn ? 0 : 2); ++q) {
          Cand c{b0.rot + a * step, b0.tilt + t * step, b0.psi + q * step, 0};
          c.s = score(euler_to_matrix(c.rot, c.tilt, c.psi));
          if (c.s > best.s) best = c;
        }
  }
  corr_out = best.s;
  return euler_to_matrix(best.rot, best.tilt, best.psi);
}

InitialModelResult run_initial_model(const InitialModelOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("initial_model: " + msg);
  const SymmetryGroup sym = [&] {
    try {
      return SymmetryGroup::parse(opt.sym);
    } catch (const InputError& e) {
      throw InputError(fmt::format("--sym: {}", e.what()));
    }
  }();
  Class3DOptions c;
  c.out_root = opt.out_root + "_em";
  c.classes = opt.classes;
  c.iterations = opt.iterations;
  c.iterations_given = opt.iterations_given;
  c.tau2_fudge = opt.tau2_fudge;
  c.max_significants = opt.max_significants;
  c.norm = false;  // RELION's initial model runs without --norm and --scale
  c.scale = false;
  c.ini_high = opt.ini_high;
  c.relion_prior = false;
  c.particle_diameter = opt.particle_diameter;
  c.ctf = opt.ctf;
  c.flatten_solvent = true;
  c.zero_mask = true;
  c.healpix_order = opt.healpix_order;
  c.offset_range = opt.offset_range;
  c.offset_step = opt.offset_step;
  c.threads = opt.threads;
  c.seed = opt.seed;
  c.angpix = opt.angpix;
  c.continue_from = opt.continue_from;
  c.batches.iterations = std::max(0, opt.iterations - opt.grad_em_iters);
  c.strict_highres_exp = opt.strict_highres_exp;
  c.batches.ini_frac = opt.grad_ini_frac;
  c.batches.fin_frac = opt.grad_fin_frac;
  c.batches.ini_step = opt.grad_ini_stepsize;
  c.batches.step = opt.grad_stepsize;
  c.batches.write_every = opt.grad_write_iter;
  c.batches.ini_tau2_fudge = opt.initial_tau2_fudge();
  c.staged = false;  // K > 1: random classes in the first iteration, as RELION's initial model
  const std::filesystem::path dir = std::filesystem::path(opt.out_root).parent_path();
  std::string start_written;  // the start map, removed again if class3d rejects its input
  if (opt.continue_from.empty()) {
    // The start: a featureless soft sphere of the particle's diameter.
    ParticleReadOptions ro;
    ro.angpix = opt.angpix;
    ParticleTable table = ParticleTable::read(opt.input, ro);
    if (table.size() == 0) input_error("{}: no particles", opt.input);
    ParticleImages images(table, 1);
    const Image first = images.read(0);
    // RELION's default subset sizes of its 3D initial model: 0.5% of the particles (200 to 5,000), then
    // 10% (1,000 to 50,000).
    const double N = double(table.size());
    c.batches.ini_subset = opt.grad_ini_subset > 0 ? opt.grad_ini_subset : long(std::clamp(0.005 * N, 200.0, 5000.0));
    c.batches.fin_subset = opt.grad_fin_subset > 0 ? opt.grad_fin_subset : long(std::clamp(0.1 * N, 1000.0, 50000.0));
    const int n = first.nx();
    const double angpix = opt.angpix > 0 ? opt.angpix : table.optics.front().pixel_size;
    if (!(angpix > 0)) input_error("{}: no pixel size; give --angpix", opt.input);
    const double radius = opt.particle_diameter > 0 ? opt.particle_diameter / (2 * angpix) : n / 2.0 - 5;
    Volume start = spherical_mask(n, n, n, std::min(radius, n / 2.0 - 3), 3);
    mrc::WriteOptions wo;
    wo.pixel_size = angpix;
    c.reference = opt.out_root + "_start.mrc";
    if (!dir.empty()) std::filesystem::create_directories(dir);
    if (mpi::rank() == 0) {
      mrc::write(c.reference, start, wo);
      start_written = c.reference;
    }
    mpi::barrier();
    c.input = opt.input;
  }
  Class3DResult r;
  try {
    r = run_class3d(c, "initial_model");
  } catch (...) {
    // Bad input found by class3d (before its first checkpoint): leave no output behind. Once
    // ROOT_em_it000 exists the start belongs to the checkpoints and stays.
    if (!start_written.empty() && !std::filesystem::exists(c.out_root + "_it000_optimiser.star")) {
      std::error_code ec;
      std::filesystem::remove(start_written, ec);
    }
    throw;
  }

  InitialModelResult res;
  res.class_fraction = r.class_fraction;
  const size_t best = size_t(std::max_element(r.class_fraction.begin(), r.class_fraction.end()) - r.class_fraction.begin());
  mrc::Header h;
  Volume map = mrc::read(r.class_maps.at(best), &h);
  ParticleTable data = ParticleTable::read(r.data_star);
  if (!sym.is_c1()) {
    // Align the C1 map with the group's axes, symmetrise it, and move the poses with it
    // (rotate_map(V, R) seen at A R^T projects as V at A).
    double corr = 0;
    const Mat3 R = align_symmetry(map, sym, corr, opt.threads);
    map = symmetrise(rotate_map(map, R), sym, opt.threads);
    res.symmetry_correlation = corr;
    const Mat3 Rt = transpose(R);
    for (size_t i = 0; i < data.size(); ++i) {
      const Euler e = matrix_to_euler(matmul(euler_to_matrix(data.rot[i], data.tilt[i], data.psi[i]), Rt));
      data.rot[i] = e.rot;
      data.tilt[i] = e.tilt;
      data.psi[i] = e.psi;
    }
    spdlog::info("initial_model: aligned to the {} axes (correlation with the symmetrised map {:.3f})", sym.name(), corr);
  }
  mrc::WriteOptions wo;
  wo.pixel_size = h.pixel_size() > 0 ? h.pixel_size() : 1.0;
  res.map = opt.out_root + "_initial_model.mrc";
  res.data_star = opt.out_root + "_data.star";
  if (mpi::rank() == 0) {
    mrc::write(res.map, map, wo);
    data.write(res.data_star);
    if (opt.classes > 1)
      for (size_t k = 0; k < r.class_maps.size(); ++k) {
        res.class_maps.push_back(fmt::format("{}_class{:03d}.mrc", opt.out_root, k + 1));
        mrc::write(res.class_maps.back(), mrc::read(r.class_maps[k]), wo);
      }
  }
  spdlog::info("initial_model: wrote {} (class {} of {}, {:.0f}% of the particles)", res.map, best + 1,
               r.class_fraction.size(), 100 * r.class_fraction[best]);
  return res;
}

}  // namespace regula

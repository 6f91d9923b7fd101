#include "regula/jobs/symmetry_expand.hpp"

#include <cmath>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

namespace {

// Positions along the helical axis, in rises, as RELION steps through them (a float loop).
std::vector<double> helical_positions(const SymmetryExpandOptions& opt) {
  double start = 0, stop = 0, step = 1;
  if (opt.asu > 1) {
    start = -((opt.asu - 1) / 2);
    stop = opt.asu / 2;
  } else {
    start = -opt.frac_range;
    stop = opt.frac_range - 0.001;
    step = 1.0 / opt.frac_sampling;
  }
  std::vector<double> z;
  for (double p = start; p <= stop; p += step) z.push_back(p);
  return z;
}

}  // namespace

std::string SymmetryExpandOptions::validate() const {
  if (input.empty()) return "--i: a particle STAR file is required";
  if (output.empty()) return "--o: an output STAR file name is required";
  if (helix) {
    if (SymmetryGroup::parse(sym).order() != 1) return "--helix: give either --sym or --helix, not both";
    if (asu < 1) return fmt::format("--asu: must be at least 1 (got {})", asu);
    if (frac_sampling < 1) return fmt::format("--frac_sampling: must be at least 1 (got {})", frac_sampling);
    if ((asu > 1) == (frac_sampling > 1))
      return "--helix: give either --asu N (N > 1) or --frac_sampling M (M > 1), not both or neither";
    if (frac_sampling > 1 && !(frac_range > 0))
      return fmt::format("--frac_range: must be positive (got {})", frac_range);
    if (!std::isfinite(twist) || !std::isfinite(rise)) return "--twist/--rise: must be finite numbers";
  } else {
    if (SymmetryGroup::parse(sym).order() == 1)
      return fmt::format("--sym {}: nothing to expand; give a point group with symmetry (or --helix)", sym);
  }
  return "";
}

SymmetryExpandResult symmetry_expand(const SymmetryExpandOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("symmetry_expand: " + msg);
  ParticleTable table = ParticleTable::read(opt.input);
  const size_t n = table.size();
  if (n == 0) input_error("{}: no particles (the particles table has no rows)", opt.input);
  for (const char* label : {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"})
    if (!table.particles_block().has(label))
      input_error("{}: the particles table has no _{} (symmetry expansion needs refined angles)", opt.input, label);

  SymmetryExpandResult res;
  res.particles_in = n;
  if (opt.helix) {
    const std::vector<double> z = helical_positions(opt);
    if (z.empty()) input_error("symmetry_expand: --frac_range {} gives no positions", opt.frac_range);
    spdlog::info("symmetry_expand: helical copies at z = {:.6g} .. {:.6g} rises, {} per particle", z.front(),
                 z.back(), z.size());
    std::vector<size_t> keep;
    keep.reserve(n * z.size());
    for (size_t i = 0; i < n; ++i)
      for (size_t k = 0; k < z.size(); ++k) keep.push_back(i);
    table.select(keep);
    for (size_t r = 0; r < keep.size(); ++r) {
      const double zp = z[r % z.size()];
      const double d = std::sin(deg2rad(table.tilt[r])) * zp * opt.rise;  // Å along the axis's image
      table.origin_x[r] += std::cos(deg2rad(-table.psi[r])) * d;
      table.origin_y[r] += std::sin(deg2rad(-table.psi[r])) * d;
      table.rot[r] -= zp * opt.twist;
    }
    res.copies = int(z.size());
  } else {
    const SymmetryGroup group = SymmetryGroup::parse(opt.sym);
    const std::vector<Mat3> ops = group.relion_ordered_operators();
    const size_t copies = ops.size() + 1;
    std::vector<size_t> keep;
    keep.reserve(n * copies);
    for (size_t i = 0; i < n; ++i)
      for (size_t k = 0; k < copies; ++k) keep.push_back(i);
    table.select(keep);
    for (size_t r = 0; r < keep.size(); ++r) {
      const size_t k = r % copies;
      if (k == 0) continue;  // the input row, unchanged
      const Euler e = matrix_to_euler(matmul(euler_to_matrix(table.rot[r], table.tilt[r], table.psi[r]), ops[k - 1]));
      table.rot[r] = e.rot;
      table.tilt[r] = e.tilt;
      table.psi[r] = e.psi;
    }
    res.copies = int(copies);
    spdlog::info("symmetry_expand: symmetry {}, {} copies per particle", group.name(), copies);
  }
  table.write(opt.output);
  res.particles_out = table.size();
  spdlog::info("symmetry_expand: {} particles -> {} rows; wrote {}", n, res.particles_out, opt.output);
  return res;
}

}  // namespace regula

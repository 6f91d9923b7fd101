// regula symmetry_expand: one row per symmetry copy of each particle (relion_particle_symmetry_expand).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/symmetry_expand.hpp"

namespace regula::cli {

void add_symmetry_expand(CLI::App& app) {
  auto opt = std::make_shared<SymmetryExpandOptions>();
  auto* s = app.add_subcommand(
      "symmetry_expand",
      "One row per symmetry copy of each particle, poses composed as relion_particle_symmetry_expand\n"
      "(point group: the input row, then A*R for every other operator R in RELION's order; --helix:\n"
      "copies along the helical axis with rot - z*twist and the origin moved by z*rise)");
  s->add_option("--i", opt->input, "Input particle STAR file (refined rot/tilt/psi, origins)")->required();
  s->add_option("--o", opt->output, "Output expanded particle STAR file")->capture_default_str();
  s->add_option("--sym", opt->sym, "Point group (C<n>, D<n>, T, O, I, I1-I4)")->capture_default_str();
  s->add_flag("--helix", opt->helix, "Helical expansion (instead of --sym)");
  s->add_option("--twist", opt->twist, "Helical twist, degrees")->capture_default_str();
  s->add_option("--rise", opt->rise, "Helical rise, Å")->capture_default_str();
  s->add_option("--asu", opt->asu, "Number of asymmetric units to expand (copies at whole rises)")
      ->capture_default_str();
  s->add_option("--frac_sampling", opt->frac_sampling,
                "Copies within one asymmetric unit (fractions of the rise; instead of --asu)")
      ->capture_default_str();
  s->add_option("--frac_range", opt->frac_range, "With --frac_sampling: positions z in [-R, R) rises")
      ->capture_default_str();
  s->callback([opt] { symmetry_expand(*opt); });
}

}  // namespace regula::cli

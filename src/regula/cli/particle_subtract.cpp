// regula particle_subtract: subtract the projections of the map outside a mask from each particle
// (relion_particle_subtract).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/particle_subtract.hpp"

namespace regula::cli {

void add_particle_subtract(CLI::App& app) {
  auto opt = std::make_shared<ParticleSubtractOptions>();
  auto* s = app.add_subcommand(
      "particle_subtract",
      "Subtract the projection of the refined map outside a mask from each particle, with its pose and CTF\n"
      "(as relion_particle_subtract): OUT/Particles/subtracted_opticsgroupG.mrcs and OUT/particles_subtracted.star");
  s->add_option("--i", opt->optimiser, "Optimiser STAR file of a refinement or classification (ROOT_itNNN_optimiser.star)");
  s->add_option("--o", opt->out_dir, "Output directory")->capture_default_str();
  s->add_option("--mask", opt->mask, "Mask of the density to keep (values in [0, 1]); none: subtract the whole map");
  s->add_option("--data", opt->data, "Particle STAR file to use instead of the optimiser's (e.g. a subset)");
  s->add_flag("--ignore_class", opt->ignore_class, "Subtract class 1 from every particle (ignore rlnClassNumber)");
  s->add_option("--revert", opt->revert,
                "Subtracted STAR file to turn back (swap rlnImageName and rlnImageOriginalName; writes OUT/original.star)");
  s->add_flag("--recenter_on_mask", opt->recenter_on_mask, "Re-centre the particles on the mask's centre of mass");
  s->add_option("--center_x", opt->center_x, "Re-centre on this 3D point: x, px from the map centre (9999: unset)")
      ->capture_default_str();
  s->add_option("--center_y", opt->center_y, "... y, px from the map centre")->capture_default_str();
  s->add_option("--center_z", opt->center_z, "... z, px from the map centre")->capture_default_str();
  s->add_option("--new_box", opt->new_box, "Box of the subtracted particles, px (made even; -1: unchanged)")
      ->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { particle_subtract(*opt); });
}

}  // namespace regula::cli

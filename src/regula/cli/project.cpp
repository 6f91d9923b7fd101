// regula project: projections of a map (relion_project).
#include "regula/cli/commands.hpp"
#include "regula/jobs/project.hpp"

namespace regula::cli {

void add_project(CLI::App& app) {
  auto opt = std::make_shared<ProjectOptions>();
  auto* s = app.add_subcommand("project", "Project a map at the poses of a STAR file or at random poses (as relion_project)");
  s->add_option("--i", opt->map, "Cubic map (MRC) to project")->required();
  s->add_option("--o", opt->out_root, "Output root: writes ROOT.mrcs and ROOT.star")->required();
  s->add_option("--ang", opt->ang_star, "Particle STAR file with the poses (rot/tilt/psi, origins in Å) and CTFs");
  s->add_option("--nr_uniform", opt->nr_uniform, "OR this many random poses uniform over all orientations");
  s->add_flag("--ctf", opt->ctf, "Multiply each projection by its particle's CTF and aberrations (needs --ang)");
  s->add_flag("--ctf_phase_flip", opt->ctf_phase_flip, "Multiply by |CTF| (phase-flipped images)");
  s->add_option("--angpix", opt->angpix, "Pixel size in Å (default: from the map header)");
  s->add_flag("--add_noise", opt->add_noise, "Add white Gaussian noise (see --white_noise)");
  s->add_option("--white_noise", opt->white_noise, "Standard deviation of the added noise (image units)");
  s->add_option("--maxres", opt->maxres, "Zero Fourier components beyond this resolution, Å (default: Nyquist)");
  s->add_option("--pad", opt->pad, "Fourier padding factor of the projector")->capture_default_str();
  s->add_option("--seed", opt->seed, "Random seed (poses of --nr_uniform, noise)")->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { project(*opt); });
}

}  // namespace regula::cli

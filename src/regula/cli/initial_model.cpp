// regula initial_model: a de novo 3D map from particles with no reference.
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/initial_model.hpp"

namespace regula::cli {

void add_initial_model(CLI::App& app) {
  auto opt = std::make_shared<InitialModelOptions>();
  auto* s = app.add_subcommand("initial_model", "De novo initial 3D model from particles (no reference)");
  s->add_option("--i", opt->input, "Particles STAR file");
  s->add_option("--o", opt->out_root, "Output root: ROOT_initial_model.mrc, ROOT_data.star (ROOT_classNNN.mrc for K > 1); "
                "the EM iterations as ROOT_em_itNNN_*");
  s->add_option("--K", opt->classes, "Number of classes")->capture_default_str();
  s->add_option("--sym", opt->sym, "Point group: searched in C1, then aligned to the group's axes and symmetrised")
      ->capture_default_str();
  s->add_option("--particle_diameter", opt->particle_diameter, "Particle diameter, Å (the start is a sphere of it)");
  s->add_flag("--ctf", opt->ctf, "CTF-correct");
  s->add_option("--iter", opt->iterations, "Iterations: mini-batch ones, then --grad_em_iters full-batch ones")
      ->capture_default_str();
  s->add_option("--grad_em_iters", opt->grad_em_iters,
                "Full-batch EM iterations at the end (>= --iter: no mini-batches)")->capture_default_str();
  s->add_option("--grad_ini_subset", opt->grad_ini_subset,
                "Mini-batch size in the initial phase (-1: 0.5% of the particles, 200 to 5,000)")->capture_default_str();
  s->add_option("--grad_fin_subset", opt->grad_fin_subset,
                "Mini-batch size in the final phase (-1: 10% of the particles, 1,000 to 50,000)")->capture_default_str();
  s->add_option("--grad_ini_frac", opt->grad_ini_frac, "Fraction of the mini-batch iterations in the initial phase")
      ->capture_default_str();
  s->add_option("--grad_fin_frac", opt->grad_fin_frac, "Fraction of the mini-batch iterations in the final phase")
      ->capture_default_str();
  s->add_option("--grad_ini_stepsize", opt->grad_ini_stepsize,
                "Step (weight of a mini-batch against the forgetting sums) in the initial phase")->capture_default_str();
  s->add_option("--grad_stepsize", opt->grad_stepsize, "Step in the final phase (linear in between)")
      ->capture_default_str();
  s->add_option("--strict_highres_exp", opt->strict_highres_exp,
                "High-resolution limit of every iteration, Å (<= 0: none)")->capture_default_str();
  s->add_option("--grad_write_iter", opt->grad_write_iter, "Write the iteration files every so many mini-batch iterations")
      ->capture_default_str();
  s->add_option("--ini_high", opt->ini_high, "First frequency limit, Å")->capture_default_str();
  s->add_option("--healpix_order", opt->healpix_order, "Angular sampling")->capture_default_str();
  s->add_option("--offset_range", opt->offset_range, "Translation range, px")->capture_default_str();
  s->add_option("--offset_step", opt->offset_step, "Translation step, px")->capture_default_str();
  s->add_option("--tau2_fudge", opt->tau2_fudge, "Regularisation parameter T")->capture_default_str();
  s->add_option("--tau2_fudge_scheme", opt->tau2_fudge_scheme,
                "\"plain\" (T throughout) or \"D-step\" (T / D in the mini-batches' initial phase, rising to T early in "
                "the middle phase; RELION's default is \"T-step\")")->capture_default_str();
  s->add_option("--maxsig", opt->max_significants,
                "At most this many significant coarse poses per particle (-1: no bound; logged when it binds)")
      ->capture_default_str();
  s->add_option("--j", opt->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->add_option("--seed,--random_seed", opt->seed, "Random seed")->capture_default_str();
  s->add_option("--continue", opt->continue_from, "Continue from ROOT_em_itNNN_optimiser.star (options from it; --o and --j "
                "from the command line, --iter when given)");
  s->add_option("--angpix", opt->angpix, "Pixel size, Å, when the STAR file has none");
  s->callback([opt, s] {
    opt->iterations_given = s->count("--iter") > 0;
    run_initial_model(*opt);
  });
}

}  // namespace regula::cli

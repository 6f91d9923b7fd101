// regula class2d: reference-free 2D classification (RELION's relion_refine without --ref).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/class2d.hpp"

namespace regula::cli {

void add_class2d(CLI::App& app) {
  auto opt = std::make_shared<Class2DOptions>();
  auto* s = app.add_subcommand("class2d",
      "Reference-free 2D classification by regularised likelihood (RELION's 2D classification)");
  s->add_option("--i", opt->input, "Particles STAR file (RELION 3.0 or 3.1)");
  s->add_option("--o", opt->out_root, "Output root: writes ROOT_itNNN_{classes.mrcs,model.star,data.star,"
                "optimiser.star,state.bin,classes.png}");
  s->add_option("--K", opt->classes, "Number of classes");
  s->add_option("--ref", opt->reference,
                "Initial classes: an MRC stack of references (the particles' box, pixel size and scale, as the "
                "classes of an earlier run) instead of random-subset averages; --K, if given, must be their number");
  s->add_option("--iter", opt->iterations, "Number of iterations (the last iteration number)")->capture_default_str();
  s->add_option("--tau2_fudge", opt->tau2_fudge, "Regularisation parameter T (larger: weaker prior)")->capture_default_str();
  s->add_option("--particle_diameter", opt->particle_diameter, "Diameter of the circular mask, Å (default: box - 10 px)");
  s->add_flag("--ctf", opt->ctf, "CTF-correct (needs CTF columns)");
  s->add_flag("--zero_mask", opt->zero_mask, "Fill the particles' solvent with zeros (else with noise of the noise model's spectrum, as RELION)");
  s->add_flag("--flatten_solvent", opt->flatten_solvent, "Mask the class averages with the circular mask");
  s->add_option("--psi_step", opt->psi_step, "In-plane angular step, degrees")->capture_default_str();
  s->add_option("--offset_range", opt->offset_range, "Translation search range, pixels")->capture_default_str();
  s->add_option("--offset_step", opt->offset_step, "Translation step, pixels")->capture_default_str();
  s->add_option("--offset", opt->offset_sigma,
                "Initial standard deviation of the Gaussian prior on the origins, Å (re-estimated each iteration)")
      ->capture_default_str();
  s->add_option("--oversampling", opt->oversampling,
                "Adaptive oversampling order o: the significant coarse poses are refined on a grid 2^o times finer in "
                "psi and in x and y (0: coarse pass only)")->capture_default_str();
  s->add_option("--j", opt->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->add_option("--seed,--random_seed", opt->seed, "Random seed (initial classes)")->capture_default_str();
  s->add_option("--continue", opt->continue_from, "Continue from ROOT_itNNN_optimiser.star (options are read from it; "
                "--o and --j from the command line, --iter when given)");
  s->add_option("--angpix", opt->angpix, "Pixel size, Å, when the STAR file has none");
  s->add_option("--ini_high", opt->ini_high, "Initial frequency limit, Å")->capture_default_str();
  s->add_option("--incr_size", opt->incr_size, "Shells added above the SSNR >= 1 resolution for the next limit")
      ->capture_default_str();
  s->add_flag("--norm,!--no_norm", opt->norm,
              "Per-particle noise normalisation, RELION's rlnNormCorrection (default on)");
  s->add_flag("--scale,!--no_scale", opt->scale,
              "Per-group scale correction, RELION's rlnGroupScaleCorrection; groups by rlnGroupName, else micrograph "
              "(default on)");
  s->add_flag("--center_classes,!--no_center_classes", opt->center_classes, "Centre classes on their centre of mass (default on)");
  s->add_option("--reseed_empty", opt->reseed_empty,
                "Re-seeding: a class whose posterior mass is below this fraction of the mean class mass is almost "
                "empty")->capture_default_str();
  s->add_option("--reseed_until", opt->reseed_until,
                "Up to this iteration an almost empty class, or one of two classes with the same view, takes half of "
                "the largest class (0: never)")->capture_default_str();
  s->add_option("--batch", opt->batch_size, "Particles per E-step batch (memory grows with it)")->capture_default_str();
  // Accepted so that RELION command lines paste; they have no effect here.
  auto pool = std::make_shared<int>(0);
  s->add_option("--pool", *pool, "Ignored (RELION compatibility)");
  s->add_flag("--dont_combine_weights_via_disc")->description("Ignored (RELION compatibility)");
  s->add_flag("--dont_check_norm")->description("Ignored (RELION compatibility)");
  // The ignored values must live as long as the parser writes them.
  s->callback([opt, pool, s] {
    opt->iterations_given = s->count("--iter") > 0;
    run_class2d(*opt);
  });
}

}  // namespace regula::cli

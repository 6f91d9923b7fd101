// regula class3d: 3D classification (RELION's relion_refine --K with a 3D reference).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/class3d.hpp"

namespace regula::cli {

void add_class3d(CLI::App& app) {
  auto opt = std::make_shared<Class3DOptions>();
  auto* s = app.add_subcommand("class3d", "3D classification by regularised likelihood (RELION's 3D classification)");
  s->add_option("--i", opt->input, "Particles STAR file (RELION 3.0 or 3.1)");
  s->add_option("--o", opt->out_root, "Output root: ROOT_itNNN_{classNNN.mrc,data.star,model.star,optimiser.star,"
                "classes.png}");
  s->add_option("--ref", opt->reference, "Initial reference map (same box and pixel size as the particles)");
  s->add_option("--K", opt->classes, "Number of classes");
  s->add_option("--iter", opt->iterations, "Number of iterations")->capture_default_str();
  s->add_option("--tau2_fudge", opt->tau2_fudge, "Regularisation parameter T")->capture_default_str();
  s->add_option("--pad", opt->pad, "Oversampling of the Fourier lattices (1, 2 or 3)")->capture_default_str();
  s->add_option("--ini_high", opt->ini_high, "Low-pass of the reference and first frequency limit, Å")->capture_default_str();
  s->add_flag("--firstiter_cc", opt->firstiter_cc, "Cross-correlation with hard assignment in the first iteration");
  s->add_option("--sym", opt->sym, "Point group")->capture_default_str();
  s->add_option("--particle_diameter", opt->particle_diameter, "Diameter of the circular mask, Å");
  s->add_flag("--ctf", opt->ctf, "CTF-correct");
  s->add_flag("--flatten_solvent", opt->flatten_solvent, "Mask the class maps with a soft sphere");
  s->add_option("--solvent_mask", opt->solvent_mask,
                "Mask for the class maps (values in [0, 1]) instead of the sphere: focused classification");
  s->add_flag("--zero_mask", opt->zero_mask, "Fill the particles' solvent with zeros (else with noise of the noise model's spectrum, as RELION)");
  s->add_option("--healpix_order", opt->healpix_order, "Angular sampling (order 1 = 30 degrees, 2 = 15)")->capture_default_str();
  s->add_option("--offset_range", opt->offset_range, "Translation search range, pixels")->capture_default_str();
  s->add_option("--offset_step", opt->offset_step, "Translation step, pixels")->capture_default_str();
  s->add_flag("--skip_align", opt->skip_align, "Classify only, with the poses of the input STAR file");
  s->add_flag("--staged,!--random_subsets", opt->staged,
              "K > 1: consensus, then classification at fixed poses, then the full search (default); or RELION's "
              "random subsets from iteration 1");
  s->add_option("--sigma_ang", opt->sigma_ang, "Local searches around the input poses with this angular sigma, degrees");
  s->add_option("--j", opt->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->add_option("--seed,--random_seed", opt->seed, "Random seed (initial random subsets)")->capture_default_str();
  s->add_option("--continue", opt->continue_from, "Continue from ROOT_itNNN_optimiser.star (options from it; --o and --j "
                "from the command line, --iter when given)");
  s->add_option("--angpix", opt->angpix, "Pixel size, Å, when the STAR file has none");
  s->add_flag("--norm,!--no_norm", opt->norm, "Per-particle noise normalisation, RELION's rlnNormCorrection (default on)");
  s->add_flag("--scale,!--no_scale", opt->scale, "Per-group intensity-scale correction (default on)");
  s->add_option("--adaptive_fraction", opt->adaptive_fraction,
                "Posterior mass of the significant coarse poses refined in the finer pass")->capture_default_str();
  s->add_option("--strict_highres_exp", opt->strict_highres_exp,
                "High-resolution limit of the E-step and the maps, Å (<= 0: none; as RELION's)")->capture_default_str();
  s->add_option("--maxsig", opt->max_significants, "At most this many significant coarse poses per particle (-1: no bound)")
      ->capture_default_str();
  s->add_option("--perturb", opt->perturb, "Random perturbation of the angular and translational grids every "
                "iteration, as a fraction of their steps (RELION's default 0.5; here 0: fixed grids, measured better)")->capture_default_str();
  s->add_option("--oversampling", opt->oversampling, "Finer pass on a grid 2^N finer (0, 1 or 2)")->capture_default_str();
  s->add_option("--incr_size", opt->incr_size, "Shells added above the best class resolution")->capture_default_str();
  auto ignored = std::make_shared<int>(0);
  s->add_option("--pool", *ignored, "Accepted (RELION compatibility: its batch size; no effect on results)");
  s->add_flag("--dont_combine_weights_via_disc")->description("Ignored (RELION compatibility)");
  s->callback([opt, ignored, s] {
    opt->iterations_given = s->count("--iter") > 0;
    run_class3d(*opt);
  });
}

}  // namespace regula::cli

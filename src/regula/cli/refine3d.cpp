// regula refine3d: 3D auto-refinement with gold-standard FSC (RELION's relion_refine --auto_refine).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/multibody.hpp"
#include "regula/jobs/refine3d.hpp"

namespace regula::cli {

void add_refine3d(CLI::App& app) {
  auto opt = std::make_shared<Refine3DOptions>();
  auto* s = app.add_subcommand("refine3d", "3D auto-refinement with gold-standard FSC (RELION's 3D auto-refine)");
  s->add_option("--i", opt->input, "Particles STAR file (RELION 3.0 or 3.1)");
  s->add_option("--o", opt->out_root, "Output root: ROOT_itNNN_{half1,half2}_class001.mrc, _data.star, _model.star, "
                "_optimiser.star; at the end ROOT_class001.mrc, ROOT_half{1,2}_class001_unfil.mrc, ROOT_data.star, "
                "ROOT_model.star, ROOT_class001_angdist.{bild,png}");
  s->add_option("--ref", opt->reference, "Initial reference map (same box and pixel size as the particles)");
  s->add_option("--ini_high", opt->ini_high, "Low-pass of the reference and first frequency limit, Å")->capture_default_str();
  s->add_flag("--firstiter_cc", opt->firstiter_cc, "Cross-correlation with hard assignment in the first iteration");
  s->add_option("--sym", opt->sym, "Point group")->capture_default_str();
  s->add_option("--particle_diameter", opt->particle_diameter, "Diameter of the circular mask, Å (default: box - 10 px)");
  s->add_flag("--ctf", opt->ctf, "CTF-correct (needs CTF columns)");
  s->add_flag("--flatten_solvent", opt->flatten_solvent, "Mask the references with a soft sphere of the particle diameter");
  s->add_flag("--zero_mask", opt->zero_mask, "Fill the particles' solvent with zeros (else with noise of the noise model's spectrum, as RELION)");
  s->add_option("--solvent_mask", opt->solvent_mask, "Mask for the references (values in [0, 1])");
  s->add_flag("--solvent_correct_fsc", opt->solvent_correct_fsc,
              "Gold-standard FSC of the half maps under --solvent_mask, corrected for the mask by phase "
              "randomisation (as relion_refine_mpi); it sets the resolution and the references' prior");
  s->add_option("--healpix_order", opt->healpix_order, "Initial angular sampling (order 2 = 15 degrees)")->capture_default_str();
  s->add_option("--auto_local_healpix_order", opt->auto_local_healpix_order,
                "Local searches from this HEALPix order on")->capture_default_str();
  s->add_option("--offset_range", opt->offset_range, "Translation search range, pixels")->capture_default_str();
  s->add_option("--offset_step", opt->offset_step, "Translation step, pixels")->capture_default_str();
  s->add_option("--low_resol_join_halves", opt->low_resol_join_halves, "Join the halves below this resolution, Å")
      ->capture_default_str();
  s->add_option("--j", opt->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->add_option("--seed,--random_seed", opt->seed, "Random seed (half sets)")->capture_default_str();
  s->add_option("--continue", opt->continue_from, "Continue from ROOT_itNNN_optimiser.star (options from it; --o and --j "
                "from the command line, --iter when given)");
  s->add_option("--angpix", opt->angpix, "Pixel size, Å, when the STAR file has none");
  s->add_flag("--norm,!--no_norm", opt->norm, "Per-particle noise normalisation, RELION's rlnNormCorrection (default on)");
  s->add_flag("--scale,!--no_scale", opt->scale, "Per-group intensity-scale correction, groups by rlnGroupName or "
              "micrograph as RELION (default on)");
  s->add_option("--pad", opt->pad, "Oversampling of the Fourier lattices (1 or 2)")->capture_default_str();
  s->add_option("--oversampling", opt->oversampling, "Finer pass on a grid 2^N finer (0, 1 or 2)")->capture_default_str();
  s->add_option("--adaptive_fraction", opt->adaptive_fraction,
                "Posterior mass of the significant coarse poses refined in the finer pass")->capture_default_str();
  s->add_option("--maxsig", opt->max_significants, "At most this many significant coarse poses per particle "
                "(-1: no bound; when it binds, the number of particles is logged)")->capture_default_str();
  s->add_option("--tau2_fudge", opt->tau2_fudge, "Multiplies the signal-to-noise ratio of the references' prior")
      ->capture_default_str();
  s->add_option("--perturb", opt->perturb, "Random perturbation of the angular and translational grids every "
                "iteration, as a fraction of their steps (RELION's; 0: fixed grids)")->capture_default_str();
  s->add_option("--iter", opt->max_iterations, "Maximum number of iterations (safety limit)")->capture_default_str();
  s->add_option("--max_healpix_order", opt->max_healpix_order, "Finest HEALPix order of the auto-sampling")->capture_default_str();
  s->add_flag("--pose_mean,!--pose_map", opt->pose_mean,
              "Write the posterior mean pose (default) or, with --pose_map, the maximum as RELION");
  s->add_option("--stop_after", opt->stop_after, "Stop after this iteration (for tests of --continue)");
  auto ignored_i = std::make_shared<int>(0);
  auto ignored_s = std::make_shared<std::string>();
  s->add_flag("--auto_refine")->description("Accepted (RELION compatibility; refine3d is always auto-refine)");
  s->add_flag("--split_random_halves")->description("Accepted (always on)");
  s->add_flag("--dont_combine_weights_via_disc")->description("Ignored (RELION compatibility)");
  s->add_option("--pool", *ignored_i, "Accepted (RELION compatibility: its batch size; no effect on results)");
  auto bodies = std::make_shared<std::string>();
  s->add_option("--multibody_masks", *bodies,
                "Multi-body refinement (with --continue from a consensus refinement): STAR file of the bodies' "
                "masks and priors, as RELION's (docs/multibody.md)");
  s->add_flag("--reconstruct_subtracted_bodies")
      ->description("With --multibody_masks: accepted (each body is always reconstructed from the images minus the "
                    "other bodies, RELION's option)");
  s->callback([opt, ignored_i, ignored_s, bodies, s] {
    if (bodies->empty() && s->count("--reconstruct_subtracted_bodies") > 0)
      throw InputError("--reconstruct_subtracted_bodies: only with --multibody_masks");
    if (!bodies->empty()) {
      // Options that a multi-body refinement takes from the command line; the rest come from the
      // consensus, and giving one is an error rather than ignored.
      for (const char* name : {"--i", "--ref", "--ini_high", "--firstiter_cc", "--sym", "--ctf", "--flatten_solvent",
                               "--solvent_mask", "--auto_local_healpix_order", "--low_resol_join_halves", "--angpix",
                               "--norm", "--scale", "--maxsig", "--perturb", "--max_healpix_order", "--pose_mean",
                               "--stop_after"})
        if (s->count(name) > 0)
          throw InputError(std::string(name) + ": not used by a multi-body refinement (it continues from the "
                           "consensus given by --continue; docs/multibody.md lists its options)");
      MultibodyOptions m;
      m.continue_from = opt->continue_from;
      m.bodies = *bodies;
      m.out_root = opt->out_root;
      if (s->count("--healpix_order") > 0) m.healpix_order = opt->healpix_order;
      if (s->count("--offset_range") > 0) m.offset_range = opt->offset_range;
      if (s->count("--offset_step") > 0) m.offset_step = opt->offset_step;
      m.oversampling = opt->oversampling;
      if (s->count("--iter") > 0) m.max_iterations = opt->max_iterations;
      m.threads = opt->threads;
      m.seed = opt->seed;
      m.particle_diameter = opt->particle_diameter;
      m.tau2_fudge = opt->tau2_fudge;
      m.adaptive_fraction = opt->adaptive_fraction;
      m.pad = opt->pad;
      m.zero_mask = opt->zero_mask;
      run_multibody(m);
      return;
    }
    opt->iterations_given = s->count("--iter") > 0;
    run_refine3d(*opt);
  });
}

}  // namespace regula::cli

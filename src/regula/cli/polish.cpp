// regula polish: Bayesian polishing of refined particles from their movies (relion_motion_refine).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/polish.hpp"

namespace regula::cli {

void add_polish(CLI::App& app) {
  auto opt = std::make_shared<PolishOptions>();
  auto* s = app.add_subcommand(
      "polish",
      "Bayesian polishing (as relion_motion_refine): per-particle motion tracks with a Gaussian-process\n"
      "prior, per-frame B-factors, and with --combine_frames shiny particles re-extracted from the movies;\n"
      "writes OUT/<micrograph>_tracks.star, OUT/bfactors.star and OUT/shiny.star");
  s->add_option("--i", opt->particles, "Particles with refined poses and half sets (run_data.star)");
  s->add_option("--o", opt->out_dir, "Output directory");
  add_half_map_options(s, *opt);
  s->add_option("--corr_mic", opt->corr_mic,
                "Motion correction's corrected_micrographs.star (rlnMicrographMetadata of every micrograph)");
  s->add_option("--first_frame", opt->first_frame, "First frame used (1-based)")->capture_default_str();
  s->add_option("--last_frame", opt->last_frame, "Last frame used (-1: the movie's last)")->capture_default_str();
  s->add_option("--s_vel", opt->s_vel, "Velocity sigma, Å per e/Å² of dose")->capture_default_str();
  s->add_option("--s_div", opt->s_div, "Divergence sigma: distance over which velocities correlate, Å")
      ->capture_default_str();
  s->add_option("--s_acc", opt->s_acc, "Acceleration sigma, Å per e/Å² of dose (<= 0: no acceleration term)")
      ->capture_default_str();
  s->add_option("--params_file", opt->params_file, "Text file with s_vel s_div s_acc (overrides the three options)");
  s->add_option("--fdose", opt->fdose, "Dose per frame, e/Å² (<= 0: from each movie's metadata)")
      ->capture_default_str();
  s->add_option("--range", opt->range, "Largest displacement from motion correction's track, px of the particles")
      ->capture_default_str();
  s->add_option("--max_iters", opt->max_iters, "Most L-BFGS iterations per micrograph")->capture_default_str();
  s->add_flag("--combine_frames", opt->combine_frames, "Write shiny particles (frames moved, weighted and summed)");
  s->add_option("--bfac_minfreq", opt->bfac_minfreq, "Lowest resolution of the per-frame B-factor fit, Å")
      ->capture_default_str();
  s->add_option("--bfac_maxfreq", opt->bfac_maxfreq,
                "Highest resolution of the per-frame B-factor fit, Å (<= 0: the half maps' FSC 0.143)")
      ->capture_default_str();
  s->add_flag("--bfac_per_frame", opt->bfac_per_frame,
              "Fit each frame's B-factor on its own (RELION's fit); default: B-factors smooth in the frame number "
              "(quadratic), each frame's scale free");
  s->add_flag("--only_do_unfinished", opt->only_do_unfinished,
              "Keep the micrographs done before (their tracks and ROOT_polish_sums.bin); fit the others");
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  auto* t = s->add_option_group("Parameter training", "Fit --s_vel/--s_div/--s_acc on the data instead of polishing");
  t->add_flag("--params2", opt->params2, "Estimate s_vel and s_div (s_acc fixed at --s_acc_0) instead of motion");
  t->add_flag("--params3", opt->params3, "Estimate s_vel, s_div and s_acc instead of motion");
  t->add_option("--align_frac", opt->align_frac, "Fraction of the fitted pixels (lowest frequencies) used to align")
      ->capture_default_str();
  t->add_option("--eval_frac", opt->eval_frac, "Fraction of the fitted pixels (highest frequencies) used to score")
      ->capture_default_str();
  t->add_option("--min_p", opt->min_p, "Particles to train on (whole micrographs drawn at random)")->capture_default_str();
  t->add_option("--par_group", opt->par_group, "Train on this optics group only (1-based; <= 0: all)")
      ->capture_default_str();
  t->add_option("--s_vel_0", opt->s_vel_0, "Initial s_vel")->capture_default_str();
  t->add_option("--s_div_0", opt->s_div_0, "Initial s_div")->capture_default_str();
  t->add_option("--s_acc_0", opt->s_acc_0, "Initial s_acc (with --params2: the fixed value)")->capture_default_str();
  t->add_option("--in_step", opt->in_step, "Initial simplex step (s_vel x 1e4, s_div, s_acc x 1e3)")
      ->capture_default_str();
  t->add_option("--conv", opt->conv, "Stop when the simplex is smaller than this (same units)")->capture_default_str();
  t->add_option("--par_iters", opt->par_iters, "Most Nelder-Mead iterations")->capture_default_str();
  t->add_option("--seed", opt->seed, "Random seed of the micrographs' draw")->capture_default_str();
  auto refuse = refuse_options(
      s, {"--window",
          "--scale", "--crop", "--ctf_multiply", "--float16", "--recenter", "--bfactors", "--suffix", "--unreg_glob",
          "--glob_off", "--no_whiten", "--cc_pad", "--sq_exp_ker", "--absolute_params", "--gi", "--max_ed",
          "--out_cut", "--B_parts", "--eer_upsampling", "--eer_grouping", "--hot"},
      "regula polish: see docs/polish.md for what it does not do yet");
  s->callback([opt, refuse] {
    refuse();
    polish(*opt);
  });
}

}  // namespace regula::cli

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
  s->add_option("--f", opt->postprocess, "Postprocess STAR file: half maps and mask from its data_general");
  s->add_option("--m1", opt->half1, "Unfiltered half map 1");
  s->add_option("--m2", opt->half2, "Unfiltered half map 2");
  s->add_option("--mask", opt->mask, "Mask multiplied into both half maps (values in [0, 1])");
  s->add_option("--angpix_ref", opt->angpix_ref, "Pixel size of the maps, Å (<= 0: from the header)")
      ->capture_default_str();
  s->add_option("--pad", opt->pad, "Fourier padding of the projections")->capture_default_str();
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
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { polish(*opt); });
}

}  // namespace regula::cli

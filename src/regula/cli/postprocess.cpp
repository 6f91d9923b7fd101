// regula postprocess: masked, phase-randomisation-corrected FSC and B-factor sharpening
// (RELION's relion_postprocess).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/postprocess.hpp"

namespace regula::cli {

void add_postprocess(CLI::App& app) {
  auto opt = std::make_shared<PostprocessOptions>();
  auto* s = app.add_subcommand("postprocess", "Post-processing of two half maps (RELION's relion_postprocess)");
  s->add_option("--i", opt->half1, "First unfiltered half map (e.g. run_half1_class001_unfil.mrc)");
  s->add_option("--i2", opt->half2, "Second half map (default: --i with half1 replaced by half2)");
  s->add_option("--o", opt->out_root, "Output root: OUT.mrc, OUT_masked.mrc, OUT.star, OUT_fsc.png, OUT_guinier.png")
      ->capture_default_str();
  s->add_option("--mask", opt->mask, "Solvent mask (values in [0, 1])");
  s->add_option("--angpix", opt->angpix, "Pixel size, Å (default: from the header)");
  s->add_flag("--auto_bfac", opt->auto_bfac, "B-factor from the Guinier plot");
  s->add_option("--autob_lowres", opt->autob_lowres, "Low-resolution end of the Guinier fit, Å")->capture_default_str();
  s->add_option("--autob_highres", opt->autob_highres, "High-resolution end of the fit, Å (0: Nyquist, as RELION)");
  s->add_option("--adhoc_bfac", opt->adhoc_bfac, "B-factor to apply, Å^2 (negative sharpens)");
  s->add_option("--mtf", opt->mtf, "Detector MTF (STAR: rlnResolutionInversePixel, rlnMtfValue)");
  s->add_option("--mtf_angpix", opt->mtf_angpix, "Detector pixel size for the MTF, Å (default: --angpix)");
  s->add_option("--low_pass", opt->low_pass, "Low-pass filter, Å (default: the final resolution)");
  s->add_option("--randomize_at_fsc", opt->randomize_at_fsc, "Randomise phases where the unmasked FSC drops below this")
      ->capture_default_str();
  s->add_flag("--skip_fsc_weighting", opt->skip_fsc_weighting, "No sqrt(2 FSC / (1 + FSC)) weighting");
  s->add_flag("--force_mask", opt->force_mask, "Keep the mask even when the unmasked FSC extends further");
  s->add_option("--filter_edge_width", opt->filter_edge_width, "Width of the low-pass edge, shells")->capture_default_str();
  s->add_option("--random_seed,--seed", opt->seed, "Seed of the phase randomisation")->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->add_flag("--locres", opt->locres,
              "Local resolution instead (as relion_postprocess --locres): OUT_locres.mrc, OUT_locres_filtered.mrc, "
              "OUT_locres_fscs.star; the mask only for the histogram");
  s->add_option("--locres_sampling", opt->locres_sampling, "Distance between sampling points, Å")->capture_default_str();
  s->add_option("--locres_maskrad", opt->locres_maskrad, "Radius of the local window, Å (-1: sampling / 2)")
      ->capture_default_str();
  s->add_option("--locres_edgwidth", opt->locres_edgwidth, "Soft edge of the local window, Å (-1: sampling)")
      ->capture_default_str();
  s->add_option("--locres_randomize_at", opt->locres_randomize_at, "Randomise phases from this resolution, Å")
      ->capture_default_str();
  s->add_option("--locres_minres", opt->locres_minres, "Worst local resolution reported, Å")->capture_default_str();
  s->add_option("--locres_randomisations", opt->locres_randomisations,
                "Phase randomisations averaged for the correction (RELION: 1)")
      ->capture_default_str();
  s->add_option("--locres_fsc_box", opt->locres_fsc_box,
                "Box of the local FSCs, px (0: the smallest that holds the window; the map's box: RELION's sampling)")
      ->capture_default_str();
  s->callback([opt] { run_postprocess(*opt); });
}

}  // namespace regula::cli

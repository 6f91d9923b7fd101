// regula locres: local resolution from two half maps (relion_postprocess --locres).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/locres.hpp"

namespace regula::cli {

void add_locres(CLI::App& app) {
  auto opt = std::make_shared<LocresOptions>();
  auto* s = app.add_subcommand(
      "locres",
      "Local resolution from two half maps (as relion_postprocess --locres): local FSC in a soft window at the\n"
      "points of a grid, corrected by phase randomisation; OUT_locres.mrc, OUT_locres_filtered.mrc, OUT_locres_fscs.star");
  s->add_option("--i", opt->half1, "First unfiltered half map (e.g. run_half1_class001_unfil.mrc)")->required();
  s->add_option("--i2", opt->half2, "Second half map (default: --i with half1 replaced by half2)");
  s->add_option("--o", opt->out_root, "Output root")->capture_default_str();
  s->add_option("--mask", opt->mask, "Mask: only for the histogram of local resolutions in it (as RELION)");
  s->add_option("--angpix", opt->angpix, "Pixel size, Å (default: from the header)");
  s->add_option("--adhoc_bfac", opt->adhoc_bfac, "B-factor for the filtered map, Å^2 (negative sharpens)")
      ->capture_default_str();
  s->add_option("--mtf", opt->mtf, "Detector MTF (STAR: rlnResolutionInversePixel, rlnMtfValue)");
  s->add_option("--mtf_angpix", opt->mtf_angpix, "Detector pixel size for the MTF, Å (default: --angpix)");
  s->add_option("--locres_sampling", opt->sampling, "Distance between sampling points, Å")->capture_default_str();
  s->add_option("--locres_maskrad", opt->maskrad, "Radius of the local window, Å (-1: sampling / 2)")
      ->capture_default_str();
  s->add_option("--locres_edgwidth", opt->edgwidth, "Soft edge of the local window, Å (-1: sampling)")
      ->capture_default_str();
  s->add_option("--locres_randomize_at", opt->randomize_at, "Randomise phases from this resolution, Å")
      ->capture_default_str();
  s->add_option("--locres_minres", opt->minres, "Worst local resolution reported, Å")->capture_default_str();
  s->add_option("--locres_randomisations", opt->randomisations,
                "Phase randomisations averaged for the correction (RELION: 1)")
      ->capture_default_str();
  s->add_option("--locres_fsc_box", opt->fsc_box,
                "Box of the local FSCs, px (0: the smallest that holds the window; the map's box: RELION's FSC sampling, "
                "slower)")
      ->capture_default_str();
  s->add_option("--filter_edge_width", opt->filter_edge_width, "Width of the low-pass edge, shells")
      ->capture_default_str();
  s->add_option("--random_seed,--seed", opt->seed, "Seed of the phase randomisation")->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { run_locres(*opt); });
}

}  // namespace regula::cli

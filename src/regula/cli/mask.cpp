// regula mask: a soft mask from a map (relion_mask_create).
#include "regula/cli/commands.hpp"
#include "regula/jobs/mask.hpp"

namespace regula::cli {

void add_mask(CLI::App& app) {
  auto opt = std::make_shared<MaskJobOptions>();
  auto* s = app.add_subcommand("mask", "Make a soft mask from a map by threshold, dilation and soft edge "
                                       "(as relion_mask_create)");
  s->add_option("--i", opt->map, "Cubic map (MRC)")->required();
  s->add_option("--o", opt->out, "Output mask (MRC)")->required();
  s->add_option("--ini_threshold", opt->ini_threshold, "Voxels with value >= this form the initial binary mask")
      ->required();
  s->add_option("--lowpass", opt->lowpass, "Low-pass the map to this resolution (Å) before thresholding");
  s->add_option("--extend_inimask", opt->extend_px, "Dilate the binary mask by this many pixels");
  s->add_option("--width_soft_edge", opt->soft_edge_px, "Width of the raised-cosine soft edge, px");
  s->add_option("--angpix", opt->angpix, "Pixel size in Å (default: from the map header)");
  s->callback([opt] {
    opt->threshold_given = true;
    mask_create(*opt);
  });
}

}  // namespace regula::cli

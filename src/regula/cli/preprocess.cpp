// regula preprocess: normalise, invert, re-scale and re-window particle images.
#include "regula/cli/commands.hpp"
#include "regula/jobs/preprocess.hpp"

namespace regula::cli {

void add_preprocess(CLI::App& app) {
  auto opt = std::make_shared<PreprocessOptions>();
  auto* s = app.add_subcommand("preprocess",
      "Normalise, invert, re-scale or re-window particle images (as relion_preprocess --operate_on)");
  s->add_option("--i", opt->star, "Particle STAR file")->required();
  s->add_option("--o", opt->out_root, "Output root: writes ROOT.mrcs and ROOT.star")->required();
  s->add_flag("--norm", opt->norm, "Background to mean 0, standard deviation 1 (pixels outside --bg_radius)");
  s->add_option("--bg_radius", opt->bg_radius, "Background radius, px of the output box");
  s->add_flag("--invert_contrast", opt->invert_contrast, "Multiply the images by -1");
  s->add_option("--scale", opt->scale, "Re-scale (Fourier crop/pad) to this box size, px");
  s->add_option("--window", opt->window, "Re-window (real-space crop/pad about the centre) to this box size, px");
  s->add_option("--angpix", opt->angpix, "Pixel size in Å when the STAR file has none");
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { preprocess(*opt); });
}

}  // namespace regula::cli

// regula fsc: Fourier shell correlation of two maps.
#include <cmath>
#include <cstdio>

#include "regula/cli/commands.hpp"
#include "regula/jobs/fsc.hpp"

namespace regula::cli {

void add_fsc(CLI::App& app) {
  auto opt = std::make_shared<FscJobOptions>();
  auto* s = app.add_subcommand("fsc", "Fourier shell correlation of two maps and the resolution at FSC = 0.143");
  s->add_option("--i1", opt->map1, "First map (MRC)")->required();
  s->add_option("--i2", opt->map2, "Second map (MRC), same box")->required();
  s->add_option("--mask", opt->mask, "Multiply both maps by this mask first");
  s->add_option("--o", opt->out_root, "Output root: writes ROOT_fsc.star and ROOT_fsc.png");
  s->add_option("--angpix", opt->angpix, "Pixel size in Å (default: from the header of --i1)");
  s->add_flag("--align", opt->align, "Turn, mirror if better, and shift --i2 onto --i1 first (e.g. a de novo map onto a "
              "known structure); with --o writes ROOT_aligned.mrc");
  s->add_option("--j", opt->threads, "Threads for --align")->capture_default_str();
  s->callback([opt] {
    FscJobResult r = fsc_compare(*opt);
    if (opt->align)
      std::printf("aligned: rot %.1f tilt %.1f psi %.1f deg%s, shift %d %d %d px, correlation %.3f\n", r.rot, r.tilt,
                  r.psi, r.mirrored ? ", mirrored" : "", r.shift[0], r.shift[1], r.shift[2], r.correlation);
    if (std::isfinite(r.resolution_0143))
      std::printf("resolution at FSC 0.143: %.3f A\n", r.resolution_0143);
    else
      std::printf("resolution at FSC 0.143: none (FSC below 0.143 from the first shell)\n");
    std::fflush(stdout);
  });
}

}  // namespace regula::cli

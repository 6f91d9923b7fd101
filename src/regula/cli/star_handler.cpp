// `regula star_handler`: rewrite a STAR file (generic round trip, or through the
// particle model with --particles, which writes the RELION 3.1 form).
#include <memory>
#include <string>

#include "regula/cli/commands.hpp"
#include "regula/core/log.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace regula::cli {

namespace {
struct StarHandlerOptions {
  std::string input, output;
  bool particles = false;
  double angpix = 0;
};
}  // namespace

void add_star_handler(CLI::App& app) {
  auto opt = std::make_shared<StarHandlerOptions>();
  auto* sub = app.add_subcommand(
      "star_handler",
      "Rewrite a STAR file. Without --particles every block, column and value is kept as it is; "
      "with --particles the file is read as a particle table (RELION 3.0 files are converted) and "
      "written in the RELION 3.1 form (data_optics + data_particles, origins in Å)");
  sub->add_option("--i", opt->input, "Input STAR file")->required();
  sub->add_option("--o", opt->output, "Output STAR file (written atomically)")->required();
  sub->add_flag("--particles", opt->particles,
                "Read as particles and write the RELION 3.1 form");
  sub->add_option("--angpix", opt->angpix,
                  "Pixel size (Å) for optics groups whose pixel size the file does not give")
      ->check(CLI::NonNegativeNumber);
  sub->callback([opt] {
    if (opt->particles) {
      ParticleReadOptions ro;
      ro.angpix = opt->angpix;
      auto table = ParticleTable::read(opt->input, ro);
      table.write(opt->output);
      spdlog::info("{}: {} particles in {} optics group(s){} written to {}", opt->input, table.size(),
                   table.optics.size(), table.converted_from_30() ? " (converted from RELION 3.0)" : "",
                   opt->output);
    } else {
      auto doc = star::read(opt->input);
      star::write(opt->output, doc);
      spdlog::info("{}: {} block(s) written to {}", opt->input, doc.blocks.size(), opt->output);
    }
  });
}

}  // namespace regula::cli

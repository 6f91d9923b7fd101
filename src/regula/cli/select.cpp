// regula select: the particles of chosen classes from a class2d data.star.
#include <memory>

#include <spdlog/spdlog.h>

#include "regula/cli/commands.hpp"
#include "regula/jobs/class2d.hpp"

namespace regula::cli {

void add_select(CLI::App& app) {
  auto opt = std::make_shared<SelectOptions>();
  auto* s = app.add_subcommand("select", "Write the particles of chosen classes (3.1 STAR form, all columns kept)");
  s->add_option("--i", opt->input, "ROOT_itNNN_data.star of class2d (or any STAR with rlnClassNumber)")->required();
  s->add_option("--o", opt->output, "Output STAR file")->required();
  s->add_option("--classes", opt->classes, "Class numbers to keep (1-based), e.g. 1,4,7")->delimiter(',');
  s->add_option("--min_count", opt->min_count, "Keep classes with at least this many particles");
  s->callback([opt] {
    size_t n = select_classes(*opt);
    spdlog::info("select: wrote {} particles to {}", n, opt->output);
  });
}

}  // namespace regula::cli

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
  auto* automatic = s->add_flag("--auto", opt->automatic,
                                "Keep the classes whose average looks like a centred particle: contrast within "
                                "[--auto_min_contrast, --auto_max_contrast] times the median class's and edge "
                                "ratio at most --auto_max_edge, then screen their particles (--auto_particle_sd; docs/class2d.md); "
                                "writes OUT_class_scores.star");
  s->add_option("--auto_min_contrast", opt->auto_min_contrast, "--auto: lowest contrast / median (empty ice)")
      ->capture_default_str()
      ->needs(automatic);
  s->add_option("--auto_max_contrast", opt->auto_max_contrast, "--auto: highest contrast / median (contamination)")
      ->capture_default_str()
      ->needs(automatic);
  s->add_option("--auto_max_edge", opt->auto_max_edge,
                "--auto: highest RMS of the outer ring (0.7-1 R) over the inner disc (< 0.5 R) (edges, aggregates)")
      ->capture_default_str()
      ->needs(automatic);
  s->add_option("--auto_particle_sd", opt->auto_particle_sd,
                "--auto: then reject a particle of a kept class whose _regulaSignalZ is below, or band power "
                "(--auto_step: or step statistic) above, its class's median by more than this many robust SDs, or "
                "whose _regulaSignalZ is below this value (empty ice, aggregates, neighbours among the "
                "particles); 0: classes only")
      ->capture_default_str()
      ->needs(automatic);
  s->add_flag("--auto_no_image_tests", opt->auto_no_image_tests,
              "--auto: no band power test (aggregates, neighbours; it reads the particle images): the norm "
              "correction's instead")
      ->needs(automatic);
  s->add_flag("--auto_step", opt->auto_step,
              "--auto: also reject particles whose step statistic stands out from their class mates' (carbon "
              "edges; on crowded micrographs it also flags particles with a neighbour at the rim)")
      ->needs(automatic);
  s->add_option("--j", opt->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->add_option("--particle_diameter", opt->particle_diameter,
                "--auto: particle diameter, Å (default: the classification's, from its optimiser.star)")
      ->needs(automatic);
  s->callback([opt] {
    size_t n = select_classes(*opt);
    spdlog::info("select: wrote {} particles to {}", n, opt->output);
  });
}

}  // namespace regula::cli

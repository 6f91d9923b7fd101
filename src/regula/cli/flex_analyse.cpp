// regula flex_analyse: principal components of the body motions of a multi-body refinement
// (relion_flex_analyse --PCA_orient).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/flex_analyse.hpp"

namespace regula::cli {

void add_flex_analyse(CLI::App& app) {
  auto opt = std::make_shared<FlexAnalyseOptions>();
  auto* s = app.add_subcommand("flex_analyse",
                               "Principal components of the body motions of a multi-body refinement, and maps along "
                               "them (relion_flex_analyse --PCA_orient; docs/multibody.md)");
  s->add_option("--data", opt->data, "The multi-body refinement's _data.star (RELION's or Regula's)")->required();
  s->add_option("--bodies", opt->bodies, "Its bodies STAR file (masks, rotation axes)")->required();
  s->add_option("--model", opt->model, "Its _model.star (the bodies' maps, for --do_maps)");
  s->add_option("--o", opt->out_root, "Output root")->capture_default_str();
  s->add_flag("--PCA_orient")->description("Accepted (RELION's; the analysis is always the PCA of the body motions)");
  s->add_flag("--do_maps", opt->do_maps, "Write maps along the first --k components");
  s->add_option("--k", opt->components, "Components with maps")->capture_default_str();
  s->add_option("--maps_per_movie", opt->maps_per_component, "Maps per component (equally populated bins)")
      ->capture_default_str();
  s->add_flag("--write_pca_projections")
      ->description("Accepted (ROOT_projections_along_eigenvectors_all_particles.txt is always written)");
  s->add_option("--select_eigenvalue", opt->select_component,
                "Write the particles whose projection on this component (1-based) lies in [min, max]");
  s->add_option("--select_eigenvalue_min", opt->select_min, "Lower bound of --select_eigenvalue")->capture_default_str();
  s->add_option("--select_eigenvalue_max", opt->select_max, "Upper bound of --select_eigenvalue")->capture_default_str();
  s->callback([opt] { flex_analyse(*opt); });
}

}  // namespace regula::cli

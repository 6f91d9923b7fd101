// `regula flex_analyse` (RELION's relion_flex_analyse --PCA_orient): the principal components of the
// body motions of a multi-body refinement (docs/multibody.md#flex_analyse).
//
// Per particle and body b the motion relative to the consensus: the residual rotation R_b as a
// rotation vector (axis times angle) scaled by the body's radius of gyration about its centre of
// mass (so that one unit is about one Å of movement of the body's mass), and its translation in the
// map's frame, t_b = -(A R_b)^T (d_x, d_y, 0) in Å (the 2D residual offset turned back into 3D, the
// component along the viewing direction unknown: 0, as RELION). Reads RELION's or Regula's
// multi-body _data.star (data_particles, data_images_body_N) and the bodies STAR file.
// The 6B columns are centred and their covariance diagonalised (Jacobi); components in order of
// decreasing variance, each eigenvector's largest element positive.
//
// Writes ROOT_eigenvectors.dat (per component: its variance, the share of the total and the
// eigenvector), ROOT_projections_along_eigenvectors_all_particles.txt (RELION's format: image name,
// then the projection on each component) and, with --do_maps and the bodies' maps (--model: a
// multi-body _model.star, data_model_classes lists one map per body), for each of the first --k
// components --maps_per_movie maps along it: the particles sorted by their projection in equally
// populated bins; per bin, each body's map (times its mask) turned about its centre of mass and
// moved by the bin's mean motion (trilinear interpolation), summed, and divided by the sum of the
// moved masks where that exceeds 1 (RELION's treatment of overlaps): ROOT_component00K_bin00J.mrc.
// With --select_eigenvalue K, the particles whose projection on component K lies in
// [--select_eigenvalue_min, --select_eigenvalue_max] are written to ROOT_selected_particles.star.
#pragma once
#include <string>
#include <vector>

namespace regula {

struct FlexAnalyseOptions {
  std::string data;     // --data: a multi-body refinement's _data.star
  std::string bodies;   // --bodies: its bodies STAR file
  std::string model;    // --model: its _model.star (maps for --do_maps)
  std::string out_root = "analyse";  // --o
  bool do_maps = false;     // --do_maps
  int components = 3;       // --k
  int maps_per_component = 10;  // --maps_per_movie
  int select_component = -1;    // --select_eigenvalue (1-based; <= 0: none)
  double select_min = -99999, select_max = 99999;
  std::string validate() const;
};

struct FlexAnalyseResult {
  std::vector<double> variance;        // per component, decreasing
  std::vector<double> fraction;        // share of the total variance
  std::vector<std::vector<double>> eigenvectors;  // [component][column]
  std::vector<std::vector<double>> projections;   // [particle][component]
  std::vector<std::string> maps;
  std::string selection;               // ROOT_selected_particles.star, or ""
  size_t selected = 0;
};

FlexAnalyseResult flex_analyse(const FlexAnalyseOptions& opt);
}  // namespace regula

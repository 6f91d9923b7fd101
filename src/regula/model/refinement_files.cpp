#include "regula/model/refinement_files.hpp"

#include <cmath>
#include <string_view>

#include "regula/core/error.hpp"
#include "regula/io/star.hpp"

namespace regula {

namespace {

// Key-value access with messages naming the file and block.
class Pairs {
 public:
  Pairs(const star::Document& doc, const std::string& path, std::string_view block)
      : path_(path), block_(block), t_(&doc.require(block)) {}
  bool has(std::string_view key) const { return !t_->get(key).empty(); }
  std::string text(std::string_view key) const {
    const std::string_view v = t_->get(key);
    if (v.empty()) input_error("{}: data_{} has no _{}", path_, block_, key);
    return std::string(v);
  }
  std::string text(std::string_view key, std::string_view fallback) const {
    return has(key) ? text(key) : std::string(fallback);
  }
  double number(std::string_view key) const {
    const int c = t_->column(key);
    if (c < 0 || t_->rows() == 0) input_error("{}: data_{} has no _{}", path_, block_, key);
    return t_->number(0, c);
  }
  double number(std::string_view key, double fallback) const { return has(key) ? number(key) : fallback; }
  bool flag(std::string_view key, bool fallback = false) const {
    if (!has(key)) return fallback;
    const std::string v = text(key);
    if (v == "1" || v == "true" || v == "True") return true;
    if (v == "0" || v == "false" || v == "False") return false;
    input_error("{}: data_{}: _{}: expected 0 or 1, got '{}'", path_, block_, key, v);
  }
  int integer(std::string_view key, int fallback) const {
    const double v = number(key, fallback);
    if (v != std::floor(v)) input_error("{}: data_{}: _{}: expected an integer, got {}", path_, block_, key, v);
    return int(v);
  }

 private:
  std::string path_;
  std::string_view block_;
  const star::Block* t_;
};

}  // namespace

ModelFile read_model_file(const std::string& model_star) {
  const star::Document doc = star::read(model_star);
  const Pairs g(doc, model_star, "model_general");
  ModelFile m;
  m.path = model_star;
  m.original_size = g.integer("rlnOriginalImageSize", 0);
  if (m.original_size < 2) input_error("{}: data_model_general: _rlnOriginalImageSize is missing or below 2", model_star);
  m.current_size = g.integer("rlnCurrentImageSize", m.original_size);
  m.pixel_size = g.number("rlnPixelSize");
  m.padding = g.number("rlnPaddingFactor", 2);
  m.interpolator = g.integer("rlnFourierSpaceInterpolator", 1);
  m.norm_average = g.number("rlnNormCorrectionAverage", 1);
  m.reference_dim = g.integer("rlnReferenceDimensionality", 3);
  m.data_dim = g.integer("rlnDataDimensionality", 2);
  if (!(m.pixel_size > 0)) input_error("{}: data_model_general: _rlnPixelSize must be positive", model_star);
  if (m.current_size < 2 || m.current_size > m.original_size) m.current_size = m.original_size;

  const star::Block& classes = doc.require("model_classes");
  const int c_ref = classes.require_column("rlnReferenceImage");
  for (size_t r = 0; r < classes.rows(); ++r) m.references.emplace_back(classes.value(r, c_ref));
  if (m.references.empty()) input_error("{}: data_model_classes has no rows", model_star);

  if (const star::Block* groups = doc.find("model_groups")) {
    const int c_no = groups->require_column("rlnGroupNumber");
    const int c_scale = groups->require_column("rlnGroupScaleCorrection");
    const int c_name = groups->column("rlnGroupName");
    m.group_names.resize(groups->rows());
    m.group_scale.assign(groups->rows(), 1.0);
    for (size_t r = 0; r < groups->rows(); ++r) {
      const long no = groups->integer(r, c_no);
      if (no < 1 || size_t(no) > groups->rows())
        input_error("{}: _rlnGroupNumber {} outside 1..{}", groups->where(r), no, groups->rows());
      m.group_scale[size_t(no - 1)] = groups->number(r, c_scale);
      if (c_name >= 0) m.group_names[size_t(no - 1)] = std::string(groups->value(r, c_name));
    }
  }
  return m;
}

RefinementFiles read_refinement_files(const std::string& optimiser_star) {
  const star::Document doc = star::read(optimiser_star);
  const Pairs o(doc, optimiser_star, "optimiser_general");
  RefinementFiles f;
  f.optimiser = optimiser_star;
  f.data_star = o.text("rlnExperimentalDataStarFile");
  f.split_halves = o.flag("rlnDoSplitRandomHalves");
  f.ctf = o.flag("rlnDoCorrectCtf");
  f.norm = o.flag("rlnDoCorrectNorm");
  f.scale = o.flag("rlnDoCorrectScale");
  f.phase_flipped = o.flag("rlnCtfDataArePhaseFlipped");
  f.intact_first_peak = o.flag("rlnDoIgnoreCtfUntilFirstPeak");
  f.body_star = o.text("rlnBodyStarFile", "");
  if (f.body_star == "None") f.body_star.clear();
  f.models.push_back(read_model_file(o.text("rlnModelStarFile")));
  if (f.split_halves) {
    if (o.has("rlnModelStarFile2")) {
      f.models.push_back(read_model_file(o.text("rlnModelStarFile2")));
    } else if (o.has("regulaHalf2Map")) {
      ModelFile half2 = f.models[0];
      half2.references = {o.text("regulaHalf2Map")};
      f.models.push_back(std::move(half2));
    } else {
      input_error("{}: a gold-standard refinement (_rlnDoSplitRandomHalves 1) but data_optimiser_general names no "
                  "second model (_rlnModelStarFile2); RELION writes none with --force_converge: use the optimiser "
                  "file of the iteration before",
                  optimiser_star);
    }
  }
  return f;
}

}  // namespace regula

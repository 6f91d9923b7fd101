#include "regula/jobs/class_selection.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/core/stats.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula {

namespace fs = std::filesystem;

std::string AutoSelectOptions::validate() const {
  if (!(min_contrast >= 0) || !(max_contrast > min_contrast) || !std::isfinite(max_contrast))
    return fmt::format("--auto_min_contrast {} and --auto_max_contrast {}: need 0 <= min < max (finite)", min_contrast,
                       max_contrast);
  if (!(max_edge > 0)) return fmt::format("--auto_max_edge {}: must be positive", max_edge);
  if (!(particle_sd >= 0) || !std::isfinite(particle_sd))
    return fmt::format("--auto_particle_sd {}: must be 0 (no screen) or positive", particle_sd);
  if (!(particle_diameter >= 0) || !std::isfinite(particle_diameter))
    return fmt::format("--particle_diameter {}: must be positive (Å)", particle_diameter);
  return "";
}

namespace {

// ROOT_itNNN from ROOT_itNNN_data.star.
std::string iteration_root(const std::string& data_star) {
  const std::string suffix = "_data.star";
  if (data_star.size() <= suffix.size() || data_star.compare(data_star.size() - suffix.size(), suffix.size(), suffix))
    input_error("{}: --auto needs the data.star of a 2D classification iteration (ROOT_itNNN_data.star, with its "
                "model.star, optimiser.star and classes.mrcs beside it)",
                data_star);
  return data_star.substr(0, data_star.size() - suffix.size());
}

const star::Document read_beside(const std::string& data_star, const std::string& path, const char* what) {
  if (!fs::exists(path)) input_error("{}: --auto needs the iteration's {} ({} is missing)", data_star, what, path);
  return star::read(path);
}

// A class average named by rlnReferenceImage ("N@stack"): the stack as written (relative to the
// working directory, RELION's convention), else beside the model file.
Image read_class_image(std::string_view name, const star::Table& t, size_t row, const std::string& model_path) {
  const ImageRef ref = parse_image_name(name, t.where(row));
  std::string path = ref.path;
  if (!fs::exists(path)) {
    const fs::path beside = fs::path(model_path).parent_path() / fs::path(ref.path).filename();
    if (!fs::exists(beside))
      input_error("{}: class average {} not found (nor {})", t.where(row), ref.path, beside.string());
    path = beside.string();
  }
  mrc::StackReader reader(path);
  if (ref.index < 1 || ref.index > reader.count())
    input_error("{}: image {} of {}, which holds {}", t.where(row), ref.index, path, reader.count());
  return reader.read(int(ref.index - 1));
}

// Contrast and edge ratio of one class average (see the header).
void measure(const Image& a, double radius_px, ClassScore& s) {
  const int n = a.nx();
  double sum = 0, cnt = 0;
  for (int y = 0; y < a.ny(); ++y)
    for (int x = 0; x < n; ++x) {
      const double r = std::hypot(x - n / 2, y - a.ny() / 2);
      if (r < radius_px) sum += a(x, y), cnt += 1;
    }
  const double mean = cnt > 0 ? sum / cnt : 0.0;
  double all = 0, outer = 0, inner = 0, n_outer = 0, n_inner = 0;
  for (int y = 0; y < a.ny(); ++y)
    for (int x = 0; x < n; ++x) {
      const double r = std::hypot(x - n / 2, y - a.ny() / 2);
      if (r >= radius_px) continue;
      const double v = (a(x, y) - mean) * (a(x, y) - mean);
      all += v;
      if (r >= 0.7 * radius_px) outer += v, n_outer += 1;
      if (r < 0.5 * radius_px) inner += v, n_inner += 1;
    }
  s.contrast = cnt > 0 ? std::sqrt(all / cnt) : 0.0;
  const double in = n_inner > 0 ? std::sqrt(inner / n_inner) : 0.0, out = n_outer > 0 ? std::sqrt(outer / n_outer) : 0.0;
  s.edge_ratio = in > 0 ? out / in : std::numeric_limits<double>::infinity();
}

}  // namespace

std::vector<ClassScore> score_classes(const std::string& data_star, const ParticleTable& table,
                                      const AutoSelectOptions& opt) {
  const std::string msg = opt.validate();
  if (!msg.empty()) throw InputError(msg);
  const std::string root = iteration_root(data_star);
  const std::string model_path = root + "_model.star";
  const star::Document model = read_beside(data_star, model_path, "model.star");
  const star::Block& general = model.require("model_general");
  const int cpx = general.require_column("rlnPixelSize");
  const double pixel = general.number(0, cpx);
  if (!(pixel > 0)) input_error("{}: rlnPixelSize {} is not a pixel size", model_path, pixel);
  double diameter = opt.particle_diameter;
  if (diameter <= 0) {
    const std::string opt_path = root + "_optimiser.star";
    const star::Document o = read_beside(data_star, opt_path, "optimiser.star (or give --particle_diameter)");
    const star::Block& og = o.require("optimiser_general");
    diameter = og.number(0, og.require_column("rlnParticleDiameter"));
    if (!(diameter > 0))
      input_error("{}: rlnParticleDiameter {} (the classification used the whole box): give --particle_diameter",
                  opt_path, diameter);
  }
  const star::Block& classes = model.require("model_classes");
  const int cref = classes.require_column("rlnReferenceImage");
  std::map<int, long> count;
  for (int c : table.class_number) count[c] += 1;
  std::vector<ClassScore> out;
  for (size_t k = 0; k < classes.rows(); ++k) {
    ClassScore s;
    s.number = int(k + 1);
    s.particles = count.count(s.number) ? count[s.number] : 0;
    if (s.particles > 0) {
      const Image a = read_class_image(classes.value(k, cref), classes, k, model_path);
      measure(a, std::min(diameter / (2 * pixel), a.nx() / 2.0), s);
    }
    out.push_back(s);
  }
  for (const auto& [c, n] : count)
    if (c < 1 || size_t(c) > out.size())
      input_error("{}: {} particles in class {}, but {} has {} classes", data_star, n, c, model_path, out.size());
  // The reference contrast: the median over particles of their class's contrast.
  std::vector<std::pair<double, long>> v;
  long total = 0;
  for (const auto& s : out)
    if (s.particles > 0) v.emplace_back(s.contrast, s.particles), total += s.particles;
  std::sort(v.begin(), v.end());
  double ref = 0;
  long seen = 0;
  for (const auto& [c, n] : v) {
    seen += n;
    if (2 * seen >= total) {
      ref = c;
      break;
    }
  }
  for (auto& s : out) {
    if (s.particles == 0) continue;
    s.contrast_ratio = ref > 0 ? s.contrast / ref : 0.0;
    s.kept = s.contrast_ratio >= opt.min_contrast && s.contrast_ratio <= opt.max_contrast && s.edge_ratio <= opt.max_edge;
  }
  return out;
}

std::vector<size_t> screen_particles(const std::string& data_star, const ParticleTable& table,
                                     std::vector<ClassScore>& scores, const AutoSelectOptions& opt) {
  const star::Block& pb = table.particles_block();
  const int cz = pb.column("regulaSignalZ"), cn = pb.column("rlnNormCorrection");
  std::vector<std::vector<size_t>> members(scores.size());
  for (size_t i = 0; i < table.size(); ++i) {
    const int c = table.class_number[i];
    if (c >= 1 && size_t(c) <= scores.size() && scores[size_t(c - 1)].kept) members[size_t(c - 1)].push_back(i);
  }
  const bool screen = opt.particle_sd > 0;
  if (screen && cz < 0)
    spdlog::info("select --auto: {} has no _regulaSignalZ (not Regula's class2d): no signal test of particles",
                 data_star);
  if (screen && cn < 0)
    spdlog::info("select --auto: {} has no _rlnNormCorrection: no residual test of particles", data_star);
  std::vector<size_t> keep;
  std::vector<char> out(table.size(), 0);
  for (size_t k = 0; k < scores.size(); ++k) {
    const std::vector<size_t>& idx = members[k];
    if (screen && long(idx.size()) >= kScreenMinParticles)
      for (const auto& [col, sign] : {std::pair{cz, -1.0}, std::pair{cn, 1.0}}) {
        if (col < 0) continue;
        std::vector<double> v;
        for (size_t i : idx) v.push_back(pb.number(i, col));
        const auto [m, d] = median_spread(v);
        for (size_t j = 0; j < idx.size(); ++j)
          if (sign * (v[j] - m) > opt.particle_sd * d) out[idx[j]] = 1;
      }
    for (size_t i : idx) {
      if (out[i]) scores[k].screened_out += 1;
      else keep.push_back(i);
    }
  }
  std::sort(keep.begin(), keep.end());
  return keep;
}

void write_class_scores(const std::string& path, const std::vector<ClassScore>& scores) {
  star::Document doc;
  star::Block& b = doc.add_block("class_scores");
  std::vector<int> number, selected;
  std::vector<double> screened;
  std::vector<double> particles, contrast, ratio, edge;
  for (const auto& s : scores) {
    number.push_back(s.number);
    particles.push_back(double(s.particles));
    contrast.push_back(s.contrast);
    ratio.push_back(s.contrast_ratio);
    edge.push_back(std::isfinite(s.edge_ratio) ? s.edge_ratio : 1e30);
    selected.push_back(s.kept ? 1 : 0);
    screened.push_back(double(s.screened_out));
  }
  for (size_t i = 0; i < scores.size(); ++i) b.add_row();
  b.set_column("rlnClassNumber", number);
  b.set_column("regulaClassParticles", particles);
  b.set_column("regulaClassContrast", contrast);
  b.set_column("regulaClassContrastRatio", ratio);
  b.set_column("regulaClassEdgeRatio", edge);
  b.set_column("regulaClassSelected", selected);
  b.set_column("regulaClassParticlesScreenedOut", screened);
  star::write(path, doc);
}

}  // namespace regula

#include "regula/jobs/class_selection.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <tuple>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/core/parallel.hpp"
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
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (step && !image_tests) return "--auto_step reads the images: it cannot be combined with --auto_no_image_tests";
  if (step && particle_sd == 0) return "--auto_step is a test of the particle screen: it needs --auto_particle_sd > 0";
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

// --particle_diameter, else the classification's (rlnParticleDiameter of its optimiser file), Å.
double particle_diameter(const std::string& data_star, const AutoSelectOptions& opt) {
  if (opt.particle_diameter > 0) return opt.particle_diameter;
  const std::string opt_path = iteration_root(data_star) + "_optimiser.star";
  const star::Document o = read_beside(data_star, opt_path, "optimiser.star (or give --particle_diameter)");
  const star::Block& og = o.require("optimiser_general");
  const double diameter = og.number(0, og.require_column("rlnParticleDiameter"));
  if (!(diameter > 0))
    input_error("{}: rlnParticleDiameter {} (the classification used the whole box): give --particle_diameter",
                opt_path, diameter);
  return diameter;
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

ImageScreenStatistics::ImageScreenStatistics(int box, double pixel, double diameter, int directions) : box_(box) {
  if (box < 8 || directions < 1) throw InputError(fmt::format("image statistics: box {} too small", box));
  bin_ = std::max(1, box / kScreenBox);
  n_ = box / bin_;
  const double c = n_ / 2.0, radius = n_ / 2.0 - 1;
  for (int y = 0; y < n_; ++y)
    for (int x = 0; x < n_; ++x)
      if (std::hypot(x - c, y - c) < radius) disc_.push_back(y * n_ + x);
  nbins_ = 2 * int(std::ceil(radius)) + 3;
  const int half = nbins_ / 2;
  for (int k = 0; k < directions; ++k) {
    const double a = M_PI * k / directions, ca = std::cos(a), sa = std::sin(a);
    std::vector<uint16_t> b;
    std::vector<double> count(size_t(nbins_), 0.0);
    for (int p : disc_) {
      const int t = int(std::lround((p % n_ - c) * ca + (p / n_ - c) * sa)) + half;
      b.push_back(uint16_t(t));
      count[size_t(t)] += 1;
    }
    bins_.push_back(std::move(b));
    counts_.push_back(std::move(count));
  }
  // Shells of the binned image's transform (frequency k / (n_ bin_ pixel)) from 2 / diameter to 10 / diameter.
  const double side = n_ * bin_ * pixel;
  band_lo_ = std::max(1, int(std::ceil(2 * side / diameter)));
  band_hi_ = std::min(n_ / 2, int(std::floor(10 * side / diameter)));
  if (band_hi_ < band_lo_) band_hi_ = band_lo_ - 1;  // no band (a particle larger than the box's 1/2 .. 1/10)
}

double ImageScreenStatistics::operator()(const Image& image, Work& w, float* power) const {
  if (image.nx() != box_ || image.ny() != box_)
    throw InputError(fmt::format("image statistics: image of {}x{} px, expected {}", image.nx(), image.ny(), box_));
  // Binned bin_ x bin_ (the statistics see about kScreenBox pixels across whatever the box), centred region.
  const int off = (box_ - n_ * bin_) / 2;
  if (w.binned.nx() != n_) w.binned = Image(n_, n_);
  std::fill(w.binned.begin(), w.binned.end(), 0.0f);
  float* v = w.binned.data();
  for (int y = 0; y < n_ * bin_; ++y)
    for (int x = 0; x < n_ * bin_; ++x) v[size_t(y / bin_) * size_t(n_) + size_t(x / bin_)] += image(x + off, y + off);
  // The band's shell powers, |F|^2 averaged over the shell (whole binned box).
  if (band_size() > 0) {
    const std::vector<double> shells = shell_power(w.binned);
    for (int k = 0; k < band_size(); ++k) power[k] = float(shells[size_t(band_lo_ + k)]);
  }
  // The step statistic inside the disc.
  double mean = 0;
  for (int p : disc_) mean += v[p];
  mean /= double(disc_.size());
  double var = 0;
  for (int p : disc_) var += (v[p] - mean) * (v[p] - mean);
  const double sd = std::sqrt(var / double(disc_.size()));
  if (!(sd > 0)) return 0.0;
  w.profile.resize(size_t(nbins_));
  double* prof = w.profile.data();
  double best = 0;
  for (size_t k = 0; k < bins_.size(); ++k) {
    std::fill(prof, prof + nbins_, 0.0);
    for (size_t j = 0; j < disc_.size(); ++j) prof[bins_[k][j]] += v[disc_[j]] - mean;
    // Bins of more than 4 pixels; splits with at least 4 bins on the left and 3 on the right.
    double total = 0, ntotal = 0;
    int used = 0;
    for (int b = 0; b < nbins_; ++b)
      if (counts_[k][size_t(b)] > 4) total += prof[b], ntotal += counts_[k][size_t(b)], ++used;
    double left = 0, nleft = 0;
    int seen = 0;
    for (int b = 0; b < nbins_; ++b) {
      if (!(counts_[k][size_t(b)] > 4)) continue;
      left += prof[b], nleft += counts_[k][size_t(b)], ++seen;
      if (seen < 4 || seen > used - 3) continue;
      const double nright = ntotal - nleft;
      const double z = std::abs(left / nleft - (total - left) / nright) / (sd * std::sqrt(1 / nleft + 1 / nright));
      best = std::max(best, z);
    }
  }
  return best;
}

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
  const double diameter = particle_diameter(data_star, opt);
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

namespace {

// Micrographs with fewer images than this share their optics group's reference spectrum.
constexpr long kMinMicrographImages = 10;

// Per particle of `table`: the step statistic, and the band power (ImageScreenStatistics) as the mean over
// the band's shells of log(power / the median power of the particle's micrograph, all its images in the
// table); 0 where the band is empty. Images read in batches, the statistics computed over the threads
// (each value depends only on its image and its micrograph's images).
std::pair<std::vector<double>, std::vector<double>> image_statistics(const ParticleTable& table, double diameter,
                                                                     int threads) {
  const size_t N = table.size();
  std::vector<double> step(N, 0.0), power(N, 0.0);
  std::vector<std::unique_ptr<ImageScreenStatistics>> stat(table.optics.size());
  std::vector<int> band(table.optics.size(), 0);
  ParticleImages images(table);
  ThreadPool pool(threads);
  std::vector<ImageScreenStatistics::Work> work(size_t(pool.size()));
  std::vector<std::vector<float>> shells(table.optics.size());  // per optics group, band_size per particle
  std::vector<size_t> slot(N);                                   // the particle's row in its group's shells
  std::vector<size_t> rows(table.optics.size(), 0);
  for (size_t i = 0; i < N; ++i) slot[i] = rows[size_t(table.optics_index[i])]++;
  constexpr size_t kBatch = 256;
  std::vector<Image> batch;
  for (size_t b = 0; b < N; b += kBatch) {
    const size_t e = std::min(N, b + kBatch);
    batch.clear();
    for (size_t i = b; i < e; ++i) {
      try {
        batch.push_back(images.read(i));
      } catch (const InputError& e) {
        throw InputError(std::string(e.what()) + " (select --auto's particle screen reads the images: "
                                                 "--auto_no_image_tests skips its image tests)");
      }
      const Image& a = batch.back();
      const size_t g = size_t(table.optics_index[i]);
      if (a.nx() != a.ny())
        input_error("{}: image of {}x{} px: the particle screen needs square images", table.where(i), a.nx(), a.ny());
      if (!stat[g]) {
        const double pixel = table.optics[g].pixel_size;
        if (!(pixel > 0))
          input_error("{}: optics group {} has no pixel size: the particle screen needs one (or --auto_no_image_tests)",
                      table.where(i), table.optics[g].number);
        stat[g] = std::make_unique<ImageScreenStatistics>(a.nx(), pixel, diameter);
        band[g] = stat[g]->band_size();
        shells[g].assign(rows[g] * size_t(std::max(0, band[g])), 0.0f);
        if (band[g] <= 0)
          spdlog::info("select --auto: optics group {}: the box holds no shell between 2 and 10 / diameter: no power "
                       "test of its particles", table.optics[g].number);
      }
    }
    pool.parallel_for(b, e, [&](size_t i, int t) {
      const size_t g = size_t(table.optics_index[i]);
      float* out = band[g] > 0 ? shells[g].data() + slot[i] * size_t(band[g]) : nullptr;
      step[i] = (*stat[g])(batch[i - b], work[size_t(t)], out);
    });
  }
  // The reference spectrum of each micrograph (of each optics group), the band power of each particle.
  std::map<std::pair<int, uint32_t>, std::vector<size_t>> mics;
  for (size_t i = 0; i < N; ++i)
    mics[{table.optics_index[i], table.micrograph.empty() ? 0u : table.micrograph[i]}].push_back(i);
  std::map<int, std::vector<size_t>> small;  // per optics group, the images of small micrographs
  std::vector<std::vector<size_t>> refs;
  for (auto& [key, idx] : mics) {
    if (long(idx.size()) >= kMinMicrographImages) refs.push_back(std::move(idx));
    else small[key.first].insert(small[key.first].end(), idx.begin(), idx.end());
  }
  for (auto& [g, idx] : small) refs.push_back(std::move(idx));
  for (const auto& idx : refs) {
    const size_t g = size_t(table.optics_index[idx[0]]);
    const int nb = band[g];
    if (nb <= 0) continue;
    std::vector<double> ref(static_cast<size_t>(nb));
    std::vector<double> v(idx.size());
    for (int k = 0; k < nb; ++k) {
      for (size_t j = 0; j < idx.size(); ++j) v[j] = shells[g][slot[idx[j]] * size_t(nb) + size_t(k)];
      ref[size_t(k)] = median(v);
    }
    for (size_t i : idx) {
      double sum = 0;
      for (int k = 0; k < nb; ++k) {
        const double p = shells[g][slot[i] * size_t(nb) + size_t(k)];
        sum += ref[size_t(k)] > 0 && p > 0 ? std::log(p / ref[size_t(k)]) : 0.0;
      }
      power[i] = sum / nb;
    }
  }
  return {std::move(step), std::move(power)};
}

// Each screened particle's deviation from its class's median of `value`, and the robust spread of the
// deviations over all screened particles.
std::pair<std::vector<double>, double> class_deviations(const std::vector<double>& value,
                                                        const std::vector<std::vector<size_t>>& screened) {
  std::vector<double> dev(value.size(), 0.0), all;
  for (const auto& idx : screened) {
    std::vector<double> v;
    for (size_t i : idx) v.push_back(value[i]);
    const double m = median(v);
    for (size_t i : idx) dev[i] = value[i] - m, all.push_back(value[i] - m);
  }
  const double spread = all.empty() ? 0.0 : median_spread(all).second;
  return {std::move(dev), spread};
}

}  // namespace

ScreenResult screen_particles(const std::string& data_star, const ParticleTable& table,
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

  // The image tests: the step statistic and the band power of every particle (the band power's reference
  // is the median of the particle's micrograph), each compared with its class's median against the robust
  // spread of those deviations over all screened particles.
  std::vector<std::vector<size_t>> screened;
  for (const auto& idx : members)
    if (screen && long(idx.size()) >= kScreenMinParticles) screened.push_back(idx);
  ScreenResult result;
  std::vector<double> step_dev, power_dev;
  double step_spread = 0, power_spread = 0;
  const bool image_tests = screen && opt.image_tests && !screened.empty();
  if (image_tests) {
    std::tie(result.step, result.band_power) = image_statistics(table, particle_diameter(data_star, opt), opt.threads);
    std::tie(step_dev, step_spread) = class_deviations(result.step, screened);
    std::tie(power_dev, power_spread) = class_deviations(result.band_power, screened);
    spdlog::info("select --auto: image statistics of {} particles: robust spread of the deviations from the class "
                 "medians {:.3f} (step statistic{}), {:.4f} (band power)",
                 table.size(), step_spread, opt.step ? "" : ", not a test without --auto_step", power_spread);
  }
  // The residual test only without the image tests: the band power measures the same excess against the
  // particle's own micrograph (the norm correction varies more between micrographs and loses particles).
  const int cnorm = image_tests ? -1 : cn;
  if (screen && !image_tests && cn < 0)
    spdlog::info("select --auto: {} has no _rlnNormCorrection: no residual test of particles", data_star);
  std::vector<size_t>& keep = result.keep;
  std::vector<char> out(table.size(), 0);
  for (size_t k = 0; k < scores.size(); ++k) {
    const std::vector<size_t>& idx = members[k];
    if (screen && long(idx.size()) >= kScreenMinParticles) {
      for (const auto& [col, sign] : {std::pair{cz, -1.0}, std::pair{cnorm, 1.0}}) {
        if (col < 0) continue;
        std::vector<double> v;
        for (size_t i : idx) v.push_back(pb.number(i, col));
        const auto [m, d] = median_spread(v);
        // The signal z is itself a z-score of the class in the image: below particle_sd, the image does not
        // show its class at that significance, however wide the class's own spread.
        const double bound = sign < 0 ? std::max(m - opt.particle_sd * d, opt.particle_sd) : m + opt.particle_sd * d;
        for (size_t j = 0; j < idx.size(); ++j)
          if (sign * (v[j] - bound) > 0) out[idx[j]] = 1;
      }
      if (image_tests)
        for (size_t i : idx)
          if ((opt.step && step_spread > 0 && step_dev[i] > opt.particle_sd * step_spread) ||
              (power_spread > 0 && power_dev[i] > opt.particle_sd * power_spread))
            out[i] = 1;
    }
    for (size_t i : idx) {
      if (out[i]) scores[k].screened_out += 1;
      else keep.push_back(i);
    }
  }
  std::sort(keep.begin(), keep.end());
  return result;
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

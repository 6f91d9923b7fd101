#include "regula/jobs/locres.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/imaging/local_resolution.hpp"
#include "regula/imaging/mtf.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula {

namespace {

// RELION's integerToString(v, 5): zero-padded to 5 characters, the sign counting as one.
std::string padded(int v) { return v < 0 ? fmt::format("-{:04d}", -v) : fmt::format("{:05d}", v); }

void write_fscs(const std::string& path, const LocalResolutionResult& r, int n, double angpix) {
  star::Document doc;
  const size_t hs = size_t(n / 2 + 1);
  std::vector<int> idx(hs);
  std::vector<double> inv(hs), ang(hs);
  for (size_t i = 0; i < hs; ++i) {
    idx[i] = int(i);
    ang[i] = i > 0 ? n * angpix / double(i) : 999.0;
    inv[i] = 1.0 / ang[i];
  }
  star::Block& list = doc.add_block("local_resolution", true);
  std::vector<double> x, y, z, res;
  for (const auto& p : r.points) {
    list.add_row();
    x.push_back(p.position[0]);
    y.push_back(p.position[1]);
    z.push_back(p.position[2]);
    res.push_back(p.resolution);
  }
  // Sampling points in pixels from the map centre, and their local resolution.
  list.set_column("rlnCoordinateX", x);
  list.set_column("rlnCoordinateY", y);
  list.set_column("rlnCoordinateZ", z);
  list.set_column("rlnAngstromResolution", res);
  for (const auto& p : r.points) {
    star::Block& b = doc.add_block(
        fmt::format("fsc_{}_{}_{}", padded(p.position[0]), padded(p.position[1]), padded(p.position[2])), true);
    for (size_t i = 0; i < hs; ++i) b.add_row();
    b.set_column("rlnSpectralIndex", idx);
    b.set_column("rlnResolution", inv);
    b.set_column("rlnAngstromResolution", ang);
    b.set_column("rlnFourierShellCorrelationCorrected", p.fsc_true);
    b.set_column("rlnFourierShellCorrelationUnmaskedMaps", r.fsc_unmasked);
    b.set_column("rlnFourierShellCorrelationMaskedMaps", p.fsc_masked);
    b.set_column("rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps", p.fsc_random);
  }
  star::write(path, doc);
}

// Percentiles of the local resolution where the mask is above 0.5, and a histogram picture.
std::vector<double> mask_statistics(const Grid<float>& locres, const Grid<float>& mask, const std::string& png) {
  std::vector<float> v;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i] > 0.5f && locres[i] > 0) v.push_back(locres[i]);
  if (v.empty()) {
    spdlog::warn("locres: no voxel of the mask (> 0.5) has a local resolution: no histogram");
    return {};
  }
  std::sort(v.begin(), v.end());
  std::vector<double> pct;
  for (double q : {0.05, 0.25, 0.5, 0.75, 0.95}) pct.push_back(v[size_t(q * double(v.size() - 1))]);
  const double lo = std::floor(v.front()), hi = std::ceil(v.back()) + 1e-9;
  const int bins = 40;
  std::vector<double> count(bins, 0.0), centre(bins);
  for (float x : v) count[size_t(std::min(bins - 1, int((x - lo) / (hi - lo) * bins)))] += 1;
  for (int b = 0; b < bins; ++b) centre[size_t(b)] = lo + (b + 0.5) * (hi - lo) / bins;
  LinePlot p;
  p.x = centre;
  p.y = count;
  p.x_min = lo;
  p.x_max = hi;
  p.y_min = 0;
  p.y_max = *std::max_element(count.begin(), count.end()) * 1.05;
  p.colour = {0, 0, 0};
  write_file_atomic(png, render_line_plot_png(p));
  return pct;
}

}  // namespace

std::string second_half_name(const std::string& half1) {
  const size_t p = half1.rfind("half1");
  if (p == std::string::npos)
    input_error("--i {}: the name has no 'half1' to replace by 'half2'; give the second half map with --i2", half1);
  return half1.substr(0, p) + "half2" + half1.substr(p + 5);
}

std::string LocresOptions::validate() const {
  if (half1.empty()) return "--i: the first unfiltered half map is required";
  if (out_root.empty()) return "--o: an output root is required";
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (!(sampling > 0)) return fmt::format("--locres_sampling: must be positive Å (got {})", sampling);
  if (maskrad < 0 && maskrad != -1) return "--locres_maskrad: must be >= 0 Å (or -1: sampling / 2)";
  if (edgwidth < 0 && edgwidth != -1) return "--locres_edgwidth: must be >= 0 Å (or -1: sampling)";
  if (!(randomize_at > 0)) return fmt::format("--locres_randomize_at: must be positive Å (got {})", randomize_at);
  if (!(minres > 0)) return fmt::format("--locres_minres: must be positive Å (got {})", minres);
  if (filter_edge_width < 0) return "--filter_edge_width: must be >= 0";
  if (fsc_box < 0) return "--locres_fsc_box: must be >= 0 (0: automatic)";
  if (randomisations < 1) return "--locres_randomisations: must be at least 1";
  if (threads < 1) return "--j: must be at least 1";
  return "";
}

LocresResult run_locres(const LocresOptions& in) {
  LocresOptions opt = in;
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("locres: " + msg);
  if (opt.half2.empty()) opt.half2 = second_half_name(opt.half1);
  mrc::Header hdr;
  const Grid<float> h1 = mrc::read(opt.half1, &hdr), h2 = mrc::read(opt.half2);
  double angpix = opt.angpix;
  if (angpix <= 0) {
    angpix = hdr.pixel_size();
    if (!(angpix > 0)) input_error("{}: no pixel size in the header; give --angpix", opt.half1);
  }
  Grid<float> mask;
  if (!opt.mask.empty()) {
    mask = mrc::read(opt.mask);
    if (!mask.same_shape(h1))
      input_error("{}: the mask is {}x{}x{}, the half maps {}x{}x{}", opt.mask, mask.nx(), mask.ny(), mask.nz(), h1.nx(),
                  h1.ny(), h1.nz());
  }
  Mtf mtf;
  LocalResolutionOptions lo;
  if (!opt.mtf.empty()) {
    mtf = Mtf::read(opt.mtf);
    lo.mtf = &mtf;
    lo.mtf_pixel_size = opt.mtf_angpix;
  }
  lo.pixel_size = angpix;
  lo.sampling = opt.sampling;
  lo.mask_radius = opt.maskrad;
  lo.edge_width = opt.edgwidth;
  lo.randomize_at = opt.randomize_at;
  lo.min_resolution = opt.minres;
  lo.bfactor = opt.adhoc_bfac;
  lo.filter_edge_width = opt.filter_edge_width;
  lo.fsc_box = opt.fsc_box;
  lo.randomisations = opt.randomisations;
  lo.seed = opt.seed;
  lo.threads = opt.threads;
  const LocalResolutionResult r = local_resolution(h1, h2, lo);

  LocresResult res;
  res.locres_map = opt.out_root + "_locres.mrc";
  res.filtered_map = opt.out_root + "_locres_filtered.mrc";
  res.fscs_star = opt.out_root + "_locres_fscs.star";
  const std::filesystem::path dir = std::filesystem::path(opt.out_root).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir);
  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  mrc::write(res.locres_map, r.local_resolution, wo);
  mrc::write(res.filtered_map, r.filtered, wo);
  write_fscs(res.fscs_star, r, h1.nx(), angpix);
  res.points = r.points.size();
  res.min_resolution = 1e30;
  for (const auto& p : r.points) {
    res.min_resolution = std::min(res.min_resolution, p.resolution);
    res.max_resolution = std::max(res.max_resolution, p.resolution);
  }
  if (!mask.empty()) {
    res.histogram_png = opt.out_root + "_locres_histogram.png";
    res.mask_percentiles = mask_statistics(r.local_resolution, mask, res.histogram_png);
    if (res.mask_percentiles.empty()) res.histogram_png.clear();
    else
      spdlog::info("locres: in the mask, local resolution 5/25/50/75/95%: {:.2f} / {:.2f} / {:.2f} / {:.2f} / {:.2f} Å",
                   res.mask_percentiles[0], res.mask_percentiles[1], res.mask_percentiles[2], res.mask_percentiles[3],
                   res.mask_percentiles[4]);
  }
  spdlog::info("locres: {} sampling points every {} px (window radius {} + {} px, FSCs in a {} px box, phases "
               "randomised from shell {}); local resolution {:.2f} to {:.2f} Å; wrote {}, {}",
               r.points.size(), r.step, r.mask_radius_px, r.edge_px, r.window, r.randomize_shell, res.min_resolution,
               res.max_resolution, res.locres_map, res.filtered_map);
  return res;
}

}  // namespace regula

#include "regula/jobs/postprocess.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mtf.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/locres.hpp"

namespace regula {

std::string PostprocessOptions::validate() const {
  if (half1.empty()) return "--i: the first unfiltered half map is required";
  if (out_root.empty()) return "--o: an output root is required";
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (!(autob_lowres > 0)) return fmt::format("--autob_lowres: must be positive Å (got {})", autob_lowres);
  if (autob_highres < 0) return fmt::format("--autob_highres: must be >= 0 Å (got {})", autob_highres);
  if (low_pass < 0) return fmt::format("--low_pass: must be >= 0 Å (got {})", low_pass);
  if (!(randomize_at_fsc > 0 && randomize_at_fsc < 1)) return "--randomize_at_fsc: must be in (0, 1)";
  if (filter_edge_width < 0) return "--filter_edge_width: must be >= 0";
  if (auto_bfac && adhoc_bfac != 0) return "--auto_bfac and --adhoc_bfac exclude each other";
  if (threads < 1) return "--j: must be at least 1";
  const PostprocessOptions d;
  if (!locres && (locres_sampling != d.locres_sampling || locres_maskrad != d.locres_maskrad ||
                  locres_edgwidth != d.locres_edgwidth || locres_randomize_at != d.locres_randomize_at ||
                  locres_minres != d.locres_minres || locres_randomisations != d.locres_randomisations ||
                  locres_fsc_box != d.locres_fsc_box))
    return "--locres_sampling/maskrad/edgwidth/randomize_at/minres/randomisations/fsc_box are used only with --locres";
  return "";
}

namespace {

// Calls fn(value, shell radius |k| in Fourier pixels) for every coefficient of an uncentred
// half-complex transform of an n^3 map.
void for_each_coefficient(Grid<cfloat>& F, int n, const std::function<void(cfloat&, double)>& fn) {
  for (int z = 0; z < F.nz(); ++z) {
    const int kz = fft_freq(z, n);
    for (int y = 0; y < F.ny(); ++y) {
      const int ky = fft_freq(y, n);
      for (int x = 0; x < F.nx(); ++x) fn(F(x, y, z), std::sqrt(double(x * x + ky * ky + kz * kz)));
    }
  }
}

// ln(mean |F|) per shell i = round(|k|) for the shells with resolution >= 2 pixels (RELION's
// Guinier plot; -99 where the shell is empty or zero).
std::vector<double> guinier(Grid<cfloat>& F, int n) {
  const size_t hs = size_t(n / 2 + 1);
  std::vector<double> sum(hs, 0.0), cnt(hs, 0.0);
  for_each_coefficient(F, n, [&](cfloat& v, double r) {
    const size_t i = size_t(std::lround(r));
    if (i < hs) {
      sum[i] += std::abs(v);
      cnt[i] += 1;
    }
  });
  std::vector<double> out(hs, -99.0);
  for (size_t i = 0; i < hs; ++i)
    if (sum[i] > 0) out[i] = std::log(sum[i] / cnt[i]);
  return out;
}

Volume times(const Volume& a, const Volume& m) {
  Volume r = a;
  for (size_t i = 0; i < r.size(); ++i) r[i] *= m[i];
  return r;
}

// relion_postprocess --locres: the local resolution only.
PostprocessResult run_postprocess_locres(const PostprocessOptions& opt) {
  if (opt.auto_bfac)
    input_error("postprocess --locres: --auto_bfac is not possible with --locres (as RELION); give --adhoc_bfac");
  const PostprocessOptions d;
  if (opt.low_pass != d.low_pass || opt.skip_fsc_weighting || opt.force_mask || opt.randomize_at_fsc != d.randomize_at_fsc ||
      opt.autob_lowres != d.autob_lowres || opt.autob_highres != d.autob_highres)
    input_error("postprocess --locres: --low_pass, --skip_fsc_weighting, --force_mask, --randomize_at_fsc and "
                "--autob_lowres/highres are for the global post-processing, not used with --locres");
  LocresOptions lo;
  lo.half1 = opt.half1;
  lo.half2 = opt.half2;
  lo.out_root = opt.out_root;
  lo.mask = opt.mask;
  lo.angpix = opt.angpix;
  lo.adhoc_bfac = opt.adhoc_bfac;
  lo.mtf = opt.mtf;
  lo.mtf_angpix = opt.mtf_angpix;
  lo.sampling = opt.locres_sampling;
  lo.maskrad = opt.locres_maskrad;
  lo.edgwidth = opt.locres_edgwidth;
  lo.randomize_at = opt.locres_randomize_at;
  lo.minres = opt.locres_minres;
  lo.randomisations = opt.locres_randomisations;
  lo.fsc_box = opt.locres_fsc_box;
  lo.filter_edge_width = opt.filter_edge_width;
  lo.seed = opt.seed;
  lo.threads = opt.threads;
  const LocresResult r = run_locres(lo);
  PostprocessResult res;
  res.locres_map = r.locres_map;
  res.locres_filtered = r.filtered_map;
  res.locres_star = r.fscs_star;
  res.locres_histogram = r.histogram_png;
  return res;
}

}  // namespace

PostprocessResult run_postprocess(const PostprocessOptions& in) {
  PostprocessOptions opt = in;
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("postprocess: " + msg);
  if (opt.locres) return run_postprocess_locres(opt);
  if (opt.half2.empty()) opt.half2 = second_half_name(opt.half1);
  mrc::Header h1h;
  const Volume h1 = mrc::read(opt.half1, &h1h), h2 = mrc::read(opt.half2);
  const int n = h1.nx();
  if (h1.ny() != n || h1.nz() != n || n % 2 || n < 8)
    input_error("{}: a half map must be a cubic volume with an even box of at least 8 (got {}x{}x{})", opt.half1, h1.nx(),
                h1.ny(), h1.nz());
  if (!h2.same_shape(h1))
    input_error("{}: the half maps differ in size ({}x{}x{} and {}x{}x{})", opt.half2, h1.nx(), h1.ny(), h1.nz(), h2.nx(),
                h2.ny(), h2.nz());
  double angpix = opt.angpix;
  if (angpix <= 0) {
    angpix = h1h.pixel_size();
    if (!(angpix > 0)) input_error("{}: no pixel size in the header; give --angpix", opt.half1);
  }
  Volume mask;
  const bool do_mask = !opt.mask.empty();
  if (do_mask) {
    mask = mrc::read(opt.mask);
    if (!mask.same_shape(h1))
      input_error("{}: the mask is {}x{}x{}, the half maps {}x{}x{}", opt.mask, mask.nx(), mask.ny(), mask.nz(), n, n, n);
    for (size_t i = 0; i < mask.size(); ++i)
      if (!(mask[i] >= -1e-3f && mask[i] <= 1.001f))
        input_error("{}: mask values must be in [0, 1] (voxel {} is {})", opt.mask, i, mask[i]);
  }
  const size_t hs = size_t(n / 2 + 1);
  PostprocessResult res;
  int randomize_at = -1;
  if (do_mask) {
    SolventCorrectedFsc sc = solvent_corrected_fsc(h1, h2, mask, opt.randomize_at_fsc, opt.seed);
    res.fsc_unmasked = std::move(sc.unmasked);
    if (sc.randomize_at < 0)
      input_error("{}: the unmasked FSC never drops below {} (--randomize_at_fsc): nothing to randomise", opt.half1,
                  opt.randomize_at_fsc);
    randomize_at = sc.randomize_at;
    res.fsc_masked = std::move(sc.masked);
    res.fsc_random_masked = std::move(sc.random);
    res.fsc_corrected = std::move(sc.corrected);
    res.randomise_from = n * angpix / randomize_at;
  } else {
    res.fsc_unmasked = fsc(h1, h2);
    res.fsc_corrected = res.fsc_unmasked;
  }
  // Final resolution: the last shell before the corrected FSC falls below 0.143 (RELION's).
  auto last_shell = [&](const std::vector<double>& f) {
    int s = 0;
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] < 0.143) break;
      s = int(i);
    }
    return s;
  };
  int res_i = last_shell(res.fsc_corrected);
  if (do_mask) {
    const int unmasked_i = last_shell(res.fsc_unmasked);
    if (unmasked_i > res_i && !opt.force_mask) {
      spdlog::warn("postprocess: the unmasked FSC extends beyond the solvent-corrected FSC: masking skipped (use "
                   "--force_mask to keep it)");
      res.fsc_corrected = res.fsc_unmasked;
      res_i = unmasked_i;
    } else if (res.fsc_random_masked[size_t(res_i)] > 0.1) {
      spdlog::warn("postprocess: the phase-randomised FSC is {:.2f} (> 0.10) at the estimated resolution; a softer "
                   "mask may give a more reliable estimate", res.fsc_random_masked[size_t(res_i)]);
    }
  }
  if (res_i < 1) input_error("{}: the FSC of the half maps is below 0.143 from the first shell on", opt.half1);
  res.final_resolution = n * angpix / res_i;

  // The average map, then MTF, FSC weighting, B-factor, low-pass.
  Volume avg = h1;
  for (size_t i = 0; i < avg.size(); ++i) avg[i] = 0.5f * (h1[i] + h2[i]);
  Grid<cfloat> F = fft_forward(avg);
  const float norm = 1.0f / (float(n) * float(n) * float(n));  // RELION's normalised transform (Guinier intercepts)
  for (auto& v : F) v *= norm;
  const std::vector<double> g_in = guinier(F, n);
  std::vector<double> g_mtf = g_in;
  if (!opt.mtf.empty()) {
    divide_by_mtf(F, n, angpix, Mtf::read(opt.mtf), opt.mtf_angpix > 0 ? opt.mtf_angpix : angpix);
    g_mtf = guinier(F, n);
  }
  if (!opt.skip_fsc_weighting) apply_fsc_weighting(F, res.fsc_corrected);
  const std::vector<double> g_weighted = guinier(F, n);
  // RELION 3.1 fits from --autob_lowres to --autob_highres, whose default 0 means every shell up to
  // Nyquist that the FSC weighting leaves non-zero (not only to the final resolution).
  const double fit_lo = opt.autob_lowres, fit_hi = opt.autob_highres;
  std::vector<double> gx(hs);
  for (size_t i = 0; i < hs; ++i) gx[i] = i > 0 ? double(i * i) / (n * angpix * n * angpix) : 0.0;
  if (opt.auto_bfac) {
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0, syy = 0;
    for (size_t i = 1; i < hs; ++i) {
      const double r = n * angpix / double(i);
      if (g_weighted[i] <= -99 || r > fit_lo || r < fit_hi) continue;
      sw += 1;
      sx += gx[i];
      sy += g_weighted[i];
      sxx += gx[i] * gx[i];
      sxy += gx[i] * g_weighted[i];
      syy += g_weighted[i] * g_weighted[i];
    }
    if (sw < 2)
      input_error("postprocess: fewer than 2 shells between --autob_lowres {} Å and --autob_highres {} Å for the Guinier "
                  "fit", fit_lo, fit_hi);
    const double vx = sxx - sx * sx / sw, vy = syy - sy * sy / sw, cxy = sxy - sx * sy / sw;
    res.slope = cxy / vx;
    res.intercept = (sy - res.slope * sx) / sw;
    res.correlation = vy > 0 ? cxy * cxy / (vx * vy) : 0.0;  // r^2, as RELION reports it
    res.bfactor = 4 * res.slope;
  } else {
    res.bfactor = opt.adhoc_bfac;
  }
  if (res.bfactor != 0) apply_bfactor(F, res.bfactor, angpix);
  const std::vector<double> g_sharp = guinier(F, n);
  const double filter = opt.low_pass > 0 ? opt.low_pass : res.final_resolution;
  low_pass(F, filter, angpix, opt.filter_edge_width);
  for (auto& v : F) v /= norm;
  Volume out = fft_inverse(F, n);

  // Files.
  res.map = opt.out_root + ".mrc";
  res.masked_map = do_mask ? opt.out_root + "_masked.mrc" : "";
  res.star = opt.out_root + ".star";
  res.fsc_png = opt.out_root + "_fsc.png";
  res.guinier_png = opt.out_root + "_guinier.png";
  const std::filesystem::path dir = std::filesystem::path(opt.out_root).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir);
  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  mrc::write(res.map, out, wo);
  if (do_mask) mrc::write(res.masked_map, times(out, mask), wo);

  star::Document doc;
  star::Block& g = doc.add_block("general", false);
  auto num = [](double v) { return fmt::format("{}", v); };
  g.set("rlnFinalResolution", num(res.final_resolution));
  g.set("rlnBfactorUsedForSharpening", num(res.bfactor));
  g.set("rlnUnfilteredMapHalf1", opt.half1);
  g.set("rlnUnfilteredMapHalf2", opt.half2);
  if (do_mask) {
    g.set("rlnMaskName", opt.mask);
    g.set("rlnRandomiseFrom", num(res.randomise_from));
  }
  if (opt.auto_bfac) {
    g.set("rlnFittedSlopeGuinierPlot", num(res.slope));
    g.set("rlnFittedInterceptGuinierPlot", num(res.intercept));
    g.set("rlnCorrelationFitGuinierPlot", num(res.correlation));
  }
  star::Block& f = doc.add_block("fsc", true);
  std::vector<int> idx(hs);
  std::vector<double> res_inv(hs), resA(hs);
  for (size_t i = 0; i < hs; ++i) {
    f.add_row();
    idx[i] = int(i);
    resA[i] = i > 0 ? n * angpix / double(i) : 999.0;
    res_inv[i] = 1.0 / resA[i];
  }
  f.set_column("rlnSpectralIndex", idx);
  f.set_column("rlnResolution", res_inv);
  f.set_column("rlnAngstromResolution", resA);
  if (do_mask) {
    f.set_column("rlnFourierShellCorrelationCorrected", res.fsc_corrected);
    f.set_column("rlnFourierShellCorrelationUnmaskedMaps", res.fsc_unmasked);
    f.set_column("rlnFourierShellCorrelationMaskedMaps", res.fsc_masked);
    f.set_column("rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps", res.fsc_random_masked);
  } else {
    f.set_column("rlnFourierShellCorrelationUnmaskedMaps", res.fsc_unmasked);
  }
  star::Block& gb = doc.add_block("guinier", true);
  std::vector<double> gx_out, gin, gmtf, gw, gs, gi;
  for (size_t i = 0; i < hs; ++i) {
    const double r = i > 0 ? n * angpix / double(i) : 1e30;
    if (r < 2 * angpix) continue;
    gb.add_row();
    gx_out.push_back(gx[i]);
    gin.push_back(g_in[i]);
    gmtf.push_back(g_mtf[i]);
    gw.push_back(g_weighted[i]);
    gs.push_back(g_sharp[i]);
    gi.push_back(res.intercept);
  }
  gb.set_column("rlnResolutionSquared", gx_out);
  gb.set_column("rlnLogAmplitudesOriginal", gin);
  if (!opt.mtf.empty()) gb.set_column("rlnLogAmplitudesMTFCorrected", gmtf);
  if (!opt.skip_fsc_weighting) gb.set_column("rlnLogAmplitudesWeighted", gw);
  if (res.bfactor != 0) gb.set_column("rlnLogAmplitudesSharpened", gs);
  if (opt.auto_bfac) gb.set_column("rlnLogAmplitudesIntercept", gi);
  star::write(res.star, doc);

  // Pictures: FSC curves (corrected black, unmasked green, masked blue, phase-randomised red; the
  // dashed line at 0.143) against 1/Å, and the Guinier plot (original black, weighted blue,
  // sharpened red) against 1/Å^2.
  {
    LinePlot p;
    p.x = res_inv;
    p.x[0] = 0;
    p.y = res.fsc_corrected;
    p.x_min = 0;
    p.x_max = 1.0 / (2 * angpix);
    p.y_min = -0.1;
    p.y_max = 1.05;
    p.hlines = {0.143, 0.0};
    p.colour = {0, 0, 0};
    if (do_mask) {
      p.more.push_back({p.x, res.fsc_unmasked, {0, 160, 0}});
      p.more.push_back({p.x, res.fsc_masked, {0, 0, 220}});
      p.more.push_back({p.x, res.fsc_random_masked, {220, 0, 0}});
    }
    write_file_atomic(res.fsc_png, render_line_plot_png(p));
  }
  {
    LinePlot p;
    std::vector<double> y1, y2, y3, xs;
    for (size_t i = 1; i < gx_out.size(); ++i) {
      xs.push_back(gx_out[i]);
      y1.push_back(gin[i] > -99 ? gin[i] : NAN);
      y2.push_back(gw[i] > -99 ? gw[i] : NAN);
      y3.push_back(gs[i] > -99 ? gs[i] : NAN);
    }
    double lo = 1e30, hi = -1e30;
    for (const auto* v : {&y1, &y2, &y3})
      for (double y : *v)
        if (std::isfinite(y)) lo = std::min(lo, y), hi = std::max(hi, y);
    if (xs.size() >= 2 && hi > lo) {
      p.x = xs;
      p.y = y1;
      p.x_min = 0;
      p.x_max = xs.back();
      p.y_min = lo - 0.5;
      p.y_max = hi + 0.5;
      p.colour = {0, 0, 0};
      p.more.push_back({xs, y2, {0, 0, 220}});
      p.more.push_back({xs, y3, {220, 0, 0}});
      write_file_atomic(res.guinier_png, render_line_plot_png(p));
    }
  }
  spdlog::info("postprocess: final resolution {:.2f} Å (corrected FSC 0.143), B-factor {:.1f} Å^2, wrote {}",
               res.final_resolution, res.bfactor, res.map);
  return res;
}

}  // namespace regula

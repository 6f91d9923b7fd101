// Files of a class2d iteration (RELION's names and blocks), checkpoints, the PNG gallery and
// `regula select`.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/state_io.hpp"
#include "regula/jobs/class2d_detail.hpp"
#include "regula/jobs/ml3d.hpp"

namespace regula::class2d_detail {

namespace {

// Version 2 adds the origins and the offset prior, version 3 the bounds of the exact sums, version 4
// replaces the per-particle signal scale by RELION's norm correction and adds the group scales and
// the classes' SSNR. Files of versions 1-3 still read: their per-particle scale meant something else
// and is dropped (norm corrections 1, group scales 1).
constexpr char kMagic[8] = {'R', 'G', 'C', '2', 'D', '0', '0', '4'};
constexpr char kMagic3[8] = {'R', 'G', 'C', '2', 'D', '0', '0', '3'};
constexpr char kMagic2[8] = {'R', 'G', 'C', '2', 'D', '0', '0', '2'};
constexpr char kMagic1[8] = {'R', 'G', 'C', '2', 'D', '0', '0', '1'};

std::string num(double v) { return fmt::format("{}", v); }  // shortest text that reads back exactly

// RELION writes spectra in the units of its FFT, normalised by 1/n^2 (2D): powers divide by n^4.
double relion_power(double v, int n) { return v / (double(n) * n * double(n) * n); }

void write_state(const std::string& path, const State& st) {
  AtomicFile f(path);
  auto put_i = [&](int64_t v) { f.write(&v, sizeof v); };
  auto put_d = [&](const std::vector<double>& v) { f.write(v.data(), v.size() * sizeof(double)); };
  f.write(kMagic, sizeof kMagic);
  put_i(st.iteration);
  put_i(st.current_shells);
  put_i(st.n);
  put_i(int64_t(st.fraction.size()));
  put_i(int64_t(st.sigma2.size()));
  put_i(st.sigma2.empty() ? 0 : int64_t(st.sigma2.front().size()));
  put_i(int64_t(st.norm.size()));
  put_d(st.fraction);
  for (const auto& s : st.sigma2) put_d(s);
  put_d(st.norm);
  put_d(st.origin_x);
  put_d(st.origin_y);
  put_d({st.sigma2_offset, st.ctf_max, st.x_bound, st.avg_norm});
  put_i(int64_t(st.group_scale.size()));
  put_d(st.group_scale);
  put_i(int64_t(st.ssnr.size()));
  for (const auto& s : st.ssnr) {
    put_i(int64_t(s.size()));
    put_d(s);
  }
  f.commit();
}

void read_state(const std::string& path, State& st) {
  std::string b = read_file(path);
  size_t pos = 0;
  auto need = [&](size_t bytes) {
    if (pos + bytes > b.size())
      input_error("{}: truncated class2d state file (byte offset {}, need {} more bytes)", path, pos, bytes);
  };
  need(sizeof kMagic);
  const bool v1 = std::memcmp(b.data(), kMagic1, sizeof kMagic1) == 0;
  const bool v2 = std::memcmp(b.data(), kMagic2, sizeof kMagic2) == 0;
  const bool v3 = std::memcmp(b.data(), kMagic3, sizeof kMagic3) == 0;
  if (!v1 && !v2 && !v3 && std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
    input_error("{}: not a Regula class2d state file (byte offset 0: expected 'RGC2D004' or an earlier version)", path);
  const bool v4 = !v1 && !v2 && !v3;
  pos = sizeof kMagic;
  auto get_i = [&]() {
    need(8);
    int64_t v;
    std::memcpy(&v, b.data() + pos, 8);
    pos += 8;
    return v;
  };
  auto get_d = [&](size_t count) {
    need(count * 8);
    std::vector<double> v(count);
    std::memcpy(v.data(), b.data() + pos, count * 8);
    pos += count * 8;
    return v;
  };
  st.iteration = int(get_i());
  st.current_shells = int(get_i());
  st.n = int(get_i());
  const int64_t K = get_i(), G = get_i(), hs = get_i(), N = get_i();
  if (K < 1 || G < 1 || hs < 1 || N < 1 || K > 100000 || G > 100000 || hs > 100000)
    input_error("{}: implausible sizes in the state file (K {}, groups {}, shells {}, particles {})", path, K, G, hs, N);
  st.fraction = get_d(static_cast<size_t>(K));
  st.sigma2.clear();
  for (int64_t g = 0; g < G; ++g) st.sigma2.push_back(get_d(static_cast<size_t>(hs)));
  st.norm = get_d(size_t(N));
  if (!v4) st.norm.assign(size_t(N), 1.0);  // versions 1-3: a per-particle signal scale, not a norm correction
  st.avg_norm = 1;
  st.group_scale.clear();
  st.ssnr.clear();
  st.origin_x.clear();
  st.origin_y.clear();
  st.sigma2_offset = st.ctf_max = st.x_bound = 0;
  if (!v1) {
    st.origin_x = get_d(size_t(N));
    st.origin_y = get_d(size_t(N));
    st.sigma2_offset = get_d(1)[0];
  }
  if (!v1 && !v2) {
    const std::vector<double> bounds = get_d(v4 ? 3 : 2);
    st.ctf_max = bounds[0];
    st.x_bound = bounds[1];
    if (v4) st.avg_norm = bounds[2];
  }
  if (v4) {
    const int64_t G2 = get_i();
    if (G2 < 0 || G2 > N) input_error("{}: implausible number of particle groups {} in the state file", path, G2);
    st.group_scale = get_d(size_t(G2));
    const int64_t K2 = get_i();
    if (K2 != 0 && K2 != K) input_error("{}: SSNR of {} classes in the state file, expected {}", path, K2, K);
    for (int64_t k = 0; k < K2; ++k) {
      const int64_t len = get_i();
      if (len != hs) input_error("{}: SSNR of class {} has {} shells in the state file, expected {}", path, k + 1, len, hs);
      st.ssnr.push_back(get_d(size_t(len)));
    }
  }
  if (pos != b.size()) input_error("{}: {} unexpected bytes at the end of the state file", path, b.size() - pos);
}

star::Block& pairs(star::Document& doc, const std::string& name) { return doc.add_block(name, false); }

star::Block& loop(star::Document& doc, const std::string& name, size_t rows) {
  star::Block& b = doc.add_block(name, true);
  for (size_t i = 0; i < rows; ++i) b.add_row();
  return b;
}

}  // namespace

Files iteration_files(const std::string& root, int it) {
  std::string p = fmt::format("{}_it{:03d}_", root, it);
  return {p + "classes.mrcs", p + "model.star", p + "data.star", p + "optimiser.star", p + "state.bin",
          p + "classes.png"};
}

static void write_model(const std::string& path, const Class2DOptions& opt, const Files& f, double angpix,
                        const State& st, const IterationReport& rep, const ml3d::Groups& groups) {
  const int n = st.n, K = int(st.classes.size()), hs = n / 2 + 1;
  star::Document doc;
  star::Block& g = pairs(doc, "model_general");
  g.set("rlnReferenceDimensionality", "2");
  g.set("rlnDataDimensionality", "2");
  g.set("rlnOriginalImageSize", std::to_string(n));
  g.set("rlnCurrentResolution", num(rep.resolution_A));
  g.set("rlnCurrentImageSize", std::to_string(std::min(n, 2 * (rep.used_shells + 1))));
  g.set("rlnPaddingFactor", "2");
  g.set("rlnIsHelix", "0");
  g.set("rlnFourierSpaceInterpolator", "1");
  g.set("rlnPixelSize", num(angpix));
  g.set("rlnNrClasses", std::to_string(K));
  g.set("rlnNrBodies", "1");
  g.set("rlnNrGroups", std::to_string(groups.names.size()));
  g.set("rlnNrOpticsGroups", std::to_string(st.sigma2.size()));
  g.set("rlnTau2FudgeFactor", num(opt.tau2_fudge));
  g.set("rlnNormCorrectionAverage", num(st.avg_norm));
  g.set("rlnLogLikelihood", num(rep.log_likelihood_sum));
  g.set("rlnAveragePmax", num(rep.average_pmax));
  g.set("rlnSigmaOffsetsAngst", num(std::sqrt(st.sigma2_offset)));

  star::Block& c = loop(doc, "model_classes", static_cast<size_t>(K));
  std::vector<std::string> ref(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) ref[size_t(k)] = fmt::format("{:06d}@{}", k + 1, f.classes);
  c.set_column("rlnReferenceImage", ref);
  c.set_column("rlnClassDistribution", st.fraction);
  std::vector<double> res = rep.class_resolution_A;
  if (res.empty()) res.assign(size_t(K), rep.resolution_A);
  c.set_column("rlnEstimatedResolution", res);

  for (int k = 0; k < K; ++k) {
    star::Block& b = loop(doc, fmt::format("model_class_{}", k + 1), static_cast<size_t>(hs));
    std::vector<int> idx(static_cast<size_t>(hs));
    std::vector<double> res1(static_cast<size_t>(hs)), resA(static_cast<size_t>(hs)), ssnr(static_cast<size_t>(hs), 0.0), tau2(static_cast<size_t>(hs), 0.0);
    for (int s = 0; s < hs; ++s) {
      idx[size_t(s)] = s;
      res1[size_t(s)] = s / (n * angpix);
      resA[size_t(s)] = s > 0 ? n * angpix / s : 999.0;
      if (size_t(k) < rep.ssnr.size() && size_t(s) < rep.ssnr[size_t(k)].size()) ssnr[size_t(s)] = rep.ssnr[size_t(k)][size_t(s)];
      if (size_t(k) < rep.tau2.size() && size_t(s) < rep.tau2[size_t(k)].size())
        tau2[size_t(s)] = relion_power(rep.tau2[size_t(k)][size_t(s)], n);
    }
    b.set_column("rlnSpectralIndex", idx);
    b.set_column("rlnResolution", res1);
    b.set_column("rlnAngstromResolution", resA);
    b.set_column("rlnSsnrMap", ssnr);
    b.set_column("rlnReferenceTau2", tau2);
  }
  for (size_t grp = 0; grp < st.sigma2.size(); ++grp) {
    star::Block& b = loop(doc, fmt::format("model_optics_group_{}", grp + 1), static_cast<size_t>(hs));
    std::vector<int> idx(static_cast<size_t>(hs));
    std::vector<double> res1(static_cast<size_t>(hs)), s2(static_cast<size_t>(hs));
    for (int s = 0; s < hs; ++s) {
      idx[size_t(s)] = s;
      res1[size_t(s)] = s / (n * angpix);
      s2[size_t(s)] = relion_power(st.sigma2[grp][size_t(s)], n);
    }
    b.set_column("rlnSpectralIndex", idx);
    b.set_column("rlnResolution", res1);
    b.set_column("rlnSigma2Noise", s2);
  }
  // RELION 3.1's model_groups: number, name, particles, scale correction.
  const size_t G = groups.names.size();
  star::Block& gb = loop(doc, "model_groups", G);
  std::vector<int> gnum(G);
  for (size_t k = 0; k < G; ++k) gnum[k] = int(k) + 1;
  std::vector<double> gscale = st.group_scale;
  gscale.resize(G, 1.0);
  gb.set_column("rlnGroupNumber", gnum);
  gb.set_column("rlnGroupName", groups.names);
  gb.set_column("rlnGroupNrParticles", groups.count);
  gb.set_column("rlnGroupScaleCorrection", gscale);
  star::write(path, doc);
}

Files write_iteration(const Class2DOptions& opt, const std::string& input_star, const ParticleTable& table,
                      const ml3d::Groups& groups, double angpix, const State& st, const IterationReport& rep) {
  Files f = iteration_files(opt.out_root, st.iteration);
  if (mpi::rank() != 0) return f;  // under mpirun, rank 0 writes
  const size_t K = st.classes.size();
  // Class averages.
  {
    mrc::WriteOptions wo;
    wo.pixel_size = angpix;
    wo.is_stack = true;
    mrc::StackWriter w(f.classes, st.n, st.n, wo);
    for (const Image& c : st.classes) w.append(c);
    w.commit();
  }
  std::vector<int> counts(K, 0);
  for (int c : rep.particle_class)
    if (c >= 1 && size_t(c) <= K) counts[size_t(c - 1)] += 1;
  write_state(f.state, st);
  write_model(f.model, opt, f, angpix, st, rep, groups);
  // Particles with their assignments.
  if (!rep.particle_class.empty()) {
    ParticleTable out = table;
    out.class_number = rep.particle_class;
    out.psi = rep.psi;
    out.origin_x = rep.origin_x;
    out.origin_y = rep.origin_y;
    out.sync();
    star::Block& pb = out.particles_block();
    pb.set_column("rlnMaxValueProbDistribution", rep.pmax);
    pb.set_column("rlnNrOfSignificantSamples", rep.n_significant);
    pb.set_column("rlnLogLikeliContribution", rep.log_likelihood);
    pb.set_column("rlnNormCorrection", st.norm);
    pb.set_column("regulaSignalZ", rep.signal_z);
    out.write(f.data);
  } else {
    f.data.clear();
  }
  write_file_atomic(f.png, class_gallery_png(st.classes, rep.particle_class.empty() ? std::vector<int>(K, 0) : counts));
  // The optimiser file last: its presence means the checkpoint is complete.
  star::Document doc;
  star::Block& o = pairs(doc, "optimiser_general");
  o.set("rlnOutputRootName", opt.out_root);
  o.set("rlnModelStarFile", f.model);
  o.set("rlnExperimentalDataStarFile", f.data.empty() ? input_star : f.data);
  o.set("rlnCurrentIteration", std::to_string(st.iteration));
  o.set("rlnNumberOfIterations", std::to_string(opt.iterations));
  o.set("rlnRandomSeed", std::to_string(opt.seed));
  o.set("rlnNrClasses", std::to_string(K));
  o.set("rlnTau2FudgeFactor", num(opt.tau2_fudge));
  o.set("rlnParticleDiameter", num(opt.particle_diameter));
  o.set("rlnWidthMaskEdge", num(opt.mask_edge));
  o.set("rlnDoZeroMask", opt.zero_mask ? "1" : "0");
  o.set("rlnDoSolventFlattening", opt.flatten_solvent ? "1" : "0");
  o.set("rlnDoCorrectCtf", opt.ctf ? "1" : "0");
  o.set("rlnDoCorrectNorm", opt.norm ? "1" : "0");
  o.set("rlnDoCorrectScale", opt.scale ? "1" : "0");
  o.set("rlnPsiStep", num(opt.psi_step));
  o.set("rlnOffsetRange", num(opt.offset_range));
  o.set("rlnOffsetStep", num(opt.offset_step));
  o.set("rlnAdaptiveOversampleOrder", std::to_string(opt.oversampling));
  o.set("regulaInitialOffsetSigma", num(opt.offset_sigma));
  o.set("rlnIncrementImageSize", std::to_string(opt.incr_size));
  o.set("rlnInitialLowPassFilter", num(opt.ini_high));
  o.set("regulaInputStarFile", input_star);
  o.set("regulaPixelSize", num(opt.angpix));
  o.set("regulaCenterClasses", opt.center_classes ? "1" : "0");
  o.set("regulaBatchSize", std::to_string(opt.batch_size));
  o.set("regulaReseedUntil", std::to_string(opt.reseed_until));
  o.set("regulaReseedEmpty", fmt::format("{}", opt.reseed_empty));
  o.set("regulaClassesFile", f.classes);
  o.set("regulaStateFile", f.state);
  star::write(f.optimiser, doc);
  return f;
}

void read_checkpoint(const std::string& path, Class2DOptions& opt, std::string& input_star, State& st, size_t) {
  const state_io::OptimiserFile o(path, "class2d");
  auto get = [&](const std::string& key) { return o.get(key); };
  auto get_d = [&](const std::string& key) { return o.number(key); };
  opt.classes = int(get_d("rlnNrClasses"));
  if (!opt.iterations_given) opt.iterations = int(get_d("rlnNumberOfIterations"));
  opt.seed = uint64_t(get_d("rlnRandomSeed"));
  opt.tau2_fudge = get_d("rlnTau2FudgeFactor");
  opt.particle_diameter = get_d("rlnParticleDiameter");
  opt.mask_edge = get_d("rlnWidthMaskEdge");
  opt.zero_mask = get_d("rlnDoZeroMask") != 0;
  opt.flatten_solvent = get_d("rlnDoSolventFlattening") != 0;
  opt.ctf = get_d("rlnDoCorrectCtf") != 0;
  opt.norm = get_d("rlnDoCorrectNorm") != 0;
  opt.scale = get_d("rlnDoCorrectScale") != 0;
  opt.psi_step = get_d("rlnPsiStep");
  opt.offset_range = get_d("rlnOffsetRange");
  opt.offset_step = get_d("rlnOffsetStep");
  // Checkpoints written before the finer pass existed had the coarse pass only.
  opt.oversampling = o.has("rlnAdaptiveOversampleOrder") ? int(get_d("rlnAdaptiveOversampleOrder")) : 0;
  if (o.has("regulaInitialOffsetSigma")) opt.offset_sigma = get_d("regulaInitialOffsetSigma");
  opt.incr_size = int(get_d("rlnIncrementImageSize"));
  opt.ini_high = get_d("rlnInitialLowPassFilter");
  opt.angpix = get_d("regulaPixelSize");
  opt.center_classes = get_d("regulaCenterClasses") != 0;
  opt.batch_size = int(get_d("regulaBatchSize"));
  if (o.has("regulaReseedUntil")) opt.reseed_until = int(get_d("regulaReseedUntil"));
  if (o.has("regulaReseedEmpty")) opt.reseed_empty = get_d("regulaReseedEmpty");
  if (opt.out_root.empty()) opt.out_root = get("rlnOutputRootName");
  input_star = get("regulaInputStarFile");
  opt.input = input_star;
  read_state(get("regulaStateFile"), st);
  mrc::Header h;
  Grid<float> stack = mrc::read(get("regulaClassesFile"), &h);
  if (stack.nx() != st.n || stack.ny() != st.n || stack.nz() != opt.classes)
    input_error("{}: expected {} classes of {}x{} px, found {}x{}x{}", get("regulaClassesFile"), opt.classes, st.n,
                st.n, stack.nx(), stack.ny(), stack.nz());
  st.classes.assign(size_t(opt.classes), Image(st.n, st.n));
  for (int k = 0; k < opt.classes; ++k)
    std::copy(stack.section(k), stack.section(k) + size_t(st.n) * size_t(st.n), st.classes[size_t(k)].data());
  if (int(st.fraction.size()) != opt.classes)
    input_error("{}: state has {} class fractions for {} classes", path, st.fraction.size(), opt.classes);
}

// ---- PNG gallery ----

namespace {
// 3x5 bitmap digits, rows top to bottom, 3 bits per row (MSB left).
constexpr std::array<std::array<uint8_t, 5>, 10> kDigits{{
    {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1},
    {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
}};
}  // namespace

std::string class_gallery_png(const std::vector<Image>& classes, const std::vector<int>& counts) {
  const int K = int(classes.size());
  if (K == 0) runtime_error("class gallery: no classes");
  const int n = classes.front().nx();
  const int zoom = std::max(1, (64 + n - 1) / n);
  const int tile = n * zoom, label = 14, gap = 2, cols = std::min(K, 8), rows = (K + cols - 1) / cols;
  const int W = cols * (tile + gap) + gap, H = rows * (tile + label + gap) + gap;
  std::vector<uint8_t> rgb(size_t(W) * size_t(H) * 3, 40);
  std::vector<int> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return counts[size_t(a)] > counts[size_t(b)]; });
  for (int slot = 0; slot < K; ++slot) {
    const Image& img = classes[size_t(order[size_t(slot)])];
    const int ox = gap + (slot % cols) * (tile + gap), oy = gap + (slot / cols) * (tile + label + gap);
    auto [mn, mx] = std::minmax_element(img.begin(), img.end());
    const double lo = *mn, span = (*mx - *mn) > 0 ? double(*mx - *mn) : 1.0;
    for (int y = 0; y < tile; ++y)
      for (int x = 0; x < tile; ++x) {
        // Image y up (MRC convention): row 0 of the PNG is the top, i.e. the last image row.
        double v = (img(x / zoom, n - 1 - y / zoom) - lo) / span;
        uint8_t g = uint8_t(std::clamp(v * 255.0 + 0.5, 0.0, 255.0));
        uint8_t* px = &rgb[(size_t(oy + y) * size_t(W) + size_t(ox + x)) * 3];
        px[0] = px[1] = px[2] = g;
      }
    std::string text = std::to_string(counts[size_t(order[size_t(slot)])]);
    const int scale = 2, tx0 = ox + 2, ty0 = oy + tile + 2;
    for (size_t ci = 0; ci < text.size(); ++ci) {
      const auto& glyph = kDigits[size_t(text[ci] - '0')];
      for (int gy = 0; gy < 5; ++gy)
        for (int gx = 0; gx < 3; ++gx) {
          if (!((glyph[size_t(gy)] >> (2 - gx)) & 1)) continue;
          for (int sy = 0; sy < scale; ++sy)
            for (int sx = 0; sx < scale; ++sx) {
              int X = tx0 + int(ci) * 4 * scale + gx * scale + sx, Y = ty0 + gy * scale + sy;
              if (X >= W || Y >= H) continue;
              uint8_t* px = &rgb[(size_t(Y) * size_t(W) + size_t(X)) * 3];
              px[0] = 255;
              px[1] = 220;
              px[2] = 0;
            }
        }
    }
  }
  return encode_png_rgb(rgb, W, H);
}

}  // namespace regula::class2d_detail

namespace regula {

std::string SelectOptions::validate() const {
  if (input.empty()) return "--i: a class2d data.star is required";
  if (output.empty()) return "--o: an output STAR file is required";
  if (int(!classes.empty()) + int(min_count >= 0) + int(automatic) != 1)
    return "give exactly one of --classes, --min_count and --auto";
  if (automatic) return auto_options().validate();
  const AutoSelectOptions d;
  if (auto_min_contrast != d.min_contrast || auto_max_contrast != d.max_contrast || auto_max_edge != d.max_edge ||
      auto_particle_sd != d.particle_sd || particle_diameter != 0 || auto_no_image_tests || auto_step)
    return "--auto_min_contrast, --auto_max_contrast, --auto_max_edge, --auto_particle_sd, --auto_no_image_tests, "
           "--auto_step and --particle_diameter need --auto";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  for (int c : classes)
    if (c < 1) return fmt::format("--classes: class numbers start at 1 (got {})", c);
  return "";
}

size_t select_classes(const SelectOptions& opt) {
  std::string msg = opt.validate();
  if (!msg.empty()) throw InputError(msg);
  ParticleTable t = ParticleTable::read(opt.input);
  if (!t.particles_block().has("rlnClassNumber")) input_error("{}: the particles have no _rlnClassNumber", opt.input);
  std::vector<size_t> keep;
  if (opt.automatic) {
    std::vector<ClassScore> scores = score_classes(opt.input, t, opt.auto_options());
    ScreenResult screen = screen_particles(opt.input, t, scores, opt.auto_options());
    keep = std::move(screen.keep);
    if (!screen.step.empty()) {  // the image tests' statistics, for the user to see (and sort by)
      t.particles_block().set_column("regulaStepZ", screen.step);
      t.particles_block().set_column("regulaBandPower", screen.band_power);
    }
    spdlog::info("select --auto: class, particles, contrast / median, edge ratio, kept, particles screened out");
    for (const auto& s : scores)
      if (s.particles > 0)
        spdlog::info("  {:3d} {:7d} {:6.2f} {:6.2f} {:>3} {:7d}", s.number, s.particles, s.contrast_ratio, s.edge_ratio,
                     s.kept ? "yes" : "no", s.screened_out);
    std::string scores_path = opt.output;
    if (scores_path.size() > 5 && scores_path.ends_with(".star")) scores_path.resize(scores_path.size() - 5);
    write_class_scores(scores_path + "_class_scores.star", scores);
  } else {
    std::map<int, long> count;
    for (int c : t.class_number) count[c] += 1;
    for (size_t i = 0; i < t.size(); ++i) {
      int c = t.class_number[i];
      bool k = opt.min_count >= 0 ? count[c] >= opt.min_count
                                  : std::find(opt.classes.begin(), opt.classes.end(), c) != opt.classes.end();
      if (k) keep.push_back(i);
    }
  }
  t.select(keep);
  t.write(opt.output);
  return keep.size();
}

}  // namespace regula

// Files of a refine3d iteration (RELION's names and blocks), checkpoints, angular distributions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include <fmt/format.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/jobs/refine3d_detail.hpp"
#include "regula/jobs/state_io.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/healpix.hpp"

namespace regula::refine3d_detail {

namespace {

constexpr char kMagic[8] = {'R', 'G', 'R', '3', 'D', '0', '0', '2'};

std::string num(double v) { return fmt::format("{}", v); }
double relion_power(double v, int n) { return v / (double(n) * n * double(n) * n); }
}  // namespace

std::vector<double> group_pixel_sizes(const ParticleTable& table) {
  std::vector<double> p;
  for (const auto& g : table.optics) p.push_back(g.pixel_size);
  return p;
}

namespace {

void write_state(const std::string& path, const State& st) {
  state_io::Writer w;
  w.buf_.append(kMagic, 8);
  for (int64_t v : {int64_t(st.iteration), int64_t(st.order), int64_t(st.local), int64_t(st.current_shells),
                    int64_t(st.res_shell), int64_t(st.nr_iter_wo_resol_gain), int64_t(st.nr_iter_wo_large_changes),
                    int64_t(st.fine_enough), int64_t(st.converged), int64_t(st.final_done), int64_t(st.n)})
    w.i(v);
  for (double v : {st.offset_range, st.offset_step, st.smallest_change_ang, st.smallest_change_off,
                   st.current_change_ang, st.current_change_off, st.acc_rot, st.acc_trans, st.average_pmax,
                   st.sigma2_offset, st.avg_norm, st.x_l1_max})
    w.d(v);
  w.i(int64_t(st.sigma2.size()));
  for (const auto& h : st.sigma2) {
    w.i(int64_t(h.size()));
    for (const auto& g : h) w.vd(g);
  }
  w.vd(st.group_scale);
  for (const auto* v : {&st.p.rot, &st.p.tilt, &st.p.psi, &st.p.ox, &st.p.oy, &st.p.norm, &st.p.pmax, &st.p.loglik, &st.fsc}) w.vd(*v);
  w.vi(st.half);
  w.vi(st.p.nsig_int());
  write_file_atomic(path, w.buf_);
}

void read_state(const std::string& path, State& st) {
  state_io::Reader r(path, "refine3d");
  r.magic(kMagic);
  for (int* v : {&st.iteration, &st.order, &st.local, &st.current_shells, &st.res_shell, &st.nr_iter_wo_resol_gain,
                 &st.nr_iter_wo_large_changes, &st.fine_enough, &st.converged, &st.final_done, &st.n})
    *v = int(r.i());
  for (double* v : {&st.offset_range, &st.offset_step, &st.smallest_change_ang, &st.smallest_change_off,
                    &st.current_change_ang, &st.current_change_off, &st.acc_rot, &st.acc_trans, &st.average_pmax,
                    &st.sigma2_offset, &st.avg_norm, &st.x_l1_max})
    *v = r.d();
  size_t H = r.count();
  if (H != 2) input_error("{}: expected 2 half sets in the state file, found {}", path, H);
  st.sigma2.assign(H, {});
  for (auto& h : st.sigma2) {
    size_t G = r.count();
    h.resize(G);
    for (auto& g : h) g = r.vd();
  }
  st.group_scale = r.vd();
  for (auto* v : {&st.p.rot, &st.p.tilt, &st.p.psi, &st.p.ox, &st.p.oy, &st.p.norm, &st.p.pmax, &st.p.loglik, &st.fsc}) *v = r.vd();
  st.half = r.vi();
  const std::vector<int> nsig = r.vi();
  st.p.nsig.assign(nsig.begin(), nsig.end());
  r.end();
  const size_t N = st.p.rot.size();
  for (const auto* v : {&st.p.tilt, &st.p.psi, &st.p.ox, &st.p.oy, &st.p.norm, &st.p.pmax, &st.p.loglik})
    if (v->size() != N) input_error("{}: inconsistent per-particle vectors in the state file", path);
  if (st.half.size() != N || st.p.nsig.size() != N) input_error("{}: inconsistent per-particle vectors", path);
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
  return {p + "half1_class001.mrc", p + "half2_class001.mrc", p + "model.star", p + "data.star",
          p + "optimiser.star", p + "state.bin", p + "half1_class001_angdist.bild"};
}

ParticleTable data_table(const ParticleTable& table, const State& st) {
  ParticleTable out = table;
  st.p.set_poses(out);
  out.random_subset = st.half;
  out.class_number.assign(table.size(), 1);
  out.sync();
  star::Block& pb = out.particles_block();
  pb.set_column("rlnRandomSubset", st.half);
  pb.set_column("rlnClassNumber", out.class_number);
  st.p.write_columns(pb);
  const ml3d::Groups groups = ml3d::particle_groups(table);
  std::vector<int> gn(table.size());
  for (size_t i = 0; i < gn.size(); ++i) gn[i] = groups.group_of[i] + 1;
  pb.set_column("rlnGroupNumber", gn);
  return out;
}

void write_model(const std::string& path, const Refine3DOptions& opt, double angpix, const State& st,
                 const IterationReport& rep, const std::vector<double>& group_pixel) {
  const int n = st.n, hs = n / 2 + 1;
  star::Document doc;
  star::Block& g = pairs(doc, "model_general");
  g.set("rlnReferenceDimensionality", "3");
  g.set("rlnDataDimensionality", "2");
  g.set("rlnOriginalImageSize", std::to_string(n));
  g.set("rlnCurrentResolution", num(rep.resolution_A));
  g.set("rlnCurrentImageSize", std::to_string(std::min(n, 2 * (rep.used_shells + 1))));
  g.set("rlnPaddingFactor", std::to_string(opt.pad));
  g.set("rlnPixelSize", num(angpix));
  g.set("rlnNrClasses", "1");
  g.set("rlnNrBodies", "1");
  g.set("rlnNrGroups", std::to_string(st.sigma2.empty() ? 0 : st.sigma2[0].size()));
  g.set("rlnNrOpticsGroups", std::to_string(st.sigma2.empty() ? 0 : st.sigma2[0].size()));
  g.set("rlnTau2FudgeFactor", num(opt.tau2_fudge));
  g.set("rlnLogLikelihood", num(rep.loglik_sum));
  g.set("rlnAveragePmax", num(rep.average_pmax));
  // The mean of the particles' rlnNormCorrection (particle_subtract scales by it / each one's).
  g.set("rlnNormCorrectionAverage", num(st.avg_norm));
  g.set("rlnSigmaOffsetsAngst", num(std::sqrt(st.sigma2_offset) * angpix));
  g.set("rlnAutoLocalSearchesHealpixOrder", std::to_string(opt.auto_local_healpix_order));
  star::Block& c = loop(doc, "model_classes", 1);
  c.set_column("rlnReferenceImage", std::vector<std::string>{iteration_files(opt.out_root, st.iteration).half1});
  c.set_column("rlnClassDistribution", std::vector<double>{1.0});
  c.set_column("rlnEstimatedResolution", std::vector<double>{rep.resolution_A});
  star::Block& b = loop(doc, "model_class_1", size_t(hs));
  std::vector<int> idx(static_cast<size_t>(hs));
  std::vector<double> res1(static_cast<size_t>(hs)), resA(static_cast<size_t>(hs)), fsc(static_cast<size_t>(hs), 0.0), ssnr(static_cast<size_t>(hs), 0.0),
      tau2(static_cast<size_t>(hs), 0.0);
  for (int s = 0; s < hs; ++s) {
    const size_t u = size_t(s);
    idx[u] = s;
    res1[u] = s / (n * angpix);
    resA[u] = s > 0 ? n * angpix / s : 999.0;
    if (u < rep.fsc.size()) fsc[u] = rep.fsc[u];
    if (u < rep.ssnr.size()) ssnr[u] = rep.ssnr[u];
    if (u < rep.tau2[0].size()) tau2[u] = relion_power(rep.tau2[0][u], n);
  }
  b.set_column("rlnSpectralIndex", idx);
  b.set_column("rlnResolution", res1);
  b.set_column("rlnAngstromResolution", resA);
  b.set_column("rlnSsnrMap", ssnr);
  b.set_column("rlnGoldStandardFsc", fsc);
  b.set_column("rlnReferenceTau2", tau2);
  for (size_t h = 0; h < st.sigma2.size(); ++h)
    for (size_t grp = 0; grp < st.sigma2[h].size(); ++grp) {
      // Each optics group's spectrum at its own box and pixel size (RELION's normalisation by its box).
      const std::vector<double>& v = st.sigma2[h][grp];
      const int ng = 2 * (int(v.size()) - 1);
      const double pg = grp < group_pixel.size() && group_pixel[grp] > 0 ? group_pixel[grp] : angpix;
      star::Block& o = loop(doc, fmt::format("model_optics_group_{}{}", grp + 1, h == 0 ? "" : "_half2"), v.size());
      std::vector<int> gidx(v.size());
      std::vector<double> s2(v.size()), gres(v.size());
      for (size_t s = 0; s < v.size(); ++s) {
        gidx[s] = int(s);
        gres[s] = double(s) / (ng * pg);
        s2[s] = relion_power(v[s], ng);
      }
      o.set_column("rlnSpectralIndex", gidx);
      o.set_column("rlnResolution", gres);
      o.set_column("rlnSigma2Noise", s2);
    }
  if (!st.group_scale.empty()) {
    star::Block& gb = loop(doc, "model_groups", st.group_scale.size());
    std::vector<int> gnum(st.group_scale.size());
    for (size_t k = 0; k < gnum.size(); ++k) gnum[k] = int(k) + 1;
    gb.set_column("rlnGroupNumber", gnum);
    gb.set_column("rlnGroupScaleCorrection", st.group_scale);
  }
  star::write(path, doc);
}

Files write_iteration(const Refine3DOptions& opt, const std::string& input_star, const ParticleTable& table,
                      double angpix, const State& st, const IterationReport& rep) {
  Files f = iteration_files(opt.out_root, st.iteration);
  if (mpi::rank() != 0) return f;  // under mpirun, rank 0 writes
  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  mrc::write(f.half1, st.maps[0], wo);
  mrc::write(f.half2, st.maps[1], wo);
  write_state(f.state, st);
  write_model(f.model, opt, angpix, st, rep, group_pixel_sizes(table));
  data_table(table, st).write(f.data);
  star::Document doc;
  star::Block& o = pairs(doc, "optimiser_general");
  o.set("rlnOutputRootName", opt.out_root);
  o.set("rlnModelStarFile", f.model);
  o.set("rlnExperimentalDataStarFile", f.data);
  o.set("rlnCurrentIteration", std::to_string(st.iteration));
  o.set("rlnNumberOfIterations", std::to_string(opt.max_iterations));
  o.set("rlnRandomSeed", std::to_string(opt.seed));
  o.set("rlnDoSplitRandomHalves", "1");
  o.set("rlnDoAutoRefine", "1");
  o.set("rlnParticleDiameter", num(opt.particle_diameter));
  o.set("rlnWidthMaskEdge", num(opt.mask_edge));
  o.set("rlnDoZeroMask", opt.zero_mask ? "1" : "0");
  o.set("rlnDoSolventFlattening", opt.flatten_solvent ? "1" : "0");
  o.set("rlnSolventMaskName", opt.solvent_mask.empty() ? "None" : opt.solvent_mask);
  o.set("rlnDoSolventFscCorrection", opt.solvent_correct_fsc ? "1" : "0");
  o.set("rlnDoCorrectCtf", opt.ctf ? "1" : "0");
  o.set("rlnDoCorrectNorm", opt.norm ? "1" : "0");
  o.set("rlnInitialLowPassFilter", num(opt.ini_high));
  o.set("rlnRefsAreCtfCorrected", "1");
  o.set("rlnAutoLocalSearchesHealpixOrder", std::to_string(opt.auto_local_healpix_order));
  o.set("rlnLowresolJoinHalves", num(opt.low_resol_join_halves));
  o.set("rlnSymmetryGroup", opt.sym);
  o.set("regulaHealpixOrder", std::to_string(opt.healpix_order));
  o.set("regulaOffsetRange", num(opt.offset_range));
  o.set("regulaOffsetStep", num(opt.offset_step));
  o.set("regulaFirstIterCc", opt.firstiter_cc ? "1" : "0");
  o.set("regulaReference", opt.reference);
  o.set("regulaInputStarFile", input_star);
  o.set("regulaPixelSize", num(opt.angpix));
  o.set("regulaMaxHealpixOrder", std::to_string(opt.max_healpix_order));
  o.set("rlnDoScaleCorrection", opt.scale ? "1" : "0");
  o.set("rlnPaddingFactor", std::to_string(opt.pad));
  o.set("rlnAdaptiveOversampleOrder", std::to_string(opt.oversampling));
  o.set("rlnAdaptiveOversampleFraction", num(opt.adaptive_fraction));
  o.set("rlnMaxNumberOfSignificantPoses", std::to_string(opt.max_significants));
  o.set("rlnTau2FudgeFactor", num(opt.tau2_fudge));
  o.set("rlnSamplingPerturbFactor", num(opt.perturb));
  o.set("regulaHalf1Map", f.half1);
  o.set("regulaHalf2Map", f.half2);
  o.set("regulaStateFile", f.state);
  star::write(f.optimiser, doc);
  return f;
}

void read_checkpoint(const std::string& path, Refine3DOptions& opt, std::string& input_star, State& st) {
  const state_io::OptimiserFile o(path, "refine3d");
  auto get = [&](const std::string& key) { return o.get(key); };
  auto get_d = [&](const std::string& key) { return o.number(key); };
  opt.seed = uint64_t(get_d("rlnRandomSeed"));
  if (!opt.iterations_given) opt.max_iterations = int(get_d("rlnNumberOfIterations"));
  opt.particle_diameter = get_d("rlnParticleDiameter");
  opt.mask_edge = get_d("rlnWidthMaskEdge");
  opt.zero_mask = get_d("rlnDoZeroMask") != 0;
  opt.flatten_solvent = get_d("rlnDoSolventFlattening") != 0;
  opt.solvent_mask = get("rlnSolventMaskName");
  if (opt.solvent_mask == "None") opt.solvent_mask.clear();
  opt.solvent_correct_fsc = get_d("rlnDoSolventFscCorrection") != 0;
  opt.ctf = get_d("rlnDoCorrectCtf") != 0;
  opt.norm = get_d("rlnDoCorrectNorm") != 0;
  opt.ini_high = get_d("rlnInitialLowPassFilter");
  opt.auto_local_healpix_order = int(get_d("rlnAutoLocalSearchesHealpixOrder"));
  opt.low_resol_join_halves = get_d("rlnLowresolJoinHalves");
  opt.sym = get("rlnSymmetryGroup");
  opt.healpix_order = int(get_d("regulaHealpixOrder"));
  opt.offset_range = get_d("regulaOffsetRange");
  opt.offset_step = get_d("regulaOffsetStep");
  opt.firstiter_cc = get_d("regulaFirstIterCc") != 0;
  opt.reference = get("regulaReference");
  opt.angpix = get_d("regulaPixelSize");
  opt.max_healpix_order = int(get_d("regulaMaxHealpixOrder"));
  opt.scale = get_d("rlnDoScaleCorrection") != 0;
  opt.pad = int(get_d("rlnPaddingFactor"));
  opt.oversampling = int(get_d("rlnAdaptiveOversampleOrder"));
  opt.adaptive_fraction = get_d("rlnAdaptiveOversampleFraction");
  opt.max_significants = long(get_d("rlnMaxNumberOfSignificantPoses"));
  opt.tau2_fudge = get_d("rlnTau2FudgeFactor");
  // (Checkpoints written before --perturb existed ran with fixed grids.)
  opt.perturb = o.has("rlnSamplingPerturbFactor") ? get_d("rlnSamplingPerturbFactor") : 0.0;
  input_star = get("regulaInputStarFile");
  read_state(get("regulaStateFile"), st);
  for (int h = 0; h < 2; ++h) {
    const std::string m = get(h == 0 ? "regulaHalf1Map" : "regulaHalf2Map");
    st.maps[size_t(h)] = mrc::read(m);
    if (st.maps[size_t(h)].nx() != st.n || st.maps[size_t(h)].nz() != st.n)
      input_error("{}: map is {} px, the state says {}", m, st.maps[size_t(h)].nx(), st.n);
  }
}

std::string angular_distribution_bild(const std::vector<double>& rot, const std::vector<double>& tilt, int n,
                                      double angpix, double radius_px) {
  // Counts per HEALPix order-3 pixel (7.5 degrees), cylinders as RELION's .bild: from the particle
  // radius outwards, length proportional to the count, colour from blue (few) to red (many).
  const int order = 3;
  const long np = healpix_num_pixels(order);
  std::vector<double> cnt(static_cast<size_t>(np), 0.0);
  std::vector<Vec3> centre(static_cast<size_t>(np));
  for (long p = 0; p < np; ++p) {
    auto rt = healpix_direction(order, p);
    centre[size_t(p)] = euler_direction(rt[0], rt[1]);
  }
  for (size_t i = 0; i < rot.size(); ++i) {
    const Vec3 v = euler_direction(rot[i], tilt[i]);
    size_t best = 0;
    double bd = -2;
    for (size_t p = 0; p < size_t(np); ++p) {
      const double d = v[0] * centre[p][0] + v[1] * centre[p][1] + v[2] * centre[p][2];
      if (d > bd) bd = d, best = p;
    }
    cnt[best] += 1;
  }
  const double mx = *std::max_element(cnt.begin(), cnt.end());
  const double c = n / 2.0 * angpix;  // map centre, Å
  const double r0 = radius_px * angpix, len = 0.3 * r0, width = r0 * std::sin(deg2rad(healpix_angular_step(order))) / 2;
  std::string out;
  for (size_t p = 0; p < size_t(np); ++p) {
    if (cnt[p] <= 0) continue;
    const double f = mx > 0 ? cnt[p] / mx : 0;
    const Vec3& v = centre[p];
    out += fmt::format(".color {:.3f} 0 {:.3f}\n", f, 1 - f);
    out += fmt::format(".cylinder {:.2f} {:.2f} {:.2f} {:.2f} {:.2f} {:.2f} {:.2f}\n", c + r0 * v[0], c + r0 * v[1],
                       c + r0 * v[2], c + (r0 + len * f + 0.01) * v[0], c + (r0 + len * f + 0.01) * v[1],
                       c + (r0 + len * f + 0.01) * v[2], width);
  }
  return out;
}

std::string angular_distribution_png(const std::vector<double>& rot, const std::vector<double>& tilt) {
  // Histogram of (rot, tilt) on a 360 x 180 grid of 2-degree bins (x: rot from -180, y: tilt from 0
  // at the top), shown white (none) to dark blue (most), 2 px per bin.
  const int bx = 180, by = 90, s = 2;
  std::vector<double> h(size_t(bx * by), 0.0);
  for (size_t i = 0; i < rot.size(); ++i) {
    int x = std::clamp(int((wrap180(rot[i]) + 180.0) / 2.0), 0, bx - 1);
    int y = std::clamp(int(tilt[i] / 2.0), 0, by - 1);
    h[size_t(y * bx + x)] += 1;
  }
  const double mx = std::max(1.0, *std::max_element(h.begin(), h.end()));
  const int W = bx * s, H = by * s;
  std::vector<uint8_t> rgb(size_t(W * H * 3), 255);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const double f = std::sqrt(h[size_t((y / s) * bx + x / s)] / mx);
      uint8_t* p = &rgb[size_t((y * W + x) * 3)];
      p[0] = uint8_t(255 - 225 * f);
      p[1] = uint8_t(255 - 200 * f);
      p[2] = uint8_t(255 - 100 * f);
    }
  return encode_png_rgb(rgb, W, H);
}

}  // namespace regula::refine3d_detail

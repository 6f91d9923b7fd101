#include "regula/jobs/class3d.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/blas.hpp"
#include "regula/core/atomic_file.hpp"
#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/estep/scores.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/class2d_detail.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/jobs/state_io.hpp"
#include "regula/mstep/first_noise.hpp"
#include "regula/mstep/model_update.hpp"
#include "regula/core/exact_sum.hpp"
#include "regula/estep/search3d.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

std::string Class3DOptions::validate() const {
  if (continue_from.empty()) {
    if (input.empty()) return "--i: a particles STAR file is required (or --continue)";
    if (reference.empty()) return "--ref: an initial reference map is required";
    if (classes < 1) return fmt::format("--K: the number of classes must be at least 1 (got {})", classes);
  }
  if (out_root.empty()) return "--o: an output root is required";
  if (iterations < 1) return fmt::format("--iter: must be at least 1 (got {})", iterations);
  if (!(tau2_fudge > 0)) return fmt::format("--tau2_fudge: must be positive (got {})", tau2_fudge);
  if (pad < 1 || pad > 3) return fmt::format("--pad: must be 1, 2 or 3 (got {})", pad);
  if (!(perturb >= 0 && perturb <= 1)) return fmt::format("--perturb: must be in [0, 1] (got {})", perturb);
  if (!(ini_high > 0)) return fmt::format("--ini_high: must be positive Å (got {})", ini_high);
  if (particle_diameter < 0) return fmt::format("--particle_diameter: must be >= 0 Å (got {})", particle_diameter);
  if (healpix_order < 0 || healpix_order > 5)
    return fmt::format("--healpix_order: must be 0 to 5 (got {})", healpix_order);
  if (!(offset_range >= 0)) return fmt::format("--offset_range: must be >= 0 px (got {})", offset_range);
  if (!(offset_step > 0)) return fmt::format("--offset_step: must be > 0 px (got {})", offset_step);
  if (offset_range / offset_step > 20) return "--offset_range/--offset_step: at most 20 steps per direction";
  if (sigma_ang < 0) return fmt::format("--sigma_ang: must be >= 0 degrees (got {})", sigma_ang);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (oversampling < 0 || oversampling > 2) return fmt::format("--oversampling: must be 0, 1 or 2 (got {})", oversampling);
  if (!(adaptive_fraction > 0 && adaptive_fraction <= 1))
    return fmt::format("--adaptive_fraction: must be in (0, 1] (got {})", adaptive_fraction);
  if (max_significants == 0 || max_significants < -1)
    return fmt::format("--maxsig: must be -1 (no bound) or positive (got {})", max_significants);
  return "";
}

namespace {

constexpr char kMagic[8] = {'R', 'G', 'C', '3', 'D', '0', '0', '2'};
constexpr size_t kBlock = 4;  // particles per work unit (ml3d::Blocks)
// The staged start (--staged, default for K > 1): kConsensus iterations of one consensus map with
// pose search, then kFixed iterations classifying at the consensus poses from random subsets with
// unregularised class maps at the --ini_high limit and uniform class fractions, then the full model:
// kGlobal iterations of global searches (each particle's pose found again against each class map,
// which the consensus pose of a pseudo-symmetric particle may not fit: docs/class3d.md), then local
// searches around the poses.
constexpr int kConsensus = 3, kFixed = 10, kGlobal = 2;
constexpr int kMinresMap = 5;         // RELION's --minres_map: the resolution shell is at least this

struct State {
  int iteration = 0, current_shells = 0, n = 0;
  double sigma2_offset = 1;
  std::vector<std::vector<double>> sigma2;  // [group][shell]
  std::vector<double> fraction, resolution;  // per class
  double avg_norm = 1, x_l1_max = 0;
  std::vector<double> group_scale;  // per group
  ml3d::ParticleValues p;  // per particle: poses, offsets in Å, norm...
  std::vector<int> cls;
  std::vector<Volume> maps;
  // Mini-batch iterations: the particles' worth of data in the forgetting sums (at most N).
  double batch_count = 0;
};

// The mini-batch schedule of iteration `it` (0-based; RELION's phases: the initial fraction at the
// initial subset size and step, the final fraction at the final ones, linear in between).
struct BatchStep {
  size_t subset = 0;  // particles searched (N: all)
  double eta = 1;     // weight of this subset's sums against the forgetting sums
};
// The schedule's initial and middle phases, in iterations (the final phase is the rest).
struct BatchPhases {
  int ini = 0, mid = 0;
};
BatchPhases batch_phases(const MiniBatchSchedule& b) {
  const int G = b.iterations;
  const int ini = int(G * b.ini_frac), fin = int(G * b.fin_frac);
  return {ini, std::max(G - ini - fin, 0)};
}

BatchStep batch_step(const MiniBatchSchedule& b, int it, size_t N) {
  const auto [ini, mid] = batch_phases(b);
  double f = 0;
  if (it >= ini + mid) f = 1;
  else if (it >= ini && mid > 0) f = double(it - ini) / mid;
  BatchStep r;
  r.subset = std::min(N, size_t(std::llround(double(b.ini_subset) + f * double(b.fin_subset - b.ini_subset))));
  r.eta = b.ini_step + f * (b.step - b.ini_step);
  return r;
}

}  // namespace

double batch_tau2_fudge(const MiniBatchSchedule& b, int it, double fudge) {
  if (!(b.ini_tau2_fudge > 0) || it >= b.iterations) return fudge;
  // RELION's sigmoid (MlOptimiser::updateTau2Fudge): from the end of the initial phase over a quarter of
  // the middle phase, half-way at its eighth.
  const auto [ini, mid] = batch_phases(b);
  const double a = std::max(mid / 4.0, 1.0);
  const double w = 1 / (std::pow(10.0, (it - ini - a / 2) / (a / 4)) + 1);
  return b.ini_tau2_fudge * w + fudge * (1 - w);
}

namespace {

struct Report {
  int used_shells = 0;
  std::vector<std::vector<double>> ssnr, tau2;
  double average_pmax = 0, loglik_sum = 0;
};

enum Scalar : size_t { kPmax, kLoglik, kOffset2, kOffsetWeight, kNormSum, kBound, kScalars };

// One thread's share of an iteration's sums (exact: the same bits for any split).
struct ThreadSums {
  ml3d::ModelSums model;
  ExactSums scalars{kScalars};
  void merge(const ThreadSums& o) {
    model.merge(o.model);
    scalars.merge(o.scalars);
  }
  std::vector<ExactSums*> all() {
    std::vector<ExactSums*> v = model.all();
    v.push_back(&scalars);
    return v;
  }
};

std::string num(double v) { return fmt::format("{}", v); }

// The job a checkpoint of class3d's layout belongs to: its regulaJob key; for checkpoints written
// before that key existed (they have regulaClass1Map), "initial_model" when it has the layout of
// initial_model's EM run (output root ROOT_em, reference ROOT_start.mrc), else "class3d". "" for
// other files (another job's checkpoint; the missing keys are reported when they are read).
std::string checkpoint_job(const state_io::OptimiserFile& o) {
  if (o.has("regulaJob")) return o.get("regulaJob");
  if (!o.has("regulaClass1Map")) return "";
  if (o.has("rlnOutputRootName") && o.has("regulaReference")) {
    const std::string root = o.get("rlnOutputRootName");
    if (root.size() > 3 && root.ends_with("_em") &&
        o.get("regulaReference") == root.substr(0, root.size() - 3) + "_start.mrc")
      return "initial_model";
  }
  return "class3d";
}

class Job {
 public:
  Job(const Class3DOptions& o, std::string job)
      : opt_(o), job_(std::move(job)), pool_(o.threads), sym_(SymmetryGroup::parse("C1")) {}
  Class3DResult run();

 private:
  void setup();
  void initialise();
  Report iterate();
  void process_particle(size_t i, ParticleImages& images, estep::Search3DWork& ws, ThreadSums& sums);
  // The previous values of particle i (not searched, or no finite likelihood).
  void keep_particle(size_t i);
  double norm_factor(size_t i) const { return opt_.norm && st_.p.norm[i] > 0 ? st_.avg_norm / st_.p.norm[i] : 1.0; }
  double group_scale(size_t i) const { return opt_.scale ? st_.group_scale[size_t(groups_.group_of[i])] : 1.0; }
  // ml3d::read_particle with this job's mask, norm correction and the particle's current origin.
  // `unmasked`: as read (the back-projected particle; the first noise estimate without --zero_mask,
  // as RELION's).
  Image read_particle(ParticleImages& images, size_t i, const std::vector<double>* noise_sigma2,
                      bool unmasked = false) const;
  ml3d::ParticleMasking masking(size_t i) const;  // particle i's (its own pixels)
  // The prior of the next reconstruction: the signal's variance per real Fourier component, half
  // the map's mean |F|^2 per shell (on the scale of the noise sigma2, which is per real component
  // too; RELION's Projector::computeFourierTransformMap). The --ini_high low-passed reference says
  // nothing beyond its band: 0 there (no prior; see iterate()).
  std::vector<double> tau2_of(const Volume& map) const;
  int ini_shell() const { return int(std::lround(n_ * angpix_ / opt_.ini_high)); }
  // --strict_highres_exp: the E-step's (and so the maps') highest shell, at least 1 (else Nyquist).
  int max_shells() const {
    return opt_.strict_highres_exp > 0 ? std::clamp(int(n_ * angpix_ / opt_.strict_highres_exp), 1, n_ / 2) : n_ / 2;
  }
  // The mini-batch phase's back-projectors and forgetting sums: up to the E-step's highest shell plus the
  // two that the interpolation of its slices reaches beyond it.
  int batch_radius() const { return std::min(max_shells() + 2, n_ / 2); }
  void mask_reference(Volume& map) const;
  double shell_to_A(double s) const { return s > 0 ? n_ * angpix_ / s : 999.0; }
  void write_iteration(const Report& rep);
  bool mini_batch() const { return st_.iteration < opt_.batches.iterations; }
  void write_batch_sums(const std::string& path) const;
  void read_batch_sums(const std::string& path);
  void read_checkpoint();
  std::string iter_name(int it, const std::string& what) const {
    return fmt::format("{}_it{:03d}_{}", opt_.out_root, it, what);
  }

  Class3DOptions opt_;
  std::string job_;  // "class3d", or the job run on top of it ("initial_model"): checkpoints and messages
  ThreadPool pool_;
  SymmetryGroup sym_;
  std::string input_star_;
  ParticleTable table_;
  OpticsModel optics_model_;  // of table_ (engine_optics)
  int n_ = 0, optics_ = 1, K_ = 1;    // n_: the reference's box (the first optics group's)
  ml3d::Groups groups_;
  std::vector<std::vector<double>> all_counts_;  // per optics group
  double angpix_ = 0, radius_px_ = 0;  // the reference's pixel size; mask radius in its pixels
  ml3d::PixelScale scale_;             // optics groups of different pixel and box sizes
  Volume solvent_mask_;  // --solvent_mask (empty: none)
  State st_;
  // Per iteration.
  int r_ = 0;
  bool random_classes_ = false;  // this iteration's sums go to random classes (the start)
  bool consensus_ = false;       // staged start: one consensus map, poses searched
  bool fixed_poses_ = false;     // --skip_align, or the staged start's classification at fixed poses
  bool unregularised_ = false;   // staged start: class maps without the tau2 prior, uniform fractions
  const char* search_ = "";      // this iteration's pose search, for the log
  estep::SearchPixels px_coarse_;
  ml3d::FinePixels fine_;  // per optics group
  std::vector<std::unique_ptr<Projector>> proj_;
  std::vector<std::array<double, 2>> global_dirs_;
  std::vector<long> global_pix_;
  std::vector<double> global_psi_;
  estep::Slices global_slices_;
  DirectionTable table_dirs_;
  std::unique_ptr<estep::SliceCache> shared_slices_;  // local windows' coarse or global fine slices
  estep::Search3DSetup setup_;
  std::vector<estep::Search3DSetup> group_setup_;  // per optics group (PixelScale)
  std::vector<std::unique_ptr<BackProjector>> bp_;  // per class, exact sums
  std::unique_ptr<Progress> progress_;
  // Mini-batch iterations: this iteration's subset, and the forgetting sums per class (State::batch_count).
  std::vector<char> in_batch_;
  std::vector<BackProjector> batch_sums_;
  std::string last_batch_sums_;  // the newest checkpoint's file of them (removed when a newer is written)
  // New per-particle values, filled by each particle's owner (zeros elsewhere until the MPI sum).
  ml3d::ParticleValues next_;     // this iteration's new per-particle values
  std::vector<double> new_cls_;  // and classes (1-based; doubles to be summed over ranks)
  Class3DResult files_;
};

void Job::setup() {
  ParticleReadOptions ro;
  ro.angpix = opt_.angpix;
  table_ = ParticleTable::read(input_star_, ro);
  const size_t N = table_.size();
  if (N == 0) input_error("{}: no particles", input_star_);
  if (opt_.skip_align) table_.require_angles(input_star_, "--skip_align keeps the input poses");
  if (N < size_t(opt_.classes))
    input_error("--K {}: more classes than the {} particles of {}", opt_.classes, N, input_star_);
  {
    ParticleImages images(table_, 1);
    Image first = images.read(0);
    n_ = first.nx();
    if (first.nz() != 1 || first.ny() != n_ || n_ < 16 || n_ % 2)
      input_error("{}: particle images must be square 2D images, even and at least 16 px (got {}x{}x{})",
                  table_.where(0), first.nx(), first.ny(), first.nz());
  }
  // The optics this E-step models; the rest is refused (engine_optics checks each group's
  // rlnImageSize against the first image). The reference has the first optics group's box.
  optics_model_ = engine_optics(table_, n_, opt_.ctf, job_, true);
  n_ = optics_model_.reference_box();
  angpix_ = table_.optics.front().pixel_size;
  for (const auto& g : table_.optics) {
    if (g.pixel_size <= 0) input_error("{}: optics group {} has no pixel size; give --angpix", input_star_, g.number);
    if (opt_.ctf && g.voltage <= 0)
      input_error("{}: --ctf needs rlnVoltage, rlnSphericalAberration and rlnAmplitudeContrast (optics group {})",
                  input_star_, g.number);
  }
  if (opt_.ctf) {
    // Without defocus columns the CTF would silently be that of zero defocus.
    if (!table_.particles_block().has("rlnDefocusU"))
      input_error("{}: --ctf needs _rlnDefocusU (and _rlnDefocusV, _rlnDefocusAngle) in data_{}", input_star_,
                  table_.particles_block().name);
    for (size_t i = 0; i < N; ++i) (void)particle_ctf_params(table_, i);
  }
  optics_ = int(table_.optics.size());
  scale_ = ml3d::PixelScale(table_, optics_model_);
  if (!scale_.uniform()) ml3d::log_pixel_sizes(job_, scale_);
  groups_ = ml3d::particle_groups(table_);
  all_counts_ = ml3d::shell_pixel_counts(scale_);
  K_ = opt_.classes;
  const double r = opt_.particle_diameter > 0 ? opt_.particle_diameter / (2 * angpix_) : n_ / 2.0 - opt_.mask_edge;
  radius_px_ = std::clamp(r, 2.0, n_ / 2.0);
  if (!opt_.solvent_mask.empty()) solvent_mask_ = ml3d::read_solvent_mask(opt_.solvent_mask, n_);
}

// --solvent_mask multiplies the maps, else --flatten_solvent applies the soft sphere (as refine3d).
void Job::mask_reference(Volume& map) const {
  ml3d::mask_reference(map, solvent_mask_, opt_.flatten_solvent, radius_px_, opt_.mask_edge);
}

ml3d::ParticleMasking Job::masking(size_t i) const {
  return ml3d::particle_masking({n_, radius_px_, opt_.mask_edge, opt_.zero_mask, opt_.seed}, scale_, i);
}

Image Job::read_particle(ParticleImages& images, size_t i, const std::vector<double>* noise_sigma2,
                         bool unmasked) const {
  return ml3d::read_particle(images, table_, i, masking(i), norm_factor(i), ml3d::origin_px(st_.p, scale_, i),
                             noise_sigma2, unmasked);
}

std::vector<double> Job::tau2_of(const Volume& map) const {
  if (!opt_.relion_prior) return mstep::held_shell_power(map);  // (initial_model's)
  // Measured as RELION's on the map the projector transforms (gridding-corrected); this raises the
  // power by 5-20% where the particle's mass lies far from the centre, and the resolution grows as
  // RELION's (measured in docs/class3d.md).
  std::vector<double> t = mstep::map_prior_tau2(map, opt_.pad);
  // (low_pass's gain is 0 from its shell + 1 on.)
  const size_t band = st_.iteration == 0 ? size_t(ini_shell() + 1) : t.size();
  for (size_t s = band + 1; s < t.size(); ++s) t[s] = 0.0;
  return t;
}

void Job::initialise() {
  const size_t N = table_.size();
  st_ = State();
  st_.n = n_;
  // RELION's first limit: the --ini_high shell + --incr_size (the shells beyond the reference's band
  // are reconstructed without prior in the first iteration).
  st_.current_shells = opt_.relion_prior ? std::min(ini_shell() + opt_.incr_size, n_ / 2) : std::clamp(ini_shell(), 4, n_ / 2);
  st_.current_shells = std::min(st_.current_shells, max_shells());
  // Poses and origins of the input, its rlnNormCorrection when present (RELION keeps it), else 1.
  st_.p = ml3d::ParticleValues::from_table(table_);
  st_.avg_norm = st_.p.average_norm();
  st_.group_scale.assign(groups_.names.size(), 1.0);
  st_.cls.assign(N, 0);
  st_.fraction.assign(size_t(K_), 1.0 / K_);
  st_.resolution.assign(size_t(K_), opt_.ini_high);
  Volume ref = ml3d::read_reference(opt_.reference, angpix_, n_);
  low_pass(ref, opt_.ini_high, angpix_);
  mask_reference(ref);
  st_.maps.assign(size_t(K_), ref);
  // Noise: RELION's first estimate per optics group (mstep/first_noise.hpp); and the largest L1
  // norm of an image (bounds of the back-projectors' exact sums).
  const size_t nchunk = (N + 63) / 64;
  mstep::FirstNoiseEstimate noise(scale_.box);
  std::vector<double> l1max(nchunk, 0.0);
  pool_.parallel_for(0, nchunk, [&](size_t c, int) {
    ParticleImages images(table_, 4);
    for (size_t i = c * 64; i < std::min(N, (c + 1) * 64); ++i) {
      Image img = read_particle(images, i, nullptr, true);  // back-projected unmasked: its L1 bounds the sums
      double l1 = 0;
      for (float v : img) l1 += std::abs(double(v));
      l1max[c] = std::max(l1max[c], l1);
      if (opt_.zero_mask)
        ml3d::mask_particle(img, masking(i), i, ml3d::origin_px(st_.p, scale_, i), nullptr);
      noise.add(size_t(table_.optics_index[i]), img);
    }
  });
  st_.sigma2 = noise.sigma2();
  st_.x_l1_max = *std::max_element(l1max.begin(), l1max.end());
  st_.sigma2_offset = std::max(1.0, opt_.offset_range * opt_.offset_range / 4.0);
}

void Job::keep_particle(size_t i) {
  next_.copy(i, st_.p);
  new_cls_[i] = st_.cls[i];
  progress_->advance(1);
}

void Job::process_particle(size_t i, ParticleImages& images, estep::Search3DWork& ws, ThreadSums& sums) {
  const int g = table_.optics_index[i];
  const size_t hs = st_.sigma2[size_t(g)].size();  // the group's shells, n_g/2 + 1
  const bool cc = setup_.cross_correlation;
  std::vector<float> inv_sigma2(hs, 0.0f);
  for (size_t s = 1; s < hs; ++s) {
    const double v = st_.sigma2[size_t(g)][s];
    inv_sigma2[s] = cc ? 1.0f : (v > 0 ? float(1.0 / v) : 0.0f);
  }
  const auto [ox, oy] = ml3d::origin_px(st_.p, scale_, i);  // its own px
  const auto optics = ml3d::particle_optics(optics_model_, i, opt_.ctf);
  const ml3d::ParticleViews v = ml3d::particle_views(read_particle(images, i, nullptr, true), masking(i), i, {ox, oy},
                                                     &st_.sigma2[size_t(g)], optics, inv_sigma2,
                                                     fine_.px[size_t(g)].r_max);
  const estep::RotatableParticle& x = v.x;
  // Iteration 1 (or the staged start's first classification): each particle's sums go to a class
  // drawn at random (seeded per particle): K different starting maps from one reference, as RELION's
  // random subsets. The search is then against the one reference (class 0 of the setup).
  int random_class = -1;
  if (random_classes_) {
    auto rng = make_rng(opt_.seed, i, 0x43334421);
    random_class = std::min(K_ - 1, int(uniform01(rng) * K_));
  }
  std::vector<BackProjector*> route;
  if (random_class >= 0) route = {bp_[size_t(random_class)].get()};
  else if (consensus_) route = {bp_[0].get()};
  else for (auto& b : bp_) route.push_back(b.get());
  ml3d::SliceRouter sink(route);
  estep::Search3DInput in;
  in.x = &x;
  in.x_sums = &v.x_sums;
  in.inv_sigma2 = inv_sigma2;
  in.inv_sigma2_sums = v.inv_sigma2_sums;
  in.scale = group_scale(i);
  in.rot = st_.p.rot[i];
  in.tilt = st_.p.tilt[i];
  in.psi = st_.p.psi[i];
  in.ox_px = ox;
  in.oy_px = oy;
  in.ref_fine = ml3d::group_pixels(fine_.ref, g);
  estep::Search3DResult res;
  estep::search_particle_3d(group_setup_[size_t(g)], in, ws, &sink, res);
  keep_particle(i);
  if (!res.valid) return;
  if (random_class >= 0 || consensus_) {
    res.cls = std::max(random_class, 0);
    res.class_weight.assign(size_t(K_), 0.0);
    res.class_weight[size_t(res.cls)] = 1;
  }
  const double total_d2 =
      ml3d::add_particle(sums.model, res, x, g, groups_.group_of[i], fine_.counts[size_t(g)],
                         all_counts_[size_t(g)], fine_.px[size_t(g)].r_max, scale_.noise_stride());
  new_cls_[i] = res.cls + 1;
  next_.take(i, st_.p, res, scale_.pixel(i));
  if (opt_.norm && !cc) next_.norm[i] = ml3d::norm_correction(st_.p.norm[i], st_.avg_norm, total_d2, res.weight_sum, x.size());
  sums.scalars[kNormSum].add(next_.norm[i]);
  sums.scalars[kOffset2].add(res.offset2 / (scale_.of(i) * scale_.of(i)));  // reference px^2
  sums.scalars[kOffsetWeight].add(res.weight_sum);
  sums.scalars[kPmax].add(res.max_posterior);
  sums.scalars[kLoglik].add(res.log_likelihood);
  if (res.significance_bound) sums.scalars[kBound].add(1.0);
}

Report Job::iterate() {
  const size_t N = table_.size(), hs = size_t(n_ / 2 + 1);
  Report rep;
  r_ = st_.current_shells;
  rep.used_shells = r_;
  // Mini-batch iterations: a random subset (the same on every rank and for any thread count).
  const bool batch = mini_batch();
  const BatchStep bs = batch ? batch_step(opt_.batches, st_.iteration, N) : BatchStep{N, 1.0};
  in_batch_.assign(N, 1);
  if (bs.subset < N) {
    std::vector<size_t> order(N);
    std::iota(order.begin(), order.end(), size_t(0));
    auto rng = make_rng(opt_.seed, uint64_t(st_.iteration), 0x4d424154);
    for (size_t j = 0; j < bs.subset; ++j)
      std::swap(order[j], order[j + std::min(N - j - 1, size_t(uniform01(rng) * double(N - j)))]);
    in_batch_.assign(N, 0);
    for (size_t j = 0; j < bs.subset; ++j) in_batch_[order[j]] = 1;
  }
  const bool staged = opt_.staged && K_ > 1 && !opt_.skip_align && opt_.sigma_ang == 0;
  const int it0 = st_.iteration;
  consensus_ = staged && it0 < kConsensus;
  unregularised_ = staged && it0 >= kConsensus && it0 < kConsensus + kFixed;
  fixed_poses_ = opt_.skip_align || unregularised_;
  random_classes_ = K_ > 1 && (staged ? it0 == kConsensus : it0 == 0);
  const bool cc = opt_.firstiter_cc && st_.iteration == 0;
  // The staged start refines its consensus one HEALPix order finer than --healpix_order, and after
  // the classification at fixed poses searches globally at that order (kGlobal iterations), then
  // locally around the poses (sigma = that order's step).
  const bool after_fixed = staged && it0 >= kConsensus + kFixed;
  const int order = (consensus_ || after_fixed) ? std::min(opt_.healpix_order + 1, 4) : opt_.healpix_order;
  const bool local = opt_.sigma_ang > 0 || (after_fixed && it0 >= kConsensus + kFixed + kGlobal);
  search_ = fixed_poses_ ? "fixed poses" : local ? "local search" : "global search";
  // In iteration 1 all classes are the reference: search against it alone.
  const int Ksearch = (random_classes_ || consensus_) ? 1 : K_;
  fine_ = ml3d::fine_pixels(r_, scale_, optics_model_);
  // Keepsafe 2 rather than RELION's 1.2 in 3D (a higher coarse limit). Measured on two mixtures
  // (docs/class3d.md): 1.2 is 12-24% faster but puts fewer particles in their true class on both.
  const int rc = std::clamp(estep::coarse_limit_shells(n_, angpix_, 2 * radius_px_ * angpix_, healpix_angular_step(order), 2.0),
                            6, n_ / 2);
  px_coarse_ = estep::search_pixels(n_, cc ? r_ : std::min(r_, rc));
  proj_.clear();
  // Each group's pixels map to at most half a shell beyond the limit (ml3d::fine_pixels' rounding).
  const int r_proj = std::min(r_ + (scale_.uniform() ? 1 : 2), n_ / 2);
  for (int k = 0; k < K_; ++k)
    proj_.push_back(std::make_unique<Projector>(st_.maps[size_t(k)], opt_.pad, r_proj, opt_.threads));
  if (local) table_dirs_.build(order);
  setup_ = estep::Search3DSetup();
  setup_.classes = Ksearch;
  for (int k = 0; k < Ksearch; ++k) setup_.proj.push_back(proj_[size_t(k)].get());
  if (Ksearch > 1)
    for (int k = 0; k < K_; ++k) setup_.log_class_prior.push_back(std::log(std::max(st_.fraction[size_t(k)], 1e-300)));
  // The staged classification at fixed poses uses uniform fractions (the prior stays out).
  if (unregularised_) setup_.log_class_prior.clear();
  setup_.px_coarse = &px_coarse_;
  setup_.px_fine = &fine_.px[0];  // each group's own below
  setup_.local = local;
  setup_.order = order;
  setup_.sigma_ang = opt_.sigma_ang > 0 ? opt_.sigma_ang : healpix_angular_step(order);
  setup_.table = &table_dirs_;
  shared_slices_.reset();
  if (local && !fixed_poses_) {
    shared_slices_ = std::make_unique<estep::SliceCache>(2 * size_t(Ksearch) * table_dirs_.v.size(), px_coarse_,
                                                         ml3d::kSharedSliceBytes);
    setup_.table_slices = shared_slices_.get();
  }
  // RELION's random perturbation of the grids (--perturb; none when the poses are fixed).
  const ml3d::Perturbation perturb = ml3d::sampling_perturbation(
      opt_.seed, st_.iteration + 1, fixed_poses_ ? 0.0 : opt_.perturb, healpix_angular_step(order), opt_.offset_step);
  setup_.trans = perturb.shifted(translations(opt_.offset_range, opt_.offset_step));
  setup_.perturb = perturb.rotation;
  setup_.offset_step = opt_.offset_step;
  setup_.sigma_offset2 = st_.sigma2_offset;
  setup_.cross_correlation = cc;
  setup_.pose_mean = false;  // classification: the maximum, as RELION
  setup_.adaptive_fraction = opt_.adaptive_fraction;
  setup_.max_significants = opt_.max_significants > 0 ? opt_.max_significants : 0;
  setup_.oversampling = opt_.oversampling;
  setup_.fixed_pose = fixed_poses_;
  if (!local && !fixed_poses_) {
    OrientationSampling os(order, sym_, healpix_angular_step(order));
    const size_t D = os.num_directions(), m = px_coarse_.size();
    global_dirs_.clear();
    global_pix_.clear();
    for (int k = 0; k < Ksearch; ++k)
      for (size_t d = 0; d < D; ++d) {
        global_dirs_.push_back({os.rot(d), os.tilt(d)});
        global_pix_.push_back(os.pixel(d));
      }
    global_psi_.resize(os.num_psi());
    for (size_t p = 0; p < os.num_psi(); ++p) global_psi_[p] = os.psi(p);
    global_slices_.d = size_t(Ksearch) * D;
    global_slices_.m = m;
    global_slices_.s.resize(global_slices_.d * 2 * m);
    global_slices_.s2.resize(global_slices_.d * m);
    pool_.parallel_for(0, size_t(Ksearch), [&](size_t k, int) {
      estep::Slices one;
      const std::vector<std::array<double, 2>> dirs(global_dirs_.begin() + long(k * D),
                                                    global_dirs_.begin() + long((k + 1) * D));
      estep::project_orientations(*proj_[k], px_coarse_, ml3d::perturbed_directions(dirs, perturb.rotation), one);
      std::copy(one.s.begin(), one.s.end(), global_slices_.s.begin() + long(k * D * 2 * m));
      std::copy(one.s2.begin(), one.s2.end(), global_slices_.s2.begin() + long(k * D * m));
    });
    setup_.global_dirs = &global_dirs_;
    setup_.global_pix = &global_pix_;
    setup_.global_psi = &global_psi_;
    setup_.global_slices = &global_slices_;
    shared_slices_ = ml3d::global_fine_cache(global_psi_.size(), global_dirs_.size(), opt_.oversampling, fine_.px[0],
                                             ml3d::kSharedSliceBytes);
    setup_.fine_slices = shared_slices_.get();
  }
  group_setup_ = ml3d::group_setups(setup_, scale_);
  for (size_t g = 0; g < fine_.px.size(); ++g) group_setup_[g].px_fine = &fine_.px[g];
  // One back-projector per class, exact sums shared by the threads (bounds as refine3d's: a
  // particle's poses carry weight <= 1, a lattice point gets <= 4 pixels per pose).
  {
    double inv_s2 = 1, smax = 1, max_norm = 1;
    if (!cc)
      for (const auto& g : st_.sigma2)
        for (size_t s = 1; s <= size_t(r_) && s < g.size(); ++s)
          if (g[s] > 0) inv_s2 = std::max(inv_s2, 1.0 / g[s]);
    if (opt_.scale)
      for (double v : st_.group_scale) smax = std::max(smax, v);
    if (opt_.norm)
      for (size_t i = 0; i < N; ++i) max_norm = std::max(max_norm, norm_factor(i));
    const double np = double(N) + 1;
    bp_.clear();
    for (int k = 0; k < K_; ++k) {
      // (Mini-batch iterations: the forgetting sums keep one geometry while the limit grows: batch_radius().)
      bp_.push_back(std::make_unique<BackProjector>(n_, opt_.pad, batch ? batch_radius() : r_, 3));
      bp_.back()->start_exact(4 * np * smax * inv_s2 * std::max(st_.x_l1_max, 1e-30) * max_norm * 4,
                              4 * np * smax * smax * inv_s2);
    }
  }
  next_.assign(N);
  new_cls_.assign(N, 0.0);

  const ml3d::Blocks blocks(N, kBlock);
  progress_ = std::make_unique<Progress>(fmt::format("{}: iteration {}/{}", job_, st_.iteration + 1, opt_.iterations),
                                         blocks.my_particles);
  const size_t T = size_t(pool_.size());
  std::vector<ThreadSums> tsums(T);
  std::vector<std::unique_ptr<ParticleImages>> readers(T);
  std::vector<estep::Search3DWork> works(T);
  for (size_t t = 0; t < T; ++t) {
    tsums[t].model.init(size_t(optics_), scale_.noise_stride(), groups_.names.size(), size_t(K_));
    readers[t] = std::make_unique<ParticleImages>(table_, 8);
  }
  pool_.parallel_for(0, blocks.mine.size(), [&](size_t u, int thread) {
    const size_t b = blocks.mine[u];
    for (size_t i = blocks.begin(b); i < blocks.end(b); ++i) {
      check_cancelled();
      if (!in_batch_[i]) {
        keep_particle(i);
        continue;
      }
      process_particle(i, *readers[size_t(thread)], works[size_t(thread)], tsums[size_t(thread)]);
    }
  });
  progress_->finish();
  ml3d::release_slice_cache(shared_slices_, fmt::format("{}: the shared slices", job_), ml3d::kSharedSliceBytes);
  readers.clear();
  works.clear();
  for (size_t t = 1; t < T; ++t) tsums[0].merge(tsums[t]);
  ThreadSums& sums = tsums[0];
  if (mpi::active()) {
    for (auto& b : bp_) {
      std::span<int64_t> e = b->exact_sums();
      mpi::allreduce_sum(e.data(), e.size());
    }
    ml3d::reduce_over_ranks(sums.all());
    next_.sum_over_ranks();
    mpi::allreduce_sum(new_cls_.data(), new_cls_.size());
  }
  for (auto& b : bp_) b->finish_exact();
  if (batch) {
    // The forgetting sums: S <- (1 - eta) S + s_subset, scaled to at most N particles' worth of data
    // (a particle drawn again is not counted twice beyond that); the reconstruction is made from them.
    const double count = (1 - bs.eta) * st_.batch_count + double(bs.subset);
    const double shrink = count > double(N) ? double(N) / count : 1.0;
    if (batch_sums_.size() != size_t(K_)) {
      batch_sums_.clear();
      for (int k = 0; k < K_; ++k) batch_sums_.emplace_back(n_, opt_.pad, batch_radius(), 3);
    }
    if (batch_sums_.front().r_max() != batch_radius())
      input_error("--continue: the checkpoint's forgetting sums reach shell {}, this run's reach shell {} (another "
                  "--strict_highres_exp or pixel size)", batch_sums_.front().r_max(), batch_radius());
    for (int k = 0; k < K_; ++k) {
      BackProjector& S = batch_sums_[size_t(k)];
      S.scale(float(1 - bs.eta));
      S.add(*bp_[size_t(k)]);
      if (shrink < 1) S.scale(float(shrink));
      *bp_[size_t(k)] = S;
    }
    st_.batch_count = count * shrink;
  } else {
    batch_sums_.clear();
  }
  const std::vector<double> sc = sums.scalars.values();
  rep.average_pmax = sc[kPmax] / double(bs.subset);
  rep.loglik_sum = sc[kLoglik];
  if (sc[kBound] > 0)
    spdlog::info("{}: --maxsig {} bound the significant poses of {} particles", job_, opt_.max_significants, sc[kBound]);

  // Noise, scales, offsets prior and norm (not after the CC iteration, as RELION).
  if (!cc) {
    const std::vector<double> d2 = sums.model.d2.values(), npx = sums.model.npix.values();
    const size_t stride = scale_.noise_stride();
    for (int g = 0; g < optics_; ++g) {
      const size_t base = size_t(g) * stride, hg = st_.sigma2[size_t(g)].size();
      std::vector<double> a(d2.begin() + long(base), d2.begin() + long(base + hg)),
          b(npx.begin() + long(base), npx.begin() + long(base + hg));
      std::vector<double> fresh = mstep::noise_spectrum(a, b, st_.sigma2[size_t(g)]);
      if (batch)  // the subset's estimate moves the spectrum by eta
        for (size_t s = 0; s < fresh.size(); ++s) fresh[s] = (1 - bs.eta) * st_.sigma2[size_t(g)][s] + bs.eta * fresh[s];
      st_.sigma2[size_t(g)] = std::move(fresh);
    }
    if (opt_.scale)
      st_.group_scale = mstep::group_scales(sums.model.xa.values(), sums.model.aa.values(), groups_.count, st_.group_scale);
    if (sc[kOffsetWeight] > 0) st_.sigma2_offset = std::max(sc[kOffset2] / (2 * sc[kOffsetWeight]), 0.25);
    if (opt_.norm) st_.avg_norm = sc[kNormSum] / double(bs.subset);
  }

  // M-step per class: MAP reconstruction with the class's own power spectrum as prior.
  const double tau2_fudge = batch ? batch_tau2_fudge(opt_.batches, st_.iteration, opt_.tau2_fudge) : opt_.tau2_fudge;
  rep.ssnr.assign(size_t(K_), std::vector<double>(hs, 0.0));
  rep.tau2.assign(size_t(K_), {});
  std::vector<Volume> maps(static_cast<size_t>(K_));
  for (size_t k = 0; k < size_t(K_); ++k) {
    if (!sym_.is_c1()) bp_[k]->symmetrise(sym_.operators(), opt_.threads);
    bp_[k]->make_hermitian();
    ReconstructOptions ro;
    ro.tau2 = tau2_of(st_.maps[k]);
    // Unregularised maps while classifying from random subsets: with the tau2 prior a class with
    // fewer particles is shrunk more and loses every particle (measured: one class of 2000 even at
    // the true poses; without it 99% of the particles in their true class).
    if (unregularised_) ro.tau2.clear();
    ro.tau2_fudge = tau2_fudge;
    ro.max_frequency = r_;
    ro.nthreads = opt_.threads;
    // (Corners filled as RELION, with the mean outside radius n/2, not corners_from_edge as refine3d: the
    // next iteration's prior is this map's power spectrum, which beyond the E-step's limit is mostly
    // the corners' edge; measured at the true poses, 2 iterations, FSC 4-14 0.854 with RELION's fill
    // against 0.826 with the edge's level.)
    // Shells without prior (tau2 0: beyond the first reference's band) reconstructed from the data
    // alone: their data-to-prior ratio is unbounded (RELION's 1 / (0.001 w) prior makes it 0.001 w^2,
    // far above 1 in its units); written as RELION's 999 for a shell without a ratio.
    ro.zero_tau2_unregularised = opt_.relion_prior;
    const std::vector<double> mw = bp_[k]->mean_weight_per_shell();
    for (size_t s = 0; s < hs; ++s) {
      if (s > size_t(r_) || ro.tau2.empty()) continue;
      const bool no_prior = opt_.relion_prior && ro.tau2[s] == 0 && mw[s] > 0;
      rep.ssnr[k][s] = no_prior ? mstep::kNoPriorSsnr : mw[s] * ro.tau2[s] * tau2_fudge;
    }
    rep.tau2[k] = ro.tau2;
    maps[k] = bp_[k]->reconstruct(ro);
    mask_reference(maps[k]);
    bp_[k].reset();
  }
  bp_.clear();
  proj_.clear();
  if (consensus_)
    for (int k = 1; k < K_; ++k) maps[size_t(k)] = maps[0];
  const std::vector<double> cw = sums.model.cls.values();
  const double wtot = std::accumulate(cw.begin(), cw.end(), 0.0);
  int best = 0;
  for (int k = 0; k < K_; ++k) {
    const double f = wtot > 0 ? cw[size_t(k)] / wtot : 1.0 / K_;
    st_.fraction[size_t(k)] = batch ? (1 - bs.eta) * st_.fraction[size_t(k)] + bs.eta * f : f;
    int rk = 0;
    for (size_t s = 1; s < hs; ++s) {
      if (rep.ssnr[size_t(k)][s] < 1) break;
      rk = int(s);
    }
    st_.resolution[size_t(k)] = shell_to_A(rk);
    if (st_.fraction[size_t(k)] > 0) best = std::max(best, rk);
    st_.maps[size_t(k)] = std::move(maps[size_t(k)]);
  }
  // RELION's next limit: the resolution shell (at least --minres_map's 5; after a --firstiter_cc
  // iteration the --ini_high shell) + --incr_size.
  const int res_shell = cc ? ini_shell() : std::max(best, kMinresMap);
  st_.current_shells = opt_.relion_prior ? std::min(res_shell + opt_.incr_size, n_ / 2)
                                         : std::clamp(best + opt_.incr_size, std::min(ini_shell(), n_ / 2), n_ / 2);
  if (unregularised_) st_.current_shells = std::min(ini_shell(), n_ / 2);
  st_.current_shells = std::min(st_.current_shells, max_shells());
  if (consensus_ || unregularised_) std::fill(st_.fraction.begin(), st_.fraction.end(), 1.0 / K_);
  if (!opt_.norm) next_.norm = st_.p.norm;
  st_.p = std::move(next_);
  for (size_t i = 0; i < N; ++i) st_.cls[i] = int(std::lround(new_cls_[i]));
  st_.iteration += 1;
  return rep;
}

// Central sections (xy, xz, yz) and the projection along z of a map, as images.
std::vector<Image> views(const Volume& v) {
  const int n = v.nx(), c = n / 2;
  Image xy(n, n), xz(n, n), yz(n, n), pz(n, n);
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) {
      xy(a, b) = v(a, b, c);
      xz(a, b) = v(a, c, b);
      yz(a, b) = v(c, a, b);
      float s = 0;
      for (int z = 0; z < n; ++z) s += v(a, b, z);
      pz(a, b) = s;
    }
  return {xy, xz, yz, pz};
}

void Job::write_iteration(const Report& rep) {
  const int it = st_.iteration;
  files_.class_maps.clear();
  for (int k = 0; k < K_; ++k) files_.class_maps.push_back(iter_name(it, fmt::format("class{:03d}.mrc", k + 1)));
  files_.data_star = iter_name(it, "data.star");
  files_.model_star = iter_name(it, "model.star");
  files_.optimiser_star = iter_name(it, "optimiser.star");
  files_.png = iter_name(it, "classes.png");
  const std::string state = iter_name(it, "state.bin");
  if (mpi::rank() != 0) return;
  mrc::WriteOptions wo;
  wo.pixel_size = angpix_;
  for (int k = 0; k < K_; ++k) mrc::write(files_.class_maps[size_t(k)], st_.maps[size_t(k)], wo);
  // Particles.
  const size_t N = table_.size(), hs = size_t(n_ / 2 + 1);
  {
    ParticleTable out = table_;
    st_.p.set_poses(out);
    out.class_number = st_.cls;
    out.sync();
    star::Block& pb = out.particles_block();
    pb.set_column("rlnClassNumber", st_.cls);
    st_.p.write_columns(pb);
    std::vector<int> gn(N);
    for (size_t i = 0; i < N; ++i) gn[i] = groups_.group_of[i] + 1;
    pb.set_column("rlnGroupNumber", gn);
    out.write(files_.data_star);
  }
  // Model.
  {
    star::Document doc;
    star::Block& g = doc.add_block("model_general", false);
    g.set("rlnReferenceDimensionality", "3");
    g.set("rlnDataDimensionality", "2");
    g.set("rlnOriginalImageSize", std::to_string(n_));
    const double best = st_.resolution.empty() ? 999.0 : *std::min_element(st_.resolution.begin(), st_.resolution.end());
    g.set("rlnCurrentResolution", num(best));
    g.set("rlnCurrentImageSize", std::to_string(std::min(n_, 2 * (rep.used_shells + 1))));
    g.set("rlnPixelSize", num(angpix_));
    g.set("rlnNrClasses", std::to_string(K_));
    g.set("rlnTau2FudgeFactor", num(opt_.tau2_fudge));
    g.set("rlnLogLikelihood", num(rep.loglik_sum));
    g.set("rlnAveragePmax", num(rep.average_pmax));
    // The mean of the particles' rlnNormCorrection (particle_subtract scales by it / each one's).
    g.set("rlnNormCorrectionAverage", num(st_.avg_norm));
    star::Block& c = doc.add_block("model_classes", true);
    for (int k = 0; k < K_; ++k) c.add_row();
    c.set_column("rlnReferenceImage", files_.class_maps);
    c.set_column("rlnClassDistribution", st_.fraction);
    c.set_column("rlnEstimatedResolution", st_.resolution);
    for (int k = 0; k < K_; ++k) {
      star::Block& b = doc.add_block(fmt::format("model_class_{}", k + 1), true);
      std::vector<int> idx;
      std::vector<double> res, ssnr, tau2;
      for (size_t s = 0; s < hs; ++s) {
        b.add_row();
        idx.push_back(int(s));
        res.push_back(double(s) / (n_ * angpix_));
        ssnr.push_back(size_t(k) < rep.ssnr.size() ? rep.ssnr[size_t(k)][s] : 0.0);
        tau2.push_back(size_t(k) < rep.tau2.size() && s < rep.tau2[size_t(k)].size()
                           ? rep.tau2[size_t(k)][s] / (double(n_) * n_ * double(n_) * n_)
                           : 0.0);
      }
      b.set_column("rlnSpectralIndex", idx);
      b.set_column("rlnResolution", res);
      b.set_column("rlnSsnrMap", ssnr);
      b.set_column("rlnReferenceTau2", tau2);
    }
    {
      star::Block& gb = doc.add_block("model_groups", true);
      std::vector<int> gnum(st_.group_scale.size());
      for (size_t k = 0; k < gnum.size(); ++k) gb.add_row(), gnum[k] = int(k) + 1;
      gb.set_column("rlnGroupNumber", gnum);
      gb.set_column("rlnGroupScaleCorrection", st_.group_scale);
    }
    for (int gi = 0; gi < optics_; ++gi) {
      star::Block& b = doc.add_block(fmt::format("model_optics_group_{}", gi + 1), true);
      std::vector<int> idx;
      std::vector<double> s2;
      // At the group's own box (RELION's normalisation by it).
      const std::vector<double>& v = st_.sigma2[size_t(gi)];
      const double ng = 2.0 * double(v.size() - 1);
      for (size_t s = 0; s < v.size(); ++s) {
        b.add_row();
        idx.push_back(int(s));
        s2.push_back(v[s] / (ng * ng * ng * ng));
      }
      b.set_column("rlnSpectralIndex", idx);
      b.set_column("rlnSigma2Noise", s2);
    }
    star::write(files_.model_star, doc);
  }
  // Picture: per class the xy, xz, yz central sections and the z projection, labelled with the
  // class's particle count.
  {
    std::vector<Image> tiles;
    std::vector<int> counts;
    std::vector<int> cnt(size_t(K_), 0);
    for (int c : st_.cls)
      if (c >= 1 && c <= K_) cnt[size_t(c - 1)] += 1;
    for (int k = 0; k < K_; ++k)
      for (Image& im : views(st_.maps[size_t(k)])) {
        tiles.push_back(std::move(im));
        counts.push_back(cnt[size_t(k)]);
      }
    write_file_atomic(files_.png, class2d_detail::class_gallery_png(tiles, counts));
  }
  // State, then the optimiser file (last: a complete checkpoint).
  {
    state_io::Writer w;
    w.buf_.append(kMagic, 8);
    for (int64_t v : {int64_t(st_.iteration), int64_t(st_.current_shells), int64_t(st_.n), int64_t(N)}) w.i(v);
    w.d(st_.sigma2_offset);
    w.d(st_.avg_norm);
    w.d(st_.x_l1_max);
    w.i(int64_t(st_.sigma2.size()));
    for (const auto& s : st_.sigma2) w.vd(s);
    for (const auto* v : {&st_.group_scale, &st_.fraction, &st_.resolution, &st_.p.rot, &st_.p.tilt, &st_.p.psi, &st_.p.ox,
                          &st_.p.oy, &st_.p.norm, &st_.p.pmax, &st_.p.loglik})
      w.vd(*v);
    w.vi(st_.cls);
    w.vi(st_.p.nsig_int());
    write_file_atomic(state, w.buf_);
  }
  star::Document doc;
  star::Block& o = doc.add_block("optimiser_general", false);
  o.set("regulaJob", job_);
  o.set("rlnOutputRootName", opt_.out_root);
  o.set("rlnModelStarFile", files_.model_star);
  o.set("rlnExperimentalDataStarFile", files_.data_star);
  o.set("rlnCurrentIteration", std::to_string(it));
  o.set("rlnNumberOfIterations", std::to_string(opt_.iterations));
  o.set("rlnRandomSeed", std::to_string(opt_.seed));
  o.set("rlnNrClasses", std::to_string(K_));
  o.set("rlnTau2FudgeFactor", num(opt_.tau2_fudge));
  o.set("rlnPaddingFactor", std::to_string(opt_.pad));
  o.set("rlnSamplingPerturbFactor", num(opt_.perturb));
  o.set("rlnParticleDiameter", num(opt_.particle_diameter));
  o.set("rlnWidthMaskEdge", num(opt_.mask_edge));
  o.set("rlnDoZeroMask", opt_.zero_mask ? "1" : "0");
  o.set("rlnDoSolventFlattening", opt_.flatten_solvent ? "1" : "0");
  o.set("rlnSolventMaskName", opt_.solvent_mask.empty() ? "None" : opt_.solvent_mask);
  o.set("rlnDoCorrectCtf", opt_.ctf ? "1" : "0");
  o.set("rlnDoCorrectNorm", opt_.norm ? "1" : "0");
  o.set("rlnInitialLowPassFilter", num(opt_.ini_high));
  o.set("rlnSymmetryGroup", opt_.sym);
  o.set("rlnHealpixOrder", std::to_string(opt_.healpix_order));
  o.set("rlnOffsetRange", num(opt_.offset_range));
  o.set("rlnOffsetStep", num(opt_.offset_step));
  o.set("rlnDoSkipAlign", opt_.skip_align ? "1" : "0");
  o.set("regulaStaged", opt_.staged ? "1" : "0");
  o.set("rlnSigmaAngles", num(opt_.sigma_ang));
  o.set("rlnIncrementImageSize", std::to_string(opt_.incr_size));
  o.set("regulaFirstIterCc", opt_.firstiter_cc ? "1" : "0");
  o.set("regulaReference", opt_.reference);
  o.set("regulaInputStarFile", input_star_);
  o.set("regulaPixelSize", num(opt_.angpix));
  o.set("rlnDoScaleCorrection", opt_.scale ? "1" : "0");
  o.set("rlnAdaptiveOversampleOrder", std::to_string(opt_.oversampling));
  o.set("rlnAdaptiveOversampleFraction", num(opt_.adaptive_fraction));
  o.set("rlnMaxNumberOfSignificantPoses", std::to_string(opt_.max_significants));
  o.set("regulaStrictHighResExp", num(opt_.strict_highres_exp));
  o.set("regulaStateFile", state);
  o.set("regulaBatchIterations", std::to_string(opt_.batches.iterations));
  o.set("regulaBatchIniSubset", std::to_string(opt_.batches.ini_subset));
  o.set("regulaBatchFinSubset", std::to_string(opt_.batches.fin_subset));
  o.set("regulaBatchIniFrac", num(opt_.batches.ini_frac));
  o.set("regulaBatchFinFrac", num(opt_.batches.fin_frac));
  o.set("regulaBatchIniStep", num(opt_.batches.ini_step));
  o.set("regulaBatchStep", num(opt_.batches.step));
  o.set("regulaBatchWriteEvery", std::to_string(opt_.batches.write_every));
  o.set("regulaBatchIniTau2Fudge", num(opt_.batches.ini_tau2_fudge));
  if (mini_batch() && !batch_sums_.empty()) {
    // The forgetting sums (the next iteration is a mini-batch one). Only the newest are kept: they
    // are the size of the back-projectors; an older checkpoint of the mini-batch phase cannot be
    // continued (its file is gone, and --continue says so).
    const std::string sums = iter_name(it, "batch_sums.bin");
    write_batch_sums(sums);
    o.set("regulaBatchSums", sums);
    if (!last_batch_sums_.empty() && last_batch_sums_ != sums) std::filesystem::remove(last_batch_sums_);
    last_batch_sums_ = sums;
  }
  for (int k = 0; k < K_; ++k) o.set(fmt::format("regulaClass{}Map", k + 1), files_.class_maps[size_t(k)]);
  star::write(files_.optimiser_star, doc);
}

constexpr char kSumsMagic[8] = {'R', 'G', 'B', 'S', 'U', 'M', '0', '1'};

void Job::write_batch_sums(const std::string& path) const {
  state_io::Writer w;
  w.buf_.append(kSumsMagic, 8);
  const BackProjector& b0 = batch_sums_.front();
  for (int64_t v : {int64_t(b0.size()), int64_t(b0.padding()), int64_t(b0.r_max()), int64_t(batch_sums_.size()),
                    int64_t(b0.weight_values().size())})
    w.i(v);
  w.d(st_.batch_count);
  for (const BackProjector& b : batch_sums_) {
    w.buf_.append(reinterpret_cast<const char*>(b.data_values().data()), b.data_values().size_bytes());
    w.buf_.append(reinterpret_cast<const char*>(b.weight_values().data()), b.weight_values().size_bytes());
  }
  write_file_atomic(path, w.buf_);
}

void Job::read_batch_sums(const std::string& path) {
  state_io::Reader r(path, job_);
  r.magic(kSumsMagic);
  const int n = int(r.i()), pad = int(r.i()), rmax = int(r.i());
  const size_t K = size_t(r.i()), points = size_t(r.i());
  st_.batch_count = r.d();
  // (rmax is checked against the run's limit once the data are read: Job::iterate.)
  if (n != st_.n || pad != opt_.pad || K != size_t(opt_.classes) || rmax < 1 || rmax > n / 2)
    input_error("{}: forgetting sums of box {}, padding {}, {} classes, radius {} do not match the checkpoint", path, n,
                pad, K, rmax);
  for (size_t k = 0; k < K; ++k) {
    BackProjector b(n, pad, rmax, 3);
    if (b.weight_values().size() != points) input_error("{}: {} lattice points, expected {}", path, points, b.weight_values().size());
    r.bytes(b.raw_data().data(), b.raw_data().size_bytes());
    r.bytes(b.raw_weight().data(), b.raw_weight().size_bytes());
    batch_sums_.push_back(std::move(b));
  }
  r.end();
  last_batch_sums_ = path;
}

void Job::read_checkpoint() {
  const std::string& path = opt_.continue_from;
  const state_io::OptimiserFile o(path, job_);
  if (const std::string j = checkpoint_job(o); !j.empty() && j != job_)
    input_error("{}: a checkpoint of regula {}, not of {}", path, j, job_);
  auto get = [&](const std::string& key) { return o.get(key); };
  auto get_d = [&](const std::string& key) { return o.number(key); };
  opt_.classes = int(get_d("rlnNrClasses"));
  if (!opt_.iterations_given) opt_.iterations = int(get_d("rlnNumberOfIterations"));
  opt_.seed = uint64_t(get_d("rlnRandomSeed"));
  opt_.tau2_fudge = get_d("rlnTau2FudgeFactor");
  opt_.pad = o.has("rlnPaddingFactor") ? int(get_d("rlnPaddingFactor")) : 2;  // (older checkpoints: 2)
  // (Checkpoints written before --perturb existed ran with fixed grids.)
  opt_.perturb = o.has("rlnSamplingPerturbFactor") ? get_d("rlnSamplingPerturbFactor") : 0.0;
  opt_.particle_diameter = get_d("rlnParticleDiameter");
  opt_.mask_edge = get_d("rlnWidthMaskEdge");
  opt_.zero_mask = get_d("rlnDoZeroMask") != 0;
  opt_.flatten_solvent = get_d("rlnDoSolventFlattening") != 0;
  if (o.has("rlnSolventMaskName") && get("rlnSolventMaskName") != "None") opt_.solvent_mask = get("rlnSolventMaskName");
  opt_.ctf = get_d("rlnDoCorrectCtf") != 0;
  opt_.norm = get_d("rlnDoCorrectNorm") != 0;
  opt_.ini_high = get_d("rlnInitialLowPassFilter");
  opt_.sym = get("rlnSymmetryGroup");
  opt_.healpix_order = int(get_d("rlnHealpixOrder"));
  opt_.offset_range = get_d("rlnOffsetRange");
  opt_.offset_step = get_d("rlnOffsetStep");
  opt_.skip_align = get_d("rlnDoSkipAlign") != 0;
  opt_.staged = get_d("regulaStaged") != 0;
  opt_.sigma_ang = get_d("rlnSigmaAngles");
  opt_.incr_size = int(get_d("rlnIncrementImageSize"));
  opt_.firstiter_cc = get_d("regulaFirstIterCc") != 0;
  opt_.reference = get("regulaReference");
  opt_.angpix = get_d("regulaPixelSize");
  opt_.scale = get_d("rlnDoScaleCorrection") != 0;
  opt_.oversampling = int(get_d("rlnAdaptiveOversampleOrder"));
  opt_.adaptive_fraction = get_d("rlnAdaptiveOversampleFraction");
  opt_.max_significants = long(get_d("rlnMaxNumberOfSignificantPoses"));
  // (Older checkpoints: no limit.)
  opt_.strict_highres_exp = o.has("regulaStrictHighResExp") ? get_d("regulaStrictHighResExp") : -1.0;
  input_star_ = get("regulaInputStarFile");
  if (o.has("regulaBatchIterations")) {  // (older checkpoints: no mini-batch iterations)
    opt_.batches.iterations = int(get_d("regulaBatchIterations"));
    opt_.batches.ini_subset = long(get_d("regulaBatchIniSubset"));
    opt_.batches.fin_subset = long(get_d("regulaBatchFinSubset"));
    opt_.batches.ini_frac = get_d("regulaBatchIniFrac");
    opt_.batches.fin_frac = get_d("regulaBatchFinFrac");
    opt_.batches.ini_step = get_d("regulaBatchIniStep");
    opt_.batches.step = get_d("regulaBatchStep");
    opt_.batches.write_every = int(get_d("regulaBatchWriteEvery"));
    // (Older checkpoints: --tau2_fudge throughout.)
    opt_.batches.ini_tau2_fudge = o.has("regulaBatchIniTau2Fudge") ? get_d("regulaBatchIniTau2Fudge") : 0.0;
  }
  state_io::Reader r(get("regulaStateFile"), job_);
  r.magic(kMagic);
  st_ = State();
  st_.iteration = int(r.i());
  st_.current_shells = int(r.i());
  st_.n = int(r.i());
  const size_t N = size_t(r.i());
  st_.sigma2_offset = r.d();
  st_.avg_norm = r.d();
  st_.x_l1_max = r.d();
  const size_t G = r.count();
  for (size_t g = 0; g < G; ++g) st_.sigma2.push_back(r.vd());
  for (auto* v : {&st_.group_scale, &st_.fraction, &st_.resolution, &st_.p.rot, &st_.p.tilt, &st_.p.psi, &st_.p.ox, &st_.p.oy,
                  &st_.p.norm, &st_.p.pmax, &st_.p.loglik})
    *v = r.vd();
  st_.cls = r.vi();
  const std::vector<int> nsig = r.vi();
  st_.p.nsig.assign(nsig.begin(), nsig.end());
  r.end();
  batch_sums_.clear();
  if (o.has("regulaBatchSums")) read_batch_sums(get("regulaBatchSums"));
  else if (mini_batch() && st_.iteration > 0)
    input_error("{}: iteration {} of the mini-batch phase without its forgetting sums (regulaBatchSums)", path,
                st_.iteration);
  if (st_.fraction.size() != size_t(opt_.classes) || st_.p.rot.size() != N || st_.cls.size() != N)
    input_error("{}: inconsistent {} state ({} classes, {} particles)", path, job_, st_.fraction.size(), N);
  // The checkpoint's own files: the result when --iter asks for no further iteration.
  files_ = Class3DResult();
  for (int k = 0; k < opt_.classes; ++k) {
    files_.class_maps.push_back(get(fmt::format("regulaClass{}Map", k + 1)));
    st_.maps.push_back(mrc::read(files_.class_maps.back()));
  }
  files_.data_star = get("rlnExperimentalDataStarFile");
  files_.model_star = get("rlnModelStarFile");
  files_.optimiser_star = path;
  files_.png = fmt::format("{}_it{:03d}_classes.png", get("rlnOutputRootName"), st_.iteration);
}

Class3DResult Job::run() {
  set_blas_single_threaded();
  const bool cont = !opt_.continue_from.empty();
  if (cont) {
    try {
      read_checkpoint();
    } catch (const InputError& e) {
      throw InputError(fmt::format("--continue: {}", e.what()));
    }
  }
  if (auto msg = opt_.validate(); !msg.empty()) throw InputError(cont ? opt_.continue_from + ": " + msg : msg);
  if (opt_.skip_align && opt_.sigma_ang > 0) throw InputError("--skip_align and --sigma_ang exclude each other");
  try {
    sym_ = SymmetryGroup::parse(opt_.sym);
  } catch (const InputError& e) {
    throw InputError(fmt::format("--sym: {}", e.what()));
  }
  if (!cont) input_star_ = std::filesystem::absolute(opt_.input).lexically_normal().string();
  setup();
  if (cont && (st_.n != n_ || st_.p.rot.size() != table_.size() || st_.sigma2.size() != size_t(optics_) ||
               st_.group_scale.size() != groups_.names.size() || !ml3d::spectra_fit(st_.sigma2, scale_)))
    input_error("{}: the checkpoint (box {}, {} particles) does not match {}", opt_.continue_from, st_.n,
                st_.p.rot.size(), input_star_);
  if (!cont) initialise();  // reads the reference and every image: the last input checks, before any output
  const std::filesystem::path dir = std::filesystem::path(opt_.out_root).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir);
  if (!cont) write_iteration(Report{st_.current_shells, {}, {}, 0, 0});
  spdlog::info("class3d: {} particles, box {} px, {:.3f} Å/px, K = {}, HEALPix order {}, symmetry {}", table_.size(),
               n_, angpix_, K_, opt_.healpix_order, sym_.name());
  while (st_.iteration < opt_.iterations) {
    check_cancelled();
    const auto t0 = std::chrono::steady_clock::now();
    const bool batch = mini_batch();
    const Report rep = iterate();
    // Mini-batch iterations write their files every batches.write_every iterations (and at the last).
    if (!batch || st_.iteration % std::max(opt_.batches.write_every, 1) == 0 || !mini_batch() ||
        st_.iteration == opt_.iterations)
      write_iteration(rep);
    std::string fr;
    for (int k = 0; k < K_; ++k) fr += fmt::format("{}{:.3f} ({:.1f} Å)", k ? ", " : "", st_.fraction[size_t(k)], st_.resolution[size_t(k)]);
    std::string subset;
    if (batch) {
      const BatchStep bs = batch_step(opt_.batches, st_.iteration - 1, table_.size());
      subset = fmt::format(" (mini-batch of {}, step {:.2f}, T {:.2f})", bs.subset, bs.eta,
                           batch_tau2_fudge(opt_.batches, st_.iteration - 1, opt_.tau2_fudge));
    }
    spdlog::info("class3d: iteration {}{}: {}{}, limit {} shells, <Pmax> {:.3f}, classes {}, {:.1f} s", st_.iteration,
                 subset, consensus_ ? "consensus, " : "", search_, rep.used_shells, rep.average_pmax, fr,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  // Every rank returns the files rank 0 wrote (initial_model reads the last class map on each rank).
  mpi::barrier();
  files_.last_iteration = st_.iteration;
  files_.class_fraction = st_.fraction;
  files_.class_resolution_A = st_.resolution;
  files_.particle_class = st_.cls;
  return files_;
}

}  // namespace

Class3DResult run_class3d(const Class3DOptions& opt, const std::string& job) {
  Job j(opt, job);
  return j.run();
}

}  // namespace regula

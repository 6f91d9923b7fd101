#include "regula/jobs/refine3d.hpp"

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
#include "regula/core/exact_sum.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/matrices.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/estep/scores.hpp"
#include "regula/estep/search3d.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/jobs/refine3d_detail.hpp"
#include "regula/model/particles.hpp"
#include "regula/mstep/first_noise.hpp"
#include "regula/mstep/model_update.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

std::string Refine3DOptions::validate() const {
  if (continue_from.empty()) {
    if (input.empty()) return "--i: a particles STAR file is required (or --continue)";
    if (reference.empty()) return "--ref: an initial reference map is required";
  }
  if (out_root.empty()) return "--o: an output root is required";
  if (!(ini_high > 0)) return fmt::format("--ini_high: must be positive Å (got {})", ini_high);
  if (particle_diameter < 0) return fmt::format("--particle_diameter: must be >= 0 Å (got {})", particle_diameter);
  if (healpix_order < 0 || healpix_order > 5)
    return fmt::format("--healpix_order: must be 0 to 5 (got {})", healpix_order);
  if (auto_local_healpix_order < 0 || auto_local_healpix_order > 9)
    return fmt::format("--auto_local_healpix_order: must be 0 to 9 (got {})", auto_local_healpix_order);
  if (!(offset_range >= 0)) return fmt::format("--offset_range: must be >= 0 px (got {})", offset_range);
  if (!(offset_step > 0)) return fmt::format("--offset_step: must be > 0 px (got {})", offset_step);
  if (offset_range / offset_step > 20)
    return fmt::format("--offset_range/--offset_step: at most 20 steps per direction (got {} / {})", offset_range,
                       offset_step);
  if (!(low_resol_join_halves >= 0)) return "--low_resol_join_halves: must be >= 0 Å";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (max_iterations < 1) return fmt::format("--iter: must be at least 1 (got {})", max_iterations);
  if (max_healpix_order < healpix_order || max_healpix_order > 9)
    return "--max_healpix_order: must be in [healpix_order, 9]";
  if (pad < 1 || pad > 3) return fmt::format("--pad: must be 1, 2 or 3 (got {})", pad);
  if (oversampling < 0 || oversampling > 2) return fmt::format("--oversampling: must be 0, 1 or 2 (got {})", oversampling);
  if (!(adaptive_fraction > 0 && adaptive_fraction <= 1))
    return fmt::format("--adaptive_fraction: must be in (0, 1] (got {})", adaptive_fraction);
  if (!(perturb >= 0 && perturb <= 1)) return fmt::format("--perturb: must be in [0, 1] (got {})", perturb);
  if (max_significants == 0 || max_significants < -1)
    return fmt::format("--maxsig: must be -1 (no bound) or positive (got {})", max_significants);
  if (!(tau2_fudge > 0)) return fmt::format("--tau2_fudge: must be positive (got {})", tau2_fudge);
  return "";
}

namespace {

using refine3d_detail::IterationReport;
using refine3d_detail::State;
constexpr double kFscThreshold = 0.143;
// Particles per work unit: threads and MPI ranks take whole blocks, so any number of them has work
// (the results do not depend on the split: every sum is exact, see below).
constexpr size_t kBlock = 4;
// Per half: the fine slices shared by the particles of a global iteration (estep::SliceCache); a
// quarter of the 3D jobs' budget each, so that the peak memory of a large box grows little.
constexpr size_t kFineSliceBytes = ml3d::kSharedSliceBytes / 4;
// RELION's constants (ml_optimiser.h, ml_optimiser.cpp).
constexpr int kMinresMap = 5;          // --minres_map: the current resolution is at least this shell
constexpr int kIncrSize = 10;          // shells added beyond the current resolution
constexpr double kAccPvalue = 4.60517; // exp(-4.6) = 0.01: the accuracy estimates' threshold
constexpr size_t kAccTrials = 100;     // particles of the accuracy estimates

// Scalars of an iteration, summed exactly.
enum Scalar : size_t {
  kPmax, kLoglik, kAngChange, kOffChange2, kChangeCount, kOffset2, kOffsetWeight, kNormSum, kBound, kScalars
};

// One thread's share of an iteration's sums: the M-step's inputs per half, and scalars. All exact,
// so merging threads' and ranks' sums in any order gives the same bits.
struct ThreadSums {
  std::array<ml3d::ModelSums, 2> half;
  ExactSums scalars{kScalars};
  void init(size_t optics, size_t hs, size_t groups) {
    for (auto& h : half) h.init(optics, hs, groups, 1);
  }
  void merge(const ThreadSums& o) {
    for (int h = 0; h < 2; ++h) half[size_t(h)].merge(o.half[size_t(h)]);
    scalars.merge(o.scalars);
  }
  std::vector<ExactSums*> all() {
    std::vector<ExactSums*> v = half[0].all(), w = half[1].all();
    v.insert(v.end(), w.begin(), w.end());
    v.push_back(&scalars);
    return v;
  }
};

class Job {
 public:
  explicit Job(const Refine3DOptions& opt) : opt_(opt), pool_(opt.threads), sym_(SymmetryGroup::parse(opt.sym)) {}
  Refine3DResult run();

 private:
  void setup();
  void initialise();
  IterationReport iterate(bool final);
  void estimate_accuracy();
  void make_projectors();
  void update_sampling();
  void update_after(const IterationReport& rep);
  void process_particle(size_t i, bool final, ParticleImages& images, estep::Search3DWork& ws, ThreadSums& sums);
  // The previous values of particle i (kept when its search finds no finite likelihood).
  void keep_particle(size_t i);
  // ml3d::read_particle with this job's mask, norm correction and the particle's current origin.
  // `unmasked`: as read (the back-projected particle; the first noise estimate without --zero_mask,
  // as RELION's).
  Image read_particle(ParticleImages& images, size_t i, const std::vector<double>* noise_sigma2,
                      bool unmasked = false) const;
  ml3d::ParticleMasking masking(size_t i) const;  // particle i's (its own pixels)
  int coarse_shells() const;
  int shell_of(double A) const { return int(std::lround(n_ * angpix_ / A)); }
  double shell_to_A(double s) const { return s > 0 ? n_ * angpix_ / s : 999.0; }
  bool cc_iteration() const { return opt_.firstiter_cc && st_.iteration == 0; }
  double fine_step() const { return healpix_angular_step(st_.order) / double(1 << opt_.oversampling); }
  double norm_factor(size_t i) const { return opt_.norm && st_.p.norm[i] > 0 ? st_.avg_norm / st_.p.norm[i] : 1.0; }
  double group_scale(int h, size_t i) const {
    return opt_.scale ? st_.group_scale[size_t(h) * groups_.names.size() + size_t(groups_.group_of[i])] : 1.0;
  }
  void mask_reference(Volume& map) const;
  refine3d_detail::Files write_final(const IterationReport& rep);

  Refine3DOptions opt_;
  ThreadPool pool_;
  SymmetryGroup sym_;
  std::string input_star_;
  ParticleTable table_;
  OpticsModel optics_model_;  // of table_ (engine_optics)
  ml3d::Groups groups_;
  int n_ = 0, optics_ = 1;             // n_: the reference's box (the first optics group's)
  double angpix_ = 0, radius_px_ = 0;  // the reference's pixel size; mask radius in its pixels
  ml3d::PixelScale scale_;             // optics groups of different pixel and box sizes
  Volume solvent_mask_;
  std::array<std::vector<size_t>, 2> members_;  // particle indices per half
  State st_;
  // Per iteration:
  int r_ = 0, rc_ = 0;
  estep::SearchPixels px_coarse_;
  ml3d::FinePixels fine_;                      // per optics group
  ml3d::FinePixels all_;                       // per optics group, every pixel (final iteration)
  std::vector<std::vector<double>> all_counts_;  // per optics group
  std::array<std::unique_ptr<Projector>, 2> proj_;
  std::vector<std::array<double, 2>> global_dirs_;
  std::vector<long> global_pix_;
  std::vector<double> global_psi_;
  std::array<estep::Slices, 2> global_slices_;
  DirectionTable local_table_;
  std::array<estep::Search3DSetup, 2> setup_;  // per half
  std::array<std::vector<estep::Search3DSetup>, 2> group_setup_;  // per half and optics group (PixelScale)
  std::array<std::unique_ptr<estep::SliceCache>, 2> fine_slices_;  // global searches: the fine poses' slices
  std::array<std::unique_ptr<BackProjector>, 2> bp_;
  std::unique_ptr<Progress> progress_;
  // New per-particle values of the iteration (filled by the owner of each particle; zeros elsewhere
  // until the MPI sum).
  ml3d::ParticleValues next_;  // this iteration's new per-particle values
  // The final iteration.
  Volume final_map_;
  std::vector<double> final_fsc_;
  double final_resolution_ = 0;
  struct FinalFiles {
    std::string map, half1, half2, data, model, bild, png;
  } final_files_;
};

void Job::setup() {
  ParticleReadOptions ro;
  ro.angpix = opt_.angpix;
  table_ = ParticleTable::read(input_star_, ro);
  const size_t N = table_.size();
  if (N < 2) input_error("{}: refine3d needs at least 2 particles (got {})", input_star_, N);
  {
    ParticleImages images(table_, 1);
    Image first = images.read(0);
    n_ = first.nx();
    if (first.ny() != n_ || n_ < 16 || n_ % 2)
      input_error("{}: particle images must be square, even and at least 16 px (got {}x{})", table_.where(0),
                  first.nx(), first.ny());
  }
  // The optics this E-step models; the rest is refused. The reference has the first optics group's box.
  optics_model_ = engine_optics(table_, n_, opt_.ctf, "refine3d", true);
  n_ = optics_model_.reference_box();
  angpix_ = table_.optics.front().pixel_size;
  for (const auto& g : table_.optics) {
    if (g.pixel_size <= 0) input_error("{}: optics group {} has no pixel size; give --angpix", input_star_, g.number);
    if (opt_.ctf && g.voltage <= 0)
      input_error("{}: --ctf needs rlnVoltage, rlnSphericalAberration and rlnAmplitudeContrast (optics group {})",
                  input_star_, g.number);
  }
  if (opt_.ctf)
    for (size_t i = 0; i < N; ++i) (void)particle_ctf_params(table_, i);
  optics_ = int(table_.optics.size());
  scale_ = ml3d::PixelScale(table_, optics_model_);
  if (!scale_.uniform()) ml3d::log_pixel_sizes("refine3d", scale_);
  groups_ = ml3d::particle_groups(table_);
  const double r = opt_.particle_diameter > 0 ? opt_.particle_diameter / (2 * angpix_) : n_ / 2.0 - opt_.mask_edge;
  radius_px_ = std::clamp(r, 2.0, n_ / 2.0);
  if (opt_.solvent_correct_fsc && opt_.solvent_mask.empty())
    input_error("--solvent_correct_fsc needs --solvent_mask (the mask the FSC is corrected for)");
  if (!opt_.solvent_mask.empty()) solvent_mask_ = ml3d::read_solvent_mask(opt_.solvent_mask, n_);
  all_counts_ = ml3d::shell_pixel_counts(scale_);
}

ml3d::ParticleMasking Job::masking(size_t i) const {
  return ml3d::particle_masking({n_, radius_px_, opt_.mask_edge, opt_.zero_mask, opt_.seed}, scale_, i);
}

Image Job::read_particle(ParticleImages& images, size_t i, const std::vector<double>* noise_sigma2,
                         bool unmasked) const {
  return ml3d::read_particle(images, table_, i, masking(i), norm_factor(i), ml3d::origin_px(st_.p, scale_, i),
                             noise_sigma2, unmasked);
}

void Job::mask_reference(Volume& map) const {
  ml3d::mask_reference(map, solvent_mask_, opt_.flatten_solvent, radius_px_, opt_.mask_edge);
}

// Iteration 0: half sets, reference, noise spectra from the particles' power.
void Job::initialise() {
  const size_t N = table_.size();
  st_ = State();
  st_.n = n_;
  st_.order = opt_.healpix_order;
  st_.local = opt_.healpix_order >= opt_.auto_local_healpix_order;
  st_.offset_range = opt_.offset_range;
  st_.offset_step = opt_.offset_step;
  st_.current_shells = std::clamp(shell_of(opt_.ini_high), 4, n_ / 2);
  st_.res_shell = st_.current_shells;
  // Poses and origins of the input, its rlnNormCorrection when present (RELION keeps it), else 1.
  st_.p = ml3d::ParticleValues::from_table(table_);
  st_.avg_norm = st_.p.average_norm();
  st_.group_scale.assign(2 * groups_.names.size(), 1.0);
  // Random halves unless every particle has rlnRandomSubset 1 or 2.
  bool keep = std::all_of(table_.random_subset.begin(), table_.random_subset.end(), [](int s) { return s == 1 || s == 2; });
  st_.half.assign(N, 1);
  if (keep) {
    st_.half = table_.random_subset;
  } else {
    std::vector<std::pair<uint64_t, size_t>> key(N);
    auto rng = make_rng(opt_.seed, 0x48414c46);  // "HALF"
    for (size_t i = 0; i < N; ++i) key[i] = {rng(), i};
    std::sort(key.begin(), key.end());
    for (size_t k = 0; k < N; ++k) st_.half[key[k].second] = k < (N + 1) / 2 ? 1 : 2;
  }
  // Reference: low-passed to --ini_high, both halves alike.
  Volume ref = ml3d::read_reference(opt_.reference, angpix_, n_);
  low_pass(ref, opt_.ini_high, angpix_);
  mask_reference(ref);
  st_.maps = {ref, ref};
  // Noise: RELION's first estimate per half and optics group (mstep/first_noise.hpp); and the
  // largest L1 norm of an image (a bound of the back-projectors' exact sums).
  const size_t nblocks = (N + 63) / 64;
  std::vector<int> boxes(scale_.box);
  boxes.insert(boxes.end(), scale_.box.begin(), scale_.box.end());  // [half][optics group]
  mstep::FirstNoiseEstimate noise(boxes);
  std::vector<double> l1max(nblocks, 0.0);
  Progress prog("refine3d: noise spectra", double(N));
  pool_.parallel_for(0, nblocks, [&](size_t c, int) {
    ParticleImages images(table_, 4);
    for (size_t i = c * 64; i < std::min(N, (c + 1) * 64); ++i) {
      Image img = read_particle(images, i, nullptr, true);  // back-projected unmasked: its L1 bounds the sums
      double l1 = 0;
      for (float v : img) l1 += std::abs(double(v));
      l1max[c] = std::max(l1max[c], l1);
      if (opt_.zero_mask)
        ml3d::mask_particle(img, masking(i), i, ml3d::origin_px(st_.p, scale_, i), nullptr);
      noise.add(size_t((st_.half[i] - 1) * optics_ + table_.optics_index[i]), img);
    }
    prog.advance(double(std::min(N, (c + 1) * 64) - c * 64));
  });
  prog.finish();
  const auto s2 = noise.sigma2();
  st_.sigma2.assign(2, std::vector<std::vector<double>>(size_t(optics_)));
  for (int h = 0; h < 2; ++h)
    for (int g = 0; g < optics_; ++g) st_.sigma2[size_t(h)][size_t(g)] = s2[size_t(h * optics_ + g)];
  st_.x_l1_max = *std::max_element(l1max.begin(), l1max.end());
  st_.sigma2_offset = std::max(1.0, opt_.offset_range * opt_.offset_range / 4.0);
}

// Frequency limit of the coarse pass (RELION: the resolution at which one angular step moves the
// particle edge by 1/1.2 of it, rounded up; never beyond the E-step's limit).
int Job::coarse_shells() const {
  return std::clamp(estep::coarse_limit_shells(n_, angpix_, 2 * radius_px_ * angpix_, healpix_angular_step(st_.order), 1.2),
                    6, n_ / 2);
}

// The projectors of the two half references up to the E-step's limit (+1 for interpolation): made
// once per iteration, for the accuracy estimate and the E-step; the M-step drops them.
void Job::make_projectors() {
  // Each group's pixels map to at most half a shell beyond the limit (ml3d::fine_pixels' rounding).
  const int r = std::min(st_.current_shells + (scale_.uniform() ? 1 : 2), n_ / 2);
  for (int h = 0; h < 2; ++h)
    if (!proj_[size_t(h)] || proj_[size_t(h)]->r_max() != r)
      proj_[size_t(h)] = std::make_unique<Projector>(st_.maps[size_t(h)], opt_.pad, r, opt_.threads);
}

// RELION's calculateExpectedAngularErrors: for particles of the data set at their current poses,
// the smallest rotation (of rot, tilt or psi, chosen at random) and shift (of x or y) of the
// reference whose CTF-weighted difference over the E-step's pixels reaches exp(-4.6) = 0.01 in the
// likelihood ratio; averaged over the particles.
void Job::estimate_accuracy() {
  const size_t N = table_.size();
  const size_t trials = std::min(kAccTrials, N);
  const ml3d::FinePixels gpx = ml3d::fine_pixels(st_.current_shells, scale_, optics_model_);
  std::vector<double> rot_err(trials, 0.0), trans_err(trials, 0.0);
  make_projectors();
  const auto& P = proj_;
  pool_.parallel_for(0, trials, [&](size_t t, int) {
    const size_t i = t * N / trials;  // spread over the data set
    const int h = st_.half[i] - 1, g = table_.optics_index[i];
    const estep::SearchPixels& px = gpx.px[size_t(g)];  // the particle's own pixels
    const size_t m = px.size();
    const std::optional<ParticleOptics> ctf = ml3d::particle_optics(optics_model_, i, opt_.ctf);
    std::vector<double> c2(m, 1.0), w(m);
    for (size_t q = 0; q < m; ++q) {
      if (ctf) {
        const double c = ctf->predicted(ctf->ctf_value_float(px.kx[q], px.ky[q]));
        c2[q] = c * c;
      }
      const double s2 = st_.sigma2[size_t(h)][size_t(g)][size_t(px.shell[q])];
      w[q] = s2 > 0 ? c2[q] / (2 * s2) : 0.0;
    }
    const double sc = group_scale(h, i);
    std::vector<float> a(2 * m), a2(m), b(2 * m), b2(m);
    const estep::SearchPixels* rp = ml3d::group_pixels(gpx.ref, g);  // where the reference is projected
    estep::project_orientation(*P[size_t(h)], rp ? *rp : px, {st_.p.rot[i], st_.p.tilt[i], st_.p.psi[i]}, a.data(),
                               a2.data());
    auto rng = make_rng(opt_.seed, 0x414343, uint64_t(st_.iteration) * N + i);  // "ACC"
    for (int mode = 0; mode < 2; ++mode) {
      double err = 0, snr = 0;
      while (snr <= kAccPvalue) {
        double step;
        if (mode == 0)
          step = err < 0.2 ? 0.05 : err < 1 ? 0.1 : err < 2 ? 0.2 : err < 5 ? 0.5 : err < 10 ? 1.0 : err < 20 ? 2.0 : 5.0;
        else
          step = err < 1 ? 0.1 : err < 2 ? 0.2 : err < 5 ? 0.5 : err < 10 ? 1.0 : 2.0;
        err += step;
        if ((mode == 0 && err > 30) || (mode == 1 && err > 10)) break;
        const double u = uniform01(rng);
        snr = 0;
        if (mode == 0) {
          Euler e{st_.p.rot[i], st_.p.tilt[i], st_.p.psi[i]};
          (u < 1.0 / 3 ? e.rot : u < 2.0 / 3 ? e.tilt : e.psi) += err;
          estep::project_orientation(*P[size_t(h)], rp ? *rp : px, e, b.data(), b2.data());
          for (size_t q = 0; q < m; ++q) {
            const double dr = a[2 * q] - b[2 * q], di = a[2 * q + 1] - b[2 * q + 1];
            snr += sc * sc * w[q] * (dr * dr + di * di);
          }
        } else {
          const double dx = u < 0.5 ? err : 0.0, dy = u < 0.5 ? 0.0 : err;
          for (size_t q = 0; q < m; ++q) {
            // |F - F exp(-2 pi i k.d / n)|^2 = 2 |F|^2 (1 - cos(2 pi k.d / n))
            const double ph = 2 * kPi * (px.kx[q] * dx + px.ky[q] * dy) / px.n;
            snr += sc * sc * w[q] * 2.0 * a2[q] * (1 - std::cos(ph));
          }
        }
      }
      if (mode == 0) rot_err[t] = err;
      else trans_err[t] = err * scale_.pixel(i);  // Å
    }
  });
  st_.acc_rot = std::accumulate(rot_err.begin(), rot_err.end(), 0.0) / double(trials);
  st_.acc_trans = std::accumulate(trans_err.begin(), trans_err.end(), 0.0) / double(trials);
}

// RELION's updateAngularSampling for auto-refine: a finer sampling once the resolution and the poses
// have stopped improving, until the fine angular step is below 75% of the estimated accuracy.
void Job::update_sampling() {
  const bool proceed_res = st_.nr_iter_wo_resol_gain >= 1;
  const bool proceed_changes = st_.nr_iter_wo_large_changes >= 1;
  if (!(proceed_res && proceed_changes)) return;
  const double step = fine_step();
  if (step < 0.75 * st_.acc_rot || st_.order >= opt_.max_healpix_order) {
    st_.fine_enough = 1;
    return;
  }
  st_.fine_enough = 0;
  const double os = double(1 << opt_.oversampling);
  double new_step = std::min(1.5, 0.75 * st_.acc_trans) * os;  // Å, coarse
  double new_range = 5 * st_.current_change_off;                // Å
  const double old_step = st_.offset_step * angpix_, old_range = st_.offset_range * angpix_;
  new_range = std::min(1.3 * old_range, new_range);
  new_range = std::max(new_range, 1.5 * new_step);
  if (new_range > 4 * new_step) new_range /= 2;
  if (new_range > 4 * new_step) new_step = new_range / 4;
  if (new_step > old_step) {
    new_step = old_step;
    new_range = old_range;
  }
  st_.order += 1;
  st_.offset_step = new_step / angpix_;
  st_.offset_range = new_range / angpix_;
  st_.nr_iter_wo_resol_gain = 0;
  st_.nr_iter_wo_large_changes = 0;
  st_.smallest_change_ang = st_.smallest_change_off = 999;
  if (st_.order >= opt_.auto_local_healpix_order) st_.local = 1;
}

void Job::keep_particle(size_t i) {
  next_.copy(i, st_.p);
  progress_->advance(1);
}

void Job::process_particle(size_t i, bool final, ParticleImages& images, estep::Search3DWork& ws, ThreadSums& sums) {
  const int h = st_.half[i] - 1, g = table_.optics_index[i];
  const size_t hs = st_.sigma2[size_t(h)][size_t(g)].size();  // the group's shells, n_g/2 + 1
  const size_t grp = size_t(groups_.group_of[i]);
  const bool cc = cc_iteration();
  std::vector<float> inv_sigma2(hs, 0.0f);
  for (size_t s = 1; s < hs; ++s) {
    const double v = st_.sigma2[size_t(h)][size_t(g)][s];
    inv_sigma2[s] = cc ? 1.0f : (v > 0 ? float(1.0 / v) : 0.0f);
  }
  const auto [ox, oy] = ml3d::origin_px(st_.p, scale_, i);  // current offsets, its own px
  const auto optics = ml3d::particle_optics(optics_model_, i, opt_.ctf);
  const ml3d::ParticleViews v =
      ml3d::particle_views(read_particle(images, i, nullptr, true), masking(i), i, {ox, oy},
                           &st_.sigma2[size_t(h)][size_t(g)], optics, inv_sigma2,
                           (final ? all_ : fine_).px[size_t(g)].r_max);
  const estep::RotatableParticle& x = v.x;
  estep::Search3DInput in;
  in.x = &x;
  in.x_sums = &v.x_sums;
  in.inv_sigma2 = inv_sigma2;
  in.inv_sigma2_sums = v.inv_sigma2_sums;
  in.scale = group_scale(h, i);
  in.rot = st_.p.rot[i];
  in.tilt = st_.p.tilt[i];
  in.psi = st_.p.psi[i];
  in.ox_px = ox;
  in.ref_fine = ml3d::group_pixels(fine_.ref, g);
  in.ref_sums = ml3d::group_pixels(all_.ref, g);
  in.oy_px = oy;
  ml3d::SliceRouter sink({bp_[size_t(h)].get()});
  estep::Search3DResult res;
  estep::search_particle_3d(group_setup_[size_t(h)][size_t(g)], in, ws, &sink, res);
  keep_particle(i);
  if (!res.valid) {
    spdlog::warn("refine3d: particle {} has no finite likelihood; its pose is kept", i + 1);
    return;
  }
  next_.take(i, st_.p, res, scale_.pixel(i));
  const double total_d2 = ml3d::add_particle(sums.half[size_t(h)], res, x, g, int(grp), fine_.counts[size_t(g)],
                                             all_counts_[size_t(g)], fine_.px[size_t(g)].r_max,
                                             scale_.noise_stride());
  sums.scalars[kOffset2].add(res.offset2 / (scale_.of(i) * scale_.of(i)));  // reference px^2
  sums.scalars[kOffsetWeight].add(res.weight_sum);
  if (opt_.norm && !cc) next_.norm[i] = ml3d::norm_correction(st_.p.norm[i], st_.avg_norm, total_d2, res.weight_sum, x.size());
  sums.scalars[kNormSum].add(next_.norm[i]);
  sums.scalars[kPmax].add(res.max_posterior);
  sums.scalars[kLoglik].add(res.log_likelihood);
  if (res.significance_bound) sums.scalars[kBound].add(1.0);
  // Changes of the best pose (RELION's hidden-variable changes), modulo the group.
  sums.scalars[kAngChange].add(symmetric_distance_deg(euler_to_matrix(res.rot, res.tilt, res.psi),
                                                      euler_to_matrix(st_.p.rot[i], st_.p.tilt[i], st_.p.psi[i]), sym_));
  const double dx = next_.ox[i] - st_.p.ox[i], dy = next_.oy[i] - st_.p.oy[i];
  sums.scalars[kOffChange2].add(dx * dx + dy * dy);
  sums.scalars[kChangeCount].add(1.0);
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

IterationReport Job::iterate(bool final) {
  const auto setup_t0 = std::chrono::steady_clock::now();
  const size_t N = table_.size(), hs = size_t(n_ / 2 + 1);
  const bool cc = cc_iteration();
  IterationReport rep;
  // The E-step scores pixels up to the current limit; the final iteration reconstructs at all
  // frequencies (r_ = n/2) from the same posteriors.
  const int r_score = st_.current_shells;
  r_ = final ? n_ / 2 : r_score;
  rc_ = cc ? r_score : std::min(r_score, coarse_shells());
  rep.used_shells = r_;
  fine_ = ml3d::fine_pixels(r_score, scale_, optics_model_);
  all_ = final ? ml3d::all_pixels(scale_, optics_model_) : ml3d::FinePixels();
  px_coarse_ = estep::search_pixels(n_, rc_);
  if (st_.local) local_table_.build(st_.order);
  // RELION's random perturbation of the grids (--perturb), the iteration's own (st_.iteration + 1).
  const ml3d::Perturbation perturb = ml3d::sampling_perturbation(opt_.seed, st_.iteration + 1, opt_.perturb,
                                                                 healpix_angular_step(st_.order), st_.offset_step);
  const std::vector<std::array<double, 2>> trans = perturb.shifted(translations(st_.offset_range, st_.offset_step));
  make_projectors();
  if (!st_.local) {
    OrientationSampling os(st_.order, sym_, healpix_angular_step(st_.order));
    global_dirs_.resize(os.num_directions());
    global_pix_.resize(os.num_directions());
    for (size_t d = 0; d < os.num_directions(); ++d) {
      global_dirs_[d] = {os.rot(d), os.tilt(d)};
      global_pix_[d] = os.pixel(d);
    }
    global_psi_.resize(os.num_psi());
    for (size_t p = 0; p < os.num_psi(); ++p) global_psi_[p] = os.psi(p);
    const std::vector<Euler> slice_angles = ml3d::perturbed_directions(global_dirs_, perturb.rotation);
    pool_.parallel_for(0, 2, [&](size_t h, int) {
      estep::project_orientations(*proj_[h], px_coarse_, slice_angles, global_slices_[h]);
    });
  }
  // The scale correction uses the shells where the signal is strong (RELION: data_vs_prior > 3,
  // i.e. FSC > 0.75 of the last iteration).
  std::vector<char> scale_shells(hs, 0);
  for (size_t s = 1; s < hs && s < st_.fsc.size(); ++s) scale_shells[s] = st_.fsc[s] > 0.75;
  for (int h = 0; h < 2; ++h) {
    estep::Search3DSetup& S = setup_[size_t(h)];
    S = estep::Search3DSetup();
    S.classes = 1;
    S.proj = {proj_[size_t(h)].get()};
    S.px_coarse = &px_coarse_;
    S.px_fine = &fine_.px[0];  // each group's own below
    S.px_sums = nullptr;  // each group's own below
    S.local = st_.local;
    S.order = st_.order;
    S.sigma_ang = 2 * fine_step();  // RELION: sigma2_rot = (2 x the oversampled step)^2
    S.global_dirs = &global_dirs_;
    S.global_pix = &global_pix_;
    S.global_psi = &global_psi_;
    S.global_slices = &global_slices_[size_t(h)];
    S.table = &local_table_;
    S.trans = trans;
    S.offset_step = st_.offset_step;
    S.sigma_offset2 = st_.sigma2_offset;
    S.cross_correlation = cc;
    S.pose_mean = opt_.pose_mean;
    S.symmetry = &sym_;
    S.adaptive_fraction = opt_.adaptive_fraction;
    S.max_significants = opt_.max_significants > 0 ? opt_.max_significants : 0;
    S.oversampling = opt_.oversampling;
    S.scale_shells = scale_shells;
    S.perturb = perturb.rotation;
    fine_slices_[size_t(h)].reset();
    if (!st_.local) {
      fine_slices_[size_t(h)] = ml3d::global_fine_cache(global_psi_.size(), global_dirs_.size(), opt_.oversampling,
                                                        fine_.px[0], kFineSliceBytes);
      S.fine_slices = fine_slices_[size_t(h)].get();
    }
    group_setup_[size_t(h)] = ml3d::group_setups(S, scale_);
    for (size_t g = 0; g < fine_.px.size(); ++g) {
      group_setup_[size_t(h)][g].px_fine = &fine_.px[g];
      group_setup_[size_t(h)][g].px_sums = final ? &all_.px[g] : nullptr;
    }
  }
  // One back-projector per half, exact sums shared by all threads. Bounds of the sums (see
  // BackProjector::start_exact): per particle, the weights of its poses sum to at most 1 and a
  // lattice point gets at most 4 pixels' spreading; a pixel's weight is s^2 C^2 / sigma2 <= s^2 /
  // min sigma2 and its data |s C X / sigma2| <= s L1(image) / min sigma2 (|X(k)| <= L1), the image
  // scaled by the norm correction and, outside the mask, noise (margin 4).
  double max_norm = 1;
  if (opt_.norm)
    for (size_t i = 0; i < N; ++i) max_norm = std::max(max_norm, norm_factor(i));
  for (int h = 0; h < 2; ++h) {
    double inv_s2 = 1, smax = 1;
    if (!cc)
      for (const auto& g : st_.sigma2[size_t(h)])
        for (size_t s = 1; s <= size_t(r_) && s < g.size(); ++s)
          if (g[s] > 0) inv_s2 = std::max(inv_s2, 1.0 / g[s]);
    if (opt_.scale)
      for (size_t k = 0; k < groups_.names.size(); ++k) smax = std::max(smax, st_.group_scale[size_t(h) * groups_.names.size() + k]);
    const double np = double(members_[size_t(h)].size()) + 1;
    bp_[size_t(h)] = std::make_unique<BackProjector>(n_, opt_.pad, r_, 3);
    bp_[size_t(h)]->start_exact(4 * np * smax * inv_s2 * std::max(st_.x_l1_max, 1e-30) * max_norm * 4,
                                4 * np * smax * smax * inv_s2);
  }
  next_.assign(N);

  const ml3d::Blocks blocks(N, kBlock);
  progress_ = std::make_unique<Progress>(
      fmt::format("refine3d: iteration {}{}", st_.iteration + 1, final ? " (final)" : ""), blocks.my_particles);
  const size_t T = size_t(pool_.size());
  std::vector<ThreadSums> tsums(T);
  std::vector<std::unique_ptr<ParticleImages>> readers(T);
  std::vector<estep::Search3DWork> works(T);
  for (size_t t = 0; t < T; ++t) {
    tsums[t].init(size_t(optics_), scale_.noise_stride(), groups_.names.size());
    readers[t] = std::make_unique<ParticleImages>(table_, 8);
  }
  const auto estep_t0 = std::chrono::steady_clock::now();
  rep.setup_seconds = seconds_since(setup_t0);
  const uint64_t flops0 = estep::detail::sgemm_flops();
  const double sgemm_s0 = estep::detail::sgemm_thread_seconds();
  pool_.parallel_for(0, blocks.mine.size(), [&](size_t u, int thread) {
    const size_t b = blocks.mine[u];
    for (size_t i = blocks.begin(b); i < blocks.end(b); ++i) {
      check_cancelled();
      process_particle(i, final, *readers[size_t(thread)], works[size_t(thread)], tsums[size_t(thread)]);
    }
  });
  rep.estep_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - estep_t0).count();
  rep.estep_sgemm_flops = double(estep::detail::sgemm_flops() - flops0);
  rep.estep_sgemm_seconds = estep::detail::sgemm_thread_seconds() - sgemm_s0;
  progress_->finish();
  for (auto& c : fine_slices_) ml3d::release_slice_cache(c, "refine3d: the shared fine slices of a half", kFineSliceBytes);
  readers.clear();
  works.clear();
  for (size_t t = 1; t < T; ++t) tsums[0].merge(tsums[t]);
  ThreadSums& sums = tsums[0];
  // Over the ranks: exact sums of the integers; per-particle values have one non-zero owner.
  if (mpi::active()) {
    for (int h = 0; h < 2; ++h) {
      std::span<int64_t> e = bp_[size_t(h)]->exact_sums();
      mpi::allreduce_sum(e.data(), e.size());
    }
    ml3d::reduce_over_ranks(sums.all());
    next_.sum_over_ranks();
  }
  for (int h = 0; h < 2; ++h) bp_[size_t(h)]->finish_exact();
  const std::vector<double> sc = sums.scalars.values();
  rep.average_pmax = sc[kPmax] / double(N);
  rep.loglik_sum = sc[kLoglik];
  rep.significance_bound = size_t(std::lround(sc[kBound]));
  const double cnt = std::max(1.0, sc[kChangeCount]);
  rep.angular_change = sc[kAngChange] / cnt;
  rep.offset_change = std::sqrt(sc[kOffChange2] / (2 * cnt));  // RELION: sqrt(sum |d|^2 / (2 count))
  if (rep.significance_bound > 0)
    spdlog::info("refine3d: --maxsig {} bound the significant poses of {} particles", opt_.max_significants,
                 rep.significance_bound);
  {
    // Flat posteriors (an unrelated reference, junk) make every pose significant: each is then
    // projected, scored and back-projected, and the final iteration does that at all frequencies.
    const double mean_sig = std::accumulate(next_.nsig.begin(), next_.nsig.end(), 0.0) / double(std::max<size_t>(N, 1));
    if (opt_.max_significants < 0 && mean_sig > 5000 && rep.average_pmax < 0.01)
      spdlog::warn("refine3d: {:.0f} significant poses per particle on average (flat posteriors: <Pmax> {:.3f}); "
                   "iterations will be slow, the final one most; --maxsig N bounds them (RELION's option)",
                   mean_sig, rep.average_pmax);
  }

  // ---- M-step: noise, scales, offsets prior, norm ----
  if (!cc) {
    for (int h = 0; h < 2; ++h) {
      const std::vector<double> d2 = sums.half[size_t(h)].d2.values(), npx = sums.half[size_t(h)].npix.values();
      const size_t stride = scale_.noise_stride();
      for (int g = 0; g < optics_; ++g) {
        const size_t base = size_t(g) * stride, hg = st_.sigma2[size_t(h)][size_t(g)].size();
        std::vector<double> a(d2.begin() + long(base), d2.begin() + long(base + hg)),
            b(npx.begin() + long(base), npx.begin() + long(base + hg));
        st_.sigma2[size_t(h)][size_t(g)] = mstep::noise_spectrum(a, b, st_.sigma2[size_t(h)][size_t(g)]);
      }
      if (opt_.scale) {
        const size_t G = groups_.names.size();
        std::vector<double> old(st_.group_scale.begin() + long(size_t(h) * G), st_.group_scale.begin() + long(size_t(h + 1) * G));
        std::vector<double> cnt_h(G, 0.0);
        for (size_t i = 0; i < N; ++i)
          if (st_.half[i] == h + 1) cnt_h[size_t(groups_.group_of[i])] += 1;
        const std::vector<double> ns =
            mstep::group_scales(sums.half[size_t(h)].xa.values(), sums.half[size_t(h)].aa.values(), cnt_h, old);
        std::copy(ns.begin(), ns.end(), st_.group_scale.begin() + long(size_t(h) * G));
      }
    }
    if (sc[kOffsetWeight] > 0) st_.sigma2_offset = std::max(sc[kOffset2] / (2 * sc[kOffsetWeight]), 0.25);
    if (opt_.norm) st_.avg_norm = sc[kNormSum] / double(N);
  }
  auto reconstruct = [&rep](const BackProjector& bp, ReconstructOptions ro) {
    const auto t = std::chrono::steady_clock::now();
    ro.corners_from_edge = true;  // the particles were back-projected masked (ml3d::particle_views)
    Volume v = bp.reconstruct(ro);
    rep.reconstruct_seconds += seconds_since(t);
    return v;
  };
  const auto sym_t0 = std::chrono::steady_clock::now();
  if (!sym_.is_c1())
    for (auto& b : bp_) b->symmetrise(sym_.operators(), opt_.threads);
  rep.symmetrise_seconds = seconds_since(sym_t0);
  for (auto& b : bp_) b->make_hermitian();

  // Gold-standard FSC of the unregularised halves, then join the low frequencies.
  std::vector<double> fsc = bp_[0]->lattice_fsc(*bp_[1]);
  for (size_t s = size_t(r_score) + 1; s < fsc.size(); ++s) fsc[s] = final ? fsc[s] : 0;
  int res_shell = 0;
  for (size_t s = 1; s < fsc.size(); ++s) {
    if (fsc[s] < kFscThreshold) break;
    res_shell = int(s);
  }
  if (!final && opt_.low_resol_join_halves > 0) bp_[0]->join_below(*bp_[1], n_ * angpix_ / opt_.low_resol_join_halves);
  std::array<Volume, 2> unreg;  // the unregularised halves, when --solvent_correct_fsc made them
  if (opt_.solvent_correct_fsc) {
    // RELION's reconstructUnregularisedMapAndCalculateSolventCorrectedFSC: after the low-resolution
    // join, the unregularised halves (up to the E-step's limit, or all frequencies at the end)
    // under the solvent mask, corrected by phase randomisation from where their unmasked FSC
    // drops below 0.8 (imaging/fsc.hpp).
    for (int h = 0; h < 2; ++h) {
      ReconstructOptions ro;
      ro.max_frequency = final ? r_ : r_score;
      ro.nthreads = opt_.threads;
      unreg[size_t(h)] = reconstruct(*bp_[size_t(h)], ro);
    }
    const SolventCorrectedFsc sc =
        solvent_corrected_fsc(unreg[0], unreg[1], solvent_mask_, 0.8, opt_.seed ^ (0x534346ull + uint64_t(st_.iteration)));
    fsc = sc.corrected;
    for (size_t s = size_t(final ? r_ : r_score) + 1; s < fsc.size(); ++s) fsc[s] = 0;
    res_shell = 0;
    for (size_t s = 1; s < fsc.size(); ++s) {
      if (fsc[s] < kFscThreshold) break;
      res_shell = int(s);
    }
  }
  rep.fsc = fsc;
  rep.resolution_A = shell_to_A(std::max(res_shell, 1));

  if (!final) {
    for (int h = 0; h < 2; ++h) {
      const mstep::Prior prior = mstep::prior_from_fsc(fsc, bp_[size_t(h)]->mean_weight_per_shell(), r_, opt_.tau2_fudge, false);
      if (h == 0) rep.ssnr = prior.ssnr;
      rep.tau2[size_t(h)] = prior.tau2;
      ReconstructOptions ro;
      ro.tau2 = prior.tau2;
      ro.max_frequency = r_;
      ro.nthreads = opt_.threads;
      Volume map = reconstruct(*bp_[size_t(h)], ro);
      mask_reference(map);
      st_.maps[size_t(h)] = std::move(map);
    }
  } else {
    // Final: unregularised halves and the joined map, regularised as RELION's final reconstruction
    // (SSNR from the FSC of the whole set, sqrt(2 FSC / (1 + FSC))).
    // (--solvent_correct_fsc made exactly these above: the same back-projectors, options and limit.)
    for (int h = 0; h < 2; ++h) {
      if (!unreg[size_t(h)].empty()) {
        st_.maps[size_t(h)] = std::move(unreg[size_t(h)]);
        continue;
      }
      ReconstructOptions ro;
      ro.max_frequency = r_;
      ro.nthreads = opt_.threads;
      st_.maps[size_t(h)] = reconstruct(*bp_[size_t(h)], ro);
    }
    BackProjector& all = *bp_[0];
    all.add(*bp_[1]);
    bp_[1].reset();
    const mstep::Prior prior = mstep::prior_from_fsc(fsc, all.mean_weight_per_shell(), r_, opt_.tau2_fudge, true);
    rep.ssnr = prior.ssnr;
    rep.tau2[0] = prior.tau2;
    ReconstructOptions ro;
    ro.tau2 = prior.tau2;
    ro.max_frequency = r_;
    ro.nthreads = opt_.threads;
    final_map_ = reconstruct(all, ro);
  }
  bp_[0].reset();
  bp_[1].reset();
  proj_[0].reset();
  proj_[1].reset();

  // Pose bookkeeping.
  if (!opt_.norm) next_.norm = st_.p.norm;
  st_.p = std::move(next_);
  st_.fsc = fsc;
  st_.average_pmax = rep.average_pmax;
  st_.iteration += 1;
  if (final) st_.final_done = 1;
  return rep;
}

// After an iteration: RELION's updateOverallChangesInHiddenVariables, updateCurrentResolution, the
// next E-step limit (updateImageSizeAndResolutionPointers) and checkConvergence.
void Job::update_after(const IterationReport& rep) {
  // Changes in the hidden variables.
  st_.current_change_ang = rep.angular_change;
  st_.current_change_off = rep.offset_change;
  const double ratio_orient = rep.angular_change / fine_step();
  const double ratio_trans = rep.offset_change / (st_.offset_step * angpix_ / double(1 << opt_.oversampling));
  if ((ratio_trans < 0.4 || 1.03 * rep.offset_change >= st_.smallest_change_off) &&
      (ratio_orient < 0.4 || 1.03 * rep.angular_change >= st_.smallest_change_ang))
    st_.nr_iter_wo_large_changes += 1;
  else
    st_.nr_iter_wo_large_changes = 0;
  st_.smallest_change_off = std::min(st_.smallest_change_off, rep.offset_change);
  st_.smallest_change_ang = std::min(st_.smallest_change_ang, rep.angular_change);
  // Current resolution: the last shell before the SSNR FSC / (1 - FSC) drops below 1 (FSC 0.5),
  // or a higher one where it rises again more than 3 shells further (RELION's check from the
  // high-resolution side); at least minres_map.
  int ires = 1;
  const auto& f = rep.fsc;
  const int lim = std::min<int>(int(f.size()) - 1, n_ / 2 - 1);
  for (ires = 1; ires < lim; ++ires)
    if (f[size_t(ires)] < 0.5) break;
  ires -= 1;
  int ires2 = lim;
  for (; ires2 >= ires; --ires2)
    if (f[size_t(ires2)] > 0.5) break;
  if (ires2 > ires + 3) ires = ires2;
  const int res_shell = std::max(ires, kMinresMap);
  if (res_shell <= st_.res_shell)
    st_.nr_iter_wo_resol_gain += 1;
  else
    st_.nr_iter_wo_resol_gain = 0;
  st_.res_shell = res_shell;
  // Next limit: 25% of the box more while far from convergence (high FSC at the limit with a
  // sharp posterior), else 10 shells.
  const bool high_fsc_at_limit = size_t(rep.used_shells) < f.size() && f[size_t(rep.used_shells)] > 0.2;
  const int incr = rep.average_pmax > 0.1 && high_fsc_at_limit ? int(std::lround(0.25 * n_ / 2)) : kIncrSize;
  st_.current_shells = std::clamp(res_shell + incr, 4, n_ / 2);
  st_.converged = st_.fine_enough && st_.nr_iter_wo_resol_gain >= 1 && st_.nr_iter_wo_large_changes >= 1;
}

refine3d_detail::Files Job::write_final(const IterationReport& rep) {
  refine3d_detail::Files f = refine3d_detail::write_iteration(opt_, input_star_, table_, angpix_, st_, rep);
  const std::string& root = opt_.out_root;
  mrc::WriteOptions wo;
  wo.pixel_size = angpix_;
  final_files_.half1 = root + "_half1_class001_unfil.mrc";
  final_files_.half2 = root + "_half2_class001_unfil.mrc";
  final_files_.map = root + "_class001.mrc";
  final_files_.model = root + "_model.star";
  final_files_.data = root + "_data.star";
  final_files_.bild = root + "_class001_angdist.bild";
  final_files_.png = root + "_class001_angdist.png";
  // With --solvent_correct_fsc the final FSC is the solvent-corrected one, as RELION's run_model.star.
  final_fsc_ = opt_.solvent_correct_fsc
                   ? solvent_corrected_fsc(st_.maps[0], st_.maps[1], solvent_mask_, 0.8, opt_.seed ^ 0x534346ull).corrected
                   : fsc(st_.maps[0], st_.maps[1]);
  final_resolution_ = resolution_at(final_fsc_, kFscThreshold, angpix_, n_);  // a shell, as RELION reports it
  IterationReport fr = rep;
  fr.fsc = final_fsc_;
  fr.resolution_A = final_resolution_;
  for (size_t s = 0; s < fr.ssnr.size() && s < final_fsc_.size(); ++s) {
    const double v = std::clamp(final_fsc_[s], 1e-3, 0.999);
    fr.ssnr[s] = v / (1 - v);
  }
  if (mpi::rank() == 0) {
    mrc::write(final_files_.half1, st_.maps[0], wo);
    mrc::write(final_files_.half2, st_.maps[1], wo);
    mrc::write(final_files_.map, final_map_, wo);
    refine3d_detail::write_model(final_files_.model, opt_, angpix_, st_, fr,
                                 refine3d_detail::group_pixel_sizes(table_));
    refine3d_detail::data_table(table_, st_).write(final_files_.data);
    write_file_atomic(final_files_.bild,
                      refine3d_detail::angular_distribution_bild(st_.p.rot, st_.p.tilt, n_, angpix_, radius_px_));
    write_file_atomic(final_files_.png, refine3d_detail::angular_distribution_png(st_.p.rot, st_.p.tilt));
  }
  spdlog::info("refine3d: final resolution {:.2f} Å (FSC 0.143 of the unfiltered half maps{}); wrote {}",
               final_resolution_, opt_.solvent_correct_fsc ? ", solvent-corrected under --solvent_mask" : "",
               final_files_.map);
  return f;
}

Refine3DResult Job::run() {
  set_blas_single_threaded();
  const bool cont = !opt_.continue_from.empty();
  if (cont) refine3d_detail::read_checkpoint(opt_.continue_from, opt_, input_star_, st_);
  if (auto msg = opt_.validate(); !msg.empty()) throw InputError(cont ? opt_.continue_from + ": " + msg : msg);
  sym_ = SymmetryGroup::parse(opt_.sym);
  if (!cont) input_star_ = std::filesystem::absolute(opt_.input).lexically_normal().string();
  setup();
  if (cont && (st_.n != n_ || st_.half.size() != table_.size() || st_.sigma2.size() != 2 ||
               st_.sigma2[0].size() != size_t(optics_) || st_.sigma2[1].size() != size_t(optics_) ||
               st_.group_scale.size() != 2 * groups_.names.size() || !ml3d::spectra_fit(st_.sigma2[0], scale_) ||
               !ml3d::spectra_fit(st_.sigma2[1], scale_)))
    input_error("{}: the checkpoint (box {}, {} particles) does not match {} (box {}, {} particles)",
                opt_.continue_from, st_.n, st_.half.size(), input_star_, n_, table_.size());
  std::filesystem::path root_dir = std::filesystem::path(opt_.out_root).parent_path();
  if (!root_dir.empty()) std::filesystem::create_directories(root_dir);
  Refine3DResult res;
  refine3d_detail::Files files;
  if (!cont) {
    initialise();
    IterationReport rep0;
    rep0.used_shells = st_.current_shells;
    rep0.resolution_A = opt_.ini_high;
    files = refine3d_detail::write_iteration(opt_, input_star_, table_, angpix_, st_, rep0);
  }
  for (size_t i = 0; i < table_.size(); ++i) members_[size_t(st_.half[i] - 1)].push_back(i);
  spdlog::info("refine3d: {} particles ({} + {} in the halves, {} groups), box {} px, {:.3f} Å/px, symmetry {}, mask "
               "radius {:.1f} px",
               table_.size(), members_[0].size(), members_[1].size(), groups_.names.size(), n_, angpix_, sym_.name(),
               radius_px_);
  while (!st_.final_done) {
    check_cancelled();
    const bool final = st_.converged || st_.iteration >= opt_.max_iterations - 1;
    auto t0 = std::chrono::steady_clock::now();
    // RELION's order: accuracies from the current references (not after the CC iteration), then the
    // sampling (from the second iteration on).
    if (!final && !cc_iteration()) estimate_accuracy();
    const double accuracy_seconds = seconds_since(t0);
    if (!final && st_.iteration >= 1) update_sampling();
    Refine3DIterationStats s;
    s.healpix_order = st_.order;
    s.offset_range_px = st_.offset_range;
    s.offset_step_px = st_.offset_step;
    s.acc_rot_deg = st_.acc_rot;
    s.acc_trans_A = st_.acc_trans;
    IterationReport rep = iterate(final);
    s.current_shells = rep.used_shells;
    s.significance_bound = rep.significance_bound;
    if (final) {
      files = write_final(rep);
      res.converged = st_.converged;
    } else {
      update_after(rep);
      files = refine3d_detail::write_iteration(opt_, input_star_, table_, angpix_, st_, rep);
    }
    s.iteration = st_.iteration;
    s.resolution_A = rep.resolution_A;
    s.angular_change_deg = rep.angular_change;
    s.offset_change_A = rep.offset_change;
    s.average_pmax = rep.average_pmax;
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res.stats.push_back(s);
    spdlog::info("refine3d: iteration {}{}: order {} ({}), offsets {:.2f}/{:.2f} px, limit {} shells, resolution {:.2f} Å, "
                 "<Pmax> {:.3f}, changes {:.2f} deg {:.2f} Å, accuracy {:.2f} deg {:.2f} Å, {:.1f} s",
                 s.iteration, final ? " (final)" : "", s.healpix_order, st_.local ? "local" : "global",
                 s.offset_range_px, s.offset_step_px, s.current_shells, s.resolution_A, s.average_pmax,
                 s.angular_change_deg, s.offset_change_A, s.acc_rot_deg, s.acc_trans_A, s.seconds);
    spdlog::info("refine3d: iteration {} E-step {:.1f} s ({} threads{}): SGEMMs {:.1f} GFLOP in {:.1f} thread-s "
                 "({:.1f} GFLOP/s per thread, OpenBLAS kernel {}), {:.0f}% of the threads' time",
                 s.iteration, rep.estep_seconds, opt_.threads, mpi::active() ? ", this rank" : "",
                 rep.estep_sgemm_flops * 1e-9, rep.estep_sgemm_seconds,
                 rep.estep_sgemm_seconds > 0 ? rep.estep_sgemm_flops * 1e-9 / rep.estep_sgemm_seconds : 0.0,
                 estep::detail::blas_kernel(), rep.estep_seconds > 0 ? 100 * rep.estep_sgemm_seconds / (rep.estep_seconds * opt_.threads) : 0.0);
    spdlog::info("refine3d: iteration {} besides the E-step: accuracy estimate {:.1f} s, projectors {:.1f} s, "
                 "symmetrisation {:.1f} s, reconstructions {:.1f} s, the rest (sums, FSC, outputs) {:.1f} s",
                 s.iteration, accuracy_seconds, rep.setup_seconds, rep.symmetrise_seconds, rep.reconstruct_seconds,
                 s.seconds - accuracy_seconds - rep.setup_seconds - rep.estep_seconds - rep.symmetrise_seconds -
                     rep.reconstruct_seconds);
    if (opt_.stop_after > 0 && st_.iteration >= opt_.stop_after && !st_.final_done) break;
  }
  res.last_iteration = st_.iteration;
  res.fsc = final_fsc_;
  res.resolution_A = final_resolution_;
  res.rot = st_.p.rot;
  res.tilt = st_.p.tilt;
  res.psi = st_.p.psi;
  res.origin_x = st_.p.ox;
  res.origin_y = st_.p.oy;
  res.random_subset = st_.half;
  res.map = final_files_.map;
  res.half1_unfil = final_files_.half1;
  res.half2_unfil = final_files_.half2;
  res.data_star = st_.final_done ? final_files_.data : files.data;
  res.model_star = st_.final_done ? final_files_.model : files.model;
  res.optimiser_star = files.optimiser;
  res.angdist_bild = final_files_.bild;
  res.angdist_png = final_files_.png;
  return res;
}

}  // namespace

Refine3DResult run_refine3d(const Refine3DOptions& opt) {
  Job job(opt);
  return job.run();
}

}  // namespace regula

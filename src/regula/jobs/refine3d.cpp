#include "regula/jobs/refine3d.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/cancel.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/estep/scores.hpp"
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
  if (auto_local_healpix_order < 0 || auto_local_healpix_order > 7)
    return fmt::format("--auto_local_healpix_order: must be 0 to 7 (got {})", auto_local_healpix_order);
  if (!(offset_range >= 0)) return fmt::format("--offset_range: must be >= 0 px (got {})", offset_range);
  if (!(offset_step > 0)) return fmt::format("--offset_step: must be > 0 px (got {})", offset_step);
  if (offset_range / offset_step > 20)
    return fmt::format("--offset_range/--offset_step: at most 20 steps per direction (got {} / {})", offset_range,
                       offset_step);
  if (!(low_resol_join_halves >= 0)) return "--low_resol_join_halves: must be >= 0 Å";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (max_iterations < 1) return fmt::format("--iter: must be at least 1 (got {})", max_iterations);
  if (chunks < 1 || chunks > 64) return "chunks per half must be 1 to 64";
  if (max_healpix_order < healpix_order || max_healpix_order > 7) return "--max_healpix_order: must be in [healpix_order, 7]";
  return "";
}

namespace {

using refine3d_detail::IterationReport;
using refine3d_detail::State;
constexpr double kFscThreshold = 0.143;
// Caps on the coarse (direction, in-plane angle) pairs and translations whose children the fine
// pass evaluates (in order of decreasing coarse posterior; the 0.999 mass usually needs fewer).
constexpr size_t kMaxSigPairs = 48, kMaxSigTrans = 9;

// One task's accumulators: a back-projector and noise sums of a chunk of one half.
struct ChunkSums {
  std::unique_ptr<BackProjector> bp;
  std::vector<std::vector<double>> diff2, count;  // [group][shell]
  double pmax_sum = 0, loglik_sum = 0, ang_change = 0, off_change = 0;
};

class Job {
 public:
  explicit Job(const Refine3DOptions& opt) : opt_(opt), pool_(opt.threads), sym_(SymmetryGroup::parse(opt.sym)) {}
  Refine3DResult run();

 private:
  void setup();
  void initialise();
  IterationReport iterate(bool final);
  void process_chunk(int h, int c, bool final, ChunkSums& out);
  void update_sampling(const IterationReport& rep);
  // The particle masked (about the box centre); the solvent zeros (--zero_mask) or noise of
  // `noise_sigma2` (nullptr before there is an estimate: the mean outside the mask). `unmasked`:
  // as read (the first noise estimate without --zero_mask, as RELION's).
  Image read_particle(ParticleImages& images, size_t i, const std::vector<double>* noise_sigma2,
                      bool unmasked = false) const;
  int coarse_shells(int order) const;
  int shell_of(double A) const { return int(std::lround(n_ * angpix_ / A)); }
  double shell_to_A(double s) const { return s > 0 ? n_ * angpix_ / s : 999.0; }
  bool cc_iteration() const { return opt_.firstiter_cc && st_.iteration == 0; }
  void mask_reference(Volume& map) const;

  Refine3DOptions opt_;
  ThreadPool pool_;
  SymmetryGroup sym_;
  std::string input_star_;
  ParticleTable table_;
  int n_ = 0, groups_ = 1;
  double angpix_ = 0, radius_px_ = 0;
  Volume solvent_mask_;
  std::array<std::vector<size_t>, 2> members_;  // particle indices per half
  State st_;
  // Per iteration:
  int r_ = 0, rc_ = 0;
  bool local_ = false;
  estep::SearchPixels px_fine_, px_coarse_, px_all_;
  std::array<std::unique_ptr<Projector>, 2> proj_;
  std::vector<std::array<double, 2>> global_dirs_;
  std::vector<double> global_psi_;
  std::array<estep::Slices, 2> global_slices_;
  ml3d::DirectionTable local_table_;
  std::array<ml3d::IterationSetup, 2> setup_;  // per half
  std::vector<std::array<double, 2>> trans_;
  std::unique_ptr<Progress> progress_;
  // New per-particle values of the iteration.
  std::vector<double> new_rot_, new_tilt_, new_psi_, new_ox_, new_oy_, new_scale_, new_pmax_, new_loglik_;
  std::vector<int> new_nsig_;
  // Convergence and the final iteration.
  bool converged_ = false;
  Volume final_map_;
  std::vector<double> final_fsc_;
  double final_resolution_ = 0;
  struct FinalFiles {
    std::string map, half1, half2, data, model, bild, png;
  } final_files_;
  std::vector<long> global_pix_;
  refine3d_detail::Files write_final(const IterationReport& rep);
  void share_chunks(std::vector<ChunkSums>& sums);
};

void Job::setup() {
  ParticleReadOptions ro;
  ro.angpix = opt_.angpix;
  table_ = ParticleTable::read(input_star_, ro);
  // Labels and optics this engine does not model yet are refused (imaging/optics_model.hpp).
  OpticsModel(table_).require_only(0, "refine3d");
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
  angpix_ = table_.optics.front().pixel_size;
  for (const auto& g : table_.optics) {
    if (g.pixel_size <= 0) input_error("{}: optics group {} has no pixel size; give --angpix", input_star_, g.number);
    if (std::abs(g.pixel_size - angpix_) > 1e-6 * angpix_)
      input_error("{}: optics groups have different pixel sizes ({} and {} Å); refine3d needs one", input_star_,
                  angpix_, g.pixel_size);
    if (opt_.ctf && g.voltage <= 0)
      input_error("{}: --ctf needs rlnVoltage, rlnSphericalAberration and rlnAmplitudeContrast (optics group {})",
                  input_star_, g.number);
  }
  if (opt_.ctf)
    for (size_t i = 0; i < N; ++i) (void)particle_ctf_params(table_, i);
  groups_ = int(table_.optics.size());
  const double r = opt_.particle_diameter > 0 ? opt_.particle_diameter / (2 * angpix_) : n_ / 2.0 - opt_.mask_edge;
  radius_px_ = std::clamp(r, 2.0, n_ / 2.0);
  if (!opt_.solvent_mask.empty()) {
    solvent_mask_ = mrc::read(opt_.solvent_mask);
    if (solvent_mask_.nx() != n_ || solvent_mask_.ny() != n_ || solvent_mask_.nz() != n_)
      input_error("{}: the solvent mask is {}x{}x{}, the particles are {} px", opt_.solvent_mask, solvent_mask_.nx(),
                  solvent_mask_.ny(), solvent_mask_.nz(), n_);
    for (size_t i = 0; i < solvent_mask_.size(); ++i)
      if (!(solvent_mask_[i] >= -1e-3f && solvent_mask_[i] <= 1.001f))
        input_error("{}: mask values must be in [0, 1] (voxel {} is {})", opt_.solvent_mask, i, solvent_mask_[i]);
  }
}

Image Job::read_particle(ParticleImages& images, size_t i, const std::vector<double>* noise_sigma2,
                         bool unmasked) const {
  Image img = images.read(i);
  if (img.nx() != n_ || img.ny() != n_)
    input_error("{}: image of particle {} is {}x{}, expected {}x{}", table_.where(i), i + 1, img.nx(), img.ny(), n_, n_);
  if (unmasked) return img;
  // About the box centre (class2d's mask follows the particle's origin, as RELION's; here not yet).
  apply_particle_mask(img, radius_px_, opt_.mask_edge, {}, ParticleSolvent{opt_.zero_mask, noise_sigma2, opt_.seed, i});
  return img;
}

void Job::mask_reference(Volume& map) const {
  if (!solvent_mask_.empty()) {
    for (size_t i = 0; i < map.size(); ++i) map[i] *= solvent_mask_[i];
  } else if (opt_.flatten_solvent) {
    apply_spherical_mask(map, radius_px_, opt_.mask_edge, MaskFill::Zero);
  }
}

// Iteration 0: half sets, reference, noise spectra from the particles' power.
void Job::initialise() {
  const size_t N = table_.size();
  st_ = State();
  st_.n = n_;
  st_.order = opt_.healpix_order;
  st_.offset_range = opt_.offset_range;
  st_.offset_step = opt_.offset_step;
  st_.current_shells = std::clamp(shell_of(opt_.ini_high), 4, n_ / 2);
  st_.rot = table_.rot;
  st_.tilt = table_.tilt;
  st_.psi = table_.psi;
  st_.ox = table_.origin_x;
  st_.oy = table_.origin_y;
  st_.scale.assign(N, 1.0);
  st_.pmax.assign(N, 0.0);
  st_.loglik.assign(N, 0.0);
  st_.nsig.assign(N, 0);
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
  // Noise: half the mean power per shell and component, per half and optics group.
  const size_t hs = size_t(n_ / 2 + 1);
  st_.sigma2.assign(2, std::vector<std::vector<double>>(size_t(groups_), std::vector<double>(hs, 0.0)));
  std::vector<double> counts(hs, 0.0);
  for (int ky = -n_ / 2; ky < n_ / 2; ++ky)
    for (int kx = 0; kx <= n_ / 2; ++kx) {
      if (kx == 0 && ky <= 0) continue;
      const int s = int(std::lround(std::sqrt(double(kx * kx + ky * ky))));
      if (s <= n_ / 2) counts[size_t(s)] += 1;
    }
  const size_t nchunk = (N + 63) / 64;
  std::vector<std::vector<std::vector<double>>> pw(nchunk);
  Progress prog("refine3d: noise spectra", double(N));
  pool_.parallel_for(0, nchunk, [&](size_t c, int) {
    ParticleImages images(table_, 4);
    pw[c].assign(size_t(2 * groups_), std::vector<double>(hs + 1, 0.0));
    for (size_t i = c * 64; i < std::min(N, (c + 1) * 64); ++i) {
      Image img = read_particle(images, i, nullptr, !opt_.zero_mask);
      estep::RotatableParticle x(img, 0, 0, std::nullopt, angpix_);
      auto& row = pw[c][size_t((st_.half[i] - 1) * groups_ + table_.optics_index[i])];
      for (size_t s = 0; s < hs; ++s) row[s] += x.shell_power()[s];
      row[hs] += 1;
    }
    prog.advance(double(std::min(N, (c + 1) * 64) - c * 64));
  });
  prog.finish();
  for (int h = 0; h < 2; ++h)
    for (int g = 0; g < groups_; ++g) {
      std::vector<double> tot(hs + 1, 0.0);
      for (size_t c = 0; c < nchunk; ++c)
        for (size_t s = 0; s <= hs; ++s) tot[s] += pw[c][size_t(h * groups_ + g)][s];
      for (size_t s = 1; s < hs; ++s)
        st_.sigma2[size_t(h)][size_t(g)][s] = tot[hs] > 0 ? tot[s] / (2 * tot[hs] * counts[s]) : 1.0;
    }
  st_.sigma2_offset = std::max(1.0, opt_.offset_range * opt_.offset_range / 4.0);
}

// Frequency limit of the coarse pass: where one angular step moves the particle edge by one pixel.
int Job::coarse_shells(int order) const {
  const double step = deg2rad(healpix_angular_step(order));
  const int r = int(std::ceil(n_ / (2.0 * kPi * radius_px_ * step) * 2.0 * kPi));
  return std::clamp(r, 6, n_ / 2);
}

void Job::process_chunk(int h, int c, bool final, ChunkSums& out) {
  const std::vector<size_t>& mem = members_[size_t(h)];
  const size_t C = size_t(opt_.chunks);
  const size_t i0 = mem.size() * size_t(c) / C, i1 = mem.size() * size_t(c + 1) / C;
  const size_t hs = size_t(n_ / 2 + 1);
  out.bp = std::make_unique<BackProjector>(n_, 2, r_, 3);
  out.diff2.assign(size_t(groups_), std::vector<double>(hs, 0.0));
  out.count = out.diff2;
  ParticleImages images(table_, 8);
  ml3d::Workspace ws;
  const bool cc = cc_iteration();
  std::vector<double> fine_counts(hs, 0.0);
  for (size_t q = 0; q < px_fine_.size(); ++q) fine_counts[size_t(px_fine_.shell[q])] += 1;
  std::vector<double> all_counts(hs, 0.0);
  for (int ky = -n_ / 2; ky < n_ / 2; ++ky)
    for (int kx = 0; kx <= n_ / 2; ++kx) {
      if (kx == 0 && ky <= 0) continue;
      const int s = int(std::lround(std::sqrt(double(kx * kx + ky * ky))));
      if (s <= n_ / 2) all_counts[size_t(s)] += 1;
    }

  for (size_t k = i0; k < i1; ++k) {
    check_cancelled();
    const size_t i = mem[k];
    const int g = table_.optics_index[i];
    std::vector<float> inv_sigma2(hs, 0.0f);
    for (size_t s = 1; s < hs; ++s) {
      const double v = st_.sigma2[size_t(h)][size_t(g)][s];
      inv_sigma2[s] = cc ? 1.0f : (v > 0 ? float(1.0 / v) : 0.0f);
    }
    Image img = read_particle(images, i, &st_.sigma2[size_t(h)][size_t(g)]);
    std::optional<Ctf> ctf;
    if (opt_.ctf) ctf.emplace(particle_ctf_params(table_, i));
    const double ox = st_.ox[i] / angpix_, oy = st_.oy[i] / angpix_;  // current offsets, px
    estep::RotatableParticle x(img, ox, oy, ctf, angpix_);
    ml3d::ParticleInput in;
    in.x = &x;
    in.inv_sigma2 = inv_sigma2;
    in.scale = st_.scale[i];
    in.rot = st_.rot[i];
    in.tilt = st_.tilt[i];
    in.psi = st_.psi[i];
    in.ox_px = ox;
    in.oy_px = oy;
    BackProjector* bps[1] = {out.bp.get()};
    const ml3d::ParticleResult pr = ml3d::search_particle(setup_[size_t(h)], in, ws, bps);
    if (!pr.valid) {
      spdlog::warn("refine3d: particle {} has no finite likelihood; its pose is kept", i + 1);
      continue;
    }
    const double rot = pr.rot, tilt = pr.tilt, psi = pr.psi;
    const std::array<double, 2> bt = pr.trans;
    const estep::PoseResidual& res = pr.residual;
    for (size_t s = 1; s < hs; ++s) {
      out.diff2[size_t(g)][s] += res.diff2[s];
      out.count[size_t(g)][s] += fine_counts[s];
      if (int(s) > px_fine_.r_max) {
        out.diff2[size_t(g)][s] += x.shell_power()[s];
        out.count[size_t(g)][s] += all_counts[s];
      }
    }
    new_scale_[i] = pr.scale;
    new_rot_[i] = rot;
    new_tilt_[i] = tilt;
    new_psi_[i] = psi;
    new_ox_[i] = st_.ox[i] + bt[0] * angpix_;
    new_oy_[i] = st_.oy[i] + bt[1] * angpix_;
    new_pmax_[i] = pr.max_posterior;
    new_nsig_[i] = int(pr.n_significant);
    new_loglik_[i] = pr.log_likelihood;
    out.pmax_sum += pr.max_posterior;
    out.loglik_sum += pr.log_likelihood;
    if (st_.iteration > 0) {
      // Modulo the group: a particle moving to another copy of its pose has not changed.
      out.ang_change += symmetric_distance_deg(euler_to_matrix(rot, tilt, psi),
                                               euler_to_matrix(st_.rot[i], st_.tilt[i], st_.psi[i]), sym_);
      out.off_change += std::hypot(new_ox_[i] - st_.ox[i], new_oy_[i] - st_.oy[i]);
    }
    (void)final;
    progress_->advance(1);
  }
}

IterationReport Job::iterate(bool final) {
  const size_t N = table_.size(), hs = size_t(n_ / 2 + 1);
  IterationReport rep;
  // The E-step scores pixels up to the current limit; the final iteration reconstructs at all
  // frequencies (r_ = n/2) from the same posteriors.
  const int r_score = st_.current_shells;
  r_ = final ? n_ / 2 : r_score;
  local_ = st_.order >= opt_.auto_local_healpix_order;
  rc_ = std::min(r_score, 2 * coarse_shells(st_.order));
  if (cc_iteration()) rc_ = r_score;
  rep.used_shells = r_;
  px_fine_ = estep::search_pixels(n_, r_score);
  if (final) px_all_ = estep::search_pixels(n_, r_);
  px_coarse_ = estep::search_pixels(n_, rc_);
  local_table_.build(st_.order);
  trans_ = translations(st_.offset_range, st_.offset_step);
  for (int h = 0; h < 2; ++h) proj_[size_t(h)] = std::make_unique<Projector>(st_.maps[size_t(h)], 2, std::min(r_ + 1, n_ / 2));
  if (!local_) {
    OrientationSampling os(st_.order, sym_, healpix_angular_step(st_.order));
    global_dirs_.resize(os.num_directions());
    global_pix_.resize(os.num_directions());
    for (size_t d = 0; d < os.num_directions(); ++d) {
      global_dirs_[d] = {os.rot(d), os.tilt(d)};
      global_pix_[d] = os.pixel(d);
    }
    global_psi_.resize(os.num_psi());
    for (size_t p = 0; p < os.num_psi(); ++p) global_psi_[p] = os.psi(p);
    pool_.parallel_for(0, 2, [&](size_t h, int) { estep::project_slices(*proj_[h], px_coarse_, global_dirs_, global_slices_[h]); });
  }
  for (int h = 0; h < 2; ++h) {
    ml3d::IterationSetup& S = setup_[size_t(h)];
    S = ml3d::IterationSetup();
    S.classes = 1;
    S.proj = {proj_[size_t(h)].get()};
    S.px_coarse = &px_coarse_;
    S.px_fine = &px_fine_;
    S.px_sums = final ? &px_all_ : nullptr;
    S.local = local_;
    S.order = st_.order;
    S.sigma_ang = healpix_angular_step(st_.order);  // RELION: 2 x the oversampled step
    S.global_dirs = &global_dirs_;
    S.global_pix = &global_pix_;
    S.global_psi = &global_psi_;
    S.global_slices = &global_slices_[size_t(h)];
    S.table = &local_table_;
    S.trans = trans_;
    S.offset_step = st_.offset_step;
    S.sigma_offset2 = st_.sigma2_offset;
    S.cross_correlation = cc_iteration();
    S.pose_mean = opt_.pose_mean;
    S.symmetry = &sym_;
    S.fit_scale = opt_.norm;
    S.max_pairs = kMaxSigPairs;
    S.max_trans = kMaxSigTrans;
  }
  new_rot_ = st_.rot;
  new_tilt_ = st_.tilt;
  new_psi_ = st_.psi;
  new_ox_ = st_.ox;
  new_oy_ = st_.oy;
  new_scale_ = st_.scale;
  new_pmax_ = st_.pmax;
  new_nsig_ = st_.nsig;
  new_loglik_ = st_.loglik;

  // Tasks = (half, chunk); under MPI task k belongs to rank k mod size.
  const int C = opt_.chunks;
  std::vector<ChunkSums> sums(size_t(2 * C));
  std::vector<size_t> mine;
  double my_particles = 0;
  for (int k = 0; k < 2 * C; ++k)
    if (k % mpi::size() == mpi::rank()) {
      mine.push_back(size_t(k));
      const auto& mem = members_[size_t(k / C)];
      my_particles += double(mem.size() * size_t(k % C + 1) / size_t(C) - mem.size() * size_t(k % C) / size_t(C));
    }
  progress_ = std::make_unique<Progress>(
      fmt::format("refine3d: iteration {}{}", st_.iteration + 1, final ? " (final)" : ""), my_particles);
  pool_.parallel_for(0, mine.size(), [&](size_t u, int) {
    const size_t task = mine[u];
    process_chunk(int(task) / C, int(task) % C, final, sums[task]);
  });
  progress_->finish();
  if (mpi::active()) share_chunks(sums);

  // Reduce in a fixed order.
  std::array<std::unique_ptr<BackProjector>, 2> bp;
  for (int h = 0; h < 2; ++h) {
    bp[size_t(h)] = std::move(sums[size_t(h * C)].bp);
    for (int c = 1; c < C; ++c) {
      bp[size_t(h)]->add(*sums[size_t(h * C + c)].bp);
      sums[size_t(h * C + c)].bp.reset();
    }
    std::vector<std::vector<double>> d2(size_t(groups_), std::vector<double>(hs, 0.0)), cnt = d2;
    for (int c = 0; c < C; ++c) {
      const ChunkSums& cs = sums[size_t(h * C + c)];
      for (int g = 0; g < groups_; ++g)
        for (size_t s = 0; s < hs; ++s) {
          d2[size_t(g)][s] += cs.diff2[size_t(g)][s];
          cnt[size_t(g)][s] += cs.count[size_t(g)][s];
        }
      rep.average_pmax += cs.pmax_sum;
      rep.loglik_sum += cs.loglik_sum;
      rep.angular_change += cs.ang_change;
      rep.offset_change += cs.off_change;
    }
    for (int g = 0; g < groups_; ++g)
      for (size_t s = 1; s < hs; ++s)
        if (cnt[size_t(g)][s] > 0) st_.sigma2[size_t(h)][size_t(g)][s] = d2[size_t(g)][s] / (2 * cnt[size_t(g)][s]);
  }
  rep.average_pmax /= double(N);
  rep.angular_change /= double(N);
  rep.offset_change /= double(N);
  if (!sym_.is_c1())
    for (auto& b : bp) b->symmetrise(sym_.operators());

  // Gold-standard FSC of the unregularised halves, then join the low frequencies.
  std::vector<double> fsc = bp[0]->lattice_fsc(*bp[1]);
  for (size_t s = size_t(r_) + 1; s < fsc.size(); ++s) fsc[s] = 0;
  int res_shell = 0;
  for (size_t s = 1; s < fsc.size(); ++s) {
    if (fsc[s] < kFscThreshold) break;
    res_shell = int(s);
  }
  rep.fsc = fsc;
  rep.resolution_A = shell_to_A(std::max(res_shell, 1));
  rep.ssnr.assign(hs, 0.0);
  for (size_t s = 0; s < hs; ++s) {
    const double f = std::clamp(fsc[s], 1e-3, 0.999);
    rep.ssnr[s] = s <= size_t(r_) ? f / (1 - f) : 0.0;
  }
  if (!final && opt_.low_resol_join_halves > 0) bp[0]->join_below(*bp[1], n_ * angpix_ / opt_.low_resol_join_halves);

  if (!final) {
    pool_.parallel_for(0, 2, [&](size_t h, int) {
      ReconstructOptions ro;
      std::vector<double> mw = bp[h]->mean_weight_per_shell();
      ro.tau2.assign(hs, 0.0);
      for (size_t s = 0; s < hs; ++s) ro.tau2[s] = mw[s] > 0 ? rep.ssnr[s] / mw[s] : 0.0;
      ro.tau2[0] = ro.tau2.size() > 1 ? ro.tau2[1] : 0.0;
      rep.tau2[h] = ro.tau2;
      ro.max_frequency = r_;
      ro.nthreads = 1;
      Volume map = bp[h]->reconstruct(ro);
      mask_reference(map);
      st_.maps[h] = std::move(map);
    });
  } else {
    // Final: unregularised halves and the joined map (SSNR of the full set 2 FSC / (1 - FSC)).
    pool_.parallel_for(0, 2, [&](size_t h, int) {
      ReconstructOptions ro;
      ro.max_frequency = r_;
      st_.maps[h] = bp[h]->reconstruct(ro);
    });
    BackProjector& all = *bp[0];
    all.add(*bp[1]);
    ReconstructOptions ro;
    std::vector<double> mw = all.mean_weight_per_shell();
    ro.tau2.assign(hs, 0.0);
    for (size_t s = 0; s < hs; ++s) {
      const double f = std::clamp(fsc[s], 1e-3, 0.999);
      ro.tau2[s] = mw[s] > 0 ? 2 * f / (1 - f) / mw[s] : 0.0;
    }
    ro.tau2[0] = ro.tau2[1];
    ro.max_frequency = r_;
    ro.nthreads = opt_.threads;
    final_map_ = all.reconstruct(ro);
  }

  // Pose bookkeeping.
  st_.rot = new_rot_;
  st_.tilt = new_tilt_;
  st_.psi = new_psi_;
  st_.ox = new_ox_;
  st_.oy = new_oy_;
  st_.pmax = new_pmax_;
  st_.nsig = new_nsig_;
  st_.loglik = new_loglik_;
  if (opt_.norm) {
    double mean = 0;
    for (double s : new_scale_) mean += s;
    mean /= double(N);
    for (size_t i = 0; i < N; ++i) st_.scale[i] = new_scale_[i] / mean;
  }
  // Offsets prior: mean squared offset per component.
  {
    double s2 = 0;
    for (size_t i = 0; i < N; ++i) s2 += (st_.ox[i] * st_.ox[i] + st_.oy[i] * st_.oy[i]) / (angpix_ * angpix_);
    st_.sigma2_offset = std::max(s2 / (2.0 * double(N)), 0.25);
  }
  st_.fsc = fsc;
  st_.iteration += 1;
  if (final) st_.final_done = 1;
  return rep;
}

// RELION-like auto-sampling: finer angles (and translations) when resolution and pose changes stall;
// convergence when the sampling is fine enough for the resolution and nothing improves for 2 iterations.
void Job::update_sampling(const IterationReport& rep) {
  int res_shell = int(std::lround(n_ * angpix_ / rep.resolution_A));
  if (res_shell > st_.best_shell) {
    st_.best_shell = res_shell;
    st_.no_gain_res = 0;
  } else {
    st_.no_gain_res += 1;
  }
  if (st_.iteration >= 2) {
    // A change counts as a gain when it drops by a fifth and is still above a quarter of the fine
    // angular step (or of the fine translation step): below that the poses only wobble within the
    // sampling.
    const double fine_step = healpix_angular_step(st_.order) / 2, fine_off = st_.offset_step / 2 * angpix_;
    const bool ang_gain = rep.angular_change < 0.8 * st_.best_angular_change && rep.angular_change > fine_step / 4;
    const bool off_gain = rep.offset_change < 0.8 * st_.best_offset_change && rep.offset_change > fine_off / 4;
    if (ang_gain || off_gain) {
      st_.best_angular_change = std::min(st_.best_angular_change, rep.angular_change);
      st_.best_offset_change = std::min(st_.best_offset_change, rep.offset_change);
      st_.no_gain_change = 0;
    } else {
      st_.no_gain_change += 1;
    }
  }
  st_.current_shells = std::clamp(st_.best_shell + 10, shell_of(opt_.ini_high), n_ / 2);
  // Angular step needed at this resolution (RELION prints it): 360 d / (pi D) degrees; our finest
  // useful order has its fine (oversampled) step at most a sixth of it.
  const double D_A = 2 * radius_px_ * angpix_;
  const double needed = 360.0 * rep.resolution_A / (kPi * D_A);
  const bool fine_enough = healpix_angular_step(st_.order) / 2 <= needed / 6 || st_.order >= opt_.max_healpix_order;
  if (!fine_enough && st_.iteration >= 2 && st_.no_gain_res >= 1) {
    st_.order += 1;
    st_.offset_range = std::max(st_.offset_range / 2, st_.offset_step / 2 * 1.5);
    st_.offset_step /= 2;
    st_.no_gain_res = 0;
    st_.no_gain_change = 0;
    st_.best_angular_change = 1e30;
    st_.best_offset_change = 1e30;
  }
  converged_ = fine_enough && st_.no_gain_res >= 2 && st_.no_gain_change >= 1;
}

// MPI: every task's partial sums and particle results go from its owner to all ranks, so that every
// rank then reduces them in the same fixed order as a single process would.
void Job::share_chunks(std::vector<ChunkSums>& sums) {
  const int C = opt_.chunks;
  const size_t hs = size_t(n_ / 2 + 1);
  for (int k = 0; k < 2 * C; ++k) {
    const int owner = k % mpi::size();
    ChunkSums& cs = sums[size_t(k)];
    if (mpi::rank() != owner) {
      cs.bp = std::make_unique<BackProjector>(n_, 2, r_, 3);
      cs.diff2.assign(size_t(groups_), std::vector<double>(hs, 0.0));
      cs.count = cs.diff2;
    }
    Grid<cfloat>& d = cs.bp->raw_data();
    Grid<float>& w = cs.bp->raw_weight();
    mpi::bcast(d.data(), d.size() * sizeof(cfloat), owner);
    mpi::bcast(w.data(), w.size() * sizeof(float), owner);
    for (int g = 0; g < groups_; ++g) {
      mpi::bcast(cs.diff2[size_t(g)].data(), hs * sizeof(double), owner);
      mpi::bcast(cs.count[size_t(g)].data(), hs * sizeof(double), owner);
    }
    double s4[4] = {cs.pmax_sum, cs.loglik_sum, cs.ang_change, cs.off_change};
    mpi::bcast(s4, sizeof s4, owner);
    cs.pmax_sum = s4[0];
    cs.loglik_sum = s4[1];
    cs.ang_change = s4[2];
    cs.off_change = s4[3];
    const std::vector<size_t>& mem = members_[size_t(k / C)];
    const size_t i0 = mem.size() * size_t(k % C) / size_t(C), i1 = mem.size() * size_t(k % C + 1) / size_t(C);
    std::vector<double*> cols = {new_rot_.data(), new_tilt_.data(), new_psi_.data(), new_ox_.data(), new_oy_.data(),
                                 new_scale_.data(), new_pmax_.data(), new_loglik_.data()};
    std::vector<double> buf((i1 - i0) * (cols.size() + 1));
    if (mpi::rank() == owner)
      for (size_t u = i0; u < i1; ++u) {
        for (size_t c = 0; c < cols.size(); ++c) buf[(u - i0) * (cols.size() + 1) + c] = cols[c][mem[u]];
        buf[(u - i0) * (cols.size() + 1) + cols.size()] = new_nsig_[mem[u]];
      }
    mpi::bcast(buf.data(), buf.size() * sizeof(double), owner);
    if (mpi::rank() != owner)
      for (size_t u = i0; u < i1; ++u) {
        for (size_t c = 0; c < cols.size(); ++c) cols[c][mem[u]] = buf[(u - i0) * (cols.size() + 1) + c];
        new_nsig_[mem[u]] = int(buf[(u - i0) * (cols.size() + 1) + cols.size()]);
      }
  }
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
  final_fsc_ = fsc(st_.maps[0], st_.maps[1]);
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
    refine3d_detail::write_model(final_files_.model, opt_, angpix_, st_, fr);
    refine3d_detail::data_table(table_, st_).write(final_files_.data);
    write_file_atomic(final_files_.bild,
                      refine3d_detail::angular_distribution_bild(st_.rot, st_.tilt, n_, angpix_, radius_px_));
    write_file_atomic(final_files_.png, refine3d_detail::angular_distribution_png(st_.rot, st_.tilt));
  }
  spdlog::info("refine3d: final resolution {:.2f} Å (FSC 0.143 of the unfiltered half maps); wrote {}",
               final_resolution_, final_files_.map);
  return f;
}

Refine3DResult Job::run() {
  estep::set_blas_single_threaded();
  const bool cont = !opt_.continue_from.empty();
  if (cont) refine3d_detail::read_checkpoint(opt_.continue_from, opt_, input_star_, st_);
  if (auto msg = opt_.validate(); !msg.empty()) throw InputError(cont ? opt_.continue_from + ": " + msg : msg);
  sym_ = SymmetryGroup::parse(opt_.sym);
  if (!cont) input_star_ = std::filesystem::absolute(opt_.input).lexically_normal().string();
  setup();
  if (cont && (st_.n != n_ || st_.half.size() != table_.size() || st_.sigma2.size() != 2 ||
               st_.sigma2[0].size() != size_t(groups_)))
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
  spdlog::info("refine3d: {} particles ({} + {} in the halves), box {} px, {:.3f} Å/px, symmetry {}, mask radius {:.1f} px",
               table_.size(), members_[0].size(), members_[1].size(), n_, angpix_, sym_.name(), radius_px_);
  converged_ = false;
  while (!st_.final_done) {
    check_cancelled();
    const bool final = converged_ || st_.iteration >= opt_.max_iterations - 1;
    auto t0 = std::chrono::steady_clock::now();
    Refine3DIterationStats s;
    s.healpix_order = st_.order;
    s.offset_range_px = st_.offset_range;
    s.offset_step_px = st_.offset_step;
    IterationReport rep = iterate(final);
    s.current_shells = rep.used_shells;
    if (!final) update_sampling(rep);
    if (final) {
      files = write_final(rep);
      res.converged = converged_;
    } else {
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
                 "<Pmax> {:.3f}, changes {:.2f} deg {:.2f} Å, {:.1f} s",
                 s.iteration, final ? " (final)" : "", s.healpix_order, local_ ? "local" : "global", s.offset_range_px,
                 s.offset_step_px, s.current_shells, s.resolution_A, s.average_pmax, s.angular_change_deg,
                 s.offset_change_A, s.seconds);
    if (opt_.stop_after > 0 && st_.iteration >= opt_.stop_after && !st_.final_done) break;
  }
  res.last_iteration = st_.iteration;
  res.fsc = final_fsc_;
  res.resolution_A = final_resolution_;
  res.rot = st_.rot;
  res.tilt = st_.tilt;
  res.psi = st_.psi;
  res.origin_x = st_.ox;
  res.origin_y = st_.oy;
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

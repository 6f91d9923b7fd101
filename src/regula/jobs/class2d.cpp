#include "regula/jobs/class2d.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <numbers>
#include <numeric>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/blas.hpp"
#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/exact_sum.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/estep/posteriors.hpp"
#include "regula/estep/scores.hpp"
#include "regula/estep/sparse_scores.hpp"
#include "regula/estep/weighted_sums.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/class2d_detail.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/model/particles.hpp"
#include "regula/mstep/first_noise.hpp"
#include "regula/mstep/model_update.hpp"
#include "regula/mstep/class_average.hpp"
#include "regula/sampling/healpix.hpp"

namespace regula {

std::string Class2DOptions::validate() const {
  if (continue_from.empty()) {
    if (input.empty()) return "--i: a particles STAR file is required (or --continue)";
    if (classes < 1 && reference.empty())
      return fmt::format("--K: the number of classes must be at least 1 (got {})", classes);
  }
  if (out_root.empty()) return "--o: an output root is required";
  if (iterations < 1) return fmt::format("--iter: must be at least 1 (got {})", iterations);
  if (!(tau2_fudge > 0)) return fmt::format("--tau2_fudge: must be positive (got {})", tau2_fudge);
  if (particle_diameter < 0) return fmt::format("--particle_diameter: must be >= 0 Å (got {})", particle_diameter);
  if (!(psi_step > 0) || psi_step > 360) return fmt::format("--psi_step: must be in (0, 360] degrees (got {})", psi_step);
  if (!(offset_range >= 0)) return fmt::format("--offset_range: must be >= 0 px (got {})", offset_range);
  if (!(offset_step > 0)) return fmt::format("--offset_step: must be > 0 px (got {})", offset_step);
  if (offset_range / offset_step > 50)
    return fmt::format("--offset_range/--offset_step: at most 50 steps per direction (got {} / {})", offset_range,
                       offset_step);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (!(ini_high > 0)) return fmt::format("--ini_high: must be positive Å (got {})", ini_high);
  if (incr_size < 0) return fmt::format("--incr_size: must be >= 0 (got {})", incr_size);
  if (reseed_until < 0) return fmt::format("--reseed_until: must be >= 0 (got {})", reseed_until);
  if (!(reseed_empty >= 0 && reseed_empty < 1))
    return fmt::format("--reseed_empty: must be in [0, 1) (got {})", reseed_empty);
  if (batch_size < 1) return fmt::format("batch size must be at least 1 (got {})", batch_size);
  if (mask_edge < 0) return fmt::format("mask edge must be >= 0 px (got {})", mask_edge);
  if (!(offset_sigma > 0)) return fmt::format("--offset: the initial offset sigma must be positive Å (got {})", offset_sigma);
  if (oversampling < 0 || oversampling > 3)
    return fmt::format("--oversampling: must be 0 (coarse pass only), 1, 2 or 3 (got {})", oversampling);
  return "";
}

namespace {

// --center_classes moves a class only when its centre of mass is within this share of the mask radius.
constexpr double kMaxCentring = 0.25;

using class2d_detail::IterationReport;
using class2d_detail::State;
using estep::cfloat;
using mstep::FourierPixels;

// One batch of preprocessed particles at the pixels of the current limit.
struct Batch {
  size_t first = 0, count = 0;
  std::vector<cfloat> x;         // count * m: masked (scored)
  std::vector<cfloat> x_sums;    // count * m: masked to the CTF's reach (averaged into the classes)
  std::vector<float> sums_weight;  // count * m: their weights' factor (ml3d::particle_views)
  std::vector<float> ctf;        // count * m: the likelihood's CTF factor (CTF^2 for premultiplied data)
  std::vector<uint8_t> premultiplied;  // count
  std::vector<uint32_t> group;   // count
  std::vector<float> scale;      // count: the group's scale correction
  std::vector<double> power;     // count * (n/2+1): sum of |X|^2 per shell over all non-redundant pixels
  std::vector<double> ctf_max;   // count: max(1, largest |CTF factor|)
  std::vector<double> x_bound;   // count: L1 norm of the image, masked or not (bounds every |X(k)|), times ctf_max,
                                 // before the norm correction (start_exact_sums multiplies by the largest factor)
  std::vector<double> norm_extra;  // count: a resampled particle's power at its own frequencies beyond the
                                   // reference's Nyquist (its norm correction counts them; 0 otherwise)

  // The kernels' view of the batch at m pixels, with inverse noise rows per optics group (or one
  // row shared by all particles, without scales).
  estep::ParticleBatch view(size_t m, std::span<const float> inv_sigma2, bool per_group) const {
    estep::ParticleBatch pb;
    pb.n = count;
    pb.m = m;
    pb.x = x;
    pb.x_sums = x_sums;
    pb.sums_weight = sums_weight;
    pb.ctf = ctf;
    pb.premultiplied = premultiplied;
    pb.inv_sigma2 = inv_sigma2;
    if (per_group) {
      pb.noise_row = group;
      pb.scale = scale;
    }
    return pb;
  }
};

// Raises (ctf_max, x_bound) to the largest of a batch's particles (the bounds of the exact sums).
void raise_bounds(const Batch& b, double& ctf_max, double& x_bound) {
  for (size_t i = 0; i < b.count; ++i) {
    ctf_max = std::max(ctf_max, b.ctf_max[i]);
    x_bound = std::max(x_bound, b.x_bound[i]);
  }
}

// The poses of one pass: in-plane angles (degrees) and translations (px). Reference j of the pass
// is class j / psi.size() at angle psi[j % psi.size()].
struct Sampling {
  std::vector<double> psi;
  std::vector<std::array<double, 2>> trans;
};

// What every batch of an iteration shares.
struct IterationData {
  int r = 0;                              // frequency limit, shells
  FourierPixels px;                       // the pixels up to r
  // The coarse pass's limit rc <= r (RELION's coarse image size; r without oversampling), its
  // pixels (those of px up to rc, in px's order) and their positions in px.
  int rc = 0;
  FourierPixels px_coarse;
  std::vector<uint32_t> coarse_q;
  std::vector<Projector2D> proj;          // per class
  std::vector<std::vector<double>> tau2;  // per class, shells 0..n/2
  std::vector<cfloat> refs;               // coarse references, (k * P + p) * mc
  std::vector<cfloat> phase;              // coarse translations, t * mc
  std::vector<cfloat> phase_fine;         // fine translations, t * m
  std::vector<float> inv_sigma2;          // per optics group, g * m
  std::vector<float> inv_sigma2_coarse;   // per optics group, g * mc
  // Per optics group, g * m: whether the group's images have data at the pixel (a resampled group has
  // none beyond its own Nyquist). Empty when every group is at the reference's sampling.
  std::vector<uint8_t> reach;
  std::vector<double> log_prior_j;        // coarse references: log class fraction
  bool split = false;                     // keep the sums of a random half (class re-seeding)
};

// The sums of an iteration's E-step. All are exact (64-bit integer class sums, BackProjector::
// start_exact; ExactSums for the statistics), so their values do not depend on how the batches
// were split over threads and MPI ranks nor on the order in which they were added.
enum Stat : size_t { kLoglik, kPmax, kOffset2, kOffsetW, kStats };  // kOffset2: sum w |origin|^2 (Å^2)
struct IterationSums {
  std::vector<BackProjector> acc, acc_half;  // per class
  ExactSums wdiff2, wcount;                  // [optics group * (n/2+1) + shell]
  ExactSums wclass;                          // per class
  ExactSums xa, aa;                          // per particle group: the scale correction's products
  ExactSums stats;                           // Stat
  size_t shells = 0;
};

// Buffers reused from batch to batch.
struct BatchWork {
  Batch b;
  std::vector<cfloat> x_coarse;    // the batch at the coarse pass's pixels (when rc < r)
  std::vector<float> ctf_coarse;
  estep::Scores scores;
  estep::Posteriors post;
  estep::PosePosteriors fine;
  estep::ParticleSums psums;
  std::vector<float> fine_scores;
  std::vector<cfloat> fine_refs;
  estep::ReferenceSums sums;
};

class Job {
 public:
  explicit Job(const Class2DOptions& opt) : opt_(opt), pool_(opt.threads) {}
  Class2DResult run();

 private:
  void setup();
  // `first_noise` (initialise): before the first noise spectrum; each image goes into that estimate,
  // and the power per shell is the unmasked image's (as RELION's first sigma2 without --zero_mask).
  void load_batch(size_t first, size_t count, const FourierPixels& px, Batch& b,
                  mstep::FirstNoiseEstimate* first_noise = nullptr);
  // load_batch's work for particle p (row i) of an optics group sampled differently from the reference:
  // `img` (its own box, norm-corrected) masked at its own sampling, then resampled at the reference's grid.
  void load_resampled(size_t i, size_t p, Image& img, double nf, const FourierPixels& px, Batch& b,
                      mstep::FirstNoiseEstimate* first_noise) const;
  // Optics groups sampled differently from the reference (another pixel or box size, anisotropic
  // magnification), as RELION 3.1: the reference (classes) has the first group's box and pixel size;
  // a particle of another group is masked at its own sampling, and its transform is taken at its own
  // frequencies M q of the reference's grid (M = T_g^-1, imaging/optics_model.hpp; the exact DFT,
  // fourier_centred_resampled, when M = s I, else the non-uniform FFT of FourierResampler),
  // corrected for its aberration phase and moved by its origin there, where the whole E-step and
  // M-step then work; its pixels beyond its own Nyquist carry no data. Origins stay in the image's
  // own frame (Å of its pixels, as RELION's): the image shift t (px) is the reference frame's shift
  // M^T t N / p (N the reference's box, p the image's).
  struct GroupSampling {
    bool mapped = false;          // T_g is not the identity
    bool isotropic = true;        // M = scale I
    int box = 0;                  // px of the group's images
    double pixel = 0;             // Å of the group's images
    Mat2 to_reference = kIdentity2;  // T: image Fourier px -> reference Fourier px (T_1^-1 T_g)
    Mat2 to_image = kIdentity2;   // M = T^-1: image Fourier px per reference Fourier px
    double scale = 1;             // sqrt |det M| (M = scale I when isotropic: box p / (n P))
    double stretch = 1;           // the largest singular value of M
    Mat2 origin_to_ref = kIdentity2;  // image origin (Å) -> reference px (anisotropic groups)
    Mat2 ref_to_origin = kIdentity2;  // its inverse
    double density = 1;           // image pixels per reference pixel, |det M|: the noise weight's factor
    Grid<cfloat> demodulate;      // exp(-i phi) of the group's aberration phase on the reference's grid (or empty)
    FourierResampler resample;    // its images' transforms at the reference's grid
    std::vector<double> counts;   // per reference shell: its pixels where the group's images have data
  };
  std::vector<GroupSampling> sampling_;  // per optics group; empty: every group at the reference's sampling
  bool resampled(size_t g) const { return !sampling_.empty() && sampling_[g].mapped; }
  // Image shell of reference pixel q for group g; -1 beyond the image's Nyquist (no data), as
  // fourier_centred_resampled.
  int image_shell(size_t g, double qx, double qy) const {
    const auto [kx, ky] = image_frequency(sampling_[g], qx, qy);
    const int s = int(std::lround(std::sqrt(kx * kx + ky * ky)));
    return s > sampling_[g].box / 2 ? -1 : s;
  }
  // T_1^-1 T_g (optics_model.hpp's T_g: image Fourier px -> the undistorted reference frame's), made
  // exactly s I when it is within 1e-9 of a multiple of the identity (rounding of groups of one
  // magnification), so that such groups take the identity or the separable resampling.
  Mat2 relative_to_first(size_t g) const {
    if (g == 0) return kIdentity2;
    const Mat2& A = optics_model_.group(0).to_reference;
    const Mat2& B = optics_model_.group(g).to_reference;
    const double det = A[0][0] * A[1][1] - A[0][1] * A[1][0];
    const Mat2 Ai{{{A[1][1] / det, -A[0][1] / det}, {-A[1][0] / det, A[0][0] / det}}};
    Mat2 T{};
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 2; ++c)
        T[size_t(r)][size_t(c)] = Ai[size_t(r)][0] * B[0][size_t(c)] + Ai[size_t(r)][1] * B[1][size_t(c)];
    const double s = 0.5 * (T[0][0] + T[1][1]);
    if (std::abs(T[0][1]) < 1e-9 && std::abs(T[1][0]) < 1e-9 && std::abs(T[0][0] - T[1][1]) < 1e-9)
      return std::abs(s - 1.0) < 1e-9 ? kIdentity2 : Mat2{{{s, 0}, {0, s}}};
    return T;
  }
  // Image Fourier px of reference pixel q for a resampled group: M q.
  static std::array<double, 2> image_frequency(const GroupSampling& gs, double qx, double qy) {
    if (gs.isotropic) return {gs.scale * qx, gs.scale * qy};
    const Mat2& M = gs.to_image;
    return {M[0][0] * qx + M[0][1] * qy, M[1][0] * qx + M[1][1] * qy};
  }
  // The origin (Å) reached from particle p's origin by a translation t (reference px).
  std::array<double, 2> origin_after(size_t p, const std::array<double, 2>& t) const {
    const size_t g = size_t(table_.optics_index[p]);
    if (sampling_.empty() || sampling_[g].isotropic)
      return {st_.origin_x[p] + t[0] * angpix_, st_.origin_y[p] + t[1] * angpix_};
    const Mat2& R = sampling_[g].ref_to_origin;
    return {st_.origin_x[p] + R[0][0] * t[0] + R[0][1] * t[1], st_.origin_y[p] + R[1][0] * t[0] + R[1][1] * t[1]};
  }
  void initialise();
  void use_references();
  IterationReport iterate();
  IterationData prepare_iteration();
  int coarse_shells(int r) const;
  // The weights that make the M-step of a batch, with the translations and references they refer
  // to; reference j is reference global_j[j] of fine_ (global_j empty: j itself).
  struct FinalPass {
    const estep::SparseWeights* sw = nullptr;
    const std::vector<estep::ParticlePosterior>* stats = nullptr;
    estep::TranslationPhases tp;
    estep::ReferenceSlices refs;
    std::vector<uint32_t> global_j;
  };
  void process_batch(size_t first, size_t count, const IterationData& it, BatchWork& w, IterationSums& sums,
                     IterationReport& rep, std::vector<double>& new_norm);
  FinalPass finer_pass(size_t first, size_t count, const IterationData& it, const estep::ParticleBatch& pb,
                       std::span<const double> log_constant, BatchWork& w);
  void record_particles(size_t first, size_t count, const IterationData& it, const FinalPass& fp, const BatchWork& w,
                        IterationSums& sums, IterationReport& rep, std::vector<double>& new_norm);
  void add_class_sums(const estep::ParticleBatch& pb, const estep::TranslationPhases& tp,
                      const estep::SparseWeights& sw, std::span<const uint32_t> global_j, const Sampling& s,
                      const FourierPixels& px, estep::ReferenceSums& sums, std::vector<BackProjector>& acc);
  IterationSums expectation(const IterationData& it, IterationReport& rep, std::vector<double>& new_norm);
  void start_exact_sums(const IterationData& it, IterationSums& sums) const;
  bool owns_batch(size_t batch) const { return int(batch % size_t(mpi::size())) == mpi::rank(); }
  std::vector<mstep::ClassAverage> maximise(const IterationData& it, const std::vector<BackProjector>& acc,
                                            const std::vector<BackProjector>& acc_half, std::vector<double>& wclass);
  mstep::ClassAverage class_average(const IterationData& it, const BackProjector& acc, size_t k) const;
  std::vector<double> tau2_of(const Image& cls) const;
  int resolution_shell(const std::vector<double>& ssnr) const;
  double shell_to_A(double s) const { return s > 0 ? double(n_) * angpix_ / s : 999.0; }
  // RELION's factor on particle p's image (avg_norm / norm, --norm) and its group's scale (--scale).
  double norm_factor(size_t p) const {
    return opt_.norm && p < st_.norm.size() && st_.norm[p] > 0 ? st_.avg_norm / st_.norm[p] : 1.0;
  }
  double group_scale(size_t p) const {
    const size_t g = size_t(groups_.group_of[p]);
    return opt_.scale && g < st_.group_scale.size() ? st_.group_scale[g] : 1.0;
  }
  bool in_split_half(size_t p) const {
    auto rng = make_rng(opt_.seed, p, 0x53504c54);  // "SPLT"
    return uniform01(rng) < 0.5;
  }
  // Log-prior of the origins reached by the translations, per particle of a batch (count x T):
  // a 2D Gaussian about 0 of variance sigma2_offset, as RELION's pdf_offset.
  std::vector<double> offset_log_prior(size_t first, size_t count,
                                       const std::vector<std::array<double, 2>>& trans) const {
    std::vector<double> out(count * trans.size());
    const double s2 = st_.sigma2_offset, c = -std::log(2 * std::numbers::pi * s2);
    for (size_t i = 0; i < count; ++i)
      for (size_t t = 0; t < trans.size(); ++t) {
        const auto [dx, dy] = origin_after(first + i, trans[t]);
        out[i * trans.size() + t] = -(dx * dx + dy * dy) / (2 * s2) + c;
      }
    return out;
  }

  Class2DOptions opt_;
  ThreadPool pool_;
  std::string input_star_;
  ParticleTable table_;
  OpticsModel optics_model_;  // of table_ (engine_optics)
  std::unique_ptr<ParticleImages> images_;
  int n_ = 0, optics_ = 1, r_ini_ = 1;  // optics_: optics groups (noise spectra)
  ml3d::Groups groups_;                   // particle groups (scale correction)
  double angpix_ = 0, mask_radius_ = 0;
  Sampling coarse_, fine_;            // fine_ == coarse_ without oversampling
  size_t t_children_ = 1, j_children_ = 1;  // fine poses per coarse translation / in-plane angle
  std::vector<double> input_origin_x_, input_origin_y_;  // origins of the input STAR file, Å
  FourierPixels all_px_;
  std::vector<double> all_counts_;
  State st_;
  std::vector<double> posterior_sum_;
  double fine_flops_ = 0;            // flops of the last iteration's fine pass
};

void Job::setup() {
  ParticleReadOptions ro;
  ro.angpix = opt_.angpix;
  table_ = ParticleTable::read(input_star_, ro);
  const size_t N = table_.size();
  if (N == 0) input_error("{}: no particles", input_star_);
  if (size_t(opt_.classes) > N) input_error("--K {}: more classes than the {} particles of {}", opt_.classes, N, input_star_);
  images_ = std::make_unique<ParticleImages>(table_);
  Image first = images_->read(0);
  n_ = first.nx();
  if (first.ny() != n_ || n_ < 8)
    input_error("{}: particle images must be square and at least 8 px (got {}x{})", input_star_, first.nx(), first.ny());
  // Optics groups of different sampling (GroupSampling) are resampled at the first group's; their
  // boxes must then be even and at least 16 px (engine_optics), other sets keep odd and small boxes.
  bool geometry = false;
  {
    OpticsModel probe(table_);
    for (size_t g = 0; g < probe.groups(); ++g)
      if (probe.group(g).box <= 0) probe.set_box(g, n_);
    geometry = (probe.features() & (OpticsModel::kAnisoMag | OpticsModel::kMixedPixel | OpticsModel::kMixedBox)) != 0;
  }
  // The optics this E-step models; the rest is refused.
  optics_model_ = engine_optics(table_, n_, opt_.ctf, "class2d", geometry);
  n_ = optics_model_.reference_box();
  angpix_ = table_.optics.front().pixel_size;
  for (const auto& g : table_.optics) {
    if (g.pixel_size <= 0) input_error("{}: optics group {} has no pixel size; give --angpix", input_star_, g.number);
    if (!geometry && g.image_size > 0 && g.image_size != n_)
      input_error("{}: optics group {} says rlnImageSize {} but the images are {} px", input_star_, g.number,
                  g.image_size, n_);
  }
  if (opt_.ctf) {
    for (const auto& g : table_.optics)
      if (g.voltage <= 0)
        input_error("{}: --ctf needs rlnVoltage, rlnSphericalAberration and rlnAmplitudeContrast (optics group {})",
                    input_star_, g.number);
  }
  optics_ = int(table_.optics.size());
  groups_ = ml3d::particle_groups(table_);
  double radius_px = opt_.particle_diameter > 0 ? opt_.particle_diameter / (2 * angpix_)
                                                 : n_ / 2.0 - opt_.mask_edge;
  mask_radius_ = std::clamp(radius_px, 1.0, n_ / 2.0);
  coarse_.psi = psi_angles(opt_.psi_step);
  coarse_.trans = translations(opt_.offset_range, opt_.offset_step);
  fine_.psi = oversampled_psi_angles(coarse_.psi, 360.0 / double(coarse_.psi.size()), opt_.oversampling);
  fine_.trans = oversampled_translations(coarse_.trans, opt_.offset_step, opt_.oversampling);
  j_children_ = fine_.psi.size() / coarse_.psi.size();
  t_children_ = fine_.trans.size() / coarse_.trans.size();
  input_origin_x_ = table_.origin_x;
  input_origin_y_ = table_.origin_y;
  all_px_ = mstep::select_fourier_pixels(n_, n_ / 2);
  all_counts_ = all_px_.shell_counts();
  if (geometry) {
    sampling_.resize(size_t(optics_));
    std::string log;
    for (size_t g = 0; g < size_t(optics_); ++g) {
      const OpticsGroupModel& og = optics_model_.group(g);
      GroupSampling& gs = sampling_[g];
      // The classes are in the first group's image frame (its magnification included): group g's
      // image Fourier px k is T_1^-1 T_g k there, so the first group is never resampled, nor is any
      // group of its sampling and magnification.
      const Mat2 T = relative_to_first(g);
      gs.to_reference = T;
      gs.mapped = T != kIdentity2;
      gs.box = og.box;
      gs.pixel = og.pixel_size;
      gs.isotropic = T[0][1] == 0 && T[1][0] == 0 && T[0][0] == T[1][1];
      if (gs.isotropic) {
        gs.scale = 1.0 / T[0][0];
        gs.to_image = {{{gs.scale, 0}, {0, gs.scale}}};
        gs.stretch = gs.scale;
        gs.density = gs.scale * gs.scale;
      } else {
        const double det = T[0][0] * T[1][1] - T[0][1] * T[1][0];
        const Mat2 M{{{T[1][1] / det, -T[0][1] / det}, {-T[1][0] / det, T[0][0] / det}}};
        gs.to_image = M;
        gs.density = std::abs(M[0][0] * M[1][1] - M[0][1] * M[1][0]);
        gs.scale = std::sqrt(gs.density);
        const double a = M[0][0] * M[0][0] + M[0][1] * M[0][1] + M[1][0] * M[1][0] + M[1][1] * M[1][1];
        gs.stretch = std::sqrt(0.5 * (a + std::sqrt(std::max(0.0, a * a - 4 * gs.density * gs.density))));
        // Shift t (image px) = origin / pixel; reference px: M^T t N / p.
        const double f = double(n_) / (double(gs.box) * gs.pixel);
        const Mat2 O{{{f * M[0][0], f * M[1][0]}, {f * M[0][1], f * M[1][1]}}};
        const double dO = O[0][0] * O[1][1] - O[0][1] * O[1][0];
        gs.origin_to_ref = O;
        gs.ref_to_origin = {{{O[1][1] / dO, -O[0][1] / dO}, {-O[1][0] / dO, O[0][0] / dO}}};
      }
      if (gs.mapped) gs.resample = FourierResampler(gs.box, n_, gs.to_image);
      if (gs.mapped && og.has_phase()) {
        gs.demodulate = Grid<cfloat>(n_ / 2 + 1, n_, 1, cfloat(1, 0));
        for (int iy = 0; iy < n_; ++iy)
          for (int kx = 0; kx <= n_ / 2; ++kx) {
            const auto [ix, iy_] = image_frequency(gs, kx, fft_freq(iy, n_));
            const std::array<double, 2> f = og.frequency(ix, iy_);
            gs.demodulate(kx, iy) = std::polar(1.0f, float(-og.phase_at(f[0], f[1])));
          }
      }
      gs.counts.assign(size_t(n_ / 2 + 1), 0.0);
      for (size_t q = 0; q < all_px_.size(); ++q)
        if (image_shell(g, all_px_.kx[q], all_px_.ky[q]) >= 0) gs.counts[size_t(all_px_.shell[q])] += 1;
      if (gs.mapped)
        log += fmt::format("{}group {} ({:.6g} Å, {} px{}: {:.3g} image pixels per reference pixel)",
                           log.empty() ? "" : ", ", og.number, gs.pixel, gs.box,
                           gs.isotropic ? "" : ", anisotropic magnification", gs.density);
    }
    spdlog::info("class2d: classes at optics group {}'s sampling ({} px, {:.6g} Å); resampled to it: {}",
                 optics_model_.group(0).number, n_, angpix_, log);
  }
  r_ini_ = std::clamp(int(std::lround(n_ * angpix_ / opt_.ini_high)), std::max(1, n_ / 8), n_ / 2 - 1);
}

void Job::load_batch(size_t first, size_t count, const FourierPixels& px, Batch& b,
                     mstep::FirstNoiseEstimate* first_noise) {
  const bool initial = first_noise != nullptr;
  const size_t m = px.size(), hs = size_t(n_ / 2 + 1);
  b.first = first;
  b.count = count;
  b.x.assign(count * m, cfloat(0, 0));
  b.x_sums.assign(count * m, cfloat(0, 0));
  b.sums_weight.assign(count * m, 1.0f);
  b.ctf.assign(count * m, 1.0f);
  b.premultiplied.assign(count, 0);
  b.group.assign(count, 0);
  b.scale.assign(count, 1.0f);
  b.power.assign(count * hs, 0.0);
  b.ctf_max.assign(count, 1.0);
  b.x_bound.assign(count, 0.0);
  b.norm_extra.assign(count, 0.0);
  std::vector<Image> imgs(count);
  for (size_t i = 0; i < count; ++i) {  // reads are serial (the reader is not thread-safe)
    imgs[i] = images_->read(first + i);
    const int box = sampling_.empty() ? n_ : sampling_[size_t(table_.optics_index[first + i])].box;
    if (imgs[i].nx() != box || imgs[i].ny() != box)
      input_error("{}: image of particle {} is {}x{}, expected {}x{}", table_.where(first + i), first + i + 1,
                  imgs[i].nx(), imgs[i].ny(), box, box);
  }
  pool_.parallel_for(0, count, [&](size_t i, int) {
    const size_t p = first + i;
    Image& img = imgs[i];
    // RELION's norm correction, before anything else.
    const double nf = norm_factor(p);
    if (nf != 1.0)
      for (float& v : img) v = float(v * nf);
    b.group[i] = uint32_t(table_.optics_index[p]);
    b.scale[i] = float(group_scale(p));
    if (resampled(b.group[i])) {
      load_resampled(i, p, img, nf, px, b, first_noise);
      return;
    }
    // The particle sits at the box centre moved by -origin (RELION 3.1): the mask follows it, as
    // RELION masks after undoing the (rounded) current offset.
    const double ox = st_.origin_x[p], oy = st_.origin_y[p];
    const MaskCentre at_particle{-ox / angpix_, -oy / angpix_};
    auto add_power = [&](const Grid<cfloat>& F) {
      for (size_t k = 0; k < all_px_.size(); ++k)
        b.power[i * hs + size_t(all_px_.shell[k])] += std::norm(F[all_px_.index[k]]);
    };
    const bool power_unmasked = initial && !opt_.zero_mask;  // RELION's first sigma2 without --zero_mask
    if (power_unmasked) add_power(fourier_centred(img));
    if (power_unmasked) first_noise->add(size_t(table_.optics_index[p]), img);
    // What the class averages take: RELION takes the unmasked particle (Fimg_nomask), as the CTF
    // moves its signal outside the particle mask; here it is masked band by band to the CTF's reach
    // (as the 3D jobs, ml3d::particle_views), and its weights follow the noise it keeps.
    std::optional<ParticleOptics> po;
    if (opt_.ctf) po = optics_model_.particle(p);
    Image wide = img;
    const std::vector<double> kept = apply_reach_mask(wide, mask_radius_, opt_.mask_edge, at_particle,
                                                      po ? ctf_reach(*po) : CtfReach{}, px.r_max);
    for (size_t k = 0; k < m; ++k) b.sums_weight[i * m + k] = float(reach_weight(kept, size_t(px.shell[k])));
    Grid<cfloat> F_raw = fourier_centred(wide);
    double l1_raw = 0;
    for (float v : wide) l1_raw += std::abs(double(v));
    // Solvent: zeros, or noise of the current spectrum (none yet in iteration 0: the mean).
    const ParticleSolvent solvent{opt_.zero_mask, initial ? nullptr : &st_.sigma2[size_t(table_.optics_index[p])],
                                  opt_.seed, p};
    apply_particle_mask(img, mask_radius_, opt_.mask_edge, at_particle, solvent);
    if (initial && !power_unmasked) first_noise->add(size_t(table_.optics_index[p]), img);
    double l1 = 0;
    for (float v : img) l1 += std::abs(double(v));
    Grid<cfloat> F = fourier_centred(img);
    // Re-centre by the current origin, the centre of the translation search.
    if (ox != 0 || oy != 0) shift_phase(F, ox / angpix_, oy / angpix_, n_);
    if (ox != 0 || oy != 0) shift_phase(F_raw, ox / angpix_, oy / angpix_, n_);
    if (!power_unmasked) add_power(F);
    if (po) {
      if (po->group().has_phase()) {  // beam tilt, odd Zernikes (RELION's order)
        po->group().demodulate(F);
        po->group().demodulate(F_raw);
      }
      Grid<float> c;
      po->ctf_half(c);
      for (size_t k = 0; k < m; ++k) {
        b.ctf[i * m + k] = po->predicted(c[px.index[k]]);
        b.ctf_max[i] = std::max(b.ctf_max[i], double(std::abs(b.ctf[i * m + k])));
      }
      b.premultiplied[i] = po->group().premultiplied;
    }
    b.x_bound[i] = std::max(l1, l1_raw) * b.ctf_max[i] / nf;
    for (size_t k = 0; k < m; ++k) {
      b.x[i * m + k] = F[px.index[k]];
      b.x_sums[i * m + k] = F_raw[px.index[k]];
    }
  });
}

void Job::load_resampled(size_t i, size_t p, Image& img, double nf, const FourierPixels& px, Batch& b,
                         mstep::FirstNoiseEstimate* first_noise) const {
  const bool initial = first_noise != nullptr;
  const size_t m = px.size(), hs = size_t(n_ / 2 + 1), g = size_t(table_.optics_index[p]);
  const GroupSampling& gs = sampling_[g];
  // Own pixels for the mask: the origin (Å of the image), the radius and edge (Å as the reference's).
  const double ox = st_.origin_x[p], oy = st_.origin_y[p];
  const MaskCentre at_particle{-ox / gs.pixel, -oy / gs.pixel};
  const double own = angpix_ / gs.pixel;
  const double radius = std::clamp(mask_radius_ * own, 1.0, gs.box / 2.0), edge = opt_.mask_edge * own;
  const ParticleOptics po = optics_model_.particle(p);  // (engine_optics refuses this geometry without --ctf)
  // The image's transform at the reference's grid (exact DFT at s q), its aberration phase removed
  // and moved by its origin, as the reference-sampled particles are.
  auto at_reference = [&](const Image& im) {
    Grid<cfloat> F;
    gs.resample.transform(im, F);
    if (!gs.demodulate.empty())
      for (size_t k = 0; k < F.size(); ++k) F[k] *= gs.demodulate[k];
    if (ox != 0 || oy != 0) {
      if (gs.isotropic) {
        shift_phase(F, ox / angpix_, oy / angpix_, n_);
      } else {
        const Mat2& O = gs.origin_to_ref;
        shift_phase(F, O[0][0] * ox + O[0][1] * oy, O[1][0] * ox + O[1][1] * oy, n_);
      }
    }
    return F;
  };
  auto add_power = [&](const Grid<cfloat>& F) {
    for (size_t k = 0; k < all_px_.size(); ++k)
      b.power[i * hs + size_t(all_px_.shell[k])] += std::norm(F[all_px_.index[k]]);
  };
  const bool power_unmasked = initial && !opt_.zero_mask;
  if (power_unmasked) {
    const Grid<cfloat> U = at_reference(img);
    add_power(U);
    first_noise->add(g, from_fourier_centred(U, n_));
  }
  Image wide = img;
  const int r_own = std::min(gs.box / 2, int(std::ceil(double(px.r_max) * gs.stretch)) + 1);
  const std::vector<double> kept = apply_reach_mask(wide, radius, edge, at_particle, ctf_reach(po), r_own);
  // The solvent's noise at the image's own shells: the group's spectrum (reference shells, the same
  // transform's scale) at the matching reference shell.
  std::vector<double> s2own;
  if (!initial) {
    s2own.resize(size_t(gs.box / 2 + 1));
    for (size_t s = 0; s < s2own.size(); ++s)
      s2own[s] = st_.sigma2[g][std::min(hs - 1, size_t(std::lround(double(s) / gs.scale)))];
  }
  apply_particle_mask(img, radius, edge, at_particle, ParticleSolvent{opt_.zero_mask, initial ? nullptr : &s2own, opt_.seed, p});
  const Grid<cfloat> F = at_reference(img), F_raw = at_reference(wide);
  if (initial && !power_unmasked) first_noise->add(g, from_fourier_centred(F, n_));
  if (!power_unmasked) add_power(F);
  // A finer group's power at its own shells beyond the reference's Nyquist (the norm correction's residual).
  if (double(gs.box / 2) > (gs.isotropic ? gs.scale : gs.stretch) * double(n_ / 2) + 0.5) {
    const Grid<cfloat> G = fourier_centred(img);
    const int h = gs.box / 2;
    for (int iy = 0; iy < gs.box; ++iy)
      for (int kx = 0; kx <= h; ++kx) {
        const int ky = fft_freq(iy, gs.box);
        if (kx == 0 && ky <= 0) continue;  // the non-redundant half plane, as b.power
        const double r = std::sqrt(double(kx * kx + ky * ky));
        if (std::lround(r) > h) continue;
        const Mat2& T = gs.to_reference;
        const double rr = gs.isotropic ? r / gs.scale : std::hypot(T[0][0] * kx + T[0][1] * ky, T[1][0] * kx + T[1][1] * ky);
        if (std::lround(rr) > n_ / 2) b.norm_extra[i] += std::norm(G(kx, iy));
      }
  }
  // The bound of the exact sums: the largest value of either transform anywhere on the grid.
  double fmax = 0;
  for (size_t k = 0; k < F.size(); ++k) fmax = std::max({fmax, double(std::abs(F[k])), double(std::abs(F_raw[k]))});
  for (size_t k = 0; k < m; ++k) {
    b.x[i * m + k] = F[px.index[k]];
    b.x_sums[i * m + k] = F_raw[px.index[k]];
    const int sh = image_shell(g, px.kx[k], px.ky[k]);
    if (sh < 0) {
      b.ctf[i * m + k] = 0.0f;
      continue;
    }
    b.sums_weight[i * m + k] = float(reach_weight(kept, size_t(sh)));
    const auto [ikx, iky] = image_frequency(gs, px.kx[k], px.ky[k]);
    b.ctf[i * m + k] = po.predicted(po.ctf_value_float(ikx, iky));
    b.ctf_max[i] = std::max(b.ctf_max[i], double(std::abs(b.ctf[i * m + k])));
  }
  b.premultiplied[i] = po.group().premultiplied;
  b.x_bound[i] = fmax * b.ctf_max[i] / nf;
}

// Phase factors moving a particle by each translation (+dx, +dy) px, at the selected pixels.
std::vector<cfloat> translation_phases(const std::vector<std::array<double, 2>>& trans, const FourierPixels& px) {
  const size_t m = px.size();
  std::vector<cfloat> ph(trans.size() * m);
  const double s = -2.0 * 3.14159265358979323846 / px.n;
  for (size_t t = 0; t < trans.size(); ++t)
    for (size_t k = 0; k < m; ++k)
      ph[t * m + k] = std::polar(1.0f, float(s * (px.kx[k] * trans[t][0] + px.ky[k] * trans[t][1])));
  return ph;
}

// Iteration 0: classes = CTF-corrected averages of random subsets, each particle with a random
// psi (seeded per particle), or the --ref images; sigma2 = half the mean power per shell of the particles
// (mstep/first_noise.hpp without RELION's subtraction of the average image's power: docs/class2d.md).
void Job::initialise() {
  const size_t N = table_.size(), K = size_t(opt_.classes), P = coarse_.psi.size(), J = K * P;
  const bool random_subsets = opt_.reference.empty();
  st_.norm = ml3d::input_norms(table_);
  st_.avg_norm = ml3d::average(st_.norm);
  st_.group_scale.assign(groups_.names.size(), 1.0);
  st_.ssnr.clear();
  st_.origin_x = input_origin_x_;
  st_.origin_y = input_origin_y_;
  st_.sigma2_offset = opt_.offset_sigma * opt_.offset_sigma;
  FourierPixels px = mstep::select_fourier_pixels(n_, r_ini_);
  const size_t m = px.size();
  const Sampling at_origin{coarse_.psi, {{0.0, 0.0}}};
  std::vector<cfloat> ph = translation_phases(at_origin.trans, px);
  estep::TranslationPhases tp{1, m, ph};
  std::vector<float> ones(m, 1.0f);
  std::vector<BackProjector> acc(random_subsets ? K : 0, mstep::class_accumulator(n_, r_ini_));
  estep::ReferenceSums sums;
  mstep::FirstNoiseEstimate noise(n_, size_t(optics_));
  Progress prog("initial classes", double(N));
  Batch b;
  for (size_t first = 0; first < N; first += size_t(opt_.batch_size)) {
    size_t count = std::min(size_t(opt_.batch_size), N - first);
    load_batch(first, count, px, b, &noise);
    if (random_subsets) {
      estep::SparseWeights sw;
      sw.n = count;
      sw.t = 1;
      sw.j = J;
      sw.offset.resize(count + 1);
      for (size_t i = 0; i < count; ++i) {
        auto rng = make_rng(opt_.seed, first + i);
        size_t k = std::min(K - 1, size_t(uniform01(rng) * double(K)));
        size_t p = std::min(P - 1, size_t(uniform01(rng) * double(P)));
        sw.offset[i] = i;
        sw.entry.push_back({0, uint32_t(k * P + p), 1.0f});
      }
      sw.offset[count] = count;
      add_class_sums(b.view(m, ones, false), tp, sw, {}, at_origin, px, sums, acc);
    }
    raise_bounds(b, st_.ctf_max, st_.x_bound);
    prog.advance(double(count));
  }
  prog.finish();
  st_.iteration = 0;
  st_.n = n_;
  st_.current_shells = r_ini_;
  st_.sigma2 = noise.sigma2(0.0, /*subtract_average=*/false);  // see docs/class2d.md
  st_.fraction.assign(K, 1.0 / double(K));
  st_.classes.assign(K, Image());
  if (!random_subsets) {
    use_references();
    return;
  }
  // The prior for the random-subset averages: tau2 = power spectrum of the average of all
  // particles (each at its random psi), as RELION's initial tau2 from the average image.
  // Without it the CTF-corrected subset averages carry amplified noise near the CTF zeros, and
  // the first E-step is overconfident (measured: <Pmax> 0.7 in iteration 1 on the ribosome bench).
  std::vector<double> tau2_ini;
  {
    BackProjector all = mstep::class_accumulator(n_, r_ini_);
    for (const BackProjector& a : acc) all.add(a);
    mstep::ClassAverageOptions co;
    co.r_max = r_ini_;
    co.iterative_gridding = false;
    tau2_ini = tau2_of(mstep::reconstruct_class_2d(all, co).image);
  }
  pool_.parallel_for(0, K, [&](size_t k, int) {
    mstep::ClassAverageOptions co;
    co.r_max = r_ini_;
    co.tau2 = tau2_ini;
    co.tau2_fudge = opt_.tau2_fudge;
    co.zero_tau2_unregularised = true;
    Image img = mstep::reconstruct_class_2d(acc[k], co).image;
    if (opt_.flatten_solvent) apply_spherical_mask(img, mask_radius_, opt_.mask_edge, MaskFill::Zero);
    st_.classes[k] = std::move(img);
  });
}

// --ref: the initial classes are the stack's images (as RELION's --ref in 2D), masked as class
// averages are; initialise() read the particles for the noise model and the sums' bounds only.
void Job::use_references() {
  mrc::Header h;
  const Grid<float> refs = mrc::read(opt_.reference, &h);
  if (refs.nx() != n_ || refs.ny() != n_)
    input_error("--ref {}: images of {}x{} px, the particles' box is {} px", opt_.reference, refs.nx(), refs.ny(), n_);
  const double apix = h.pixel_size();
  if (apix > 0 && std::abs(apix - angpix_) > 0.01 * angpix_)
    input_error("--ref {}: pixel size {:.4f} Å in its header, the particles' is {:.4f} Å", opt_.reference, apix, angpix_);
  const size_t K = size_t(opt_.classes), plane = size_t(n_) * size_t(n_);
  for (size_t k = 0; k < K; ++k) {
    Image img(n_, n_, 1);
    std::copy_n(refs.data() + k * plane, plane, img.data());
    for (float v : img)
      if (!std::isfinite(v)) input_error("--ref {}: image {} holds a value that is not finite", opt_.reference, k + 1);
    if (opt_.flatten_solvent) apply_spherical_mask(img, mask_radius_, opt_.mask_edge, MaskFill::Zero);
    st_.classes[k] = std::move(img);
  }
  spdlog::info("class2d: initial classes from {} ({} images)", opt_.reference, K);
}

// Adds the weighted sums of the poses `sw` to the class accumulators: reference j of `sw` is
// reference global_j[j] of sampling `s` (global_j empty: j itself). Only references that carry
// weight get sums; they are inserted per class in increasing reference order.
void Job::add_class_sums(const estep::ParticleBatch& pb, const estep::TranslationPhases& tp,
                         const estep::SparseWeights& sw, std::span<const uint32_t> global_j, const Sampling& s,
                         const FourierPixels& px, estep::ReferenceSums& sums, std::vector<BackProjector>& acc) {
  estep::SparseWeights local = sw;
  std::vector<uint32_t> slot(sw.j, 0), used;
  for (const estep::PoseWeight& e : local.entry)
    if (e.weight != 0.0f) slot[e.j] = 1;
  for (size_t v = 0; v < sw.j; ++v)
    if (slot[v]) {
      slot[v] = uint32_t(used.size());
      used.push_back(uint32_t(v));
    }
  if (used.empty()) return;
  for (estep::PoseWeight& e : local.entry) e.j = e.weight != 0.0f ? slot[e.j] : 0;
  local.j = used.size();
  const size_t m = px.size(), P = s.psi.size();
  sums.reset(used.size(), m);
  estep::accumulate_reference_sums(pb, tp, local, sums, pool_);
  auto global = [&](uint32_t j) { return global_j.empty() ? j : global_j[j]; };
  std::vector<std::vector<size_t>> rows(acc.size());
  for (size_t u = 0; u < used.size(); ++u) rows[global(used[u]) / P].push_back(u);
  pool_.parallel_for(0, acc.size(), [&](size_t k, int) {
    for (size_t u : rows[k])
      mstep::insert_class_sums(acc[k], px, s.psi[global(used[u]) % P], sums.data.data() + u * m,
                               sums.weight.data() + u * m);
  });
}

// RELION's prior of a class: half the power of its gridding-corrected average (the projector's
// padding 2); 0 beyond its band, where the next average is made from the data alone
// (ClassAverageOptions::zero_tau2_unregularised).
std::vector<double> Job::tau2_of(const Image& cls) const { return mstep::map_prior_tau2(cls, 2); }

// Last shell of the first run of shells (from 1) with SSNR >= 1.
int Job::resolution_shell(const std::vector<double>& ssnr) const {
  int r = 0;
  for (size_t s = 1; s < ssnr.size(); ++s) {
    if (ssnr[s] >= 1) r = int(s);
    else break;
  }
  return r;
}

// Frequency limit of the coarse pass (RELION's coarse image size for 2D: the resolution at which
// one coarse in-plane step moves the particle's edge by 1.5 times it, rounded up; never beyond the
// E-step's limit r). Without oversampling the coarse pass is the only one and takes r.
int Job::coarse_shells(int r) const {
  if (opt_.oversampling == 0) return r;
  const double step = 360.0 / double(coarse_.psi.size());
  return std::clamp(estep::coarse_limit_shells(n_, angpix_, 2 * mask_radius_ * angpix_, step, 1.5), 1, r);
}

IterationData Job::prepare_iteration() {
  const size_t K = size_t(opt_.classes), P = coarse_.psi.size();
  IterationData it;
  it.r = st_.current_shells;
  it.px = mstep::select_fourier_pixels(n_, it.r);
  it.rc = coarse_shells(it.r);
  it.px_coarse = mstep::select_fourier_pixels(n_, it.rc);
  for (size_t q = 0; q < it.px.size(); ++q)
    if (it.px.shell[q] <= it.rc) it.coarse_q.push_back(uint32_t(q));
  const size_t m = it.px.size(), mc = it.px_coarse.size();
  if (it.coarse_q.size() != mc) runtime_error("class2d: the coarse pixels are not a subset of the pixels");
  // References: every class rotated by every coarse psi, j = k * P + p, at the coarse pixels.
  it.refs.resize(K * P * mc);
  it.tau2.resize(K);
  it.proj.resize(K);
  pool_.parallel_for(0, K, [&](size_t k, int) {
    it.tau2[k] = tau2_of(st_.classes[k]);
    it.proj[k] = Projector2D(st_.classes[k], 2, std::min(n_ / 2, it.r + 1));
    Grid<cfloat> out;
    for (size_t p = 0; p < P; ++p) {
      it.proj[k].project_psi(coarse_.psi[p], out);
      cfloat* dst = it.refs.data() + (k * P + p) * mc;
      for (size_t q = 0; q < mc; ++q) dst[q] = out[it.px_coarse.index[q]];
    }
  });
  it.phase = translation_phases(coarse_.trans, it.px_coarse);
  if (opt_.oversampling > 0) it.phase_fine = translation_phases(fine_.trans, it.px);
  it.inv_sigma2.resize(size_t(optics_) * m);
  it.inv_sigma2_coarse.resize(size_t(optics_) * mc);
  if (!sampling_.empty()) it.reach.assign(size_t(optics_) * m, 1);
  for (size_t g = 0; g < size_t(optics_); ++g) {
    for (size_t q = 0; q < m; ++q) {
      const double s2 = st_.sigma2[g][size_t(it.px.shell[q])];
      it.inv_sigma2[g * m + q] = s2 > 0 ? float(1.0 / s2) : 0.0f;
      if (!resampled(g)) continue;
      // A resampled group: no data beyond its Nyquist; each reference pixel stands for `density` of its pixels.
      if (image_shell(g, it.px.kx[q], it.px.ky[q]) < 0) {
        it.inv_sigma2[g * m + q] = 0.0f;
        it.reach[g * m + q] = 0;
      } else if (s2 > 0) {
        it.inv_sigma2[g * m + q] = float(sampling_[g].density / s2);
      }
    }
    for (size_t q = 0; q < mc; ++q) it.inv_sigma2_coarse[g * mc + q] = it.inv_sigma2[g * m + it.coarse_q[q]];
  }
  std::vector<uint32_t> class_of(K * P);
  for (size_t j = 0; j < K * P; ++j) class_of[j] = uint32_t(j / P);
  it.log_prior_j = estep::class_log_prior(st_.fraction, class_of);
  // Classes may be re-seeded in the first iterations (cryoSPARC-like): an (almost) empty class, or
  // one of two classes showing the same view, takes half of the largest class.
  it.split = K > 2 && st_.iteration + 1 <= opt_.reseed_until;
  return it;
}

// E-step of one batch: the coarse pass over every (class, psi, translation), then (with
// oversampling) the finer pass over the children of each particle's significant coarse poses;
// the weights of the last pass go into the iteration's class sums, noise and scale statistics.
void Job::process_batch(size_t first, size_t count, const IterationData& it, BatchWork& w, IterationSums& sums,
                        IterationReport& rep, std::vector<double>& new_norm) {
  const size_t P = coarse_.psi.size(), J = size_t(opt_.classes) * P, T = coarse_.trans.size();
  const FourierPixels& px = it.px;
  const size_t m = px.size(), mc = it.px_coarse.size();
  load_batch(first, count, px, w.b);
  const estep::ParticleBatch pb = w.b.view(m, it.inv_sigma2, true);
  // The coarse pass scores the pixels up to rc (the same batch when rc = r); the per-particle
  // constants cancel in its posteriors, which only choose the significant poses.
  estep::ParticleBatch pbc = pb;
  if (mc != m) {
    w.x_coarse.resize(count * mc);
    w.ctf_coarse.resize(count * mc);
    for (size_t i = 0; i < count; ++i)
      for (size_t q = 0; q < mc; ++q) {
        w.x_coarse[i * mc + q] = w.b.x[i * m + it.coarse_q[q]];
        w.ctf_coarse[i * mc + q] = w.b.ctf[i * m + it.coarse_q[q]];
      }
    pbc.m = mc;
    pbc.x = w.x_coarse;
    pbc.x_sums = {};
    pbc.sums_weight = {};
    pbc.ctf = w.ctf_coarse;
    pbc.inv_sigma2 = it.inv_sigma2_coarse;
  }
  const estep::TranslationPhases tp{T, mc, it.phase};
  const estep::ReferenceSlices rs{J, mc, it.refs};
  estep::compute_scores(pbc, tp, rs, w.scores, pool_);
  const estep::ParticleConstants pc = estep::particle_constants(pb);
  std::vector<double> log_constant(count);
  for (size_t i = 0; i < count; ++i) log_constant[i] = -pc.half_x2[i] - pc.log_norm[i];
  estep::PosteriorOptions popt;
  popt.keep_significant = true;
  estep::LogPriors priors;
  priors.reference = it.log_prior_j;
  const std::vector<double> lpt = offset_log_prior(first, count, coarse_.trans);
  priors.translation = lpt;
  estep::compute_posteriors(w.scores, priors, log_constant, w.post, pool_, popt);
  for (size_t i = 0; i < count; ++i) {
    const float* wrow = w.post.weight.data() + i * T * J;
    posterior_sum_[first + i] = std::accumulate(wrow, wrow + T * J, 0.0);
  }
  // The pass whose weights make the M-step: the finer one, or the coarse one without oversampling.
  const FinalPass fp = opt_.oversampling > 0
                           ? finer_pass(first, count, it, pb, log_constant, w)
                           : FinalPass{&w.post.significant, &w.post.particle, tp, rs, {}};
  add_class_sums(pb, fp.tp, *fp.sw, fp.global_j, fine_, px, w.sums, sums.acc);
  if (it.split) {
    // The same sums over a fixed random half of the particles (seeded per particle), kept to split
    // the largest class in two when another class has emptied (maximise).
    estep::SparseWeights half = *fp.sw;
    for (size_t i = 0; i < count; ++i)
      if (!in_split_half(first + i))
        for (size_t e = half.offset[i]; e < half.offset[i + 1]; ++e) half.entry[e].weight = 0.0f;
    add_class_sums(pb, fp.tp, half, fp.global_j, fine_, px, w.sums, sums.acc_half);
  }
  estep::compute_particle_sums(pb, fp.tp, fp.refs, *fp.sw, w.psums, pool_);
  record_particles(first, count, it, fp, w, sums, rep, new_norm);
}

// The finer pass of a batch: the children of the significant coarse poses (w.post), their fine
// references projected for this batch only, scores and posteriors normalised over the children.
Job::FinalPass Job::finer_pass(size_t first, size_t count, const IterationData& it, const estep::ParticleBatch& pb,
                               std::span<const double> log_constant, BatchWork& w) {
  const FourierPixels& px = it.px;
  const size_t m = px.size(), Pf = fine_.psi.size();
  estep::PoseList poses = estep::oversampled_poses(w.post.significant, t_children_, j_children_);
  FinalPass fp;
  fp.global_j = estep::compact_references(poses);
  const size_t Jf = fp.global_j.size();
  w.fine_refs.resize(Jf * m);
  std::vector<Grid<cfloat>> out(size_t(pool_.size()));
  pool_.parallel_for(0, Jf, [&](size_t u, int thread) {
    Grid<cfloat>& o = out[size_t(thread)];
    it.proj[fp.global_j[u] / Pf].project_psi(fine_.psi[fp.global_j[u] % Pf], o);
    for (size_t q = 0; q < m; ++q) w.fine_refs[u * m + q] = o[px.index[q]];
  });
  fp.tp = estep::TranslationPhases{fine_.trans.size(), m, it.phase_fine};
  fp.refs = estep::ReferenceSlices{Jf, m, w.fine_refs};
  fine_flops_ += estep::compute_pose_scores(pb, fp.tp, fp.refs, poses, w.fine_scores, pool_);
  // Class priors spread over the children, so that log-likelihoods compare with the coarse pass.
  std::vector<double> lpj(Jf);
  const double log_children = std::log(double(t_children_ * j_children_));
  for (size_t u = 0; u < Jf; ++u) lpj[u] = std::log(st_.fraction[fp.global_j[u] / Pf]) - log_children;
  estep::LogPriors priors;
  priors.reference = lpj;
  const std::vector<double> lpt = offset_log_prior(first, count, fine_.trans);
  priors.translation = lpt;
  estep::PosteriorOptions popt;
  popt.keep_significant = true;
  estep::compute_pose_posteriors(poses, w.fine_scores, priors, log_constant, w.fine, pool_, popt);
  fp.sw = &w.fine.significant;
  fp.stats = &w.fine.particle;
  return fp;
}

// Per particle of a batch, from the final pass: noise and scale statistics, class and origin
// weights, and the written pose (best class, psi and origin on the fine grid).
void Job::record_particles(size_t first, size_t count, const IterationData& it, const FinalPass& fp,
                           const BatchWork& w, IterationSums& sums, IterationReport& rep,
                           std::vector<double>& new_norm) {
  const FourierPixels& px = it.px;
  const size_t m = px.size(), hs = size_t(n_ / 2 + 1), Pf = fine_.psi.size(), K = size_t(opt_.classes);
  const Batch& b = w.b;
  auto global = [&](uint32_t j) { return fp.global_j.empty() ? j : fp.global_j[j]; };
  // One particle's statistics are summed in double in a fixed order, then added exactly.
  std::vector<double> d2s(hs), cnt(hs), wk(K), share(hs);
  for (size_t i = 0; i < count; ++i) {
    const size_t p = first + i;
    const estep::ParticlePosterior& pp = (*fp.stats)[i];
    if (!pp.valid) continue;
    const size_t g = b.group[i];
    std::fill(wk.begin(), wk.end(), 0.0);
    double offset2 = 0, offset_w = 0;
    for (size_t e = fp.sw->offset[i]; e < fp.sw->offset[i + 1]; ++e) {
      const estep::PoseWeight& pw = fp.sw->entry[e];
      wk[global(pw.j) / Pf] += pw.weight;
      const auto [dx, dy] = origin_after(p, fine_.trans[pw.t]);
      offset2 += double(pw.weight) * (dx * dx + dy * dy);
      offset_w += double(pw.weight);
    }
    // The scale correction takes the shells where the class's SSNR exceeds 3 (RELION's
    // data_vs_prior_class); the products are summed over all classes, so each shell counts with
    // the share of the particle's posterior mass in classes that pass there.
    std::fill(share.begin(), share.end(), 0.0);
    const double wsum = w.psums.sum_weight[i];
    if (opt_.scale && st_.ssnr.size() == K && wsum > 0)
      for (size_t k = 0; k < K; ++k)
        if (wk[k] != 0)
          for (size_t s = 1; s < hs && s < st_.ssnr[k].size(); ++s)
            if (st_.ssnr[k][s] > 3) share[s] += wk[k] / wsum;
    const double* d2 = w.psums.diff2.data() + i * m;
    std::fill(d2s.begin(), d2s.end(), 0.0);
    std::fill(cnt.begin(), cnt.end(), 0.0);
    double xa = 0, aa = 0, xa_w = 0, aa_w = 0;
    const uint8_t* reach = it.reach.empty() ? nullptr : it.reach.data() + g * m;
    const float* inv_sigma2 = it.inv_sigma2.data() + g * m;
    for (size_t q = 0; q < m; ++q) {
      const size_t s = size_t(px.shell[q]);
      xa_w += w.psums.xa[i * m + q] * double(inv_sigma2[q]);
      aa_w += w.psums.aa[i * m + q] * double(inv_sigma2[q]);
      d2s[s] += d2[q];
      if (!reach || reach[q]) cnt[s] += wsum;
      if (share[s] != 0) {
        xa += share[s] * w.psums.xa[i * m + q];
        aa += share[s] * w.psums.aa[i * m + q];
      }
    }
    const std::vector<double>& counts = resampled(g) ? sampling_[g].counts : all_counts_;
    for (size_t s = size_t(it.r) + 1; s < hs; ++s) {
      d2s[s] += b.power[i * hs + s];
      cnt[s] += counts[s];
    }
    double total_d2 = 0;  // the norm correction's residual power (shells >= 1, as ml3d::add_particle)
    for (size_t s = 0; s < hs; ++s) {
      sums.wdiff2[g * hs + s].add(d2s[s]);
      sums.wcount[g * hs + s].add(cnt[s]);
      if (s >= 1) total_d2 += d2s[s];
    }
    // A resampled particle's residual over its own pixels: each reference pixel stands for `density`
    // of them, plus its power beyond the reference's Nyquist.
    if (opt_.norm)
      new_norm[p] = resampled(g) ? ml3d::norm_correction(st_.norm[p], st_.avg_norm,
                                                         sampling_[g].density * total_d2 + b.norm_extra[i], wsum,
                                                         sampling_[g].box)
                                 : ml3d::norm_correction(st_.norm[p], st_.avg_norm, total_d2, wsum, n_);
    // The products carry the group's current scale (in the CTF): divided out, as RELION.
    const double sc = double(b.scale[i]);
    if (aa > 0 && sc > 0) {
      sums.xa[size_t(groups_.group_of[p])].add(xa / sc);
      sums.aa[size_t(groups_.group_of[p])].add(aa / (sc * sc));
    }
    for (size_t k = 0; k < K; ++k)
      if (wk[k] != 0) sums.wclass[k].add(wk[k]);
    sums.stats[kOffset2].add(offset2);
    sums.stats[kOffsetW].add(offset_w);
    const uint32_t best = global(pp.best_j);
    rep.particle_class[p] = int(best / Pf) + 1;
    rep.psi[p] = fine_.psi[best % Pf];
    const auto [best_x, best_y] = origin_after(p, fine_.trans[pp.best_t]);
    rep.origin_x[p] = best_x;
    rep.origin_y[p] = best_y;
    rep.pmax[p] = pp.max_posterior;
    rep.n_significant[p] = int(w.post.particle[i].n_significant);  // of the coarse pass, as RELION
    rep.log_likelihood[p] = pp.log_likelihood;
    rep.signal_z[p] = aa_w > 0 && wsum > 0 ? xa_w / std::sqrt(aa_w * wsum) : 0.0;
    sums.stats[kLoglik].add(pp.log_likelihood);
    sums.stats[kPmax].add(pp.max_posterior);
  }
}

// The class average of accumulator `acc` with the prior of class k, masked and centred.
mstep::ClassAverage Job::class_average(const IterationData& it, const BackProjector& acc, size_t k) const {
  mstep::ClassAverageOptions co;
  co.r_max = it.r;
  co.tau2 = it.tau2[k];
  co.tau2_fudge = opt_.tau2_fudge;
  co.zero_tau2_unregularised = true;
  mstep::ClassAverage avg = mstep::reconstruct_class_2d(acc, co);
  Image& img = avg.image;
  if (opt_.flatten_solvent) apply_spherical_mask(img, mask_radius_, opt_.mask_edge, MaskFill::Zero);
  if (opt_.center_classes) {
    // Only a compact object is recentred: the positive centre of mass of a class that fills a side of
    // the mask (a carbon edge: 0.42 R off centre for a half-plane) says nothing about a particle's
    // centre, and moving such a class every iteration spreads it over the particle classes.
    auto c = mstep::positive_centre_of_mass(img, mask_radius_);
    if ((c[0] != 0 || c[1] != 0) && std::hypot(c[0], c[1]) <= kMaxCentring * mask_radius_)
      mstep::shift_image(img, -c[0], -c[1]);
  }
  return avg;
}

// M-step: class averages; in the first iterations an (almost) empty class, or one of two classes
// showing the same view, takes half of the largest class (wclass is updated for that).
std::vector<mstep::ClassAverage> Job::maximise(const IterationData& it, const std::vector<BackProjector>& acc,
                                               const std::vector<BackProjector>& acc_half,
                                               std::vector<double>& wclass) {
  const size_t K = size_t(opt_.classes);
  std::vector<mstep::ClassAverage> avg(K);
  pool_.parallel_for(0, K, [&](size_t k, int) { avg[k] = class_average(it, acc[k], k); });
  const double wtot = std::accumulate(wclass.begin(), wclass.end(), 0.0);
  if (!it.split || !(wtot > 0)) return avg;
  // The smallest class below --reseed_empty of the mean fraction takes the average of a random half
  // of the largest class's particles, the largest keeps the other half; both share its fraction.
  size_t small = size_t(std::min_element(wclass.begin(), wclass.end()) - wclass.begin());
  const size_t large = size_t(std::max_element(wclass.begin(), wclass.end()) - wclass.begin());
  bool reseed = wclass[small] / wtot < opt_.reseed_empty / double(K);
  if (!reseed && st_.iteration + 1 >= 3) {
    // Two classes showing the same view: their rotational correlation (up to 15 shells) is above
    // 0.85 and stands out from all other pairs by 0.15 (on the benchmark 0.97 against at most 0.67;
    // simple shapes that all correlate highly do not qualify). The smaller of the two is freed for
    // the split; its particles go to its twin in the next E-step.
    double best = -1, second = -1;
    size_t cand = small;
    for (size_t a = 0; a < K; ++a)
      for (size_t b = a + 1; b < K; ++b) {
        const double c =
            mstep::rotational_correlation(avg[a].image, avg[b].image, coarse_.psi, std::min(it.r, 15));
        if (c > best) {
          second = best;
          best = c;
          cand = wclass[a] < wclass[b] ? a : b;
        } else if (c > second) {
          second = c;
        }
      }
    if (best > 0.85 && best - second >= 0.15 && cand != large) {
      small = cand;
      reseed = true;
      spdlog::info("class2d: class {} duplicates another class (correlation {:.2f}, next pair {:.2f})", small + 1,
                   best, second);
    }
  }
  if (small != large && reseed) {
    BackProjector rest = acc[large];
    rest.add(acc_half[large], -1.0f);
    avg[small] = class_average(it, acc_half[large], large);
    avg[large] = class_average(it, rest, large);
    wclass[large] = wclass[small] = 0.5 * wclass[large];
    spdlog::info("class2d: class {} takes half of class {} (the largest)", small + 1, large + 1);
  }
  return avg;
}

// Starts the exact class sums of an iteration, with quanta from bounds on what any lattice point
// can reach: every particle adds at most s C X / sigma2 (data; |X(k)| <= the L1 norm of the masked
// image) and s^2 C^2 / sigma2 (weight) per pose, its pose weights sum to 1, and one rotated image
// reaches a lattice point from at most 4 pixels; a further factor 4 covers images whose norm grew
// since the bounds were measured (they are updated after every E-step).
void Job::start_exact_sums(const IterationData& it, IterationSums& sums) const {
  const size_t K = size_t(opt_.classes), G = size_t(optics_), hs = size_t(n_ / 2 + 1);
  sums.acc.assign(K, mstep::class_accumulator(n_, it.r));
  sums.acc_half.assign(it.split ? K : 0, mstep::class_accumulator(n_, it.r));
  double inv_s2 = 0, smax = 1, fmax = 1;
  for (float v : it.inv_sigma2) inv_s2 = std::max(inv_s2, double(v));
  for (size_t p = 0; p < table_.size(); ++p) {
    smax = std::max(smax, group_scale(p));
    fmax = std::max(fmax, norm_factor(p));
  }
  const double np = double(table_.size()) + 1, c = std::max(st_.ctf_max, 1.0);
  const double data = 16 * np * smax * std::max(inv_s2, 1e-30) * std::max(st_.x_bound, 1e-30) * fmax;
  const double weight = 16 * np * smax * smax * std::max(inv_s2, 1e-30) * c * c;
  // One thread at a time inserts into a class's sums (add_class_sums splits the classes).
  for (auto* accs : {&sums.acc, &sums.acc_half})
    for (BackProjector& a : *accs) a.start_exact(data, weight, /*shared=*/false);
  sums.shells = hs;
  sums.wdiff2.resize(G * hs);
  sums.wcount.resize(G * hs);
  sums.wclass.resize(K);
  sums.xa.resize(groups_.names.size());
  sums.aa.resize(groups_.names.size());
  sums.stats.resize(kStats);
}

// The E-step over all particles, in batches of --batch particles in index order: batch b runs on MPI
// rank b mod size (any number of ranks up to the number of batches has work), its particles split
// over the threads inside the kernels. The sums are exact (IterationSums), so the result does not
// depend on --j nor on the number of ranks; per-particle results are filled by their owner and
// summed with zeros from the other ranks.
IterationSums Job::expectation(const IterationData& it, IterationReport& rep, std::vector<double>& new_norm) {
  const size_t N = table_.size(), B = size_t(opt_.batch_size), nbatch = (N + B - 1) / B;
  double mine = 0;
  for (size_t bi = 0; bi < nbatch; ++bi)
    if (owns_batch(bi)) mine += double(std::min(N, (bi + 1) * B) - bi * B);
  IterationSums sums;
  start_exact_sums(it, sums);
  Progress prog(fmt::format("iteration {}/{}", st_.iteration + 1, opt_.iterations), mine);
  BatchWork work;
  double ctf_max = 0, x_bound = 0;  // of the images read by this rank
  for (size_t bi = 0; bi < nbatch; ++bi) {
    if (!owns_batch(bi)) continue;
    const size_t first = bi * B, count = std::min(B, N - first);
    process_batch(first, count, it, work, sums, rep, new_norm);
    raise_bounds(work.b, ctf_max, x_bound);
    prog.advance(double(count));
  }
  prog.finish();
  if (mpi::active()) {
    for (auto* accs : {&sums.acc, &sums.acc_half})
      for (BackProjector& a : *accs) {
        std::span<int64_t> e = a.exact_sums();
        mpi::allreduce_sum(e.data(), e.size());
      }
    ml3d::reduce_over_ranks({&sums.wdiff2, &sums.wcount, &sums.wclass, &sums.xa, &sums.aa, &sums.stats});
    // Per-particle results: the owner's values, zeros elsewhere, summed.
    auto owner_only = [&](auto& v) {
      for (size_t p = 0; p < N; ++p)
        if (!owns_batch(p / B)) v[p] = 0;
    };
    for (auto* v : {&rep.psi, &rep.origin_x, &rep.origin_y, &rep.pmax, &rep.log_likelihood, &rep.signal_z,
                    &new_norm, &posterior_sum_}) {
      owner_only(*v);
      mpi::allreduce_sum(v->data(), N);
    }
    for (auto* v : {&rep.particle_class, &rep.n_significant}) {
      std::vector<int64_t> t(v->begin(), v->end());
      owner_only(t);
      mpi::allreduce_sum(t.data(), N);
      std::copy(t.begin(), t.end(), v->begin());
    }
    // Largest bounds over the ranks (each rank's at its own slot).
    std::vector<double> c(size_t(mpi::size()) * 2, 0.0);
    c[size_t(mpi::rank()) * 2] = ctf_max;
    c[size_t(mpi::rank()) * 2 + 1] = x_bound;
    mpi::allreduce_sum(c.data(), c.size());
    for (size_t r = 0; r < size_t(mpi::size()); ++r) {
      ctf_max = std::max(ctf_max, c[2 * r]);
      x_bound = std::max(x_bound, c[2 * r + 1]);
    }
  }
  for (auto* accs : {&sums.acc, &sums.acc_half})
    for (BackProjector& a : *accs) a.finish_exact();
  st_.ctf_max = std::max(st_.ctf_max, ctf_max);
  st_.x_bound = std::max(st_.x_bound, x_bound);
  return sums;
}

IterationReport Job::iterate() {
  const size_t N = table_.size(), K = size_t(opt_.classes);
  const size_t hs = size_t(n_ / 2 + 1);
  const IterationData it = prepare_iteration();
  IterationReport rep;
  rep.used_shells = it.r;
  rep.coarse_shells = it.rc;
  rep.particle_class.assign(N, 0);
  rep.psi.assign(N, 0.0);
  rep.origin_x = st_.origin_x;
  rep.origin_y = st_.origin_y;
  rep.pmax.assign(N, 0.0);
  rep.log_likelihood.assign(N, 0.0);
  rep.signal_z.assign(N, 0.0);
  rep.n_significant.assign(N, 0);
  posterior_sum_.assign(N, 0.0);
  std::vector<double> new_norm = st_.norm;  // particles without a finite likelihood keep theirs
  fine_flops_ = 0;
  IterationSums total = expectation(it, rep, new_norm);
  const std::vector<double> stats = total.stats.values(), d2 = total.wdiff2.values(), cnt = total.wcount.values();
  std::vector<double> wclass = total.wclass.values();
  rep.log_likelihood_sum = stats[kLoglik];
  rep.average_pmax = stats[kPmax] / double(N);

  // M-step: class averages, fractions, SSNR, resolution, noise, scales, next frequency limit.
  std::vector<mstep::ClassAverage> avg = maximise(it, total.acc, total.acc_half, wclass);
  const double wtot = std::accumulate(wclass.begin(), wclass.end(), 0.0);
  int r_best = 0;
  rep.ssnr.resize(K);
  rep.tau2 = it.tau2;
  rep.class_resolution_A.resize(K);
  for (size_t k = 0; k < K; ++k) {
    st_.classes[k] = std::move(avg[k].image);
    st_.fraction[k] = wtot > 0 ? wclass[k] / wtot : 1.0 / double(K);
    rep.ssnr[k] = avg[k].ssnr;
    int rk = resolution_shell(avg[k].ssnr);
    rep.class_resolution_A[k] = shell_to_A(rk);
    if (st_.fraction[k] > 0) r_best = std::max(r_best, rk);
  }
  rep.resolution_A = shell_to_A(r_best);
  for (size_t g = 0; g < size_t(optics_); ++g)
    for (size_t s = 1; s < hs; ++s)
      if (cnt[g * hs + s] > 0) st_.sigma2[g][s] = d2[g * hs + s] / (2 * cnt[g * hs + s]);
  if (opt_.norm) {
    st_.norm = std::move(new_norm);
    st_.avg_norm = ml3d::average(st_.norm);
    const size_t high = size_t(std::count_if(st_.norm.begin(), st_.norm.end(), [](double v) { return v > 10; }));
    if (high > 0)
      spdlog::warn("class2d: {} particles have a norm correction above 10 (RELION warns of the same: are the "
                   "particle groups large enough, are the images normalised?)", high);
  }
  if (opt_.scale)
    st_.group_scale = mstep::group_scales(total.xa.values(), total.aa.values(), groups_.count, st_.group_scale);
  st_.ssnr = rep.ssnr;
  // Origins: the best pose's (the next search is centred there); the prior's variance from the
  // posterior-weighted squared origins (2 dimensions), at least 2 Å^2 (RELION's floor).
  st_.origin_x = rep.origin_x;
  st_.origin_y = rep.origin_y;
  if (stats[kOffsetW] > 0) st_.sigma2_offset = std::max(2.0, stats[kOffset2] / (2 * stats[kOffsetW]));
  st_.current_shells = std::clamp(r_best + opt_.incr_size, r_ini_, n_ / 2 - 1);
  st_.iteration += 1;
  return rep;
}

Class2DResult Job::run() {
  set_blas_single_threaded();
  const bool cont = !opt_.continue_from.empty();
  if (cont) class2d_detail::read_checkpoint(opt_.continue_from, opt_, input_star_, st_, 0);
  if (cont && !opt_.reference.empty()) {  // as the other options of the run: the checkpoint's classes
    spdlog::info("class2d: --continue goes on from the checkpoint's classes; --ref {} (the first iteration's) is not read",
                 opt_.reference);
    opt_.reference.clear();
  }
  if (!opt_.reference.empty()) {
    const mrc::Header h = mrc::read_header(opt_.reference);
    const bool mrcs = opt_.reference.size() > 5 && opt_.reference.compare(opt_.reference.size() - 5, 5, ".mrcs") == 0;
    if (h.is_volume() && !mrcs)
      input_error("--ref {}: a 3D map ({}x{}x{}, space group {}), not a stack of 2D references (name it .mrcs if "
                  "it is one)", opt_.reference, h.size_x(), h.size_y(), h.size_z(), h.ispg);
    const int count = h.size_z();
    if (opt_.classes == 0) opt_.classes = count;
    if (opt_.classes != count)
      input_error("--K {}: {} holds {} reference images (one class each)", opt_.classes, opt_.reference, count);
  }
  std::string msg = opt_.validate();
  if (!msg.empty()) throw InputError(cont ? opt_.continue_from + ": " + msg : msg);
  if (!cont) input_star_ = std::filesystem::absolute(opt_.input).lexically_normal().string();
  setup();
  if (cont && st_.origin_x.empty()) {  // a checkpoint from before origins were carried
    st_.origin_x = input_origin_x_;
    st_.origin_y = input_origin_y_;
    st_.sigma2_offset = opt_.offset_sigma * opt_.offset_sigma;
  }
  if (cont) {
    if (st_.group_scale.empty()) st_.group_scale.assign(groups_.names.size(), 1.0);  // a checkpoint of before version 4
    if (st_.group_scale.size() != groups_.names.size())
      input_error("{}: the checkpoint has {} particle groups, {} has {}", opt_.continue_from, st_.group_scale.size(),
                  input_star_, groups_.names.size());
    if (st_.n != n_ || st_.norm.size() != table_.size() || st_.origin_x.size() != table_.size() || st_.sigma2.size() != size_t(optics_) ||
        st_.classes.size() != size_t(opt_.classes))
      input_error("{}: the checkpoint (box {}, {} particles, {} groups, {} classes) does not match {} "
                  "(box {}, {} particles, {} groups)",
                  opt_.continue_from, st_.n, st_.norm.size(), st_.sigma2.size(), st_.classes.size(), input_star_, n_,
                  table_.size(), optics_);
  }
  if (cont && st_.x_bound == 0) {  // a checkpoint of before the bounds of the exact sums were kept
    const FourierPixels px = mstep::select_fourier_pixels(n_, st_.current_shells);
    Batch b;
    for (size_t first = 0; first < table_.size(); first += size_t(opt_.batch_size)) {
      load_batch(first, std::min(size_t(opt_.batch_size), table_.size() - first), px, b);
      raise_bounds(b, st_.ctf_max, st_.x_bound);
    }
  }
  std::filesystem::path root_dir = std::filesystem::path(opt_.out_root).parent_path();
  if (!root_dir.empty()) std::filesystem::create_directories(root_dir);

  Class2DResult res;
  class2d_detail::Files files;
  if (!cont) {
    initialise();
    IterationReport rep0;
    rep0.used_shells = r_ini_;
    rep0.resolution_A = shell_to_A(r_ini_);
    files = class2d_detail::write_iteration(opt_, input_star_, table_, groups_, angpix_, st_, rep0);
  }
  spdlog::info("class2d: {} particles, box {} px, {:.3f} Å/px, K = {}, {} psi x {} translations (fine pass: {} x {}), "
               "mask radius {:.1f} px",
               table_.size(), n_, angpix_, opt_.classes, coarse_.psi.size(), coarse_.trans.size(), fine_.psi.size(),
               fine_.trans.size(), mask_radius_);
  IterationReport rep;
  while (st_.iteration < opt_.iterations) {
    check_cancelled();
    auto t0 = std::chrono::steady_clock::now();
    const int r = st_.current_shells;
    rep = iterate();
    files = class2d_detail::write_iteration(opt_, input_star_, table_, groups_, angpix_, st_, rep);
    Class2DIterationStats s;
    s.iteration = st_.iteration;
    s.resolution_A = rep.resolution_A;
    s.current_shells = r;
    s.log_likelihood = rep.log_likelihood_sum;
    s.average_pmax = rep.average_pmax;
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.estep_flops = estep::score_flops(table_.size(), coarse_.trans.size(), coarse_.psi.size() * size_t(opt_.classes),
                                       mstep::select_fourier_pixels(n_, rep.coarse_shells).size());
    s.fine_flops = fine_flops_;
    res.stats.push_back(s);
    spdlog::info("class2d: iteration {}: limit {} shells ({:.1f} Å), resolution {:.1f} Å, <Pmax> {:.3f}, {:.1f} s",
                 s.iteration, r, shell_to_A(r), s.resolution_A, s.average_pmax, s.seconds);
  }
  res.last_iteration = st_.iteration;
  res.classes = st_.classes;
  res.class_fraction = st_.fraction;
  res.particle_class = rep.particle_class;
  res.particle_psi = rep.psi;
  res.particle_origin_x = rep.origin_x;
  res.particle_origin_y = rep.origin_y;
  res.posterior_sum = posterior_sum_;
  res.data_star = files.data;
  res.model_star = files.model;
  res.optimiser_star = files.optimiser;
  res.classes_mrcs = files.classes;
  res.gallery_png = files.png;
  return res;
}

}  // namespace

Class2DResult run_class2d(const Class2DOptions& opt) {
  Job job(opt);
  return job.run();
}

}  // namespace regula

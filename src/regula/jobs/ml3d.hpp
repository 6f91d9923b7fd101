// What the 3D jobs (refine3d, class3d, initial_model) share around the E-step of estep/search3d.hpp:
// the reference reader, the routing of weighted slices into back-projectors, the fixed work units
// over threads and MPI ranks, and the exact sums of the M-step's inputs.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "regula/core/exact_sum.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/estep/search3d.hpp"
#include "regula/model/particles.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula::ml3d {

// The --ref map of a 3D job, checked before it is read: a 3D map of the particles' box (n px), and
// of their pixel size when its header gives one (within 0.1%; relion_refine too stops with "The
// reference pixel size is ..."); a header without one is taken at the particles' pixel size.
// Input errors name the file and both values.
Volume read_reference(const std::string& path, double angpix, int n);

// --solvent_mask of a 3D job: an n^3 map of values in [0, 1] (input errors name the file and what is
// wrong). The jobs multiply their references by it (instead of --flatten_solvent's sphere).
Volume read_solvent_mask(const std::string& path, int n);

// Memory for the slices an iteration's particles share (estep::SliceCache: local windows' coarse
// slices, global searches' fine ones), per search setup; beyond it slices are projected per
// particle (logged). Grids of more entries than kSharedSliceEntries get no cache (its index alone
// would take 9 bytes per entry).
inline constexpr size_t kSharedSliceBytes = size_t(512) << 20;
inline constexpr size_t kSharedSliceEntries = size_t(1) << 22;

// The cache of a global search's fine poses (null when the grid is too large): P in-plane angles,
// D directions (all classes), oversampling o.
std::unique_ptr<estep::SliceCache> global_fine_cache(size_t P, size_t D, int oversampling,
                                                     const estep::SearchPixels& px, size_t max_bytes);
// At the end of an iteration: logs "`what` exceeded max_bytes MB" when the cache bound, then frees it.
void release_slice_cache(std::unique_ptr<estep::SliceCache>& cache, std::string_view what, size_t max_bytes);

// Particle i's model for the E-step (imaging/optics_model.hpp's engine_optics; nullopt without --ctf).
inline std::optional<ParticleOptics> particle_optics(const OpticsModel& model, size_t i, bool ctf) {
  if (!ctf) return std::nullopt;
  return model.particle(i);
}

// Group g's list of pixels mapped to the reference frame (FinePixels::ref, Search3DInput::ref_fine /
// ref_sums), or nullptr when its mapping is the identity (empty).
inline const estep::SearchPixels* group_pixels(const std::vector<estep::SearchPixels>& ref, int g) {
  return size_t(g) < ref.size() && ref[size_t(g)].size() > 0 ? &ref[size_t(g)] : nullptr;
}

// Optics groups of different pixel and box sizes: the reference has the first group's box N and
// pixel size P, group g's images n_g px of p_g Å, so one reference pixel is r_g = P / p_g pixels of
// group g's images, and one image Fourier pixel is f_g = (N P) / (n_g p_g) reference Fourier pixels
// (T_g = M_g f_g maps their frequencies to the reference's, imaging/optics_model.hpp). RELION 3.1
// samples translations in Å and converts them per optics group; so does PixelScale: the jobs keep
// their translation grid, step and offset prior in reference pixels and each particle searches them
// in its own pixels (group_setups), its origin and mask in its own pixels and box too.
struct PixelScale {
  double ref_pixel = 0;         // P, Å
  int ref_box = 0;              // N, px
  std::vector<double> ratio;    // r_g = P / p_g per optics group
  std::vector<int> box;         // n_g per optics group
  const ParticleTable* table = nullptr;
  PixelScale() = default;
  // From the engine's optics model (its reference and each group's box and pixel size).
  PixelScale(const ParticleTable& t, const OpticsModel& model);
  double of(size_t particle) const { return ratio[size_t(table->optics_index[particle])]; }
  double pixel(size_t particle) const { return ref_pixel / of(particle); }  // p_g, Å
  int box_of(size_t particle) const { return box[size_t(table->optics_index[particle])]; }
  // f_g: reference Fourier pixels per image Fourier pixel of group g.
  double frequency(size_t g) const { return ratio[g] * double(ref_box) / double(box[g]); }
  bool uniform() const;          // every group at the reference's box and pixel size
  int max_box() const;           // the largest n_g
  // Shells per optics group in the noise sums (ModelSums, add_particle): the largest box's n/2 + 1.
  size_t noise_stride() const { return size_t(max_box() / 2 + 1); }
};
// The fine pass's pixels of each optics group: image shells up to the E-step's limit r (in reference
// shells) at the group's own sampling, round(r / f_g), at most n_g/2 (RELION 3.1 sizes each optics
// group's images from the current resolution in Å); mapped to the reference frame (T_g k) where T_g is
// not the identity; and their number per shell (0..n_g/2), which the noise sums take.
struct FinePixels {
  std::vector<estep::SearchPixels> px;      // per optics group, image frame
  std::vector<estep::SearchPixels> ref;     // per optics group, T_g k (empty for the identity)
  std::vector<std::vector<double>> counts;  // per optics group
};
FinePixels fine_pixels(int r, const PixelScale& scale, const OpticsModel& model);
// Every pixel of each group's box (shells 1..n_g/2; the final iteration's sums), mapped likewise.
FinePixels all_pixels(const PixelScale& scale, const OpticsModel& model);
// Logs the pixel and box size of each optics group and the reference's (once, at setup).
void log_pixel_sizes(std::string_view command, const PixelScale& scale);
// The setup of each optics group: S with its translations and step times r_g, its offset prior
// (px^2) times r_g^2, and its scale shells (reference shells) indexed by the group's image shells
// (a copy of S for each group; the pointers are shared).
std::vector<estep::Search3DSetup> group_setups(const estep::Search3DSetup& S, const PixelScale& scale);

// How the 3D jobs mask their references: times the --solvent_mask when there is one (non-empty),
// else with --flatten_solvent a sphere of radius_px (soft edge edge_px, zeros outside), else not.
void mask_reference(Volume& map, const Volume& solvent_mask, bool flatten_solvent, double radius_px, double edge_px);

// How the 3D jobs mask a particle image: a soft circle of radius_px (edge edge_px) about the
// particle's current position, the solvent zeros (zero_mask) or noise of the current spectrum drawn
// from (seed, particle) (imaging/mask.hpp's apply_particle_mask).
struct ParticleMasking {
  int n = 0;
  double radius_px = 0, edge_px = 0;
  bool zero_mask = false;
  uint64_t seed = 0;
};
// Particle i as the E-step sees it: read (an input error unless n x n), times `norm_factor`, and
// unless `unmasked`, masked about the box centre moved by -origin (origin_px: the current
// rlnOriginX/Y in pixels; the particle sits there, so an off-centre particle is not cut; as RELION,
// which masks after undoing the current offset). noise_sigma2: the solvent's spectrum (nullptr
// before there is one: the mean outside the mask).
Image read_particle(ParticleImages& images, const ParticleTable& table, size_t i, const ParticleMasking& m,
                    double norm_factor, std::array<double, 2> origin_px, const std::vector<double>* noise_sigma2,
                    bool unmasked = false);
// The masking of read_particle, on an image read unmasked: particle i's soft circle about the box
// centre moved by -origin_px. The jobs keep the unmasked image too: it is what they back-project
// (RELION's Fimg_nomask), while the masked one is scored.
void mask_particle(Image& img, const ParticleMasking& m, size_t i, std::array<double, 2> origin_px,
                   const std::vector<double>* noise_sigma2);

// The two images of particle i the 3D E-step takes, from the image read unmasked (`raw`): `x`, masked
// as mask_particle, is scored; `x_sums` is back-projected: RELION back-projects the unmasked image,
// because the CTF moves the signal of high frequencies far beyond the particle mask; Regula masks
// it band by band with the particle mask widened by that reach (imaging/mask.hpp's
// apply_reach_mask, up to shell r_max_sums), which keeps the signal RELION keeps without the noise
// of the rest of the box. inv_sigma2_sums: the weights of its sums per shell, inv_sigma2 / (the share
// of the box's noise x_sums keeps): RELION's weight for an unmasked image, and more for a masked one
// in proportion to the noise it sheds.
struct ParticleViews {
  estep::RotatableParticle x, x_sums;
  std::vector<float> inv_sigma2_sums;
};
ParticleViews particle_views(const Image& raw, const ParticleMasking& m, size_t i, std::array<double, 2> origin_px,
                             const std::vector<double>* noise_sigma2, const std::optional<ParticleOptics>& optics,
                             std::span<const float> inv_sigma2, int r_max_sums);

// Routes the E-step's weighted slices of class c into back-projector c (nullptr: dropped).
class SliceRouter : public estep::SliceSink {
 public:
  explicit SliceRouter(std::vector<BackProjector*> bp) : bp_(std::move(bp)) {}
  void insert(int cls, std::span<const float> kx, std::span<const float> ky, const float* data, const float* weight,
              const Mat3& A) override {
    if (BackProjector* b = bp_[size_t(cls)]) b->insert_pixels(kx, ky, data, weight, A);
  }
  void insert_many(int cls, std::span<const float> kx, std::span<const float> ky, const float* data,
                   const float* weight, std::span<const Mat3> A) override {
    if (BackProjector* b = bp_[size_t(cls)]) b->insert_slices(kx, ky, data, weight, A);
  }

 private:
  std::vector<BackProjector*> bp_;
};

// The work units of an iteration: blocks of `block` particles in index order; block b belongs to
// MPI rank b mod size. Threads take whole blocks of their rank. Every sum of the iteration is exact
// (ExactSum, BackProjector::start_exact), so the split never changes a bit of the results.
struct Blocks {
  Blocks(size_t n_particles, size_t block);
  size_t n = 0, block = 1;
  std::vector<size_t> mine;  // this rank's blocks
  double my_particles = 0;
  size_t begin(size_t b) const { return b * block; }
  size_t end(size_t b) const { return std::min(n, (b + 1) * block); }
};

// The exact sums of one set of particles (a half set, or all) that the M-step needs.
struct ModelSums {
  ExactSums d2, npix;  // noise: [optics group * stride + shell]: sum_w |X - s C P|^2, sum_w pixels
  ExactSums xa, aa;    // scale correction per group: sum_w C Re(conj(X) P), sum_w C^2 |P|^2
  ExactSums cls;       // posterior mass per class
  void init(size_t optics, size_t shells, size_t groups, size_t classes);
  void merge(const ModelSums& o);
  std::vector<ExactSums*> all() { return {&d2, &npix, &xa, &aa, &cls}; }
};

// Adds one particle's posterior-weighted sums: the residuals at the E-step's pixels (fine_counts
// pixels per shell of its optics group's box, up to r_fine), the particle's own power beyond them (no
// signal there), the scale products and the class masses. The noise sums hold `stride` shells per
// optics group (the largest box's n/2 + 1). Returns sum_s of the residuals (for the norm correction).
double add_particle(ModelSums& sums, const estep::Search3DResult& res, const estep::RotatableParticle& x, int optics,
                    int group, const std::vector<double>& fine_counts, const std::vector<double>& all_counts, int r_fine,
                    size_t stride);

// RELION's norm correction of a particle (rlnNormCorrection) from its weighted residual power over
// the whole image (total_d2, our unnormalised FFT of an n x n image; weight_sum its posterior mass):
// old / avg * sqrt(2 * total / weight) / n^2, i.e. the residual's standard deviation per pixel.
double norm_correction(double old_norm, double avg_norm, double total_d2, double weight_sum, int n);

// Sums every ExactSums over the MPI ranks (exact, so the same bits on every rank and for any
// number of ranks). No-op without mpirun.
void reduce_over_ranks(const std::vector<ExactSums*>& sums);

// Pixels per shell 0..n/2 of the non-redundant half plane (kx > 0, or kx == 0 and ky > 0).
std::vector<double> shell_pixel_counts(int n);
// The same for each optics group's box.
std::vector<std::vector<double>> shell_pixel_counts(const PixelScale& scale);
// Whether noise spectra (one per optics group, a checkpoint's) have each group's n_g/2 + 1 shells.
bool spectra_fit(const std::vector<std::vector<double>>& sigma2, const PixelScale& scale);

// The per-particle values a 3D job carries from iteration to iteration and writes in its data.star:
// pose (degrees), origin (Å), RELION's norm correction, and the last E-step's Pmax, log-likelihood
// contribution and number of significant poses. All doubles, so that an iteration's new values can
// be summed over MPI ranks (every particle is set on the one rank that searched it, 0 elsewhere).
struct ParticleValues {
  std::vector<double> rot, tilt, psi, ox, oy, norm, pmax, loglik, nsig;

  // The input's poses and origins, rlnNormCorrection where present and positive (RELION keeps it),
  // else 1; Pmax, log-likelihood and significant count 0.
  static ParticleValues from_table(const ParticleTable& table);
  std::array<std::vector<double>*, 9> columns();  // no allocation: copy() runs once per particle
  std::array<const std::vector<double>*, 9> columns() const;
  size_t size() const { return rot.size(); }
  void assign(size_t n);                              // n particles, all values 0
  void copy(size_t i, const ParticleValues& from);    // particle i's values from `from`
  // Particle i after its E-step: the result's pose, the origin moved by its shift (px -> Å at
  // `angpix`) from `prev`'s, its Pmax, log-likelihood and significant count (norm: left as is).
  void take(size_t i, const ParticleValues& prev, const estep::Search3DResult& res, double angpix);
  void sum_over_ranks();                             // MPI: every rank gets every particle's values
  double average_norm() const;
  // Into a particle table to be written: set_poses the pose and origin vectors (before
  // ParticleTable::sync), write_columns the block's rlnMaxValueProbDistribution,
  // rlnNrOfSignificantSamples, rlnLogLikeliContribution and rlnNormCorrection (after it).
  void set_poses(ParticleTable& out) const;
  void write_columns(star::Block& particles) const;
  std::vector<int> nsig_int() const;
};

// Particle i's current origin (rlnOriginX/YAngst) in its own pixels (PixelScale).
inline std::array<double, 2> origin_px(const ParticleValues& p, const PixelScale& scale, size_t i) {
  const double a = scale.pixel(i);
  return {p.ox[i] / a, p.oy[i] / a};
}
// The masking `m` (radius in reference pixels) for particle i: its box, the radius in its own pixels.
inline ParticleMasking particle_masking(ParticleMasking m, const PixelScale& scale, size_t i) {
  m.n = scale.box_of(i);
  m.radius_px = std::min(m.radius_px * scale.of(i), m.n / 2.0);
  return m;
}

// rlnNormCorrection of every particle where present, positive and finite (RELION keeps it), else 1.
std::vector<double> input_norms(const ParticleTable& table);
// The mean of v (1 when empty): the average norm correction.
double average(const std::vector<double>& v);

// RELION's particle groups: by rlnGroupName when present, else by micrograph (rlnMicrographName),
// else one group. group_of[i] is 0-based; names in order of first appearance.
struct Groups {
  std::vector<int> group_of;
  std::vector<std::string> names;
  std::vector<double> count;  // particles per group
};
Groups particle_groups(const ParticleTable& table);

// RELION's random perturbation of the sampling grids (--perturb f; HealpixSampling's
// resetRandomlyPerturbedSampling): a fraction r in [-f, f] that moves on by U(f/2, f) every
// iteration (wrapped), from 0 before the first; drawn from the seed, the same on every rank.
// Every orientation A of an iteration's search becomes A P(r step), P(a) = the Euler matrix of
// (a, a, a) degrees for the coarse angular step `step`, and every translation moves by r times the
// coarse offset step along x and y.
struct Perturbation {
  double fraction = 0;      // r
  Mat3 rotation = identity3();
  double shift_px = 0;      // r x offset step
  // A translation grid (px) moved by shift_px along x and y.
  std::vector<std::array<double, 2>> shifted(std::vector<std::array<double, 2>> trans) const {
    for (auto& t : trans) t = {t[0] + shift_px, t[1] + shift_px};
    return trans;
  }
};
Perturbation sampling_perturbation(uint64_t seed, int iteration, double factor, double angular_step_deg,
                                   double offset_step_px);
// The global search's slices (rot, tilt, 0) as the perturbed orientations they stand for.
std::vector<Euler> perturbed_directions(std::span<const std::array<double, 2>> rot_tilt, const Mat3& P);

}  // namespace regula::ml3d

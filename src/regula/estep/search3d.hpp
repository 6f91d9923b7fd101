// The E-step of one particle in the 3D jobs (refine3d, class3d, initial_model): RELION's two passes
// of adaptive oversampling over (class, direction, in-plane angle, translation), and the
// posterior-weighted sums the M-step needs (docs/estep.md#the-3d-e-step).
//
//  1. Coarse pass, separable in direction and in-plane angle (pose_search.hpp: D slices x P rotated
//     particles, two SGEMMs): the posterior over every coarse pose (p, t, d) of the search (global:
//     the asymmetric unit; local: a window of 3 sigma around the previous pose with RELION's
//     Gaussian angular prior).
//  2. The significant coarse poses: the smallest set of joint poses (p, t, d) holding
//     `adaptive_fraction` of the coarse posterior mass (at most `max_significants` when > 0: then
//     the result says the bound was reached, as the job logs).
//  3. Fine pass in the particle's own frame (references rotated, data never resampled): the
//     children of exactly those poses on the grid 2^oversampling finer (HEALPix order + o, psi step
//     / 2^o, translation step / 2^o per axis), scored with one SGEMM per block of orientations
//     (the product of the distinct fine translations and fine orientations; pairs whose parents
//     are not a significant coarse pose are excluded). The posterior is normalised over these fine
//     poses (RELION's pass-2 weights).
//  4. The significant fine poses (fraction of the fine mass, RELION's exp_significant_weight) carry
//     their weights (normalised over all fine poses) into the M-step sums: the weighted slices per
//     orientation into the SliceSink (the back-projectors), the noise residuals
//     sum_w |X^t - s C P|^2 per shell, the scale products X.A and A.A, the offsets' second moment,
//     and the posterior-mean (or best) pose.
//
// Units: frequencies in Fourier pixels of the box n; translations in pixels (content moved by +t);
// angles in degrees. Residuals are in the units of |X|^2 of the unnormalised transform.
#pragma once
#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "regula/estep/pose_search.hpp"
#include "regula/estep/significance.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula::estep {

// Receives the weighted sums of one orientation: data (interleaved complex, m values) and weight
// (m values) at the pixels (kx, ky) of the pass, to be inserted at orientation A into class `cls`.
class SliceSink {
 public:
  virtual ~SliceSink() = default;
  virtual void insert(int cls, std::span<const float> kx, std::span<const float> ky, const float* data,
                      const float* weight, const Mat3& A) = 0;
  // J slices of one class at once (data: J rows of 2m floats, weight: J rows of m); by default one
  // insert() each.
  virtual void insert_many(int cls, std::span<const float> kx, std::span<const float> ky, const float* data,
                           const float* weight, std::span<const Mat3> A) {
    const size_t m = kx.size();
    for (size_t j = 0; j < A.size(); ++j) insert(cls, kx, ky, data + j * 2 * m, weight + j * m, A[j]);
  }
};

// Slices of orientations on a grid shared by all particles of an iteration, projected by the first
// particle that needs one and then copied by every other (a slice is the same whoever makes it, so
// results do not change). Thread-safe. Entry i is the caller's numbering of the grid:
//  - local searches' coarse windows (Search3DSetup::table_slices): the table's directions at psi 0,
//    in the plain frame or the one turned away from a pole of the Euler angles (CoarseFrame), per
//    class: entry (turned K + class) D + direction, at px_coarse;
//  - global searches' fine poses (Search3DSetup::fine_slices): the children of every coarse pose,
//    entry ((psi P-index) D_all + direction) 4^o 2^o + (child direction) 2^o + child psi, at the
//    pixels px_fine of the setup (particles of other pixel sets, or magnified, project their own).
// At most `max_bytes` of slices are kept; beyond that they are projected per particle (bound()).
class SliceCache {
 public:
  SliceCache(size_t entries, const SearchPixels& px, size_t max_bytes);
  SliceCache(const SliceCache&) = delete;
  SliceCache& operator=(const SliceCache&) = delete;
  // The slice of entry i, whose orientation is `a`, into s (2m floats) and s2 (m).
  void get(size_t i, const Projector& proj, const Euler& a, float* s, float* s2);
  const SearchPixels& pixels() const { return px_; }
  size_t entries() const { return entries_; }
  bool bound() const { return bound_.load(std::memory_order_relaxed); }

 private:
  size_t entries_;
  const SearchPixels& px_;
  size_t max_bytes_;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;  // 0 empty, 1 being made, 2 ready
  std::unique_ptr<std::unique_ptr<float[]>[]> data_;  // 3m floats per slice: s then s2
  std::atomic<size_t> bytes_{0};
  std::atomic<bool> bound_{false};
};

// What all particles of an iteration share. Pointers must outlive the searches.
struct Search3DSetup {
  int classes = 1;
  std::vector<const Projector*> proj;      // per class (r_max at least px_fine's limit)
  std::vector<double> log_class_prior;     // per class; empty: uniform (no term)
  const SearchPixels* px_coarse = nullptr;
  const SearchPixels* px_fine = nullptr;
  const SearchPixels* px_sums = nullptr;   // pixels of the back-projected sums (null: px_fine)
  bool local = false;                      // local searches around the previous pose
  int order = 2;                           // HEALPix order of the coarse pass
  double sigma_ang = 15;                   // local: Gaussian prior sigma, degrees
  // Local: a second Gaussian prior (sigma, degrees; 0: none) about the input's centre pose, times the
  // window's (RELION's multi-body: the window follows the body's previous pose, this prior keeps it
  // near the consensus). Separable as the window's: the angle between directions, and the in-plane
  // angle's difference, in the window's frame.
  double sigma_centre = 0;
  // Global searches: the directions of the asymmetric unit and their NEST pixels (one copy per
  // class, class-major), the in-plane angles, and the coarse slices of every class (class-major).
  const std::vector<std::array<double, 2>>* global_dirs = nullptr;
  const std::vector<long>* global_pix = nullptr;
  const std::vector<double>* global_psi = nullptr;
  const Slices* global_slices = nullptr;
  const DirectionTable* table = nullptr;   // order `order`: local windows
  SliceCache* table_slices = nullptr;      // local: the windows' coarse slices (null: none)
  SliceCache* fine_slices = nullptr;       // global: the fine poses' slices (null: none)
  std::vector<std::array<double, 2>> trans;  // coarse translations, px (relative to the current origin)
  double offset_step = 1;                  // px (coarse)
  double sigma_offset2 = 1;                // px^2 per component (prior on the total offset)
  bool cross_correlation = false;          // --firstiter_cc: hard assignment to the best pose
  bool pose_mean = true;                   // posterior mean pose (else the maximum)
  const SymmetryGroup* symmetry = nullptr; // the mean averages each orientation's copy nearest the best
  double adaptive_fraction = 0.999;        // --adaptive_fraction
  long max_significants = 0;               // --maxsig (<= 0: no bound, RELION's -1)
  int oversampling = 1;                    // --oversampling (0, 1 or 2)
  // Shells whose products enter the scale correction (RELION: data_vs_prior > 3); empty: all.
  std::vector<char> scale_shells;
  // RELION's random perturbation of the sampling (--perturb): every orientation A of both passes
  // is A P (P a small rotation, the same for all particles of an iteration; the map seen rotated
  // by P), so that the grids do not stay in one place relative to the map from one iteration to
  // the next. The job perturbs the global slices and the translations itself. Identity: none.
  Mat3 perturb = identity3();
  // No alignment (--skip_align): only the classes at the particle's current pose (input rot, tilt,
  // psi, no translation) are scored, in the particle's frame; no coarse pass.
  bool fixed_pose = false;
};

struct Search3DInput {
  const RotatableParticle* x = nullptr;  // moved by its current origin (and normalised)
  // The particle as back-projected (RELION's Fimg_nomask; the jobs' ml3d::particle_views): its
  // weighted slices are what the sink receives (the CTF spreads a particle's signal far beyond the
  // mask at high defocus and resolution). Scores, residuals and scale use x. Null: x.
  const RotatableParticle* x_sums = nullptr;
  std::span<const float> inv_sigma2;     // per shell
  std::span<const float> inv_sigma2_sums;  // per shell, the weights of x_sums' slices (empty: inv_sigma2)
  double scale = 1;                      // s multiplying the reference (group scale correction)
  double rot = 0, tilt = 0, psi = 0;     // previous pose (local searches)
  double centre_rot = 0, centre_tilt = 0, centre_psi = 0;  // Search3DSetup::sigma_centre's centre
  double ox_px = 0, oy_px = 0;           // current origin, px (offset prior)
  // Anisotropic magnification (imaging/optics_model.hpp): the pixels px_fine and px_sums of the
  // setup mapped to the reference frame, T_g k, where the fine pass projects the references and
  // inserts the sums (the particle's own data stay on its grid, as RELION); the coarse pass, which
  // interpolates the particle anyway, reads it at T_g^-1 of the reference pixels
  // (RotatableParticle::reference_value). Null: the identity.
  const SearchPixels* ref_fine = nullptr;
  const SearchPixels* ref_sums = nullptr;
};

struct Search3DResult {
  bool valid = false;
  int cls = 0;                        // 0-based class of the best pose
  double rot = 0, tilt = 0, psi = 0;  // posterior mean (or best) orientation
  std::array<double, 2> trans{0, 0};  // px, to add to the origin
  double max_posterior = 0;           // rlnMaxValueProbDistribution (fine posterior)
  size_t n_significant = 0;           // rlnNrOfSignificantSamples (coarse significant poses)
  bool significance_bound = false;    // max_significants stopped the coarse set
  size_t n_fine = 0, n_fine_significant = 0;
  double log_likelihood = 0;          // log sum exp of the fine scores + priors (+ coarse-to-fine constant 0)
  std::vector<double> class_weight;   // posterior mass per class (fine)
  // Posterior-weighted sums over the significant fine poses (weights normalised over all fine poses):
  double weight_sum = 0;              // sum of those weights (<= 1)
  std::vector<double> diff2;          // per shell 0..n/2, pixels of px_fine: sum_w |X^t - s C P|^2
  double xa = 0, aa = 0;              // sum_w sum_k C Re(conj(X^t) P) and C^2 |P|^2 (scale_shells)
  double offset2 = 0;                 // sum_w |origin + t|^2, px^2 (the offsets' prior)
};

struct Search3DWork {
  SearchWork work;
  PoseResult coarse;
  Slices local_slices, block, sig_slices;
  std::vector<std::array<double, 2>> cdirs;
  std::vector<long> cpix;
  SignificantSet sig, fine_sig;
  std::vector<float> score, a1, fweight, wmat, sdata, sweight, qsum, gsum;
  std::vector<double> v;
  std::vector<int> pair_slot;          // coarse pair (p * D + d) -> index of distinct pair, or -1
  std::vector<char> allowed;           // [pair][trans parent]
};

// Searches one particle, sends its weighted slices to `sink` (when not null) and returns its
// posterior statistics. Deterministic for the same inputs.
void search_particle_3d(const Search3DSetup& setup, const Search3DInput& in, Search3DWork& ws, SliceSink* sink,
                        Search3DResult& out);

}  // namespace regula::estep

// Per-particle pose search for 3D refinement, separable in direction and in-plane angle
// (docs/refine3d.md#the-e-step).
//
// A pose is (direction d, in-plane angle psi, translation t). With A = euler_to_matrix(rot, tilt,
// psi) = R_psi A0(rot, tilt), the projection of the map V at A is the psi = 0 slice rotated:
//     Proj_A(k) = V(A0^T R_psi^T k) = S_d(R_psi^T k),   S_d(k') = V(A0^T k'),
// so the score of RELION's Gaussian model (scores.hpp), summed over the pixels k' of the slice
// frame instead of the particle frame (the change of variables k = R_psi k' on the grid is the
// same approximation as rotating a 2D reference),
//     L(psi, t, d) = sum_k' Re(conj(Q_{psi,t}(k')) S_d(k')) - 1/2 sum_k' B_psi(k') |S_d(k')|^2,
//     Q_{psi,t}(k') = s C(R k') w(k') X(R k') phase_t(R k'),     B_psi(k') = s^2 C(R k')^2 w(k'),
// needs P rotated particle images (2D interpolation of the particle's transform, zero-padded 2x in
// real space) and D slices instead of P * D projections: two SGEMMs per particle,
//     A2 = Q [P*T x 2m] S^T [2m x D],   A1 = B [P x m] |S|^2^T [m x D].
// The weighted sums of the M-step are the transposed products (one image per direction, inserted
// into the 3D back-projector at A0(rot, tilt)):
//     data_d(k') = sum_{psi,t} w(psi,t,d) Q_{psi,t}(k'),   weight_d(k') = sum_psi (sum_t w) B_psi(k').
// phase_t(R k') = phase_{R^T t}(k'), so translations cost one complex multiply per pixel.
//
// Units: frequencies in Fourier pixels of the box n (k / (n * angpix) in 1/Å); translations in
// pixels (the content moved by +t, as shift_phase); angles in degrees.
#pragma once
#include <array>
#include <complex>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

namespace regula::estep {

using cfloat = std::complex<float>;

// Half-plane pixels of the search (kx > 0, or kx == 0 and ky > 0), shells 1..r_max.
struct SearchPixels {
  int n = 0, r_max = 0;
  std::vector<float> kx, ky;    // Fourier pixels
  std::vector<int> shell;       // round(|k|)
  size_t size() const { return kx.size(); }
};
SearchPixels search_pixels(int n, int r_max);

// RELION's coarse image size as a frequency limit (shells, not clamped): the resolution at which one
// angular step of `step_deg` moves the edge of a particle of diameter D by `keepsafe` times it,
// ceil(n angpix / (step / 360 pi D / keepsafe)). RELION's keepsafe is 1.2 in 3D and 1.5 in 2D.
int coarse_limit_shells(int n, double angpix, double diameter_A, double step_deg, double keepsafe);

// A particle ready to be rotated: the centred transform of the masked image zero-padded to 2n
// (interpolated bilinearly at 2k), already moved by its current origin, plus its image model
// (imaging/optics_model.hpp): the transform is corrected once for the optics group's aberration
// phase (beam tilt, odd Zernikes: RELION's demodulatePhase, after masking), and ctf() is the
// factor the likelihood multiplies the reference by (C with the even Zernikes, |C| for
// phase-flipped data, C^2 for CTF-premultiplied data, as RELION's Fctf).
class RotatableParticle {
 public:
  static constexpr int kPad = 2;  // real-space zero padding before the transform
  // `img`: n x n masked particle; (dx, dy): pixels to move it by before the search (the current
  // origin, RELION: the particle is the projection moved by -origin, so dx = +originX / angpix).
  // `optics`: the particle's image model, whose group must have box n and outlive this object
  // (none: no CTF, no aberrations).
  RotatableParticle(const Image& img, double dx_px, double dy_px, std::optional<ParticleOptics> optics);
  // Only the plain transform (on_grid, ctf, shell_power; not value or reference_value): the
  // unmasked particle whose weighted slices the 3D jobs back-project (Search3DInput::x_sums).
  struct PlainOnly {};
  RotatableParticle(const Image& img, double dx_px, double dy_px, std::optional<ParticleOptics> optics, PlainOnly);
  int size() const { return n_; }
  // X(k) at a continuous frequency (Fourier pixels of the n box), |k| <= n/2.
  cfloat value(double kx, double ky) const;
  // X(k) at an integer frequency (the plain n x n transform, no interpolation).
  cfloat on_grid(int kx, int ky) const;
  // The likelihood's CTF factor at a frequency in Fourier pixels of the box (1 without CTF).
  float ctf(double kx, double ky) const;
  // The same at a frequency q of the reference frame (Fourier pixels of the reference box): at the
  // image frequency T_g^-1 q of the group's mapping (anisotropic magnification; the identity
  // otherwise). The coarse pass reads the particle there.
  cfloat reference_value(double qx, double qy) const;
  float reference_ctf(double qx, double qy) const;
  // For the coarse pass, which sums over reference pixels: whether the particle is read through a
  // mapping, the image shell of reference pixel q (round |T_g^-1 q|; -1 beyond the image's Nyquist, where
  // it has no data), and the image pixels per reference pixel, 1 / |det T_g| (the fine pass sums over
  // image pixels: so both passes weigh the same data alike).
  bool mapped() const { return mapped_; }
  int image_shell(double qx, double qy) const;
  double reference_density() const;
  // A translation t of the image (its own pixels) as the reference frame's phase sees it: the
  // phase 2 pi k.t / n at k = T_g^-1 q is 2 pi q.(T_g^-T t) (n_ref / n) / n_ref, so the coarse pass,
  // whose phases divide by the reference box n_ref, moves the particle by T_g^-T t n_ref / n.
  std::array<double, 2> reference_shift(std::array<double, 2> t, int n_ref) const {
    const double b = double(n_ref) / double(n_);
    if (!mapped_) return {t[0] * b, t[1] * b};
    return {b * (to_image_[0][0] * t[0] + to_image_[1][0] * t[1]), b * (to_image_[0][1] * t[0] + to_image_[1][1] * t[1])};
  }
  // CTF-premultiplied data: the back-projected data is X itself (not ctf() X) and its weight ctf()
  // (= C^2), as RELION (prepare_direct's `for_sums`).
  bool premultiplied() const { return optics_ && optics_->group().premultiplied; }
  // sum over the pixels of |X(k)|^2 per shell 0..n/2 (whole half plane, non-redundant).
  const std::vector<double>& shell_power() const { return power_; }

 private:
  RotatableParticle(const Image& img, double dx_px, double dy_px, std::optional<ParticleOptics> optics, bool padded);
  int n_ = 0;
  Grid<cfloat> F_;  // padded, gridding-corrected: (kPad n/2+1) x kPad n half-complex, FFT order in y
  Grid<cfloat> G_;  // plain: (n/2+1) x n
  std::optional<ParticleOptics> optics_;
  bool mapped_ = false;
  Mat2 to_image_ = kIdentity2;  // T_g^-1
  std::vector<double> power_;
};

// Slices S_d at the search pixels for directions (rot, tilt) (psi = 0), complex interleaved rows
// of 2m floats, and |S_d|^2 rows of m floats.
struct Slices {
  size_t d = 0, m = 0;
  std::vector<float> s;    // d * 2m
  std::vector<float> s2;   // d * m
};
void project_slices(const Projector& proj, const SearchPixels& px, std::span<const std::array<double, 2>> rot_tilt,
                    Slices& out);

// Projections at full orientations (rot, tilt, psi) at the search pixels, as project_slices.
void project_orientations(const Projector& proj, const SearchPixels& px, std::span<const Euler> angles, Slices& out);
// The same into rows s + j 2m, s2 + j m (pixel blocks outer, orientations inner: the lattice points of
// nearby orientations stay in cache).
void project_orientations(const Projector& proj, const SearchPixels& px, std::span<const Euler> angles, float* s,
                          float* s2);
// One projection: s gets 2m interleaved floats, s2 m floats (|S|^2).
void project_orientation(const Projector& proj, const SearchPixels& px, const Euler& angle, float* s, float* s2);

struct SearchOptions {
  bool cross_correlation = false;  // score = A2 / sqrt(A1) (RELION's --firstiter_cc); hard assignment
  double significant_fraction = 0.999;
};

// The candidate poses of one particle: P in-plane angles x T translations x D directions.
struct PoseSet {
  std::vector<double> psi;                    // degrees
  std::vector<std::array<double, 2>> trans;   // pixels, relative to the current origin
  std::span<const std::array<double, 2>> dirs;  // (rot, tilt) degrees, the rows of the slices
  // Log-priors (natural log), each empty (0) or of size P, T, D.
  std::vector<double> log_prior_psi, log_prior_trans, log_prior_dir;
};

// Posterior over a pose set (weights normalised over the set).
struct PoseResult {
  bool valid = false;
  size_t P = 0, T = 0, D = 0;
  std::vector<float> weight;   // (p * T + t) * D + d
  size_t best_p = 0, best_t = 0, best_d = 0;
  double max_posterior = 0;
  size_t n_significant = 0;
  double log_likelihood = 0;   // log sum exp of scores + priors (without the particle constant)
  // Marginals: sum of weights per psi, translation and direction.
  std::vector<double> w_psi, w_trans, w_dir;
};

// Work buffers reused between particles (one per thread).
struct SearchWork {
  std::vector<float> q, b, a2, a1, wsum_pd, data, wts;
  std::vector<cfloat> xr;  // P * m rotated X
  std::vector<float> cr;   // P * m rotated CTF
  std::vector<double> v;
};

// Scores every pose of `poses` for the particle and returns the posterior. `inv_sigma2` per shell
// 0..n/2 (0 = pixel ignored); `scale` = s. Deterministic.
void search_poses(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2,
                  float scale, const Slices& slices, const PoseSet& poses, const SearchOptions& opt,
                  SearchWork& work, PoseResult& out);

// The same model scored in the particle's own frame (RELION's way: the references are rotated, the
// particle is never resampled, so every pose sees the same data): J projections at full
// orientations (project_orientations) x T translations. The result has P = 1, D = J (layout
// weight[t * J + j]); log_prior_ref has J values (or is empty), log_prior_trans T values (or empty).
// pose_sums() then gives the weighted sums per orientation (insert them at the full orientation).
void search_direct(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2,
                   float scale, const Slices& refs, std::span<const std::array<double, 2>> trans,
                   std::span<const double> log_prior_trans, std::span<const double> log_prior_ref,
                   const SearchOptions& opt, SearchWork& work, PoseResult& out);

// The particle's rows of the direct kernel on its own grid: work.q = Q_t(k) = s C w X phase_t (T rows of 2m
// interleaved floats), work.b = s^2 C^2 w (m), work.xr = X(k) on the grid (m), work.cr = C(k) (m).
// `for_sums`: the rows of the back-projected sums instead; they differ only for CTF-premultiplied
// data (Q_t = s w X phase_t, b = s^2 C w with C = ctf() = CTF^2: data X, weight CTF^2, as RELION).
void prepare_direct(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2, float scale,
                    std::span<const std::array<double, 2>> trans, SearchWork& work, bool for_sums = false);

// After search_poses (or search_direct) on the same arguments: the weighted sums per direction, data (d * 2m,
// interleaved) and weight (d * m), for directions whose total weight exceeds `min_weight`
// (others are zero rows). Returns the list of directions with non-zero rows. These sums are built
// from the scoring rows, which for CTF-premultiplied particles are not the back-projected ones
// (prepare_direct's `for_sums`): use direct_sums for those.
std::vector<size_t> pose_sums(const PoseResult& post, size_t m, SearchWork& work, std::vector<float>& data,
                              std::vector<float>& weight, double min_weight = 1e-6);

// The weighted sums of a search_direct posterior at another pixel set `px` (e.g. all frequencies
// for the final reconstruction, the posterior having been computed at a lower limit).
std::vector<size_t> direct_sums(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2,
                                float scale, std::span<const std::array<double, 2>> trans, const PoseResult& post,
                                SearchWork& work, std::vector<float>& data, std::vector<float>& weight,
                                double min_weight = 1e-6);

// Residual statistics of one pose (for the noise model and the scale correction), on the pixels
// of px: diff2 per shell 0..n/2 (|X^t - s C S|^2 summed over the pixels of the shell), and
// xa = sum w Re(conj(X^t) s C S), aa = sum w |s C S|^2.
struct PoseResidual {
  std::vector<double> diff2;
  double xa = 0, aa = 0;
};
PoseResidual pose_residual(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2,
                           float scale, const Projector& proj, double rot, double tilt, double psi,
                           std::array<double, 2> trans);

}  // namespace regula::estep

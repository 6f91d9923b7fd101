// How a particle image is formed from the reference: RELION 3.1-5's observation model, read
// once from a ParticleTable. Every command that compares particles with a map, or makes
// particles from one, takes its CTFs, aberrations and sampling from here.
//
// The predicted image of particle i (half-complex, centred transform of its own box n_i at its
// own pixel size p_i) at image frequency k = (kx, ky), in Fourier pixels of that box:
//
//   X_i(k) = C_i(k) * exp(i phi_g(k)) * S_i(k) * V(A^T (T_g k, 0))  +  noise
//
//   f = M_g k / (n_i p_i)      the physical frequency (1/Å) the pixel sees: M_g is the optics
//                              group's magnification matrix [[rlnMagMat00, rlnMagMat01],
//                              [rlnMagMat10, rlnMagMat11]] acting on the column (kx, ky)
//   C_i(k) = -sin(gamma_i(f) + sum_j e_j Z_j(f)) exp(-B f^2/4) * scale   (imaging/ctf.hpp at f;
//                              e = rlnEvenZernike, Z_j in RELION's even order, imaging/zernike.hpp;
//                              |C| for phase-flipped data, C^2 for CTF-premultiplied data)
//   phi_g(k) = sum_j o_j Z_j(f)    o = rlnOddZernike in RELION's odd order, plus the beam tilt
//                              (tx, ty) in mrad as o_1 += 2a tx, o_0 += 2a ty, o_4 += a tx,
//                              o_3 += a ty with a = -2 pi Cs(Å) lambda^2 1e-3 / 3, which is
//                              phi = -2 pi Cs lambda^2 |f|^2 (f . t)  (t in radians)
//   S_i(k) = exp(+2 pi i k . o_i / n_i)   the origin shift (rlnOriginX/YAngst / p_i, px)
//   T_g    = M_g (N P) / (n_i p_i)        image Fourier px -> reference Fourier px for a
//                              reference (map) of box N and pixel size P (set_reference)
//   V(q)   the reference's 3D transform at q (reference Fourier px), A = euler_to_matrix(rot,
//                              tilt, psi); pixels with |T_g k| beyond the reference's frequency
//                              limit are not compared.
//
// Conventions established against RELION 3.1.3 (obs_model, ctf, backprojector, reconstructor,
// ml_optimiser; tests/python/test_optics_relion.py checks them with relion_project and
// relion_reconstruct): the phase factor multiplies the prediction (RELION's predictObservation),
// i.e. observed images are corrected by exp(-i phi) (RELION's demodulatePhase); the magnification
// matrix multiplies the image frequency before the CTF and the aberrations are evaluated, and the
// reference is sampled at A^T M k (RELION: A3D = M^-1 A with the slice at A3D^-1 k).
// Where RELION 3.1 and 4/5 differ: RELION 3.1 REPLACES o_3 and o_4 by the beam tilt terms,
// RELION 4/5 adds them (as here); the two agree unless a file has both beam tilt and non-zero
// o_3/o_4 coefficients.
//
// The likelihood and reconstruction terms (RELION's ml_optimiser):
//   prediction factor on V:    C (normal), |C| (phase-flipped), C^2 (premultiplied)
//   back-projected data:       C X (normal), |C| X (phase-flipped), X (premultiplied)
//   back-projection weight:    C^2 in every case
// (ParticleOptics::predicted / backprojected / weight below).
//
// Use in a per-pixel E-step: for a fixed list of image pixels (kx, ky) per optics group, call
// OpticsGroupModel::evaluate once (aberration phases, even-Zernike gamma offsets, reference-frame
// frequencies: the same for every particle of the group), then per particle
// ParticleOptics::evaluate_ctf with the group's gamma offsets (one sin and one exp per pixel).
// Correct each observed image once by exp(-i phi) (demodulate) and compare it with
// predicted(C) * V(A^T q), q the reference-frame frequencies.
#pragma once
#include <array>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

// One optics group's image formation (see above).
struct OpticsGroupModel {
  int number = 1;          // rlnOpticsGroup
  std::string name;        // rlnOpticsGroupName
  double pixel_size = 0;   // Å of the particle images
  int box = 0;             // px of the particle images
  bool premultiplied = false;  // rlnCtfDataAreCtfPremultiplied
  bool phase_flipped = false;  // rlnCtfDataArePhaseFlipped (or the command's --ctf_phase_flipped)
  std::vector<double> odd;     // antisymmetric Zernike coefficients, beam tilt included (radians)
  std::vector<double> even;    // symmetric Zernike coefficients (radians)
  Mat2 mag = kIdentity2;       // rlnMagMat
  Mat2 to_reference = kIdentity2;  // T_g: image Fourier px -> reference Fourier px
  // exp(i phi) and the gamma offsets on the half-complex grid of the box, computed once by
  // OpticsModel (empty when the group has no such aberration or no box yet).
  Grid<cfloat> phase_grid;
  Grid<float> gamma_offset_grid;

  // Physical frequency f = M k / (box * pixel_size) (1/Å) of image pixel k (Fourier px of the box).
  std::array<double, 2> frequency(double kx, double ky) const;
  // Aberration phase phi (radians) and even-Zernike gamma offset at physical frequency f.
  double phase_at(double fx, double fy) const;
  double gamma_offset_at(double fx, double fy) const;
  bool has_phase() const;            // any non-zero odd coefficient
  bool has_gamma_offset() const;     // any non-zero even coefficient
  bool maps_to_reference() const { return to_reference != kIdentity2; }

  // Per pixel of a list (kx, ky in Fourier px of the box): any output may be null; each has
  // kx.size() entries. `phase` in radians; `gamma_offset` for evaluate_ctf; (ref_kx, ref_ky) = T k.
  void evaluate(std::span<const float> kx, std::span<const float> ky, float* phase, float* gamma_offset,
                float* ref_kx, float* ref_ky) const;
  // exp(i phi) on the half-complex grid of the box (element (x, y): kx = x, ky = fft_freq(y, box)).
  void phase_half(Grid<cfloat>& out) const;
  // F <- F * exp(-i phi) (RELION's demodulatePhase) for a half-complex centred transform of the box.
  void demodulate(Grid<cfloat>& F) const;
  // F <- F * exp(+i phi) (the forward model).
  void modulate(Grid<cfloat>& F) const;
};

// Command-line overrides of the file's optics.
struct OpticsOptions {
  bool phase_flipped = false;  // --ctf_phase_flipped: every group's images are phase-flipped
};

// The image model of one particle: its optics group and its CTF.
class ParticleOptics {
 public:
  ParticleOptics(const OpticsGroupModel& group, const CtfParams& ctf);

  const OpticsGroupModel& group() const { return *group_; }
  const Ctf& ctf() const { return ctf_; }

  // C(k) at image pixel k (Fourier px of the box): at f = M k / (n p), with the even
  // Zernikes; |C| for phase-flipped data (RELION's Fctf).
  double ctf_value(double kx, double ky) const;
  // The same to float accuracy (Ctf::value_float: a cheaper sine), for the E-step's per-pixel tables.
  float ctf_value_float(double kx, double ky) const;
  // The same over a pixel list, with the group's gamma offsets (null: computed here).
  void evaluate_ctf(std::span<const float> kx, std::span<const float> ky, const float* gamma_offset,
                    float* ctf) const;
  // C on the half-complex grid of the box, (box/2+1) x box (resized if needed).
  void ctf_half(Grid<float>& out) const;

  // The likelihood / reconstruction factors at a pixel of CTF value c (see the file comment).
  float predicted(float c) const { return group_->premultiplied ? c * c : c; }
  float backprojected(float c) const { return group_->premultiplied ? 1.0f : c; }
  static float weight(float c) { return c * c; }

 private:
  const OpticsGroupModel* group_;
  Ctf ctf_;
  bool gamma_offset_ = false;  // the group has even Zernikes
};

// How far the particle's CTF moves its signal (imaging/mask.hpp's CtfReach): its defoci, Cs and
// wavelength, at its group's pixel size; twice as far for CTF-premultiplied images.
CtfReach ctf_reach(const ParticleOptics& po);

class OpticsModel {
 public:
  // Parts of the model a command may not handle yet (require_only).
  enum Feature : unsigned {
    kPhaseFlipped = 1u << 0,   // rlnCtfDataArePhaseFlipped
    kPremultiplied = 1u << 1,  // rlnCtfDataAreCtfPremultiplied
    kBeamTilt = 1u << 2,       // rlnBeamTiltX/Y other than 0
    kOddZernike = 1u << 3,     // rlnOddZernike other than 0
    kEvenZernike = 1u << 4,    // rlnEvenZernike other than 0
    kAnisoMag = 1u << 5,       // rlnMagMat other than the identity
    kMixedPixel = 1u << 6,     // optics groups of different pixel sizes
    kMixedBox = 1u << 7,       // optics groups of different box sizes
    kAll = (1u << 8) - 1,
  };
  OpticsModel() = default;
  // Reads the optics groups of `table` (which must outlive this model) after checking its labels
  // (model/image_labels.hpp). InputError naming the file and group for values that make no sense
  // (pixel size <= 0 when known, a singular magnification matrix, premultiplied and
  // phase-flipped together). The reference defaults to the first group's sampling.
  explicit OpticsModel(const ParticleTable& table, const OpticsOptions& opt = {});

  // The sampling particles are compared with: a map of box N px and pixel size P Å.
  void set_reference(int box, double pixel_size);
  int reference_box() const { return ref_box_; }
  double reference_pixel_size() const { return ref_pixel_; }
  // Box size of a group whose rlnImageSize the file does not give (from its images).
  void set_box(size_t group, int box);

  size_t groups() const { return groups_.size(); }
  const OpticsGroupModel& group(size_t g) const { return groups_[g]; }
  const OpticsGroupModel& group_of(size_t particle) const;
  // CTF parameters from the particle's row and optics group (imaging/particle_ctf.hpp).
  ParticleOptics particle(size_t i) const;

  // Features present in the data (OR of Feature).
  unsigned features() const;
  // InputError "<file>: optics group G (<name>) has <labels> (<what>): not yet supported by
  // <command> (...)" for the first feature present and not in `supported`.
  void require_only(unsigned supported, std::string_view command) const;

 private:
  void update_mapping();
  const ParticleTable* table_ = nullptr;
  std::vector<OpticsGroupModel> groups_;
  std::vector<std::array<double, 2>> beam_tilt_;  // mrad, per group (for messages)
  int ref_box_ = 0;
  double ref_pixel_ = 0;
};

// The optics model of the likelihood engines (class2d, class3d, refine3d, initial_model) for
// particle images whose first is n px: with --ctf (`ctf`) they model the CTF with the even Zernikes,
// beam tilt and odd Zernikes (the images' aberration phase is removed, RELION's demodulatePhase),
// phase-flipped (|CTF|) and CTF-premultiplied data (CTF^2 in the likelihood; back-projected data X
// with weight CTF^2, as RELION). Refused, naming the file, group and `command`: anisotropic
// magnification and optics groups of different pixel or box sizes (unless `magnification`: the 3D
// engines model all three, as T_g of the file comment, with the reference at the first group's box
// and pixel size; they also refuse a group whose rlnImageSize is odd or below 16), the first image's group's
// rlnImageSize other than n, and, without --ctf, every label above (the images would be compared
// without the CTF they carry). The reference is at the first group's sampling.
OpticsModel engine_optics(const ParticleTable& table, int n, bool ctf, std::string_view command,
                          bool magnification = false);

// Pixel sizes within 1e-6 of each other are one (STAR files round-trip them through float).
bool same_pixel_size(double a, double b);

}  // namespace regula

// Contrast transfer function with RELION 3.1's model and sign convention.
//
//   lambda (Å)  = 12.2643247 / sqrt(V * (1 + 0.978466e-6 V)),  V in volts
//                 (relativistic electron wavelength)
//   gamma(k)    = -pi lambda Δf(k) |k|^2 + pi/2 Cs lambda^3 |k|^4 - phase_shift - atan(Q0 / sqrt(1 - Q0^2))
//   Δf(k)       = U cos^2(a - t) + V sin^2(a - t),  t = defocus angle, a = atan2(ky, kx)
//                 (U along the direction at angle t from the x axis, anticlockwise)
//   CTF(k)      = -sin(gamma(k)) * exp(-B |k|^2 / 4) * scale
//
// with k in 1/Å, defocus U/V in Å (positive = underfocus), Cs in mm (converted
// to Å), phase shift and angles in degrees, B in Å^2. With this sign the CTF is
// +Q0 at k = 0 and stays positive up to the first zero for underfocus (the
// value RELION multiplies projections by). Like RELION, values with
// |CTF| < 1e-8 are returned as ±1e-8 (never exactly 0, so divisions are safe).
// Anisotropic magnification, even and odd Zernike aberrations and beam tilt are
// modelled on top of this by imaging/optics_model.hpp (RELION's observation model).
#pragma once
#include "regula/core/grid.hpp"

namespace regula {

struct CtfParams {
  double voltage_kv = 300;          // acceleration voltage, kV
  double cs_mm = 2.7;               // spherical aberration, mm
  double amplitude_contrast = 0.1;  // Q0, in [0, 1)
  double defocus_u = 0;             // Å, positive = underfocus
  double defocus_v = 0;             // Å
  double defocus_angle = 0;         // degrees, direction of U from the x axis
  double phase_shift = 0;           // degrees (phase plate)
  double bfactor = 0;               // Å^2, envelope exp(-B k^2 / 4)
  double scale = 1;                 // rlnCtfScalefactor
};

// How values are post-processed (RELION's getCTF flags).
struct CtfOptions {
  bool abs = false;                      // |CTF|
  bool phase_flip_only = false;          // sign(CTF) * scale
  bool intact_until_first_peak = false;  // 1 where |gamma| < pi/2 (before the first peak)
  bool damping = true;                   // apply the B-factor envelope
};

// Relativistic electron wavelength in Å for an acceleration voltage in kV.
double electron_wavelength(double voltage_kv);

class Ctf {
 public:
  // Throws InputError when Q0 is outside [0, 1) or the voltage is not positive.
  explicit Ctf(const CtfParams& p, const CtfOptions& opt = {});

  const CtfParams& params() const { return p_; }
  double wavelength() const { return lambda_; }  // Å

  // Phase aberration gamma (radians) at spatial frequency (kx, ky) in 1/Å.
  double gamma(double kx, double ky) const;
  // CTF value at spatial frequency (kx, ky) in 1/Å; `gamma_offset` (radians) is added to gamma
  // (RELION's symmetric aberrations, rlnEvenZernike: imaging/optics_model.hpp).
  double value(double kx, double ky, double gamma_offset = 0) const;
  // The same value to float accuracy (sin of gamma within 3e-8 for |gamma| < 1e6 rad, then rounded
  // to float): a cheaper sin than the library's, for callers that keep the CTF in float per pixel
  // and particle (ParticleOptics::evaluate_ctf: CTF refinement, polishing).
  float value_float(double kx, double ky, double gamma_offset = 0) const;

  // Fill `out` with the CTF on the half-complex grid of an n x n image of
  // pixel size `pixel_size_A` (Å): out has nx = n/2+1, ny = n; element (i, j)
  // is at kx = i / (n * px), ky = fft_freq(j, n) / (n * px) (FFT order along y,
  // as core/fft.hpp). `out` is resized if needed.
  void evaluate_half_complex(Grid<float>& out, int n, double pixel_size_A) const;
  Grid<float> half_complex(int n, double pixel_size_A) const;

 private:
  double finish(double v, double kx, double ky) const;  // envelope, abs/flip, scale, the 1e-8 floor
  CtfParams p_;
  CtfOptions opt_;
  double lambda_ = 0;
  double k1_ = 0, k2_ = 0, k3_ = 0, k4_ = 0, k5_ = 0;
  double axx_ = 0, axy_ = 0, ayy_ = 0;
};

// Multiply each Fourier coefficient by the sign of the CTF (phase flipping).
// `F` and `ctf` must have the same shape (InputError otherwise).
void phase_flip(Grid<cfloat>& F, const Grid<float>& ctf);

// Wiener-style correction: F <- F * c / (c^2 + eps), eps > 0 (the inverse of the
// signal-to-noise ratio; e.g. 0.1). Same shapes required.
void wiener_correct(Grid<cfloat>& F, const Grid<float>& ctf, double eps);

}  // namespace regula

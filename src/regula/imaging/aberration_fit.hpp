// Fits of per-optics-group aberrations and per-particle defocus from sums over particles
// (`regula ctf_refine`, RELION's CtfRefine). Each fit maximises the Gaussian log-likelihood of
// the images under the image model of imaging/optics_model.hpp, reduced to per-pixel sums:
//
//   X_i(k) = s C_i(k) exp(i phi(k)) Q_i(k) + noise (variance 1/w(k))
//
// with Q_i the reference projection at the particle's pose (origin shift included).
//
// Odd (antisymmetric) phase phi: with xy(k) = sum_i w X_i conj(s C_i Q_i) the log-likelihood in
// phi is, up to a constant, sum_k 2 Re(xy(k) exp(-i phi(k))).
//
// Even (symmetric) phase offset d added to gamma in C = -sin(gamma + d) * envelope: with
// t_i = (sin gamma_i, cos gamma_i), u = (cos d, sin d), R_i = w Re(X_i conj(s Q_i)) env and
// P_i = w |s Q_i|^2 env^2, it is sum_k L_k(d(k)) with
//   L_k(d) = -2 b(k).u - u^T M(k) u,   b = sum_i R_i t_i,  M = sum_i P_i t_i t_i^T.
//
// Magnification (a small change D of the matrix: the reference is sampled at T (I + D) k):
// linearised, with g_a(k) = s C exp(i phi) S dV/dk_a (the gradient of the prediction along the
// image frequency) and r = X - prediction, it is sum_k 2 b(k).d - d^T A(k) d with d = D k,
// A_ab = sum_i w Re(conj(g_a) g_b), b_a = sum_i w Re(conj(g_a) r).
#pragma once
#include <array>
#include <complex>
#include <functional>
#include <span>
#include <vector>

#include "regula/sampling/euler.hpp"

namespace regula {

using cdouble = std::complex<double>;

// A linear basis of phase functions of the physical frequency (fx, fy) in 1/Å: fills b[0..size).
struct PhaseBasis {
  int size = 0;
  std::function<void(double fx, double fy, double* b)> eval;
};

// rlnOddZernike coefficients 0..count-1 (RELION's order; count = (n+1)(n+3)/4 for maximum odd order n).
PhaseBasis odd_zernike_basis(int max_order);
// rlnEvenZernike coefficients 0..count-1 (count = (n+2)^2/4 for maximum even order n).
PhaseBasis even_zernike_basis(int max_order);
// Beam tilt (tx, ty in mrad) plus an image shift (the two order-1 terms): coefficients
// (tx, ty, c_x, c_y) with phi = -2 pi Cs lambda^2 |f|^2 (f . t) 1e-3 + c_x fx + c_y fy (Cs in Å).
PhaseBasis beam_tilt_basis(double cs_angstrom, double lambda);

// The coefficients c maximising sum_k Re(xy_k exp(-i phi_c(f_k))), phi_c = sum_j c_j B_j, starting
// from c0 (empty: zeros). The frequency band grows from a third of the highest frequency to all
// of it, each band by Gauss-Newton steps from the previous band's result, so that a phase of
// several turns at the highest frequencies is followed without wrapping.
std::vector<double> fit_odd_phase(std::span<const double> fx, std::span<const double> fy,
                                  std::span<const cdouble> xy, const PhaseBasis& basis, std::vector<double> c0);

// Per pixel of the even fit: b = (b0, b1), M = [[m00, m01], [m01, m11]].
struct EvenSums {
  double b0 = 0, b1 = 0, m00 = 0, m01 = 0, m11 = 0;
};
double even_loglik(const EvenSums& s, double d);  // L_k(d) above
// The coefficients maximising sum_k L_k(sum_j c_j B_j(f_k)) (damped Newton, growing bands as above).
std::vector<double> fit_even_phase(std::span<const double> fx, std::span<const double> fy,
                                   std::span<const EvenSums> sums, const PhaseBasis& basis, std::vector<double> c0);
// The best offset of one pixel alone, in (-pi, pi] (for diagnostic images).
double best_even_offset(const EvenSums& s);

// Per pixel of the magnification fit: b = (b0, b1), A = [[a00, a01], [a01, a11]].
struct MagSums {
  double b0 = 0, b1 = 0, a00 = 0, a01 = 0, a11 = 0;
};
// D maximising sum_k 2 b(k).(D k) - (D k)^T A(k) (D k), k = (kx, ky) in image Fourier px.
// InputError-free: returns the zero matrix when the system is singular.
Mat2 fit_displacement(std::span<const double> kx, std::span<const double> ky, std::span<const MagSums> sums);

// Beam tilt (mrad) carried by odd Zernike coefficients (RELION's convention, optics_model.hpp):
// removes it from c (coefficients 0, 1, 3, 4) and returns (tx, ty). c needs at least 5 entries.
std::array<double, 2> extract_beam_tilt(std::vector<double>& c, double cs_angstrom, double lambda);

// Astigmatic defocus as a symmetric form: defocus(alpha) = d + a1 cos 2 alpha + a2 sin 2 alpha (Å).
struct DefocusForm {
  double d = 0, a1 = 0, a2 = 0;
};
DefocusForm defocus_form(double u, double v, double angle_deg);
// (U, V, angle in degrees) of a form: U = d + r >= V = d - r, r = |(a1, a2)|, angle in (-90, 90].
std::array<double, 3> defocus_uva(const DefocusForm& f);

// Small dense symmetric solve (Gaussian elimination with partial pivoting); false when singular.
bool solve_small(std::vector<double> A, std::vector<double>& x, int n);

}  // namespace regula

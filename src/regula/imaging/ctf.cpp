#include "regula/imaging/ctf.hpp"

#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"

namespace regula {

namespace {
constexpr double kPiCtf = 3.14159265358979323846;
}

double electron_wavelength(double voltage_kv) {
  const double v = voltage_kv * 1e3;
  return 12.2643247 / std::sqrt(v * (1.0 + v * 0.978466e-6));
}

Ctf::Ctf(const CtfParams& p, const CtfOptions& opt) : p_(p), opt_(opt) {
  if (!(p.voltage_kv > 0)) input_error("CTF: voltage {} kV must be positive", p.voltage_kv);
  if (!(p.amplitude_contrast >= 0 && p.amplitude_contrast < 1))
    input_error("CTF: amplitude contrast {} outside [0, 1)", p.amplitude_contrast);
  lambda_ = electron_wavelength(p.voltage_kv);
  const double cs_A = p.cs_mm * 1e7;
  const double q0 = p.amplitude_contrast;
  k1_ = kPiCtf * lambda_;
  k2_ = kPiCtf / 2 * cs_A * lambda_ * lambda_ * lambda_;
  k3_ = std::atan(q0 / std::sqrt(1 - q0 * q0));
  k4_ = -p.bfactor / 4.0;
  k5_ = p.phase_shift * kPiCtf / 180.0;
  // Defocus as a quadratic form k^T A k with A = -R(t)^T diag(U, V) R(t),
  // R(t) the rotation taking the U direction onto x.
  const double t = p.defocus_angle * kPiCtf / 180.0, c = std::cos(t), s = std::sin(t);
  axx_ = -(p.defocus_u * c * c + p.defocus_v * s * s);
  axy_ = -(p.defocus_u - p.defocus_v) * c * s;
  ayy_ = -(p.defocus_u * s * s + p.defocus_v * c * c);
}

double Ctf::gamma(double kx, double ky) const {
  const double k2 = kx * kx + ky * ky;
  return k1_ * (axx_ * kx * kx + 2 * axy_ * kx * ky + ayy_ * ky * ky) + k2_ * k2 * k2 - k5_ - k3_;
}

double Ctf::value(double kx, double ky, double gamma_offset) const {
  const double g = gamma(kx, ky) + gamma_offset;
  return finish((opt_.intact_until_first_peak && std::abs(g) < kPiCtf / 2) ? 1.0 : -std::sin(g), kx, ky);
}

namespace {
// sin(x) within 3e-8 for |x| < 1e6: reduction to [-pi/4, pi/4] by quarter turns in double (pi/2 in
// two parts, exact products for these |x|), then the Taylor polynomials of sin and cos to degrees 11
// and 10 (remainders 2e-10 and 2.5e-8 at pi/4).
double sin_to_float_accuracy(double x) {
  const double q = std::nearbyint(x * 0.63661977236758134308);
  const double r = (x - q * 1.5707963267341256) - q * 6.077100506506192601e-11;
  const double r2 = r * r;
  const double s =
      r * (1 + r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 - r2 / 39916800)))));
  const double c = 1 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 - r2 / 3628800))));
  // Quarter turn n: sin, cos, -sin, -cos (selected without branches: n is random from pixel to pixel).
  const long long n = static_cast<long long>(q);
  const double v[2] = {s, c};
  return v[n & 1] * double(1 - (n & 2));
}
}  // namespace

float Ctf::value_float(double kx, double ky, double gamma_offset) const {
  const double g = gamma(kx, ky) + gamma_offset;
  return float(
      finish((opt_.intact_until_first_peak && std::abs(g) < kPiCtf / 2) ? 1.0 : -sin_to_float_accuracy(g), kx, ky));
}

double Ctf::finish(double v, double kx, double ky) const {
  if (opt_.damping && k4_ != 0) v *= std::exp(k4_ * (kx * kx + ky * ky));
  if (opt_.abs)
    v = std::abs(v);
  else if (opt_.phase_flip_only)
    v = v < 0 ? -1.0 : 1.0;
  v *= p_.scale;
  if (std::abs(v) < 1e-8) v = v < 0 ? -1e-8 : 1e-8;
  return v;
}

void Ctf::evaluate_half_complex(Grid<float>& out, int n, double pixel_size_A) const {
  if (n <= 0 || !(pixel_size_A > 0))
    input_error("CTF: image size {} and pixel size {} Å must be positive", n, pixel_size_A);
  const int nxh = n / 2 + 1;
  if (out.nx() != nxh || out.ny() != n || out.nz() != 1) out = Grid<float>(nxh, n);
  const double inv = 1.0 / (n * pixel_size_A);
  for (int j = 0; j < n; ++j) {
    const double ky = fft_freq(j, n) * inv;
    for (int i = 0; i < nxh; ++i) out(i, j) = float(value(i * inv, ky));
  }
}

Grid<float> Ctf::half_complex(int n, double pixel_size_A) const {
  Grid<float> out;
  evaluate_half_complex(out, n, pixel_size_A);
  return out;
}

namespace {
void check_shapes(const char* what, const Grid<cfloat>& F, const Grid<float>& ctf) {
  if (F.nx() != ctf.nx() || F.ny() != ctf.ny() || F.nz() != ctf.nz())
    input_error("{}: transform {}x{}x{} and CTF {}x{}x{} differ in shape", what, F.nx(), F.ny(), F.nz(),
                ctf.nx(), ctf.ny(), ctf.nz());
}
}  // namespace

void phase_flip(Grid<cfloat>& F, const Grid<float>& ctf) {
  check_shapes("phase_flip", F, ctf);
  for (size_t i = 0; i < F.size(); ++i)
    if (ctf[i] < 0) F[i] = -F[i];
}

void wiener_correct(Grid<cfloat>& F, const Grid<float>& ctf, double eps) {
  check_shapes("wiener_correct", F, ctf);
  if (!(eps > 0)) input_error("wiener_correct: regularisation {} must be positive", eps);
  for (size_t i = 0; i < F.size(); ++i) {
    const double c = ctf[i];
    F[i] *= float(c / (c * c + eps));
  }
}

}  // namespace regula

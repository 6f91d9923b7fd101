// CTF: analytic properties (wavelength, zeros, astigmatism, envelope, sign)
// and agreement with relion_project's CTF-modulated projections of a point mass.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {
const double kPiT = 3.14159265358979323846;
}

TEST(Ctf, Wavelength) {
  // Relativistic de Broglie wavelengths (textbook values): 300 kV 0.019687 Å,
  // 200 kV 0.025079 Å, 100 kV 0.037014 Å.
  EXPECT_NEAR(electron_wavelength(300), 0.019687, 2e-6);
  EXPECT_NEAR(electron_wavelength(200), 0.025079, 2e-6);
  EXPECT_NEAR(electron_wavelength(100), 0.037014, 2e-6);
}

TEST(Ctf, SignAndValueAtOrigin) {
  CtfParams p;
  p.defocus_u = p.defocus_v = 15000;
  p.amplitude_contrast = 0.1;
  const Ctf ctf(p);
  // RELION's sign: +Q0 at k = 0, growing positive until the first zero (underfocus).
  EXPECT_NEAR(ctf.value(0, 0), 0.1, 1e-12);
  EXPECT_GT(ctf.value(0.01, 0), 0.1);
  p.amplitude_contrast = 0;
  p.phase_shift = 90;  // a phase plate: -sin(-pi/2) = 1 at k = 0
  EXPECT_NEAR(Ctf(p).value(0, 0), 1.0, 1e-12);
  p.phase_shift = 0;
  // Exactly zero is returned as +1e-8 (as RELION, to keep divisions finite).
  EXPECT_EQ(Ctf(p).value(0, 0), 1e-8);
  p.amplitude_contrast = 1.0;
  EXPECT_THROW(Ctf{p}, InputError);
  p.amplitude_contrast = 0.1;
  p.voltage_kv = 0;
  EXPECT_THROW(Ctf{p}, InputError);
}

TEST(Ctf, ZerosWhereGammaIsMultipleOfPi) {
  // Q0 = 0, no astigmatism: gamma(k) = -pi lambda dF k^2 + pi/2 Cs lambda^3 k^4.
  // The n-th zero solves (pi/2 Cs lambda^3) u^2 - (pi lambda dF) u + n pi = 0, u = k^2.
  CtfParams p;
  p.voltage_kv = 300;
  p.cs_mm = 2.7;
  p.amplitude_contrast = 0;
  p.defocus_u = p.defocus_v = 12000;
  const Ctf ctf(p);
  const double lam = electron_wavelength(300), cs = 2.7e7, df = 12000;
  const double a = kPiT / 2 * cs * lam * lam * lam, b = kPiT * lam * df;
  for (int n = 1; n <= 8; ++n) {
    const double u = (b - std::sqrt(b * b - 4 * a * n * kPiT)) / (2 * a);
    const double k = std::sqrt(u);
    for (double ang : {0.0, 0.7, 2.0}) {
      // At the zero |sin| < 1e-10, reported as RELION's floor 1e-8.
      EXPECT_LE(std::abs(ctf.value(k * std::cos(ang), k * std::sin(ang))), 1e-8) << n;
      // A sign change across the zero.
      const double dk = 1e-4 * k;
      EXPECT_LT(ctf.value(k - dk, 0) * ctf.value(k + dk, 0), 0) << n;
    }
    EXPECT_NEAR(ctf.gamma(k, 0), -n * kPiT, 1e-9);
  }
}

TEST(Ctf, AstigmatismAndEnvelope) {
  CtfParams p;
  p.defocus_u = 20000;
  p.defocus_v = 16000;
  p.defocus_angle = 30;
  p.cs_mm = 2.7;
  p.amplitude_contrast = 0.07;
  const Ctf ctf(p);
  CtfParams pu = p, pv = p;
  pu.defocus_v = pu.defocus_u;
  pv.defocus_u = pv.defocus_v;
  const Ctf cu(pu), cv(pv);
  const double t = deg2rad(30);
  for (double k : {0.01, 0.05, 0.12, 0.3}) {
    // Along the defocus angle the defocus is U; perpendicular to it, V.
    EXPECT_NEAR(ctf.value(k * std::cos(t), k * std::sin(t)), cu.value(k, 0), 1e-12);
    EXPECT_NEAR(ctf.value(-k * std::sin(t), k * std::cos(t)), cv.value(k, 0), 1e-12);
    // Friedel symmetry: C(-k) = C(k).
    EXPECT_NEAR(ctf.value(0.3 * k, -k), ctf.value(-0.3 * k, k), 1e-12);
  }
  CtfParams pb = p;
  pb.bfactor = 80;
  pb.scale = 0.5;
  const Ctf cb(pb);
  for (double k : {0.02, 0.1, 0.2})
    EXPECT_NEAR(cb.value(k, 0.5 * k), 0.5 * std::exp(-80 * 1.25 * k * k / 4) * ctf.value(k, 0.5 * k), 1e-12);
  // Options: abs, flip, intact until the first peak.
  CtfOptions o;
  o.phase_flip_only = true;
  const Ctf flip(p, o);
  o = {};
  o.abs = true;
  const Ctf ab(p, o);
  o = {};
  o.intact_until_first_peak = true;
  const Ctf intact(p, o);
  for (double k : {0.001, 0.03, 0.07, 0.11, 0.2}) {
    const double v = ctf.value(k, 0);
    EXPECT_EQ(flip.value(k, 0), v < 0 ? -1.0 : 1.0);
    EXPECT_DOUBLE_EQ(ab.value(k, 0), std::abs(v));
    EXPECT_DOUBLE_EQ(intact.value(k, 0), std::abs(ctf.gamma(k, 0)) < kPiT / 2 ? 1.0 : v);
  }
}

// value_float (a cheaper sin) against value (the library's): within float rounding, over defoci of
// 0.3-6 um, astigmatism, phase shifts, envelopes and frequencies to 1 / (1.5 Å), where gamma
// reaches several hundred radians, and over gamma offsets of the size even Zernikes give; plus
// its sin alone at |gamma| near 1e5 (the error grows with |gamma| as q * 6e-11 * 2^-53).
TEST(Ctf, ValueFloatWithinFloatRounding) {
  std::srand(7);
  auto uniform = [](double lo, double hi) { return lo + (hi - lo) * (std::rand() / double(RAND_MAX)); };
  double worst = 0;
  for (int trial = 0; trial < 200; ++trial) {
    CtfParams p;
    p.defocus_u = uniform(3000, 60000);
    p.defocus_v = p.defocus_u * uniform(0.8, 1.0);
    p.defocus_angle = uniform(-180, 180);
    p.phase_shift = trial % 3 == 0 ? uniform(0, 180) : 0;
    p.bfactor = trial % 4 == 0 ? uniform(0, 200) : 0;
    p.scale = uniform(0.5, 1.5);
    p.voltage_kv = trial % 2 ? 300 : 200;
    p.amplitude_contrast = uniform(0.05, 0.15);
    const Ctf ctf(p);
    for (int k = 0; k < 400; ++k) {
      const double kx = uniform(-0.33, 0.33), ky = uniform(-0.33, 0.33), off = uniform(-3, 3);
      const double d = std::abs(double(ctf.value_float(kx, ky, off)) - ctf.value(kx, ky, off));
      worst = std::max(worst, d / p.scale);
    }
  }
  EXPECT_LT(worst, 1.2e-7);  // float rounding near 1 (6e-8) plus the sin's 3e-8
  CtfParams p;
  p.defocus_u = p.defocus_v = 1e6;  // gamma about -1e5 rad at 0.13 / Å
  const Ctf big(p);
  for (double k = 0.1; k < 0.16; k += 0.00037)
    EXPECT_NEAR(double(big.value_float(k, 0)), big.value(k, 0), 1.2e-7) << k;
}

TEST(Ctf, HalfComplexLayout) {
  CtfParams p;
  p.defocus_u = 11000;
  p.defocus_v = 9000;
  p.defocus_angle = 70;
  const Ctf ctf(p);
  const int n = 36;
  const double px = 1.7;
  Grid<float> g;
  ctf.evaluate_half_complex(g, n, px);
  ASSERT_EQ(g.nx(), n / 2 + 1);
  ASSERT_EQ(g.ny(), n);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i <= n / 2; ++i)
      ASSERT_FLOAT_EQ(g(i, j), float(ctf.value(i / (n * px), fft_freq(j, n) / (n * px))));
  // Column kx = 0 is Hermitian-symmetric in ky.
  for (int j = 1; j < n; ++j) EXPECT_FLOAT_EQ(g(0, j), g(0, n - j));
}

TEST(Ctf, PhaseFlipAndWiener) {
  Grid<float> c(3, 1);
  c[0] = 0.5f, c[1] = -0.25f, c[2] = 1e-8f;
  Grid<cfloat> f(3, 1);
  f[0] = {1, 2}, f[1] = {3, -1}, f[2] = {2, 2};
  Grid<cfloat> g = f;
  phase_flip(g, c);
  EXPECT_EQ(g[0], cfloat(1, 2));
  EXPECT_EQ(g[1], cfloat(-3, 1));
  EXPECT_EQ(g[2], cfloat(2, 2));
  g = f;
  wiener_correct(g, c, 0.1);
  EXPECT_NEAR(g[0].real(), 1 * 0.5 / (0.25 + 0.1), 1e-6);
  EXPECT_NEAR(g[1].imag(), -1 * -0.25 / (0.0625 + 0.1), 1e-6);
  EXPECT_NEAR(std::abs(g[2]), 0, 1e-6);
  Grid<float> wrong(2, 1);
  EXPECT_THROW(phase_flip(g, wrong), InputError);
  EXPECT_THROW(wiener_correct(g, c, 0), InputError);
}

// Compare relion_project images of a point mass with Regula's CTF: after
// removing the point's phase ramp, each image transform is RELION's CTF times
// a constant. Records failures. `point` is the point mass position relative
// to the map centre (pixels); `amplitude` > 0 also checks that constant (the
// least-squares fit of the transform by the CTF) to 1%.
static void check_point_mass_projections(const std::string& star_path, const std::string& mrcs_path, const Vec3& point,
                                         double min_corr, double amplitude = 0) {
  const auto doc = star::read(star_path);
  const auto& optics = doc.require("optics");
  const auto& parts = doc.require("particles");
  const Grid<float> stack = mrc::read(mrcs_path);
  const int n = stack.nx();
  ASSERT_EQ(int(parts.rows()), stack.nz());
  const double px = optics.number(0, optics.require_column("rlnImagePixelSize"));
  CtfParams base;
  base.voltage_kv = optics.number(0, optics.require_column("rlnVoltage"));
  base.cs_mm = optics.number(0, optics.require_column("rlnSphericalAberration"));
  base.amplitude_contrast = optics.number(0, optics.require_column("rlnAmplitudeContrast"));
  auto col = [&](const char* l) { return parts.require_column(l); };
  auto num_or = [&](size_t r, const char* l, double fallback) {
    const int c = parts.column(l);
    return c < 0 ? fallback : parts.number(r, c);
  };
  for (size_t r = 0; r < parts.rows(); ++r) {
    CtfParams p = base;
    p.defocus_u = parts.number(r, col("rlnDefocusU"));
    p.defocus_v = parts.number(r, col("rlnDefocusV"));
    p.defocus_angle = parts.number(r, col("rlnDefocusAngle"));
    p.phase_shift = num_or(r, "rlnPhaseShift", 0);
    p.bfactor = num_or(r, "rlnCtfBfactor", 0);
    p.scale = num_or(r, "rlnCtfScalefactor", 1);
    const Grid<float> ctf = Ctf(p).half_complex(n, px);

    Grid<float> img(n, n);
    std::copy(stack.section(int(r)), stack.section(int(r)) + size_t(n) * n, img.data());
    Grid<cfloat> F = fft_forward(img);
    centre_origin(F, n);
    // Image position of the point: (A * point)[0..1] minus the origin offset
    // (relion_project moves projections by -rlnOriginX/YAngst).
    const Mat3 a = euler_to_matrix(parts.number(r, col("rlnAngleRot")), parts.number(r, col("rlnAngleTilt")),
                                   parts.number(r, col("rlnAnglePsi")));
    const Vec3 q = matvec(a, point);
    const double sx = q[0] - num_or(r, "rlnOriginXAngst", 0) / px;
    const double sy = q[1] - num_or(r, "rlnOriginYAngst", 0) / px;
    double sxy = 0, sxx = 0, syy = 0, sx1 = 0, sy1 = 0, m = 0;
    int low = 0, low_agree = 0;
    for (int j = 0; j < n; ++j)
      for (int i = 0; i <= n / 2; ++i) {
        const int ky = fft_freq(j, n);
        const double k2 = double(i) * i + double(ky) * ky;
        if (k2 >= double(n / 2) * (n / 2)) continue;
        const double ph = 2 * kPiT * (i * sx + ky * sy) / n;
        const double re = (std::complex<double>(F(i, j)) * std::polar(1.0, ph)).real();
        const double c = ctf(i, j);
        sxy += re * c, sxx += c * c, syy += re * re, sx1 += c, sy1 += re, m += 1;
        if (k2 <= 36 && std::abs(c) > 0.05) {
          ++low;
          low_agree += (re > 0) == (c > 0);
        }
      }
    const double corr = (sxy - sx1 * sy1 / m) / std::sqrt((sxx - sx1 * sx1 / m) * (syy - sy1 * sy1 / m));
    EXPECT_GT(corr, min_corr) << star_path << " particle " << r;
    if (amplitude > 0) {
      EXPECT_NEAR(sxy / sxx, amplitude, 0.01 * amplitude) << star_path << " particle " << r;
    }
    EXPECT_GT(low, 10) << star_path << " particle " << r;
    EXPECT_EQ(low_agree, low) << star_path << " particle " << r << ": CTF sign differs at low frequency";
  }
}

// relion_project (--ctf, padding 3) of a point mass at voxel (49, 32, 32), 17 px
// along +x from the map centre, for 24 real poses/CTFs (tests/data/ctf/README.md).
// Correlation measured 0.9992-0.9998 (the rest is RELION's Fourier interpolation).
TEST(Ctf, MatchesRelionProjectPointMass) {
  const std::string dir = std::string(REGULA_TEST_DATA) + "/ctf/";
  check_point_mass_projections(dir + "pyem.star", dir + "relion_proj_batch_pfac3.mrcs", {17, 0, 0}, 0.995);
}

// A fresh relion_project run made by tests/python/test_ctf_relion.py (astigmatism,
// phase shift, B-factor, scale): it sets REGULA_CTF_FRESH_DIR to a folder holding
// proj.star and proj.mrcs of a unit point mass at the map centre, whose
// transforms are then the CTF itself (measured correlation >= 0.9995, amplitude
// 0.9967-1.0000).
TEST(Ctf, MatchesFreshRelionRun) {
  const char* dir = std::getenv("REGULA_CTF_FRESH_DIR");
  if (!dir) GTEST_SKIP() << "run by tests/python/test_ctf_relion.py";
  check_point_mass_projections(std::string(dir) + "/proj.star", std::string(dir) + "/proj.mrcs", {0, 0, 0}, 0.999,
                               1.0);
}

// The fits of imaging/aberration_fit.hpp (`regula ctf_refine`) on sums made here from known
// aberrations: each recovers the truth from noisy per-pixel sums, follows phases of several
// turns, and its bases agree with the optics model's own phases (optics_model.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "regula/imaging/aberration_fit.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/zernike.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

using namespace regula;

namespace {

// Half-plane pixel grid of a 128 px box at 1 Å/px out to 0.45 1/Å, from 0.05 1/Å.
struct Pixels {
  std::vector<double> fx, fy, kx, ky;
};
Pixels pixels() {
  Pixels p;
  const int m = 128;
  for (int y = -m / 2; y < m / 2; ++y)
    for (int x = 0; x <= m / 2; ++x) {
      if (x == 0 && y <= 0) continue;
      const double fx = x / double(m), fy = y / double(m), r = std::hypot(fx, fy);
      if (r < 0.05 || r > 0.45) continue;
      p.kx.push_back(x);
      p.ky.push_back(y);
      p.fx.push_back(fx);
      p.fy.push_back(fy);
    }
  return p;
}

double phase_of(const PhaseBasis& b, const std::vector<double>& c, double fx, double fy) {
  std::vector<double> v(size_t(b.size));
  b.eval(fx, fy, v.data());
  double s = 0;
  for (size_t j = 0; j < c.size(); ++j) s += c[j] * v[j];
  return s;
}

}  // namespace

TEST(AberrationFit, BeamTiltOfSeveralTurnsFromNoisySums) {
  // 1.5 mrad at Cs 2.7 mm, 300 kV reaches ~8 rad at 0.45 1/Å: the phase wraps more than once.
  // Per-pixel amplitude SNR 2; over seeds the estimates spread by about 0.01 mrad (measured), so
  // 0.05 mrad is a 5-sigma bound (the acceptance asks for 0.1 mrad).
  const Pixels p = pixels();
  const double lam = electron_wavelength(300), cs = 2.7e7;
  const PhaseBasis b = beam_tilt_basis(cs, lam);
  const std::vector<double> truth{1.5, -0.8, 3.0, -2.0};
  EXPECT_GT(std::abs(phase_of(b, truth, 0.45, 0)), 2 * M_PI);
  for (uint64_t seed : {5, 6, 7}) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> noise(0.0, 1.0);
    std::vector<cdouble> xy(p.fx.size());
    for (size_t k = 0; k < xy.size(); ++k) {
      const double phi = phase_of(b, truth, p.fx[k], p.fy[k]);
      xy[k] = 2.0 * std::polar(1.0, phi) + cdouble(noise(rng), noise(rng));
    }
    const std::vector<double> c = fit_odd_phase(p.fx, p.fy, xy, b, {});
    EXPECT_NEAR(c[0], truth[0], 0.05) << seed;
    EXPECT_NEAR(c[1], truth[1], 0.05) << seed;
  }
}

TEST(AberrationFit, BeamTiltBasisIsTheModelsPhaseAndExtractionKeepsIt) {
  // The basis with (tx, ty) in mrad equals the optics model's phase for rlnBeamTiltX/Y, and the beam
  // tilt taken out of odd Zernike coefficients leaves the same total phase (model: tilt + Zernikes).
  const std::string s =
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n_rlnVoltage\n"
      "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnBeamTiltX\n_rlnBeamTiltY\n_rlnOddZernike\n"
      "1 1.0 128 300 2.7 0.1 0.7 -0.4 [0.2,-0.1,3,0,0,-5]\n\ndata_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n"
      "_rlnOpticsGroup\n1@x.mrcs 10000 1\n";
  ParticleTable t = ParticleTable::from_document(star::parse(s, "t.star"));
  OpticsModel m(t);
  const double lam = electron_wavelength(300), cs = 2.7e7;
  const PhaseBasis tilt = beam_tilt_basis(cs, lam);
  const PhaseBasis odd = odd_zernike_basis(3);
  ASSERT_EQ(odd.size, 6);
  // All odd coefficients carrying the beam tilt (RELION's rule), then taken out again.
  const double a = -2 * M_PI * cs * lam * lam * 1e-3 / 3;
  std::vector<double> c{0.2 + 2 * a * -0.4, -0.1 + 2 * a * 0.7, 3, a * -0.4, a * 0.7, -5};
  for (double fx : {-0.3, 0.1, 0.25})
    for (double fy : {-0.2, 0.05, 0.4}) {
      EXPECT_NEAR(phase_of(odd, c, fx, fy), m.group(0).phase_at(fx, fy), 1e-9);
      EXPECT_NEAR(phase_of(tilt, {0.7, -0.4, 0, 0}, fx, fy) + phase_of(odd, {0.2, -0.1, 3, 0, 0, -5}, fx, fy),
                  m.group(0).phase_at(fx, fy), 1e-9);
    }
  const auto tt = extract_beam_tilt(c, cs, lam);
  EXPECT_NEAR(tt[0], 0.7, 1e-12);
  EXPECT_NEAR(tt[1], -0.4, 1e-12);
  const std::vector<double> rest{0.2, -0.1, 3, 0, 0, -5};
  for (size_t j = 0; j < 6; ++j) EXPECT_NEAR(c[j], rest[j], 1e-12);
}

TEST(AberrationFit, OddZernikesFromNoisySums) {
  // RELION's unnormalised Zernikes are nearly collinear over a band of frequencies (Z(3,-1) is
  // about -1.7 Z(1,-1) below 0.45 1/Å), so single coefficients are ill-determined; the phase they
  // make is what must be recovered.
  const Pixels p = pixels();
  const PhaseBasis b = odd_zernike_basis(3);
  // Beam tilt (0.8, -0.5) mrad written as Zernikes (RELION's rule), plus trefoil and a small shift.
  const double lam = electron_wavelength(300), a = -2 * M_PI * 2.7e7 * lam * lam * 1e-3 / 3;
  const std::vector<double> truth{0.3 + 2 * a * -0.5, -0.2 + 2 * a * 0.8, 40, a * -0.5, a * 0.8, 70};
  std::mt19937_64 rng(6);
  std::normal_distribution<double> noise(0.0, 1.0);
  std::vector<cdouble> xy(p.fx.size());
  for (size_t k = 0; k < xy.size(); ++k)
    xy[k] = 2.0 * std::polar(1.0, phase_of(b, truth, p.fx[k], p.fy[k])) + cdouble(noise(rng), noise(rng));
  double largest = 0;
  for (size_t k = 0; k < xy.size(); ++k) largest = std::max(largest, std::abs(phase_of(b, truth, p.fx[k], p.fy[k])));
  EXPECT_GT(largest, 2 * M_PI);
  const std::vector<double> c = fit_odd_phase(p.fx, p.fy, xy, b, {});
  double worst = 0;
  for (size_t k = 0; k < xy.size(); k += 7)
    worst = std::max(worst, std::abs(phase_of(b, c, p.fx[k], p.fy[k]) - phase_of(b, truth, p.fx[k], p.fy[k])));
  EXPECT_LT(worst, 0.05);
}

TEST(AberrationFit, EvenZernikesFromParticleSums) {
  // Sums built as ctf_refine builds them, from particles of many defoci whose images are
  // -sin(gamma + d) Q + noise with a known offset d(f); the fitted offset equals d modulo 2 pi.
  const Pixels p = pixels();
  const PhaseBasis b = even_zernike_basis(4);
  ASSERT_EQ(b.size, 9);
  const std::vector<double> truth{0, 8, 0, -6, 30, 0, -20, 0, 15};
  std::mt19937_64 rng(7);
  std::normal_distribution<double> noise(0.0, 1.0);
  std::uniform_real_distribution<double> defocus(5000, 25000);
  const double lam = electron_wavelength(300);
  std::vector<EvenSums> sums(p.fx.size());
  for (int i = 0; i < 60; ++i) {
    const double df = defocus(rng);
    for (size_t k = 0; k < sums.size(); ++k) {
      const double f2 = p.fx[k] * p.fx[k] + p.fy[k] * p.fy[k];
      const double gamma = -M_PI * lam * df * f2;
      const double d = phase_of(b, truth, p.fx[k], p.fy[k]);
      const cdouble Q(noise(rng), noise(rng));  // the reference's coefficient
      const cdouble X = -std::sin(gamma + d) * Q + 0.3 * cdouble(noise(rng), noise(rng));
      const double R = std::real(X * std::conj(Q)), P = std::norm(Q);
      const double t0 = std::sin(gamma), t1 = std::cos(gamma);
      sums[k].b0 += R * t0;
      sums[k].b1 += R * t1;
      sums[k].m00 += P * t0 * t0;
      sums[k].m01 += P * t0 * t1;
      sums[k].m11 += P * t1 * t1;
    }
  }
  const std::vector<double> c = fit_even_phase(p.fx, p.fy, sums, b, {});
  double worst = 0;
  for (size_t k = 0; k < sums.size(); k += 7) {
    const double diff = phase_of(b, c, p.fx[k], p.fy[k]) - phase_of(b, truth, p.fx[k], p.fy[k]);
    worst = std::max(worst, std::abs(std::remainder(diff, 2 * M_PI)));
  }
  EXPECT_LT(worst, 0.05);
  // The per-pixel optimum agrees too (at a pixel of 0.3 1/Å).
  size_t k0 = 0;
  while (std::hypot(p.fx[k0], p.fy[k0]) < 0.3) ++k0;
  EXPECT_LT(std::abs(std::remainder(best_even_offset(sums[k0]) - phase_of(b, truth, p.fx[k0], p.fy[k0]), 2 * M_PI)),
            0.1);
}

TEST(AberrationFit, DisplacementMatrixFromExactSums) {
  // Per pixel, A and b of a known displacement d = D k with b = A d (noise-free): D exactly.
  const Pixels p = pixels();
  const Mat2 D{{{0.012, 0.004}, {-0.003, -0.009}}};
  std::mt19937_64 rng(8);
  std::uniform_real_distribution<double> u(0.5, 2.0);
  std::vector<MagSums> sums(p.kx.size());
  for (size_t k = 0; k < sums.size(); ++k) {
    MagSums& s = sums[k];
    s.a00 = u(rng);
    s.a11 = u(rng);
    s.a01 = 0.3 * std::sqrt(s.a00 * s.a11);
    const double d0 = D[0][0] * p.kx[k] + D[0][1] * p.ky[k], d1 = D[1][0] * p.kx[k] + D[1][1] * p.ky[k];
    s.b0 = s.a00 * d0 + s.a01 * d1;
    s.b1 = s.a01 * d0 + s.a11 * d1;
  }
  const Mat2 fit = fit_displacement(p.kx, p.ky, sums);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) EXPECT_NEAR(fit[i][j], D[i][j], 1e-12);
}

TEST(AberrationFit, DefocusFormRoundTrip) {
  for (double angle : {-60.0, 0.0, 25.0, 89.0}) {
    const DefocusForm f = defocus_form(15000, 14200, angle);
    const auto uva = defocus_uva(f);
    EXPECT_NEAR(uva[0], 15000, 1e-9);
    EXPECT_NEAR(uva[1], 14200, 1e-9);
    EXPECT_NEAR(uva[2], angle, 1e-9);
    // The form is the CTF's defocus along each direction (imaging/ctf.hpp).
    CtfParams cp;
    cp.defocus_u = 15000;
    cp.defocus_v = 14200;
    cp.defocus_angle = angle;
    cp.cs_mm = 0;
    cp.amplitude_contrast = 0;
    const Ctf ctf(cp);
    const double lam = electron_wavelength(300);
    for (double a : {0.1, 1.0, 2.5}) {
      const double fx = 0.2 * std::cos(a), fy = 0.2 * std::sin(a);
      const double df = f.d + f.a1 * std::cos(2 * a) + f.a2 * std::sin(2 * a);
      EXPECT_NEAR(ctf.gamma(fx, fy), -M_PI * lam * df * 0.04, 1e-9);
    }
  }
}

TEST(AberrationFit, SmallSolveRefusesSingularSystems) {
  std::vector<double> x{1, 2};
  EXPECT_FALSE(solve_small({1, 2, 2, 4}, x, 2));
  x = {3, 5};
  ASSERT_TRUE(solve_small({2, 1, 1, 3}, x, 2));
  EXPECT_NEAR(x[0], 0.8, 1e-12);
  EXPECT_NEAR(x[1], 1.4, 1e-12);
}

// The separable pose search of refine3d (estep/pose_search.hpp): its scores equal the direct
// particle-frame scores of RELION's model (projection at the full pose, scores.hpp formula), it finds
// the true pose of a noise-free projection, and its weighted sums back-project to the map.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/estep/scores.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {

// The 70S test map windowed to 48 px (tests/data/proj/clean70S_crop48.mrc).
Volume test_map() { return mrc::read(std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc"); }

// Direct score in the particle frame: sum_k w Re(conj(X^t) s C P_A) - 1/2 sum s^2 C^2 w |P_A|^2 over
// the pixels k of px, with P_A the projection at the full pose (Projector::project).
double direct_score(const estep::RotatableParticle& x, const estep::SearchPixels& px, const std::vector<float>& w,
                    float s, const Projector& proj, double rot, double tilt, double psi, double tx, double ty) {
  const int n = px.n;
  Grid<cfloat> P = proj.project(euler_to_matrix(rot, tilt, psi));
  double sum = 0;
  for (size_t q = 0; q < px.size(); ++q) {
    const int kx = int(px.kx[q]), ky = int(px.ky[q]);
    const cfloat pv = P(kx, ky >= 0 ? ky : ky + n);
    const double ph = -2 * kPi * (kx * tx + ky * ty) / n;
    const std::complex<double> X = std::complex<double>(x.on_grid(kx, ky)) * std::polar(1.0, ph);
    const double c = x.ctf(kx, ky), wq = w[size_t(px.shell[q])];
    const std::complex<double> M = double(s) * c * std::complex<double>(pv);
    sum += wq * (std::conj(X) * M).real() - 0.5 * wq * std::norm(M);
  }
  return sum;
}

// The image model of a particle of box n at 4 Å/px (CTF only).
OpticsGroupModel plain_group(int n) {
  OpticsGroupModel g;
  g.box = n;
  g.pixel_size = 4.0;
  return g;
}

// A CTF of constant value: no Cs, no defocus, no amplitude contrast, a 90-degree phase shift.
CtfParams flat_ctf() {
  CtfParams cp;
  cp.cs_mm = 0;
  cp.amplitude_contrast = 0;
  cp.phase_shift = 90;
  return cp;
}

// A noise-free particle of the map seen through the mapping T (image Fourier px -> reference px):
// V(A^T (T k, 0)) at every pixel of the half plane, times the flat CTF's sign, in real space.
Image mapped_particle(const Projector& proj, int n, const Mat2& T, const Euler& pose) {
  const estep::SearchPixels all = estep::search_pixels(n, n / 2 - 2);
  estep::SearchPixels mapped = all;
  for (size_t q = 0; q < all.size(); ++q) {
    mapped.kx[q] = float(T[0][0] * all.kx[q] + T[0][1] * all.ky[q]);
    mapped.ky[q] = float(T[1][0] * all.kx[q] + T[1][1] * all.ky[q]);
  }
  std::vector<float> s(2 * all.size()), s2(all.size());
  estep::project_orientation(proj, mapped, pose, s.data(), s2.data());
  const float sign = float(ParticleOptics(plain_group(n), flat_ctf()).ctf_value(3, 4));
  Grid<cfloat> F(n / 2 + 1, n);
  for (size_t q = 0; q < all.size(); ++q) {
    const int kx = int(all.kx[q]), ky = int(all.ky[q]);
    F(kx, fft_index(ky, n)) = sign * cfloat(s[2 * q], s[2 * q + 1]);
    if (kx == 0) F(0, fft_index(-ky, n)) = sign * cfloat(s[2 * q], -s[2 * q + 1]);
  }
  return from_fourier_centred(F, n);
}

// The coarse pass (search_poses, reference frame) at one orientation and the translations `trans`.
estep::PoseResult coarse_at(const Projector& proj, const estep::RotatableParticle& x, const estep::SearchPixels& px,
                            const std::vector<float>& w, const Euler& pose,
                            const std::vector<std::array<double, 2>>& trans) {
  estep::PoseSet ps;
  ps.psi = {pose.psi};
  ps.trans = trans;
  std::vector<std::array<double, 2>> dirs = {{pose.rot, pose.tilt}};
  ps.dirs = dirs;
  estep::Slices sl;
  estep::project_slices(proj, px, dirs, sl);
  estep::SearchWork work;
  estep::PoseResult res;
  estep::search_poses(x, px, w, 1.0f, sl, ps, {}, work, res);
  return res;
}

// The fine pass (search_direct over the image pixels px, the reference projected at T k).
estep::PoseResult fine_at(const Projector& proj, const estep::RotatableParticle& x, const estep::SearchPixels& px,
                          const Mat2& T, const std::vector<float>& w, const Euler& pose,
                          const std::vector<std::array<double, 2>>& trans) {
  estep::SearchPixels ref = px;
  for (size_t q = 0; q < px.size(); ++q) {
    ref.kx[q] = float(T[0][0] * px.kx[q] + T[0][1] * px.ky[q]);
    ref.ky[q] = float(T[1][0] * px.kx[q] + T[1][1] * px.ky[q]);
  }
  std::vector<Euler> angles{pose};
  estep::Slices refs;
  estep::project_orientations(proj, ref, angles, refs);
  estep::SearchWork work;
  estep::PoseResult res;
  estep::search_direct(x, px, w, 1.0f, refs, trans, {}, {}, {}, work, res);
  return res;
}

}  // namespace

TEST(PoseSearch, ScoresMatchTheDirectParticleFrameScores) {
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  // A particle: projection at some pose plus noise, with a CTF.
  Image img = proj.project_real(euler_to_matrix(30, 60, 0), 1.5, -2.0);
  auto rng = make_rng(3, 1);
  for (auto& v : img) v += float(0.5 * normal01(rng));
  apply_spherical_mask(img, 20, 3, MaskFill::BackgroundMean);
  CtfParams cp;
  cp.defocus_u = cp.defocus_v = 15000;
  const OpticsGroupModel group = plain_group(n);
  estep::RotatableParticle x(img, 0, 0, ParticleOptics(group, cp));
  const estep::SearchPixels px = estep::search_pixels(n, 14);
  std::vector<float> w(size_t(n / 2 + 1), 0.0f);
  for (size_t s = 1; s < w.size(); ++s) w[s] = float(1.0 / (1.0 + 0.1 * double(s)));
  estep::PoseSet ps;
  ps.psi = {0, 17, -40};
  ps.trans = {{0, 0}, {1, 0.5}, {-2, 1}};
  std::vector<std::array<double, 2>> dirs = {{30, 60}, {-120, 100}, {75, 10}};
  ps.dirs = dirs;
  estep::Slices sl;
  estep::project_slices(proj, px, dirs, sl);
  estep::SearchWork work;
  estep::PoseResult res;
  // Scores are log-posteriors up to a constant: compare differences to the first pose through the
  // posterior weights: log w(j) - log w(0) = L(j) - L(0).
  estep::search_poses(x, px, w, 1.3f, sl, ps, {}, work, res);
  ASSERT_TRUE(res.valid);
  const double L0 = direct_score(x, px, w, 1.3f, proj, dirs[0][0], dirs[0][1], ps.psi[0], 0, 0);
  double worst = 0, scale = 0;
  for (size_t p = 0; p < 3; ++p)
    for (size_t t = 0; t < 3; ++t)
      for (size_t d = 0; d < 3; ++d) {
        const double Lj = direct_score(x, px, w, 1.3f, proj, dirs[d][0], dirs[d][1], ps.psi[p], ps.trans[t][0],
                                       ps.trans[t][1]);
        const float wj = res.weight[(p * 3 + t) * 3 + d], w0 = res.weight[0];
        if (wj <= 0 || w0 <= 0) continue;
        worst = std::max(worst, std::abs((std::log(double(wj)) - std::log(double(w0))) - (Lj - L0)));
        scale = std::max(scale, std::abs(Lj - L0));
      }
  // The separable search sums over the rotated pixel grid (the particle interpolated in its
  // 2x-padded transform) instead of the particle's own grid: for a masked particle the two sums
  // differ by the resampling of the noise near the frequency limit, measured at 9% of the score
  // range here with padding 2, 3 or 4 alike (so it is not interpolation error). Wrong conventions
  // (psi sign, translation direction, CTF frame) give errors of the order of the range itself.
  EXPECT_GT(scale, 10.0);
  EXPECT_LT(worst, 0.12 * scale) << "worst " << worst << " of " << scale;
}

TEST(PoseSearch, DirectSearchEqualsTheParticleFrameScores) {
  // search_direct scores on the particle's own grid with projections at the full orientation: the
  // same sums as the direct formula, so the log-weight differences agree to float rounding.
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  Image img = proj.project_real(euler_to_matrix(30, 60, 10), 1.5, -2.0);
  auto rng = make_rng(3, 2);
  for (auto& v : img) v += float(0.5 * normal01(rng));
  apply_spherical_mask(img, 20, 3, MaskFill::BackgroundMean);
  CtfParams cp;
  cp.defocus_u = 14000;
  cp.defocus_v = 16000;
  cp.defocus_angle = 30;
  const OpticsGroupModel group = plain_group(n);
  estep::RotatableParticle x(img, 0, 0, ParticleOptics(group, cp));
  const estep::SearchPixels px = estep::search_pixels(n, 14);
  std::vector<float> w(size_t(n / 2 + 1), 0.0f);
  for (size_t s = 1; s < w.size(); ++s) w[s] = float(1.0 / (1.0 + 0.1 * double(s)));
  const std::vector<Euler> ang = {{30, 60, 10}, {-120, 100, 17}, {75, 10, -40}, {31, 61, 12}};
  const std::vector<std::array<double, 2>> tr = {{0, 0}, {1, 0.5}, {-2, 1}};
  estep::Slices sl;
  estep::project_orientations(proj, px, ang, sl);
  estep::SearchWork work;
  estep::PoseResult res;
  estep::search_direct(x, px, w, 1.3f, sl, tr, {}, {}, {}, work, res);
  ASSERT_TRUE(res.valid);
  const double L0 = direct_score(x, px, w, 1.3f, proj, ang[0].rot, ang[0].tilt, ang[0].psi, 0, 0);
  for (size_t t = 0; t < tr.size(); ++t)
    for (size_t j = 0; j < ang.size(); ++j) {
      const float wj = res.weight[t * ang.size() + j], w0 = res.weight[0];
      if (wj <= 0 || w0 <= 0) continue;
      const double Lj = direct_score(x, px, w, 1.3f, proj, ang[j].rot, ang[j].tilt, ang[j].psi, tr[t][0], tr[t][1]);
      EXPECT_NEAR(std::log(double(wj)) - std::log(double(w0)), Lj - L0, 1e-3 * std::max(1.0, std::abs(Lj - L0)));
    }
}

// project_orientations fills its rows by pixel blocks over all orientations at once: each row is the
// orientation's own projection, bit for bit (pixels over several blocks, beyond the limit too).
TEST(PoseSearch, BlockedProjectionsEqualOneByOne) {
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2, n / 2 - 4);
  const estep::SearchPixels px = estep::search_pixels(n, n / 2);
  ASSERT_GT(px.size(), 200u);
  const std::vector<Euler> ang = {{30, 60, 10}, {30.4, 60.2, 10.5}, {-120, 100, 17}, {75, 10, -40}, {31, 61, 12}};
  std::vector<float> s(ang.size() * 2 * px.size()), s2(ang.size() * px.size());
  estep::project_orientations(proj, px, ang, s.data(), s2.data());
  std::vector<float> a(2 * px.size()), a2(px.size());
  for (size_t j = 0; j < ang.size(); ++j) {
    estep::project_orientation(proj, px, ang[j], a.data(), a2.data());
    for (size_t q = 0; q < px.size(); ++q) {
      ASSERT_EQ(s[j * 2 * px.size() + 2 * q], a[2 * q]) << j << " " << q;
      ASSERT_EQ(s[j * 2 * px.size() + 2 * q + 1], a[2 * q + 1]) << j << " " << q;
      ASSERT_EQ(s2[j * px.size() + q], a2[q]) << j << " " << q;
    }
  }
  // And a row is the central slice: the value at pixel q equals Projector::project's at (kx, ky).
  Grid<cfloat> slice;
  proj.project(euler_to_matrix(ang[2].rot, ang[2].tilt, ang[2].psi), slice);
  double err = 0, mag = 0;
  for (size_t q = 0; q < px.size(); ++q) {
    const int kx = int(px.kx[q]), ky = int(px.ky[q]);
    if (kx * kx + ky * ky > (n / 2 - 4) * (n / 2 - 4)) continue;
    const cfloat v = slice(kx, ky < 0 ? ky + n : ky);
    err = std::max(err, double(std::abs(v - cfloat(s[2 * 2 * px.size() + 2 * q], s[2 * 2 * px.size() + 2 * q + 1]))));
    mag = std::max(mag, double(std::abs(v)));
  }
  EXPECT_GT(mag, 0);
  EXPECT_LT(err, 1e-5 * mag);
}

TEST(PoseSearch, FindsTheTruePoseOfANoiseFreeProjection) {
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  const double rot = -50, tilt = 70, psi = 120, dx = 2, dy = -1;
  // Particle = projection moved by -origin: origin (dx, dy) -> content moved by (-dx, -dy).
  Image img = proj.project_real(euler_to_matrix(rot, tilt, psi), -dx, -dy);
  estep::RotatableParticle x(img, 0, 0, std::nullopt);
  const estep::SearchPixels px = estep::search_pixels(n, 16);
  std::vector<float> w(size_t(n / 2 + 1), 1e-3f);
  estep::PoseSet ps;
  for (int p = -3; p <= 3; ++p) ps.psi.push_back(psi + 10 * p);
  for (int a = -2; a <= 2; ++a)
    for (int b = -2; b <= 2; ++b) ps.trans.push_back({double(a), double(b)});
  std::vector<std::array<double, 2>> dirs;
  for (int a = -2; a <= 2; ++a)
    for (int b = -2; b <= 2; ++b) dirs.push_back({rot + 10 * a, tilt + 10 * b});
  ps.dirs = dirs;
  estep::Slices sl;
  estep::project_slices(proj, px, dirs, sl);
  estep::SearchWork work;
  estep::PoseResult res;
  estep::search_poses(x, px, w, 1.0f, sl, ps, {}, work, res);
  ASSERT_TRUE(res.valid);
  EXPECT_DOUBLE_EQ(ps.psi[res.best_p], psi);
  EXPECT_DOUBLE_EQ(dirs[res.best_d][0], rot);
  EXPECT_DOUBLE_EQ(dirs[res.best_d][1], tilt);
  // The search translation t moves the particle by +t: the origin (dx, dy) is recovered.
  EXPECT_DOUBLE_EQ(ps.trans[res.best_t][0], dx);
  EXPECT_DOUBLE_EQ(ps.trans[res.best_t][1], dy);
  // Cross-correlation mode finds it too.
  estep::SearchOptions cc;
  cc.cross_correlation = true;
  estep::search_poses(x, px, w, 1.0f, sl, ps, cc, work, res);
  EXPECT_DOUBLE_EQ(ps.psi[res.best_p], psi);
  EXPECT_DOUBLE_EQ(dirs[res.best_d][0], rot);
  EXPECT_DOUBLE_EQ(ps.trans[res.best_t][0], dx);
}

TEST(PoseSearch, WeightedSumsBackProjectToTheMap) {
  // Noise-free projections at known poses, hard weights at the true pose: the sums inserted with
  // insert_pixels reconstruct the map (FSC > 0.9 up to shell 12 of 24).
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  const estep::SearchPixels px = estep::search_pixels(n, n / 2);
  std::vector<float> w(size_t(n / 2 + 1), 1.0f);
  BackProjector bp(n, 2, n / 2, 3);
  auto rng = make_rng(7, 2);
  estep::SearchWork work;
  estep::PoseResult res;
  std::vector<float> data, weight;
  for (int i = 0; i < 600; ++i) {
    const double rot = 360 * uniform01(rng) - 180, tilt = rad2deg(std::acos(2 * uniform01(rng) - 1)),
                 psi = 360 * uniform01(rng) - 180;
    Image img = proj.project_real(euler_to_matrix(rot, tilt, psi));
    estep::RotatableParticle x(img, 0, 0, std::nullopt);
    estep::PoseSet ps;
    ps.psi = {psi};
    ps.trans = {{0, 0}};
    std::vector<std::array<double, 2>> dirs = {{rot, tilt}};
    ps.dirs = dirs;
    estep::Slices sl;
    estep::project_slices(proj, px, dirs, sl);
    estep::search_poses(x, px, w, 1.0f, sl, ps, {}, work, res);
    auto used = estep::pose_sums(res, px.size(), work, data, weight);
    ASSERT_EQ(used.size(), 1u);
    bp.insert_pixels(px.kx, px.ky, data.data(), weight.data(), euler_to_matrix(rot, tilt, 0));
  }
  ReconstructOptions ro;
  Volume rec = bp.reconstruct(ro);
  std::vector<double> f = fsc(rec, map);
  for (int s = 1; s <= 12; ++s) EXPECT_GT(f[size_t(s)], 0.9) << "shell " << s;
}

// The particle's image model (imaging/optics_model.hpp): a beam-tilted image is corrected once by
// exp(-i phi) (RELION's demodulatePhase), so the particle's transform is that of the image without
// the tilt, both on the grid and interpolated (analytic: the phase is applied here in Fourier space).
TEST(PoseSearch, ParticleRemovesTheAberrationPhase) {
  const int n = 48;
  Image img(n, n);
  auto rng = make_rng(5, 2);
  for (auto& v : img) v = float(normal01(rng));
  {  // band-limited below Nyquist: at the Nyquist row and column an odd phase has no real image
    Grid<cfloat> G = fourier_centred(img);
    for (int y = 0; y < n; ++y)
      for (int kx = 0; kx <= n / 2; ++kx) {
        const int ky = fft_freq(y, n);
        if (kx * kx + ky * ky > (n / 2 - 2) * (n / 2 - 2)) G(kx, y) = 0;
      }
    img = from_fourier_centred(G, n);
  }
  OpticsGroupModel tilted = plain_group(n);
  tilted.pixel_size = 1.2;
  // 3 mrad along x at 300 kV, Cs 2.7 mm: up to about 6 rad at Nyquist (2.4 Å).
  const double a = -2 * kPi * 2.7e7 * std::pow(electron_wavelength(300), 2) * 1e-3 / 3;
  tilted.odd = {0.0, 2 * a * 3.0, 0.0, 0.0, a * 3.0, 0.0};
  ASSERT_TRUE(tilted.has_phase());
  Grid<cfloat> F = fourier_centred(img);
  tilted.modulate(F);  // the tilted image
  const Image observed = from_fourier_centred(F, n);
  CtfParams cp;
  cp.defocus_u = cp.defocus_v = 12000;
  const estep::RotatableParticle x(observed, 0, 0, ParticleOptics(tilted, cp));
  const estep::RotatableParticle plain(img, 0, 0, std::nullopt);
  double max_phase = 0, err = 0, ref = 0, err_i = 0, ref_i = 0;
  for (int ky = -n / 2; ky < n / 2; ++ky)
    for (int kx = 0; kx <= n / 2; ++kx) {
      const auto f = tilted.frequency(kx, ky);
      max_phase = std::max(max_phase, std::abs(tilted.phase_at(f[0], f[1])));
      err += std::norm(x.on_grid(kx, ky) - plain.on_grid(kx, ky));
      ref += std::norm(plain.on_grid(kx, ky));
      if (kx * kx + ky * ky < (n / 2 - 2) * (n / 2 - 2)) {  // interpolated, away from the edge
        err_i += std::norm(x.value(kx + 0.5, ky + 0.25) - plain.value(kx + 0.5, ky + 0.25));
        ref_i += std::norm(plain.value(kx + 0.5, ky + 0.25));
      }
    }
  EXPECT_GT(max_phase, 3.0);                    // the phase is large, so the check can fail
  EXPECT_LT(std::sqrt(err / ref), 1e-5);        // float round-off of two transforms
  EXPECT_LT(std::sqrt(err_i / ref_i), 1e-5);
  // Uncorrected, the same transform differs at the level of the phase.
  OpticsGroupModel untilted = tilted;
  untilted.odd.clear();
  const estep::RotatableParticle wrong(observed, 0, 0, ParticleOptics(untilted, cp));
  double err_w = 0;
  for (int ky = -n / 2; ky < n / 2; ++ky)
    for (int kx = 0; kx <= n / 2; ++kx) err_w += std::norm(wrong.on_grid(kx, ky) - plain.on_grid(kx, ky));
  EXPECT_GT(std::sqrt(err_w / ref), 0.3);
}

// CTF-premultiplied data (RELION's ctf_premultiplied): the likelihood's factor is CTF^2, and the
// back-projected rows are data s w X with weight s^2 CTF^2 w (RELION's storeWeightedSums), not the
// scoring rows s CTF^2 w X and s^2 CTF^4 w; phase-flipped data: |CTF| in both, weight CTF^2.
TEST(PoseSearch, PremultipliedAndPhaseFlippedFactors) {
  const int n = 32;
  Image img(n, n);
  auto rng = make_rng(6, 2);
  for (auto& v : img) v = float(normal01(rng));
  CtfParams cp;
  cp.defocus_u = 9000;
  cp.defocus_v = 11000;
  cp.defocus_angle = 20;
  OpticsGroupModel normal = plain_group(n), pre = plain_group(n), flip = plain_group(n);
  pre.premultiplied = true;
  flip.phase_flipped = true;
  const ParticleOptics po(normal, cp);
  const estep::RotatableParticle xn(img, 0, 0, po), xp(img, 0, 0, ParticleOptics(pre, cp)),
      xf(img, 0, 0, ParticleOptics(flip, cp));
  const estep::SearchPixels px = estep::search_pixels(n, 14);
  const std::vector<float> w(size_t(n / 2 + 1), 0.5f);
  const std::vector<std::array<double, 2>> trans{{0.0, 0.0}};
  const float s = 1.3f;
  estep::SearchWork score, sums, fl;
  estep::prepare_direct(xp, px, w, s, trans, score);
  estep::prepare_direct(xp, px, w, s, trans, sums, true);
  estep::prepare_direct(xf, px, w, s, trans, fl, true);
  int negative = 0;
  for (size_t q = 0; q < px.size(); ++q) {
    const double c = po.ctf_value(px.kx[q], px.ky[q]);
    negative += c < 0;
    const std::complex<double> X(xn.on_grid(int(px.kx[q]), int(px.ky[q])));
    auto row = [&](const estep::SearchWork& wk) { return std::complex<double>(wk.q[2 * q], wk.q[2 * q + 1]); };
    const double tol = 1e-5 * (std::abs(X) + 1);
    EXPECT_NEAR(xp.ctf(px.kx[q], px.ky[q]), c * c, 1e-6);
    EXPECT_NEAR(std::abs(row(score) - s * c * c * 0.5 * X), 0.0, tol);
    EXPECT_NEAR(score.b[q], s * s * c * c * c * c * 0.5, 1e-5);
    EXPECT_NEAR(std::abs(row(sums) - s * 0.5 * X), 0.0, tol);
    EXPECT_NEAR(sums.b[q], s * s * c * c * 0.5, 1e-5);
    EXPECT_NEAR(std::abs(row(fl) - s * std::abs(c) * 0.5 * X), 0.0, tol);
    EXPECT_NEAR(fl.b[q], s * s * c * c * 0.5, 1e-5);
  }
  EXPECT_GT(negative, 50);  // the CTF changes sign, so |CTF| and CTF differ
}

// Anisotropic magnification (imaging/optics_model.hpp: the reference seen at T k): a noise-free
// particle made with the matrix M scores best, in the coarse pass (the particle read at T^-1 of the
// rotated reference pixels) and in the fine pass (references projected at T k), with M itself, not
// with its transpose or without it; and the two passes agree at the true pose.
TEST(PoseSearch, MagnifiedParticleScoresBestWithItsOwnMatrix) {
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  const estep::SearchPixels all = estep::search_pixels(n, n / 2 - 2);
  OpticsGroupModel mag = plain_group(n);
  mag.mag = {{{1.06, 0.04}, {-0.02, 0.95}}};
  mag.to_reference = mag.mag;  // same sampling as the reference
  OpticsGroupModel transposed = mag;
  transposed.mag = transposed.to_reference = {{{1.06, -0.02}, {0.04, 0.95}}};
  const OpticsGroupModel none = plain_group(n);
  const Euler pose{30, 60, 17};
  // The particle: V(A^T (M k, 0)) at every pixel of the half plane, the flat CTF's sign.
  const Image img = mapped_particle(proj, n, mag.mag, pose);
  const estep::SearchPixels px = estep::search_pixels(n, 16);
  const std::vector<float> w(size_t(n / 2 + 1), 1.0f);
  auto coarse = [&](const OpticsGroupModel& g) {
    // One pose (psi 17 about the slice at rot 30, tilt 60, no shift): the log-likelihood is its score.
    // The mapping comes with a particle model, which has a CTF: flat_ctf() is +-1 everywhere, and
    // the image carries the same sign.
    const estep::RotatableParticle x(img, 0, 0, ParticleOptics(g, flat_ctf()));
    EXPECT_NEAR(std::abs(x.ctf(3, 4)), 1.0, 1e-6);
    return coarse_at(proj, x, px, w, pose, {{0.0, 0.0}}).log_likelihood;
  };
  auto fine = [&](const OpticsGroupModel& g) {
    const estep::RotatableParticle x(img, 0, 0, ParticleOptics(g, flat_ctf()));
    return fine_at(proj, x, px, g.to_reference, w, pose, {{0.0, 0.0}}).log_likelihood;
  };
  const double c_mag = coarse(mag), c_tr = coarse(transposed), c_none = coarse(none);
  const double f_mag = fine(mag), f_tr = fine(transposed), f_none = fine(none);
  // Noise-free and exact: the score is +1/2 sum |P|^2 at the right model, less by 1/2 sum |P - P'|^2
  // for a wrong one. Measured: fine 5.07 (M), 4.69 (M^T), 4.67 (none); coarse 5.04, 4.71, 4.64 (the
  // map's power is mostly at low frequencies, where the matrix moves little), so a margin of 4%.
  EXPECT_GT(f_mag, 0.0);
  EXPECT_GT(f_mag - f_tr, 0.04 * f_mag) << f_mag << " " << f_tr;
  EXPECT_GT(f_mag - f_none, 0.04 * f_mag) << f_mag << " " << f_none;
  EXPECT_GT(c_mag - c_tr, 0.04 * f_mag) << c_mag << " " << c_tr;
  EXPECT_GT(c_mag - c_none, 0.04 * f_mag) << c_mag << " " << c_none;
  // The coarse pass interpolates the particle: measured 0.6% from the fine pass.
  EXPECT_NEAR(c_mag, f_mag, 0.02 * f_mag);
}

// Optics groups of different pixel sizes (jobs/ml3d.hpp's PixelScale): T = r I with r = P / p. A
// noise-free particle seen through T and moved by d (its own pixels) is found at the translation d,
// not at r d or d / r, by the coarse pass (which moves the particle by T^-T d in the reference frame:
// RotatableParticle::reference_shift, and weighs each reference pixel by the image pixels it stands
// for, 1 / r^2) and by the fine pass; their log-likelihoods over the same region agree within 5%.
// Measured (shells 3-12): 2873 / 2954 (r 1, coarse / fine), 1829 / 1862 (1.2), 6379 / 6269 (0.75); further from 1 the
// coarse pass's interpolation of the particle loses more (709 / 869 at 1.5, 9840 / 10681 at 0.6):
// it only chooses the poses the exact fine pass scores.
TEST(PoseSearch, ParticleOfAnotherPixelSizeIsFoundAtItsOwnShift) {
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  for (double r : {1.2, 0.75}) {  // 12 / r whole: the two passes cover the same region
    OpticsGroupModel g = plain_group(n);
    g.pixel_size = 4.0 / r;
    g.to_reference = {{{r, 0}, {0, r}}};
    const Euler pose{30, 60, 17};
    const Image img = mapped_particle(proj, n, g.to_reference, pose);
    const std::array<double, 2> d{2.0, -1.0};  // px of the particle's box
    const estep::RotatableParticle x(img, d[0], d[1], ParticleOptics(g, flat_ctf()));
    const estep::SearchPixels px = estep::search_pixels(n, 12);
    // Sharp posteriors (noise-free); shells 0-2 left out: there the coarse pass of a finer image (r > 1)
    // reads the particle between its zeroed origin (image mean 0) and its first shell, an
    // interpolation the fine pass, on the image's own pixels, does not make.
    std::vector<float> w(size_t(n / 2 + 1), 1000.0f);
    std::fill(w.begin(), w.begin() + 3, 0.0f);
    // Candidates: the true correction -d, and -d scaled by r and 1/r (what a translation applied in
    // the wrong frame would prefer), and none.
    const std::vector<std::array<double, 2>> trans{
        {-d[0], -d[1]}, {-r * d[0], -r * d[1]}, {-d[0] / r, -d[1] / r}, {0.0, 0.0}};
    const estep::PoseResult coarse = coarse_at(proj, x, px, w, pose, trans);
    // The fine pass over the image pixels of the same region (image shells up to 12 / r).
    const estep::SearchPixels own = estep::search_pixels(n, int(std::lround(12 / r)));
    const estep::PoseResult fine = fine_at(proj, x, own, g.to_reference, w, pose, trans);
    // Scores of the four translations (one pose): the posterior's order follows them.
    ASSERT_EQ(coarse.w_trans.size(), trans.size());
    ASSERT_EQ(fine.w_trans.size(), trans.size());
    const auto best = [](const std::vector<double>& v) {
      return size_t(std::max_element(v.begin(), v.end()) - v.begin());
    };
    EXPECT_EQ(best(coarse.w_trans), 0u) << "r " << r;
    EXPECT_EQ(best(fine.w_trans), 0u) << "r " << r;
    EXPECT_GT(coarse.w_trans[0], 0.99) << "r " << r;  // noise-free: the posterior is all at d
    EXPECT_NEAR(coarse.log_likelihood, fine.log_likelihood, 0.05 * std::abs(fine.log_likelihood)) << "r " << r;
  }
}

// Optics groups of different box sizes (jobs/ml3d.hpp's PixelScale): a particle of box nb px at pixel
// ratio r = P / p against a reference of box n: one image Fourier pixel is f = r n / nb reference
// Fourier pixels (T = f I), and its translations are phases over its own box nb. Noise-free and moved
// by d (its own pixels), it is found at d, not at d nb / n or d n / nb (the phase taken over the wrong
// box), by the coarse pass (reference frame: RotatableParticle::reference_shift's n / nb) and the fine
// pass (its own pixels). Cases: a larger box (64 px for 48), a smaller one (40 px), and a box and pixel
// size whose ratios cancel (60 px at r = 1.25: T is the identity, only the box differs).
// Measured log-likelihoods (coarse / fine, the same region): 6382 / 6269 (64 px), 1817 / 1862 (40 px), 2874 / 2953 (60 px).
TEST(PoseSearch, ParticleOfAnotherBoxIsFoundAtItsOwnShift) {
  const Volume map = test_map();
  const int n = map.nx();
  Projector proj(map, 2);
  struct Case {
    int nb;
    double r;
  };
  for (const Case c : {Case{64, 1.0}, Case{40, 1.0}, Case{60, 1.25}}) {
    const double f = c.r * n / c.nb;  // 12 / f whole: the two passes cover the same region
    OpticsGroupModel g = plain_group(c.nb);
    g.pixel_size = 4.0 / c.r;
    g.to_reference = f == 1.0 ? kIdentity2 : Mat2{{{f, 0}, {0, f}}};
    const Euler pose{30, 60, 17};
    const Image img = mapped_particle(proj, c.nb, g.to_reference, pose);
    const std::array<double, 2> d{2.0, -1.0};
    const estep::RotatableParticle x(img, d[0], d[1], ParticleOptics(g, flat_ctf()));
    EXPECT_EQ(x.mapped(), f != 1.0);
    const estep::SearchPixels px = estep::search_pixels(n, 12);
    std::vector<float> w(size_t(c.nb / 2 + 1), 1000.0f);
    std::fill(w.begin(), w.begin() + 3, 0.0f);
    const double b = double(c.nb) / n;
    const std::vector<std::array<double, 2>> trans{
        {-d[0], -d[1]}, {-b * d[0], -b * d[1]}, {-d[0] / b, -d[1] / b}, {0.0, 0.0}};
    const estep::PoseResult coarse = coarse_at(proj, x, px, w, pose, trans);
    const estep::SearchPixels own = estep::search_pixels(c.nb, int(std::lround(12 / f)));
    const estep::PoseResult fine = fine_at(proj, x, own, g.to_reference, w, pose, trans);
    ASSERT_EQ(coarse.w_trans.size(), trans.size());
    ASSERT_EQ(fine.w_trans.size(), trans.size());
    const auto best = [](const std::vector<double>& v) {
      return size_t(std::max_element(v.begin(), v.end()) - v.begin());
    };
    EXPECT_EQ(best(coarse.w_trans), 0u) << "box " << c.nb;
    EXPECT_EQ(best(fine.w_trans), 0u) << "box " << c.nb;
    EXPECT_GT(coarse.w_trans[0], 0.99) << "box " << c.nb;
    EXPECT_NEAR(coarse.log_likelihood, fine.log_likelihood, 0.05 * std::abs(fine.log_likelihood)) << "box " << c.nb;
    std::printf("box %d r %.2f: log-likelihood coarse %.0f fine %.0f\n", c.nb, c.r, coarse.log_likelihood,
                fine.log_likelihood);
  }
}

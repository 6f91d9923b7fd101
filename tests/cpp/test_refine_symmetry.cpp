// refine3d's pose search (jobs/ml3d.hpp, search_particle) at the edges of the asymmetric unit, down
// symmetry axes and near the poles of the Euler angles.
//
// * With a symmetric map the orientations A and A R (R in the group) give the same projection, so a
//   posterior can hold several copies of one pose with comparable weight; the posterior-mean pose
//   must average one copy of each orientation (the one nearest the best), not the copies.
// * Near tilt 0 or 180 one orientation has any rot (with psi -/+ rot fixed): a window of directions
//   around the previous one times in-plane angles around its psi misses it, so local searches there
//   run in turned angles.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "regula/core/random.hpp"
#include "regula/estep/pose_search.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/estep/search3d.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/sampling/symmetry.hpp"

using namespace regula;

namespace {

// The smallest angle between A and the copies B R (R in the group), degrees.
double error_modulo(const SymmetryGroup& g, const Euler& a, const Euler& b) {
  const Mat3 A = euler_to_matrix(a.rot, a.tilt, a.psi), B = euler_to_matrix(b.rot, b.tilt, b.psi);
  double best = 180;
  for (const Mat3& R : g.operators()) best = std::min(best, rotation_distance_deg(A, matmul(B, R)));
  return best;
}

Volume test_map() { return mrc::read(std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc"); }

struct Fixture {
  // The 70S test map (48 px), symmetrised under `group` about the centre (C1: as it is).
  // Search pixels up to shell `limit` (the coarse pass to at most 12).
  explicit Fixture(const char* group, int limit = 16)
      : sym(SymmetryGroup::parse(group)),
        map(sym.is_c1() ? test_map() : symmetrise(test_map(), sym)),
        px_coarse(estep::search_pixels(map.nx(), std::min(limit, 12))),
        px_fine(estep::search_pixels(map.nx(), limit)) {}
  SymmetryGroup sym;
  Volume map;
  int n = map.nx();
  Projector proj{map, 2, n / 2};
  estep::SearchPixels px_coarse, px_fine;
  DirectionTable table;
  // Global searches: the asymmetric unit's directions and in-plane angles, and their coarse slices.
  std::vector<std::array<double, 2>> dirs;
  std::vector<long> pix;
  std::vector<double> psis;
  estep::Slices slices;

  // A projection at `truth` with white noise at SNR 0.5 (seeded), searched at HEALPix order `order`
  // locally around `truth` with refine3d's prior (sigma = the order's step), or globally over the
  // group's asymmetric unit; the posterior-mean pose, averaged modulo `symmetry` (null: plain mean).
  // centre (with sigma_centre > 0): Search3DSetup::sigma_centre's prior; flat: the image carries no
  // information (every score equal: the posterior is the prior).
  Euler search(const Euler& truth, int order, bool local, const SymmetryGroup* symmetry, double sigma_centre = 0,
               const Euler& centre = {}, bool flat = false) {
    Image img = proj.project_real(euler_to_matrix(truth.rot, truth.tilt, truth.psi));
    double var = 0;
    for (float v : img) var += double(v) * v;
    const double sigma = std::sqrt(var / double(img.size()) / 0.5);
    auto rng = make_rng(17, 3);
    for (auto& v : img) v += float(sigma * normal01(rng));
    estep::RotatableParticle x(img, 0, 0, std::nullopt);
    // White noise: the same variance n^2 sigma^2 for every Fourier component (unnormalised FFT).
    std::vector<float> inv_sigma2(size_t(n / 2 + 1), float(1.0 / (double(n) * n * sigma * sigma)));
    inv_sigma2[0] = 0;
    if (flat) std::fill(inv_sigma2.begin(), inv_sigma2.end(), 0.0f);
    table.build(order);
    estep::Search3DSetup S;
    if (!local) {
      OrientationSampling os(order, sym, healpix_angular_step(order));
      dirs.clear();
      pix.clear();
      for (size_t d = 0; d < os.num_directions(); ++d) {
        dirs.push_back({os.rot(d), os.tilt(d)});
        pix.push_back(os.pixel(d));
      }
      psis.clear();
      for (size_t p = 0; p < os.num_psi(); ++p) psis.push_back(os.psi(p));
      estep::project_slices(proj, px_coarse, dirs, slices);
      S.global_dirs = &dirs;
      S.global_pix = &pix;
      S.global_psi = &psis;
      S.global_slices = &slices;
    }
    S.proj = {&proj};
    S.px_coarse = &px_coarse;
    S.px_fine = &px_fine;
    S.local = local;
    S.order = order;
    S.sigma_ang = healpix_angular_step(order);
    S.sigma_centre = sigma_centre;
    S.table = &table;
    S.trans = {{0, 0}};
    S.offset_step = 1;
    S.sigma_offset2 = 4;
    S.pose_mean = true;
    S.symmetry = symmetry;
    estep::Search3DInput in;
    in.x = &x;
    in.inv_sigma2 = inv_sigma2;
    in.rot = truth.rot;
    in.tilt = truth.tilt;
    in.psi = truth.psi;
    in.centre_rot = centre.rot;
    in.centre_tilt = centre.tilt;
    in.centre_psi = centre.psi;
    estep::Search3DWork ws;
    estep::Search3DResult r;
    estep::search_particle_3d(S, in, ws, nullptr, r);
    EXPECT_TRUE(r.valid);
    return {r.rot, r.tilt, r.psi};
  }
};

}  // namespace

// C6 about z: the asymmetric unit of the global search is the wedge |rot| < 30. A particle on its
// edge (rot 30) has its posterior on pixels of both sides, at rot near 30 and near -30 (the copy of
// rot 30 by Rz(-60)), 60 degrees apart as orientations. Order 2 (15 degrees), frequencies to shell 10
// of 24 as in the first iterations.
TEST(RefineSymmetry, PosteriorMeanAveragesOneCopyOfEachOrientation) {
  Fixture f("C6", 10);
  const Euler truth{30, 60, 30};
  const Euler folded = f.search(truth, 2, false, &f.sym), plain = f.search(truth, 2, false, nullptr);
  // Measured: 2.0 degrees folded (the fine step is 7.5); the plain quaternion mean of both sides 11.5.
  EXPECT_LT(error_modulo(f.sym, truth, folded), 5.0) << folded.rot << " " << folded.tilt << " " << folded.psi;
  EXPECT_GT(error_modulo(f.sym, truth, plain), 8.0) << "the posterior is on one side: the test lost its point";
}

// Away from the edges and axes no copy is in the posterior: the pose is the same with or without the
// group.
TEST(RefineSymmetry, AwayFromEdgesTheGroupChangesNothing) {
  Fixture f("C6", 10);
  const Euler truth{10, 60, 30};
  const Euler a = f.search(truth, 2, false, nullptr), b = f.search(truth, 2, false, &f.sym);
  EXPECT_LT(error_modulo(f.sym, truth, a), 5.0);  // on the fine grid (7.5 degrees): 4.1 measured
  EXPECT_LT(rotation_distance_deg(euler_to_matrix(a.rot, a.tilt, a.psi), euler_to_matrix(b.rot, b.tilt, b.psi)), 1e-6);
}

// A second prior about a centre pose (multi-body refinement's prior about the consensus) multiplies the
// window's: with no information in the image the posterior is the product of two Gaussians of equal
// sigma, whose mean is midway between the window's centre and the prior's (in tilt and in psi), and
// without it the window's centre. Order 4 (3.7 degrees, the fine grid 1.8); measured within 0.07.
TEST(RefineLocalSearch, CentrePriorMultipliesTheWindow) {
  Fixture f("C1");
  const double s = healpix_angular_step(4);
  for (const Euler prev : {Euler{20, 70, 30}, Euler{-100, 130, -60}}) {
    const Euler centre{prev.rot, prev.tilt + s, prev.psi + s};
    const Euler both = f.search(prev, 4, true, nullptr, s, centre, true);
    EXPECT_NEAR(both.tilt, prev.tilt + s / 2, 0.3) << prev.tilt;
    EXPECT_NEAR(both.psi, prev.psi + s / 2, 0.3) << prev.psi;
    EXPECT_NEAR(both.rot, prev.rot, 0.3);
    const Euler window = f.search(prev, 4, true, nullptr, 0, centre, true);
    EXPECT_NEAR(window.tilt, prev.tilt, 0.3);
    EXPECT_NEAR(window.psi, prev.psi, 0.3);
  }
}

// Particles near the poles (the top views of a Cn particle, whose axis is z), searched locally from
// their true pose on the asymmetric 70S map. Measured before the turned angles: up to 11.3 degrees
// at order 3 and 4.3 at order 5 (at rot 0 and 10, between the HEALPix directions at rot 45 + 90 k);
// after: at most 2.5 and 1.4, as at tilt 20 (2.3 and 1.3).
TEST(RefineLocalSearch, FindsPosesNearThePoles) {
  Fixture f("C1");
  for (int order : {3, 5}) {
    double worst = 0;
    for (double rot : {0.0, 10.0, 22.5})
      for (double tilt : {1.0, 3.0, 6.0, 12.0, 174.0}) {
        const Euler truth{rot, tilt, 30};
        const Euler e = f.search(truth, order, true, nullptr);
        const double err = error_modulo(f.sym, truth, e);
        worst = std::max(worst, err);
        EXPECT_LT(err, order == 3 ? 3.5 : 2.0) << "order " << order << " rot " << rot << " tilt " << tilt;
      }
    std::printf("order %d: largest error near the poles %.2f degrees\n", order, worst);
  }
}

// A Cn particle seen down its axis, searched locally: its copies A Rz(360/n) are (rot + 360/n, tilt,
// psi), in the window of directions and of in-plane angles in Euler angles; in the turned angles they
// are in-plane turns, outside it. The C4-symmetrised 70S map at tilt 4: measured 0.5 degrees (the
// plain Euler-angle windows and mean: 32.7).
TEST(RefineSymmetry, LocalSearchDownTheAxis) {
  Fixture f("C4");
  const Euler truth{20, 4, 30};
  const Euler e = f.search(truth, 3, true, &f.sym);
  EXPECT_LT(error_modulo(f.sym, truth, e), 3.0) << e.rot << " " << e.tilt << " " << e.psi;
}

// symmetric_distance_deg / nearest_symmetry_copy (sampling/symmetry.hpp): the distance modulo the
// group is the smallest over the copies A R, and the copy returned is the one attaining it.
TEST(RefineSymmetry, DistanceModuloTheGroup) {
  for (const char* name : {"C4", "D2", "T", "O", "I"}) {
    const SymmetryGroup g = SymmetryGroup::parse(name);
    auto rng = make_rng(5, 1);
    for (int k = 0; k < 20; ++k) {
      const Mat3 A = euler_to_matrix(360 * uniform01(rng), 180 * uniform01(rng), 360 * uniform01(rng));
      const Mat3 near = matmul(A, euler_to_matrix(3, 2, -4));  // about 3 degrees from A
      for (const Mat3& R : g.operators()) {
        const Mat3 B = matmul(near, R);  // a copy of a pose near A
        EXPECT_NEAR(symmetric_distance_deg(A, B, g), rotation_distance_deg(A, near), 1e-6) << name;
        EXPECT_LT(max_abs_diff(nearest_symmetry_copy(B, A, g), near), 1e-9) << name;
      }
    }
  }
}

// The weighted slices of the M-step come from Search3DInput::x_sums, the unmasked particle (RELION
// back-projects Fimg_nomask: at high defocus and resolution the CTF spreads the signal far outside
// the mask), the posterior from x, the masked one. With one translation and no CTF, a slice's data
// over its weight is the transform of the particle it was made from, at every pixel.
TEST(RefineSums, BackProjectTheUnmaskedParticle) {
  struct Capture : estep::SliceSink {
    std::vector<std::vector<float>> data, weight;
    std::vector<float> kx, ky;
    void insert(int, std::span<const float> x, std::span<const float> y, const float* d, const float* w,
                const Mat3&) override {
      kx.assign(x.begin(), x.end());
      ky.assign(y.begin(), y.end());
      data.emplace_back(d, d + 2 * x.size());
      weight.emplace_back(w, w + x.size());
    }
  };
  Fixture f("C1");
  const Euler truth{20, 60, 30};
  Image img = f.proj.project_real(euler_to_matrix(truth.rot, truth.tilt, truth.psi));
  double var = 0;
  for (float v : img) var += double(v) * v;
  const double sigma = std::sqrt(var / double(img.size()) / 0.5);
  auto rng = make_rng(23, 1);
  for (auto& v : img) v += float(sigma * normal01(rng));
  Image masked = img;
  apply_particle_mask(masked, 14, 3, MaskCentre{}, ParticleSolvent{true, nullptr, 1, 0});
  const estep::RotatableParticle x(masked, 0, 0, std::nullopt);
  const estep::RotatableParticle raw(img, 0, 0, std::nullopt, estep::RotatableParticle::PlainOnly{});
  const int n = f.n;
  std::vector<float> inv_sigma2(size_t(n / 2 + 1), float(1.0 / (double(n) * n * sigma * sigma)));
  inv_sigma2[0] = 0;
  f.table.build(3);
  estep::Search3DSetup S;
  S.proj = {&f.proj};
  S.px_coarse = &f.px_coarse;
  S.px_fine = &f.px_fine;
  S.local = true;
  S.order = 3;
  S.sigma_ang = healpix_angular_step(3);
  S.table = &f.table;
  S.trans = {{0, 0}};
  S.oversampling = 0;
  estep::Search3DInput in;
  in.x = &x;
  in.inv_sigma2 = inv_sigma2;
  in.rot = truth.rot;
  in.tilt = truth.tilt;
  in.psi = truth.psi;
  auto run = [&](const estep::RotatableParticle* sums, Capture& c) {
    in.x_sums = sums;
    estep::Search3DWork ws;
    estep::Search3DResult r;
    estep::search_particle_3d(S, in, ws, &c, r);
    EXPECT_TRUE(r.valid);
    return r;
  };
  Capture with_raw, with_masked;
  const estep::Search3DResult a = run(&raw, with_raw), b = run(nullptr, with_masked);
  EXPECT_EQ(a.max_posterior, b.max_posterior);  // the posterior is the masked particle's
  ASSERT_EQ(with_raw.data.size(), with_masked.data.size());
  ASSERT_GT(with_raw.data.size(), 1u);
  double worst_raw = 0, worst_masked = 0, differ = 0;
  for (size_t j = 0; j < with_raw.data.size(); ++j)
    for (size_t q = 0; q < with_raw.kx.size(); ++q) {
      const float w = with_raw.weight[j][q];
      EXPECT_EQ(w, with_masked.weight[j][q]);
      if (w <= 0) continue;
      const int kx = int(with_raw.kx[q]), ky = int(with_raw.ky[q]);
      const cfloat xr = raw.on_grid(kx, ky), xm = x.on_grid(kx, ky);
      const cfloat dr(with_raw.data[j][2 * q] / w, with_raw.data[j][2 * q + 1] / w);
      const cfloat dm(with_masked.data[j][2 * q] / w, with_masked.data[j][2 * q + 1] / w);
      const double scale = std::abs(xr) + std::abs(xm) + 1e-30;
      worst_raw = std::max(worst_raw, double(std::abs(dr - xr)) / scale);
      worst_masked = std::max(worst_masked, double(std::abs(dm - xm)) / scale);
      differ = std::max(differ, double(std::abs(xr - xm)) / scale);
    }
  EXPECT_LT(worst_raw, 1e-4);
  EXPECT_LT(worst_masked, 1e-4);
  EXPECT_GT(differ, 0.1) << "the mask changed nothing: the test lost its point";
  // The sums' own weights per shell (ml3d::particle_views): slices and weights scale with them at
  // each shell; the posterior does not move.
  std::vector<float> w_sums(inv_sigma2.size());
  for (size_t s = 0; s < w_sums.size(); ++s) w_sums[s] = inv_sigma2[s] * float(1 + s % 3);
  in.inv_sigma2_sums = w_sums;
  Capture with_own;
  const estep::Search3DResult c = run(&raw, with_own);
  EXPECT_EQ(c.max_posterior, a.max_posterior);
  ASSERT_EQ(with_own.data.size(), with_raw.data.size());
  double worst_w = 0, worst_d = 0;
  size_t checked = 0;
  for (size_t j = 0; j < with_own.data.size(); ++j)
    for (size_t q = 0; q < with_own.kx.size(); ++q) {
      const double k = std::hypot(with_own.kx[q], with_own.ky[q]);
      const double f = 1 + int(std::lround(k)) % 3, w = with_raw.weight[j][q];
      if (w <= 0) continue;
      ++checked;
      worst_w = std::max(worst_w, std::abs(with_own.weight[j][q] / w - f));
      for (int c2 = 0; c2 < 2; ++c2) {
        const double d = with_raw.data[j][2 * q + c2];
        if (std::abs(d) > 1e-6 * w) worst_d = std::max(worst_d, std::abs(with_own.data[j][2 * q + c2] / d - f));
      }
    }
  EXPECT_GT(checked, 100u);
  EXPECT_LT(worst_w, 1e-5);
  EXPECT_LT(worst_d, 1e-4);
}

// --perturb (RELION's): the search's orientations are the grid's times P. A noise-free particle at a
// perturbed grid orientation G P is found exactly there with the perturbation, and not without it
// (then the best pose is a grid pose, a fraction of the step away).
TEST(RefineSampling, TheSearchUsesThePerturbedGrid) {
  Fixture f("C1");
  const int order = 3;
  const double step = healpix_angular_step(order);
  f.table.build(order);
  size_t d = 0;
  while (d < f.table.rot_tilt.size() && std::abs(f.table.rot_tilt[d][1] - 70) > step) ++d;
  ASSERT_LT(d, f.table.rot_tilt.size());
  const Euler G{f.table.rot_tilt[d][0], f.table.rot_tilt[d][1], 30};
  const double a = 0.4 * step;
  const Mat3 P = euler_to_matrix(a, a, a);
  const Mat3 GP = matmul(euler_to_matrix(G.rot, G.tilt, G.psi), P);
  const Image img = f.proj.project_real(GP);
  const estep::RotatableParticle x(img, 0, 0, std::nullopt);
  std::vector<float> inv_sigma2(size_t(f.n / 2 + 1), 1.0f);
  inv_sigma2[0] = 0;
  for (bool perturbed : {true, false}) {
    estep::Search3DSetup S;
    S.proj = {&f.proj};
    S.px_coarse = &f.px_coarse;
    S.px_fine = &f.px_fine;
    S.local = true;
    S.order = order;
    S.sigma_ang = step;
    S.table = &f.table;
    S.trans = {{0, 0}};
    S.oversampling = 0;
    S.cross_correlation = true;
    if (perturbed) S.perturb = P;
    estep::Search3DInput in;
    in.x = &x;
    in.inv_sigma2 = inv_sigma2;
    in.rot = G.rot;
    in.tilt = G.tilt;
    in.psi = G.psi;
    estep::Search3DWork ws;
    estep::Search3DResult r;
    estep::search_particle_3d(S, in, ws, nullptr, r);
    ASSERT_TRUE(r.valid);
    const double err = rotation_distance_deg(euler_to_matrix(r.rot, r.tilt, r.psi), GP);
    if (perturbed)
      EXPECT_LT(err, 1e-4) << r.rot << " " << r.tilt << " " << r.psi;  // acos near 1: ~1e-6 when equal
    else
      EXPECT_GT(err, 0.5 * a) << r.rot << " " << r.tilt << " " << r.psi;
  }
}

namespace {

// Searches ins[k] for k = t, t + threads, ... on `threads` threads at once (one work space each).
std::vector<estep::Search3DResult> search_on_threads(const estep::Search3DSetup& S,
                                                     const std::vector<estep::Search3DInput>& ins, int threads) {
  std::vector<estep::Search3DResult> out(ins.size());
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      estep::Search3DWork ws;
      for (size_t k = size_t(t); k < ins.size(); k += size_t(threads)) estep::search_particle_3d(S, ins[k], ws, nullptr, out[k]);
    });
  for (auto& th : pool) th.join();
  return out;
}

// The same results bit for bit (both valid).
void expect_same_results(const std::vector<estep::Search3DResult>& a, const std::vector<estep::Search3DResult>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    ASSERT_TRUE(a[k].valid && b[k].valid);
    EXPECT_EQ(a[k].cls, b[k].cls);
    EXPECT_EQ(a[k].rot, b[k].rot);
    EXPECT_EQ(a[k].tilt, b[k].tilt);
    EXPECT_EQ(a[k].psi, b[k].psi);
    EXPECT_EQ(a[k].max_posterior, b[k].max_posterior);
    EXPECT_EQ(a[k].log_likelihood, b[k].log_likelihood);
    EXPECT_EQ(a[k].n_significant, b[k].n_significant);
    EXPECT_EQ(a[k].diff2, b[k].diff2);
    EXPECT_EQ(a[k].class_weight, b[k].class_weight);
  }
}

// The search setup of the two cache tests: two classes (f's map and `second`) at f's pixels.
estep::Search3DSetup two_class_setup(const Fixture& f, const Projector& second, int order) {
  estep::Search3DSetup S;
  S.classes = 2;
  S.proj = {&f.proj, &second};
  S.px_coarse = &f.px_coarse;
  S.px_fine = &f.px_fine;
  S.order = order;
  return S;
}

}  // namespace

// The local windows' slices shared by the particles of an iteration (estep::SliceCache):
// searches with the cache give bit for bit the results without it, for windows in the plain frame
// and turned away from a pole, two classes, a perturbed grid, particles searched on two threads at
// once (one cache), and with a bound too small for any slice (then it says it bound).
TEST(RefineSampling, SharedWindowSlicesChangeNothing) {
  Fixture f("C1");
  const int order = 2;
  f.table.build(order);
  Volume other = f.map;
  for (size_t i = 0; i < other.size(); i += 7) other[i] *= 0.5f;  // a second, different class
  const Projector proj2(other, 2, f.n / 2);
  const double step = healpix_angular_step(order);
  const Mat3 P = euler_to_matrix(0.3 * step, 0.2 * step, 0.1 * step);
  const std::vector<Euler> poses{{20, 60, 30}, {-100, 100, -40}, {45, 4, 10}, {170, 178, 80}, {5, 50, 0}, {-60, 20, 120}};
  std::vector<estep::RotatableParticle> xs;
  std::vector<float> inv_sigma2(size_t(f.n / 2 + 1), 0.0f);
  for (size_t k = 0; k < poses.size(); ++k) {
    const Euler& e = poses[k];
    Image img = f.proj.project_real(euler_to_matrix(e.rot + 3, e.tilt - 2, e.psi + 4));
    double var = 0;
    for (float v : img) var += double(v) * v;
    const double sigma = std::sqrt(var / double(img.size()));
    auto rng = make_rng(31, k);
    for (auto& v : img) v += float(sigma * normal01(rng));
    xs.emplace_back(img, 0, 0, std::nullopt);
    if (k == 0)
      for (size_t s = 1; s < inv_sigma2.size(); ++s) inv_sigma2[s] = float(1.0 / (double(f.n) * f.n * sigma * sigma));
  }
  estep::Search3DSetup S = two_class_setup(f, proj2, order);
  S.local = true;
  S.sigma_ang = step;  // windows of 3 sigma = 45 degrees: the poses with tilt < 60 or > 120 turn
  S.table = &f.table;
  S.trans = {{0, 0}, {1, 0}, {0, -1}};
  S.perturb = P;
  std::vector<estep::Search3DInput> ins(poses.size());
  for (size_t k = 0; k < poses.size(); ++k) {
    ins[k].x = &xs[k];
    ins[k].inv_sigma2 = inv_sigma2;
    ins[k].rot = poses[k].rot;
    ins[k].tilt = poses[k].tilt;
    ins[k].psi = poses[k].psi;
  }
  auto search_all = [&](estep::SliceCache* cache, int threads) {
    S.table_slices = cache;
    return search_on_threads(S, ins, threads);
  };
  const auto plain = search_all(nullptr, 1);
  estep::SliceCache roomy(2 * 2 * f.table.v.size(), f.px_coarse, size_t(1) << 30);
  estep::SliceCache tight(2 * 2 * f.table.v.size(), f.px_coarse, 16);
  const auto shared = search_all(&roomy, 2), bounded = search_all(&tight, 2);
  EXPECT_FALSE(roomy.bound());
  EXPECT_TRUE(tight.bound());
  int turned = 0;
  for (const Euler& e : poses) turned += std::abs(std::cos(deg2rad(e.tilt))) > std::cos(deg2rad(4 * step));
  EXPECT_GE(turned, 2);
  EXPECT_LE(turned, 4);
  expect_same_results(plain, shared);
  expect_same_results(plain, bounded);
}

// The same for a global search's fine poses (Search3DSetup::fine_slices): two classes, a perturbed
// grid, oversampling 1, two threads sharing one cache, and a bound too small for any slice.
TEST(RefineSampling, SharedFineSlicesChangeNothing) {
  Fixture f("C1");
  const int order = 1;
  Volume other = f.map;
  for (size_t i = 0; i < other.size(); i += 5) other[i] *= 0.3f;
  const Projector proj2(other, 2, f.n / 2);
  const double step = healpix_angular_step(order);
  const Mat3 P = euler_to_matrix(0.3 * step, 0.2 * step, 0.1 * step);
  OrientationSampling os(order, f.sym, step);
  std::vector<std::array<double, 2>> dirs1;
  std::vector<long> pix1;
  for (size_t d = 0; d < os.num_directions(); ++d) {
    dirs1.push_back({os.rot(d), os.tilt(d)});
    pix1.push_back(os.pixel(d));
  }
  for (size_t p = 0; p < os.num_psi(); ++p) f.psis.push_back(os.psi(p));
  // Two classes, class-major, the slices perturbed as the jobs do.
  std::vector<Euler> angles;
  for (const auto& d : dirs1) {
    const Euler e = matrix_to_euler(matmul(euler_to_matrix(d[0], d[1], 0), P));
    angles.push_back(e);
  }
  estep::Slices s1, s2;
  estep::project_orientations(f.proj, f.px_coarse, angles, s1);
  estep::project_orientations(proj2, f.px_coarse, angles, s2);
  f.slices.d = 2 * s1.d;
  f.slices.m = s1.m;
  f.slices.s = s1.s;
  f.slices.s.insert(f.slices.s.end(), s2.s.begin(), s2.s.end());
  f.slices.s2 = s1.s2;
  f.slices.s2.insert(f.slices.s2.end(), s2.s2.begin(), s2.s2.end());
  f.dirs = dirs1;
  f.dirs.insert(f.dirs.end(), dirs1.begin(), dirs1.end());
  f.pix = pix1;
  f.pix.insert(f.pix.end(), pix1.begin(), pix1.end());
  estep::Search3DSetup S = two_class_setup(f, proj2, order);
  S.global_dirs = &f.dirs;
  S.global_pix = &f.pix;
  S.global_psi = &f.psis;
  S.global_slices = &f.slices;
  S.trans = {{0, 0}, {1, 0}, {0, 1}};
  S.perturb = P;
  S.oversampling = 1;
  const std::vector<Euler> poses{{20, 60, 30}, {-100, 100, -40}, {45, 4, 10}, {5, 50, 0}};
  std::vector<estep::RotatableParticle> xs;
  std::vector<float> inv_sigma2(size_t(f.n / 2 + 1), 0.0f);
  for (size_t k = 0; k < poses.size(); ++k) {
    const Euler& e = poses[k];
    Image img = (k % 2 ? proj2 : f.proj).project_real(euler_to_matrix(e.rot, e.tilt, e.psi));
    double var = 0;
    for (float v : img) var += double(v) * v;
    const double sigma = std::sqrt(var / double(img.size()) / 2);
    auto rng = make_rng(37, k);
    for (auto& v : img) v += float(sigma * normal01(rng));
    xs.emplace_back(img, 0, 0, std::nullopt);
    if (k == 0)
      for (size_t s = 1; s < inv_sigma2.size(); ++s) inv_sigma2[s] = float(1.0 / (double(f.n) * f.n * sigma * sigma));
  }
  std::vector<estep::Search3DInput> ins(poses.size());
  for (size_t k = 0; k < poses.size(); ++k) {
    ins[k].x = &xs[k];
    ins[k].inv_sigma2 = inv_sigma2;
  }
  auto search_all = [&](estep::SliceCache* cache, int threads) {
    S.fine_slices = cache;
    return search_on_threads(S, ins, threads);
  };
  const size_t entries = f.psis.size() * f.dirs.size() * 8;
  const auto plain = search_all(nullptr, 1);
  estep::SliceCache roomy(entries, f.px_fine, size_t(1) << 30), tight(entries, f.px_fine, 16);
  const auto shared = search_all(&roomy, 2), bounded = search_all(&tight, 2);
  EXPECT_FALSE(roomy.bound());
  EXPECT_TRUE(tight.bound());
  for (const auto& r : plain) EXPECT_GT(r.n_fine, 8u);  // the fine pass ran
  expect_same_results(plain, shared);
  expect_same_results(plain, bounded);
}

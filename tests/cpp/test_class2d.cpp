// 2D classification on a synthetic data set built here: four distinct 2D shapes at n = 40,
// random in-plane rotations and shifts, white noise, with and without a CTF. The truth is
// known, so the tests check what the method must achieve:
//  * view recovery: >= 95% of the particles in a class whose majority is their own shape, and
//    every shape the majority of some class;
//  * alignment: within a class of the asymmetric "L" shape, the estimated psi minus the true psi
//    is the same for all particles (circular spread below the psi step), and the estimated
//    origin plus the true shift is the same (spread below 1 px);
//  * posteriors of every particle sum to 1 (float sums of T*J weights: 1e-4);
//  * the same bits for --j 1 and --j 2, and for an uninterrupted run and a continued one;
//  * option validation messages and CLI exit status 1 on bad input; `regula select`.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/scores.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/class2d.hpp"
#include "regula/jobs/class_selection.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/healpix.hpp"

namespace fs = std::filesystem;
using namespace regula;

namespace {

constexpr int kN = 40;
constexpr double kAngpix = 2.0;
constexpr int kShapes = 4;

// Binary shapes in pixel coordinates (u, v) relative to the centre, y up.
bool shape_at(int c, double u, double v) {
  auto rect = [&](double u0, double u1, double v0, double v1) { return u >= u0 && u <= u1 && v >= v0 && v <= v1; };
  auto disc = [&](double cu, double cv, double r) { return (u - cu) * (u - cu) + (v - cv) * (v - cv) <= r * r; };
  switch (c) {
    case 0:  // "L"
      return rect(-8, -3, -8, 10) || rect(-8, 8, -8, -3);
    case 1: {  // ring with a dot
      double r = std::hypot(u, v);
      return (r >= 5 && r <= 8) || disc(0, 10.5, 2);
    }
    case 2:  // triangle
      return v >= -7 && v <= 10 && std::abs(u) <= 9.0 * (10 - v) / 17.0;
    default:  // bar with a blob
      return rect(-10, 10, -2, 2) || disc(5, 6, 4);
  }
}

// Shape c rotated by -psi (as RELION: a particle of in-plane angle psi is the reference rotated
// by -psi) and moved by (dx, dy) px; 3x3 supersampled.
Image make_particle(int c, double psi_deg, double dx, double dy) {
  Image img(kN, kN, 1, 0.0f);
  const double a = psi_deg * std::numbers::pi / 180.0, ca = std::cos(a), sa = std::sin(a);
  for (int y = 0; y < kN; ++y)
    for (int x = 0; x < kN; ++x) {
      double acc = 0;
      for (int sy = -1; sy <= 1; ++sy)
        for (int sx = -1; sx <= 1; ++sx) {
          double px = x - kN / 2 + sx / 3.0 - dx, py = y - kN / 2 + sy / 3.0 - dy;
          // inverse of the rotation by -psi is the rotation by +psi
          double u = ca * px - sa * py, v = sa * px + ca * py;
          acc += shape_at(c, u, v) ? 1.0 : 0.0;
        }
      img(x, y) = float(acc / 9.0);
    }
  return img;
}

struct Truth {
  std::vector<int> shape;
  std::vector<double> psi, dx, dy;
  double noise_sigma = 0;  // of the white noise added per pixel
};

// Writes DIR/particles.mrcs and DIR/particles.star (3.1 form) with n particles. With
// origin_error_px > 0 the STAR file gives each particle a wrong origin, uniform in +-that per axis.
Truth make_dataset(const fs::path& dir, int n, bool ctf, double snr, uint64_t seed, double origin_error_px = 0) {
  fs::create_directories(dir);
  Truth t;
  std::vector<Image> imgs;
  const size_t un = static_cast<size_t>(n);
  std::vector<double> du(un), dv(un), da(un);
  double signal_var = 0;
  for (int i = 0; i < n; ++i) {
    auto g = make_rng(seed, uint64_t(i));
    int c = i % kShapes;
    double psi = 360.0 * uniform01(g), dx = 4 * uniform01(g) - 2, dy = 4 * uniform01(g) - 2;
    Image img = make_particle(c, psi, dx, dy);
    du[size_t(i)] = 10000 + 10000 * uniform01(g);
    dv[size_t(i)] = du[size_t(i)] - 200 * uniform01(g);
    da[size_t(i)] = 180 * uniform01(g);
    if (ctf) {
      CtfParams cp;
      cp.defocus_u = du[size_t(i)];
      cp.defocus_v = dv[size_t(i)];
      cp.defocus_angle = da[size_t(i)];
      Grid<float> C = Ctf(cp).half_complex(kN, kAngpix);
      Grid<cfloat> F = fourier_centred(img);
      for (size_t k = 0; k < F.size(); ++k) F[k] *= C[k];
      img = from_fourier_centred(F, kN);
    }
    double m = 0, v = 0;
    for (float x : img) m += x;
    m /= double(img.size());
    for (float x : img) v += (x - m) * (x - m);
    signal_var += v / double(img.size());
    imgs.push_back(std::move(img));
    t.shape.push_back(c);
    t.psi.push_back(psi);
    t.dx.push_back(dx);
    t.dy.push_back(dy);
  }
  signal_var /= n;
  const double sigma = std::sqrt(signal_var / snr);
  t.noise_sigma = sigma;
  Grid<float> stack(kN, kN, n);
  for (int i = 0; i < n; ++i) {
    auto g = make_rng(seed + 1000, uint64_t(i));
    float* dst = stack.section(i);
    for (size_t k = 0; k < imgs[size_t(i)].size(); ++k) dst[k] = float(imgs[size_t(i)][k] + sigma * normal01(g));
  }
  mrc::WriteOptions wo;
  wo.pixel_size = kAngpix;
  wo.is_stack = true;
  const std::string stack_path = (dir / "particles.mrcs").string();
  mrc::write(stack_path, stack, wo);
  star::Document doc;
  star::Block& o = doc.add_block("optics", true);
  o.add_row();
  o.set_column("rlnOpticsGroup", std::vector<int>{1});
  o.set_column("rlnOpticsGroupName", std::vector<std::string>{"opticsGroup1"});
  o.set_column("rlnAmplitudeContrast", std::vector<double>{0.1});
  o.set_column("rlnSphericalAberration", std::vector<double>{2.7});
  o.set_column("rlnVoltage", std::vector<double>{300});
  o.set_column("rlnImagePixelSize", std::vector<double>{kAngpix});
  o.set_column("rlnImageSize", std::vector<int>{kN});
  o.set_column("rlnImageDimensionality", std::vector<int>{2});
  star::Block& p = doc.add_block("particles", true);
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    p.add_row();
    names.push_back(std::to_string(i + 1) + "@" + stack_path);
  }
  p.set_column("rlnImageName", names);
  p.set_column("rlnOpticsGroup", std::vector<int>(size_t(n), 1));
  p.set_column("rlnDefocusU", du);
  p.set_column("rlnDefocusV", dv);
  p.set_column("rlnDefocusAngle", da);
  if (origin_error_px > 0) {
    std::vector<double> ox(un), oy(un);
    for (size_t i = 0; i < un; ++i) {
      auto g = make_rng(seed + 2000, i);
      ox[i] = (2 * uniform01(g) - 1) * origin_error_px * kAngpix;
      oy[i] = (2 * uniform01(g) - 1) * origin_error_px * kAngpix;
    }
    p.set_column("rlnOriginXAngst", ox);
    p.set_column("rlnOriginYAngst", oy);
  }
  star::write((dir / "particles.star").string(), doc);
  return t;
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("regula_test_class2d_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Fraction of particles in a class whose majority shape is their own; and whether every shape
// is the majority of some class.
std::pair<double, bool> view_recovery(const std::vector<int>& cls, const std::vector<int>& shape) {
  std::map<int, std::map<int, int>> count;
  for (size_t i = 0; i < cls.size(); ++i) count[cls[i]][shape[i]] += 1;
  std::map<int, int> majority;
  std::vector<bool> covered(kShapes, false);
  for (auto& [c, m] : count) {
    int best = -1, bn = -1;
    for (auto& [s, k] : m)
      if (k > bn) best = s, bn = k;
    majority[c] = best;
    covered[size_t(best)] = true;
  }
  size_t good = 0;
  for (size_t i = 0; i < cls.size(); ++i) good += majority[cls[i]] == shape[i];
  bool all = std::all_of(covered.begin(), covered.end(), [](bool b) { return b; });
  return {double(good) / double(cls.size()), all};
}

Class2DOptions base_options(const fs::path& dir, int K, int iters) {
  Class2DOptions o;
  o.input = (dir / "particles.star").string();
  o.out_root = (dir / "run").string();
  o.classes = K;
  o.iterations = iters;
  o.psi_step = 10;
  o.offset_range = 3;
  o.offset_step = 1;
  o.particle_diameter = 60;  // Å: radius 15 px
  o.seed = 3;
  o.zero_mask = true;  // as RELION's GUI default for classification (and our benches)
  return o;
}

// Alignment errors of the particles of the asymmetric "L" (shape 0) in classes of at least 20 of
// them: psi error relative to the class's mean psi offset (degrees) and shift residual (px).
struct AlignmentErrors {
  std::vector<double> psi, shift;
  double median_psi() const { return median_abs(psi); }
  double median_shift() const { return median_abs(shift); }
  static double median_abs(std::vector<double> v) {
    if (v.empty()) return 0;
    for (double& x : v) x = std::abs(x);
    std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
    return v[v.size() / 2];
  }
};

AlignmentErrors alignment_errors(const Class2DResult& r, const Truth& t) {
  AlignmentErrors out;
  std::map<int, std::vector<size_t>> members;
  for (size_t i = 0; i < t.shape.size(); ++i)
    if (t.shape[i] == 0) members[r.particle_class[i]].push_back(i);
  for (auto& [c, idx] : members) {
    if (idx.size() < 20) continue;
    // The class is the shape rotated and moved by some fixed c (its centre of mass is put at the
    // origin), so origin/angpix + true shift = R(-psi_true) c for one c per class: fit c by least
    // squares; the residuals are the shift errors.
    std::vector<double> dpsi, vx, vy, ca, sa;
    for (size_t i : idx) {
      dpsi.push_back(r.particle_psi[i] - t.psi[i]);
      vx.push_back(r.particle_origin_x[i] / kAngpix + t.dx[i]);
      vy.push_back(r.particle_origin_y[i] / kAngpix + t.dy[i]);
      ca.push_back(std::cos(-t.psi[i] * std::numbers::pi / 180));
      sa.push_back(std::sin(-t.psi[i] * std::numbers::pi / 180));
    }
    double cx = 0, cy = 0;  // c = mean of R^T v
    for (size_t q = 0; q < vx.size(); ++q) {
      cx += ca[q] * vx[q] + sa[q] * vy[q];
      cy += -sa[q] * vx[q] + ca[q] * vy[q];
    }
    cx /= double(vx.size());
    cy /= double(vx.size());
    double mc = 0, ms = 0;
    for (double a : dpsi) {
      mc += std::cos(a * std::numbers::pi / 180);
      ms += std::sin(a * std::numbers::pi / 180);
    }
    const double mean_dpsi = std::atan2(ms, mc) * 180 / std::numbers::pi;
    for (size_t q = 0; q < vx.size(); ++q) {
      out.psi.push_back(std::remainder(dpsi[q] - mean_dpsi, 360.0));
      const double ex = vx[q] - (ca[q] * cx - sa[q] * cy), ey = vy[q] - (sa[q] * cx + ca[q] * cy);
      out.shift.push_back(std::hypot(ex, ey));
    }
  }
  return out;
}

void check_recovery_and_alignment(const Class2DResult& r, const Truth& t, double min_aligned) {
  auto [frac, all] = view_recovery(r.particle_class, t.shape);
  EXPECT_GE(frac, 0.95);
  EXPECT_TRUE(all);
  // Tolerances: the coarse grids quantise psi to +-5 degrees and shifts to +-0.5 px per axis (half
  // that in the fine pass); noise at SNR 0.1 moves some particles by a step or two (more with a
  // CTF, which removes information near its zeros). Require min_aligned (85%, 80% with CTF)
  // within 2 coarse psi steps and 1.5 px.
  const AlignmentErrors e = alignment_errors(r, t);
  ASSERT_GE(e.psi.size(), 40u);
  size_t good_psi = 0, good_shift = 0;
  for (size_t q = 0; q < e.psi.size(); ++q) {
    good_psi += std::abs(e.psi[q]) <= 10.0;
    good_shift += e.shift[q] <= 1.5;
  }
  EXPECT_GE(double(good_psi), min_aligned * double(e.psi.size()));
  EXPECT_GE(double(good_shift), min_aligned * double(e.psi.size()));
  for (size_t i = 0; i < r.posterior_sum.size(); ++i) ASSERT_NEAR(r.posterior_sum[i], 1.0, 1e-4) << "particle " << i;
}

}  // namespace

TEST(Class2D, RecoversShapesWithoutCtf) {
  fs::path dir = temp_dir("noctf");
  Truth t = make_dataset(dir, 240, false, 0.1, 11);
  Class2DOptions o = base_options(dir, 4, 10);
  Class2DResult r = run_class2d(o);
  ASSERT_EQ(r.particle_class.size(), 240u);
  check_recovery_and_alignment(r, t, 0.85);
  // Files of the last iteration.
  EXPECT_TRUE(fs::exists(r.classes_mrcs));
  mrc::Header h;
  Grid<float> cls = mrc::read(r.classes_mrcs, &h);
  EXPECT_EQ(cls.nz(), 4);
  EXPECT_EQ(cls.nx(), kN);
  star::Document model = star::read(r.model_star);
  EXPECT_EQ(model.require("model_general").get("rlnNrClasses"), "4");
  EXPECT_EQ(model.require("model_classes").rows(), 4u);
  EXPECT_EQ(model.require("model_class_1").rows(), size_t(kN / 2 + 1));
  EXPECT_TRUE(model.require("model_optics_group_1").has("rlnSigma2Noise"));
  ParticleTable data = ParticleTable::read(r.data_star);
  EXPECT_EQ(data.class_number, r.particle_class);
  EXPECT_TRUE(data.particles_block().has("rlnMaxValueProbDistribution"));
  EXPECT_TRUE(data.particles_block().has("rlnDefocusU"));  // input columns kept
  std::string png = read_file(r.gallery_png);
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  // Class fractions sum to 1 and match the shapes (60 particles each).
  double fsum = 0;
  for (double f : r.class_fraction) fsum += f;
  EXPECT_NEAR(fsum, 1.0, 1e-9);

  // regula select: classes 1 and 2.
  SelectOptions so;
  so.input = r.data_star;
  so.output = (dir / "sel.star").string();
  so.classes = {1, 2};
  size_t want = 0;
  for (int c : r.particle_class) want += (c == 1 || c == 2);
  EXPECT_EQ(select_classes(so), want);
  ParticleTable sel = ParticleTable::read(so.output);
  EXPECT_EQ(sel.size(), want);
  for (int c : sel.class_number) EXPECT_TRUE(c == 1 || c == 2);
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

TEST(Class2D, RecoversShapesWithCtf) {
  // EM with K = the number of shapes ends in a local optimum merging two shapes at some seeds
  // (docs/class2d.md): measured 2026-12-04 with RELION's norm and group scale corrections, seed 6 of
  // 1-12 (with the per-particle scale before: seeds 2 and 4; without any recentring: 6 of 12 seeds). Required: at least 4 of seeds 1-6 recover every shape
  // (95% of the particles of a class share its shape), and those are aligned.
  fs::path dir = temp_dir("ctf");
  Truth t = make_dataset(dir, 240, true, 0.1, 12);
  int recovered = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    Class2DOptions o = base_options(dir, 4, 10);
    o.seed = seed;
    o.ctf = true;
    o.out_root = (dir / fmt::format("run{}", seed)).string();
    Class2DResult r = run_class2d(o);
    const auto [frac, all] = view_recovery(r.particle_class, t.shape);
    if (frac < 0.95 || !all) continue;
    ++recovered;
    SCOPED_TRACE(fmt::format("seed {}", seed));
    check_recovery_and_alignment(r, t, 0.80);
  }
  EXPECT_GE(recovered, 4);
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

TEST(Class2D, FinePassSharpensTheAlignment) {
  // The same data without and with the finer pass (RELION's adaptive oversampling, order 1: psi
  // step 10 -> 5 degrees, offsets 1 -> 0.5 px around the significant coarse poses). Quantisation
  // alone gives median absolute errors of 2.5 vs 1.25 degrees and about 0.38 vs 0.19 px (the
  // distance to the nearest point of a square grid of step 1 or 0.5); noise adds to both.
  // Required: the fine pass at least 15% better in both (measured values in the test's properties).
  fs::path dir = temp_dir("fine");
  Truth t = make_dataset(dir, 240, false, 0.1, 11);
  Class2DOptions o = base_options(dir, 4, 10);
  o.oversampling = 0;
  const AlignmentErrors coarse = alignment_errors(run_class2d(o), t);
  o.oversampling = 1;
  o.out_root = (dir / "fine").string();
  const Class2DResult r = run_class2d(o);
  const AlignmentErrors fine = alignment_errors(r, t);
  RecordProperty("median_psi_error_coarse_fine", fmt::format("{:.2f} {:.2f}", coarse.median_psi(), fine.median_psi()));
  RecordProperty("median_shift_error_coarse_fine",
                 fmt::format("{:.3f} {:.3f}", coarse.median_shift(), fine.median_shift()));
  EXPECT_LT(fine.median_psi(), 0.85 * coarse.median_psi()) << coarse.median_psi() << " " << fine.median_psi();
  EXPECT_LT(fine.median_shift(), 0.85 * coarse.median_shift()) << coarse.median_shift() << " " << fine.median_shift();
  // Fine angles are written in (-180, 180], as RELION's oversampled psi.
  for (double psi : r.particle_psi) {
    EXPECT_GT(psi, -180.0);
    EXPECT_LE(psi, 180.0);
  }
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

TEST(Class2D, CoarsePassStopsAtRelionsCoarseLimit) {
  // With oversampling, RELION's first pass scores the pixels up to the resolution at which one
  // coarse in-plane step moves the particle's edge by 1.5 times it (image_coarse_size for 2D): with
  // 30 degree steps and a 60 Å mask, 30/360 pi 60 / 1.5 = 10.47 Å, so ceil(40 px * 2 Å / 10.47 Å) = 8
  // shells, below the current limit. The coarse SGEMMs' flop count shows the pixels they took,
  // counted here independently (the non-redundant half-plane without DC, round(|k|) <= limit).
  fs::path dir = temp_dir("coarse");
  make_dataset(dir, 120, false, 0.1, 11);
  Class2DOptions o = base_options(dir, 3, 3);
  o.psi_step = 30;
  const auto pixels_up_to = [](int r) {
    size_t c = 0;
    for (int ky = -kN / 2; ky < kN / 2; ++ky)
      for (int kx = 0; kx <= kN / 2; ++kx) {
        if (kx == 0 && ky <= 0) continue;
        const long s = std::lround(std::hypot(double(kx), double(ky)));
        if (s >= 1 && s <= r) ++c;
      }
    return c;
  };
  const double coarse_res = 30.0 / 360.0 * std::numbers::pi * 60.0 / 1.5;
  const int rc = int(std::ceil(kN * kAngpix / coarse_res));
  ASSERT_EQ(rc, 8);
  const size_t T = translations(o.offset_range, o.offset_step).size(), J = 3 * 12;
  for (int os : {1, 0}) {
    o.oversampling = os;
    o.out_root = (dir / fmt::format("os{}", os)).string();
    const Class2DResult r = run_class2d(o);
    bool binds = false;
    for (const Class2DIterationStats& s : r.stats) {
      if (s.iteration == 0) continue;
      const int used = os > 0 ? std::min(rc, s.current_shells) : s.current_shells;
      binds = binds || used < s.current_shells;
      EXPECT_DOUBLE_EQ(s.estep_flops, estep::score_flops(120, T, J, pixels_up_to(used)))
          << "oversampling " << os << ", iteration " << s.iteration << ", limit " << s.current_shells;
    }
    EXPECT_EQ(binds, os > 0);  // without oversampling the only pass takes every pixel
    if (os == 1) {  // the coarse pixels gathered per batch: the same bits on 3 threads
      Class2DOptions o3 = o;
      o3.threads = 3;
      o3.out_root = (dir / "os1_j3").string();
      const Class2DResult r3 = run_class2d(o3);
      EXPECT_EQ(r.particle_class, r3.particle_class);
      EXPECT_EQ(r.particle_psi, r3.particle_psi);
      EXPECT_EQ(read_file(r.classes_mrcs).substr(1024), read_file(r3.classes_mrcs).substr(1024));
    }
  }
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

TEST(Class2D, OriginsFollowTheSearchBeyondTheOffsetRange) {
  // Input origins wrong by up to 3 px per axis on top of the true shifts of up to 2 px: up to 5 px
  // to correct with a search of +-2 px. Each iteration's search is centred on the previous origins
  // (RELION's), so the origins walk to the right place over the iterations; a search fixed at the
  // input origins could not reach most particles. The Gaussian prior on the origins (about 0,
  // sigma re-estimated) must not hold them back.
  fs::path dir = temp_dir("origins");
  Truth t = make_dataset(dir, 240, false, 0.1, 11, 3.0);
  Class2DOptions o = base_options(dir, 4, 12);
  o.offset_range = 2;
  o.seed = 1;  // seed 3 ends in a local optimum merging two shapes (0.75); seeds 1, 2, 4, 5 pass
  const Class2DResult r = run_class2d(o);
  check_recovery_and_alignment(r, t, 0.85);
  // model.star reports the re-estimated prior width (RELION's rlnSigmaOffsetsAngst).
  const star::Document model = star::read(r.model_star);
  const double sigma = std::stod(std::string(model.require("model_general").get("rlnSigmaOffsetsAngst")));
  EXPECT_GT(sigma, std::sqrt(2.0));
  EXPECT_LT(sigma, 10.0);
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

// Mean over shells 5..19 of the estimated noise spectrum (model.star, RELION's units) over the
// truth: white noise of standard deviation sigma per pixel has sigma2 = sigma^2 / (2 n^2) in every
// shell. Shells from 5 on hold little signal at SNR 0.1 (the shapes are 16-20 px across).
double noise_estimate_ratio(const Class2DResult& r, double sigma) {
  const star::Document model = star::read(r.model_star);
  const star::Block& b = model.require("model_optics_group_1");
  const std::vector<double> s2 = b.numbers(b.require_column("rlnSigma2Noise"));
  const double truth = sigma * sigma / (2.0 * kN * kN);
  double sum = 0;
  for (size_t s = 5; s <= 19; ++s) sum += s2[s] / truth;
  return sum / 15.0;
}

TEST(Class2D, SolventNoiseKeepsTheNoiseEstimateNearTheTruth) {
  // Without --zero_mask the solvent outside the particle mask m is refilled each iteration with
  // noise of the current spectrum s (RELION's default); with --zero_mask it is 0. For white noise
  // of spectrum t the masked image's variance per pixel is then m^2 t + (1 - m)^2 s, so the
  // estimate settles where s = t <m^2> + s <(1 - m)^2> (box averages): s / t = <m^2> /
  // (1 - <(1 - m)^2>), 0.87 here (below 1 only because the soft edge mixes two independent
  // noises); with zeros s / t = <m^2>, 0.56. Unmodelled signal adds a little to both (measured
  // +0.04 and +0.01): tolerances -0.03 / +0.06. A constant fill gives the zero-mask value, noise
  // of twice the variance about 1.9.
  fs::path dir = temp_dir("solvent");
  Truth t = make_dataset(dir, 240, false, 0.1, 11);
  Class2DOptions o = base_options(dir, 4, 8);
  o.zero_mask = false;
  const Grid<float> m = spherical_mask(kN, kN, 1, o.particle_diameter / (2 * kAngpix), o.mask_edge);
  double m2 = 0, c2 = 0;
  for (float v : m) {
    m2 += double(v) * v / double(m.size());
    c2 += (1.0 - v) * (1.0 - v) / double(m.size());
  }
  const Class2DResult noise = run_class2d(o);
  const double with_noise = noise_estimate_ratio(noise, t.noise_sigma);
  o.zero_mask = true;
  o.out_root = (dir / "zero").string();
  const double with_zeros = noise_estimate_ratio(run_class2d(o), t.noise_sigma);
  RecordProperty("noise_estimate_over_truth_noise_zero", fmt::format("{:.3f} {:.3f}", with_noise, with_zeros));
  const double expect_noise = m2 / (1 - c2), expect_zeros = m2;
  EXPECT_GT(with_noise, expect_noise - 0.03);
  EXPECT_LT(with_noise, expect_noise + 0.06);
  EXPECT_GT(with_zeros, expect_zeros - 0.03);
  EXPECT_LT(with_zeros, expect_zeros + 0.06);
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

TEST(Class2D, SameBitsForAnyThreadCountAndForContinuedRuns) {
  fs::path dir = temp_dir("det");
  make_dataset(dir, 160, true, 0.1, 13);
  Class2DOptions o = base_options(dir, 3, 4);
  o.ctf = true;
  o.zero_mask = false;  // the solvent noise too is the same for any thread count and when continued
  o.reseed_empty = 0.1;  // not the default: the continued run takes it from the checkpoint
  o.out_root = (dir / "j1").string();
  o.threads = 1;
  Class2DResult r1 = run_class2d(o);
  o.out_root = (dir / "j2").string();
  o.threads = 2;
  Class2DResult r2 = run_class2d(o);
  ASSERT_EQ(r1.classes.size(), r2.classes.size());
  for (size_t k = 0; k < r1.classes.size(); ++k) EXPECT_EQ(r1.classes[k].vec(), r2.classes[k].vec()) << "class " << k;
  EXPECT_EQ(r1.particle_class, r2.particle_class);
  EXPECT_EQ(read_file(r1.classes_mrcs).substr(1024), read_file(r2.classes_mrcs).substr(1024));

  // 2 iterations, then continue to 4 with another output root.
  o.out_root = (dir / "part").string();
  o.iterations = 2;
  o.threads = 1;
  Class2DResult a = run_class2d(o);
  Class2DOptions c;
  c.continue_from = a.optimiser_star;
  c.out_root = (dir / "cont").string();
  c.iterations = 4;
  c.iterations_given = true;  // else the checkpoint's 2
  c.threads = 2;
  Class2DResult b = run_class2d(c);
  EXPECT_EQ(b.last_iteration, 4);
  EXPECT_EQ(b.stats.size(), 2u);
  for (size_t k = 0; k < r1.classes.size(); ++k) EXPECT_EQ(r1.classes[k].vec(), b.classes[k].vec()) << "class " << k;
  EXPECT_EQ(r1.particle_class, b.particle_class);
  EXPECT_EQ(r1.particle_psi, b.particle_psi);
  EXPECT_EQ(read_file((dir / "j1_it004_classes.mrcs").string()).substr(1024),
            read_file((dir / "cont_it004_classes.mrcs").string()).substr(1024));
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

TEST(Class2D, ValidateNamesTheOption) {
  Class2DOptions o;
  o.input = "x.star";
  o.out_root = "out/run";
  o.classes = 2;
  EXPECT_EQ(o.validate(), "");
  auto msg = [&](auto change) {
    Class2DOptions c = o;
    change(c);
    return c.validate();
  };
  EXPECT_NE(msg([](Class2DOptions& c) { c.classes = 0; }).find("--K"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.input.clear(); }).find("--i"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.out_root.clear(); }).find("--o"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.tau2_fudge = 0; }).find("--tau2_fudge"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.psi_step = -1; }).find("--psi_step"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.offset_step = 0; }).find("--offset_step"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.threads = 0; }).find("--j"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.iterations = 0; }).find("--iter"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.reseed_empty = 1.0; }).find("--reseed_empty"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.reseed_empty = -0.1; }).find("--reseed_empty"), std::string::npos);
  EXPECT_NE(msg([](Class2DOptions& c) { c.reseed_until = -1; }).find("--reseed_until"), std::string::npos);
  EXPECT_THROW(run_class2d([&] { Class2DOptions c = o; c.classes = 0; return c; }()), InputError);
  SelectOptions s;
  s.input = "a.star";
  s.output = "b.star";
  EXPECT_NE(s.validate().find("exactly one"), std::string::npos);
  s.classes = {0};
  EXPECT_NE(s.validate().find("--classes"), std::string::npos);
}

TEST(Class2D, CommandLineBadInputExitsWithOne) {
  fs::path dir = temp_dir("cli");
  const std::string bin = REGULA_BINARY;
  if (!fs::exists(bin)) GTEST_SKIP() << "regula binary not built: " << bin;
  auto run = [&](const std::string& args) {
    int rc = std::system((bin + " --quiet " + args + " > /dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  };
  EXPECT_EQ(run("class2d --i " + (dir / "missing.star").string() + " --o " + (dir / "r").string() + " --K 2"), 1);
  EXPECT_EQ(run("class2d --i x.star --o " + (dir / "r").string() + " --K 0"), 1);
  EXPECT_EQ(run("class2d --i x.star --o " + (dir / "r").string() + " --K two"), 1);
  EXPECT_EQ(run("select --i " + (dir / "missing.star").string() + " --o " + (dir / "s.star").string() + " --classes 1"), 1);
  // A RELION command line pastes (no-op flags accepted) and runs.
  make_dataset(dir, 24, false, 1.0, 5);
  EXPECT_EQ(run("class2d --i " + (dir / "particles.star").string() + " --o " + (dir / "r").string() +
                " --K 2 --iter 1 --psi_step 30 --offset_range 1 --offset_step 1 --norm --scale --pool 3"
                " --dont_combine_weights_via_disc --j 1"),
            0);
  EXPECT_TRUE(fs::exists(dir / "r_it001_data.star"));
  if (!std::getenv("C2D_KEEP")) fs::remove_all(dir);
}

// select --auto's image statistics see a box of more than 2 x kScreenBox pixels binned by box / kScreenBox
// (centred): the statistics of a 200 px image (bin 3, the central 198 px) equal those of its 3 x 3 sums
// (66 px, bin 1) at three times the pixel size, to float rounding. (tests/python/test_select_auto.py checks
// the unbinned statistics against numpy.)
TEST(SelectAuto, ImageStatisticsOfBinnedBoxes) {
  std::mt19937_64 rng(17);
  const int big = 200, small = 66;
  Image a(big, big), s(small, small, 1, 0.0f);
  for (int y = 0; y < big; ++y)
    for (int x = 0; x < big; ++x)
      a(x, y) = float(normal01(rng) + (x * 0.8 + y * 0.6 > 120 ? 1.5 : 0.0) +
                      std::exp(-(std::hypot(x - 100, y - 100) / 30.0)));
  for (int y = 0; y < 3 * small; ++y)
    for (int x = 0; x < 3 * small; ++x) s(x / 3, y / 3) += a(x + 1, y + 1);
  const ImageScreenStatistics sb(big, 1.0, 150.0), ss(small, 3.0, 150.0);
  ASSERT_EQ(sb.band_size(), ss.band_size());
  ASSERT_GT(sb.band_size(), 3);
  ImageScreenStatistics::Work w;
  std::vector<float> pb(size_t(sb.band_size())), ps(size_t(ss.band_size()));
  const double zb = sb(a, w, pb.data()), zs = ss(s, w, ps.data());
  EXPECT_GT(zs, 5.0);  // the step is found
  EXPECT_NEAR(zb, zs, 1e-4 * zs);
  for (size_t k = 0; k < pb.size(); ++k) EXPECT_NEAR(pb[k], ps[k], 1e-4 * ps[k]) << "shell " << k;
  EXPECT_THROW(sb(s, w, pb.data()), InputError);  // an image of another size
}

// E-step kernels (SGEMM) against the plain double-precision reference E-step.
//
// Tolerances. Scores are single-precision sums of M (or 2M) products built from 3-4 rounded
// float factors. Each product carries a relative error of a few float ulps (eps = 6e-8) and the
// BLAS sum adds rounding growing like sqrt(M) eps typically (M eps worst case), so the error of
// L(i,t,j) is bounded in practice by c * sqrt(M) * eps * mag(i,t,j), where mag is the sum of the
// absolute values of the terms, sum_k w (s^2 C^2 |P|^2/2 + |s C X P|). We use c = 1: the
// worst case M eps would be sqrt(M) = 17 times looser; the measured worst ratio is about 0.06
// (random-sign terms partly cancel, so |L| is well below mag; see docs/estep.md). The same argument with K = N*T terms (at most 2M
// here) gives 1e-5 * magnitude for the weighted sums.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>
#include <numeric>
#include <utility>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/posteriors.hpp"
#include "regula/estep/reference.hpp"
#include "regula/estep/scores.hpp"
#include "regula/estep/sparse_scores.hpp"
#include "regula/estep/weighted_sums.hpp"

using namespace regula;
using namespace regula::estep;
using cdouble = std::complex<double>;

namespace {

constexpr double kEps = 6e-8;  // float unit roundoff (2^-24)

enum class Noise { PerParticle, Shared, Groups };

// Random E-step problem; storage owned here, views handed to the kernels.
struct Problem {
  size_t n = 7, nt = 5, nj = 11, m = 300;
  std::vector<cfloat> x, phase, p;
  std::vector<float> ctf, inv_sigma2, scale;
  std::vector<uint32_t> noise_row;
  std::vector<double> shift2;  // |shift_t|^2 in px^2 for a Gaussian translation prior

  Problem(uint64_t seed, double wscale, Noise noise) {
    auto g = make_rng(seed, 1);
    std::vector<double> fx(m), fy(m), r2(m);
    for (size_t k = 0; k < m; ++k) {
      fx[k] = uniform01(g) - 0.5;
      fy[k] = uniform01(g) - 0.5;
      r2[k] = fx[k] * fx[k] + fy[k] * fy[k];
    }
    p.resize(nj * m);
    for (auto& v : p) v = cfloat(float(normal01(g)), float(normal01(g)));
    x.resize(n * m);
    for (auto& v : x) v = cfloat(float(normal01(g)), float(normal01(g)));
    ctf.resize(n * m);
    scale.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const double defocus = 40 + 60 * uniform01(g);  // CTF-like oscillation with zeros, in [-1, 1]
      for (size_t k = 0; k < m; ++k) ctf[i * m + k] = float(-std::sin(defocus * r2[k] + 0.07));
      scale[i] = float(0.8 + 0.4 * uniform01(g));
    }
    const size_t rows = noise == Noise::PerParticle ? n : noise == Noise::Shared ? 1 : 3;
    inv_sigma2.resize(rows * m);
    for (auto& v : inv_sigma2) v = float(wscale * (0.5 + 1.5 * uniform01(g)));
    if (noise == Noise::Groups) {
      noise_row.resize(n);
      for (size_t i = 0; i < n; ++i) noise_row[i] = uint32_t((i * 2) % 3);
    }
    phase.resize(nt * m);
    shift2.resize(nt);
    for (size_t t = 0; t < nt; ++t) {
      const double sx = t == 0 ? 0 : 6 * uniform01(g) - 3, sy = t == 0 ? 0 : 6 * uniform01(g) - 3;
      shift2[t] = sx * sx + sy * sy;
      for (size_t k = 0; k < m; ++k) {
        const double a = -2 * std::numbers::pi * (fx[k] * sx + fy[k] * sy);
        phase[t * m + k] = cfloat(float(std::cos(a)), float(std::sin(a)));
      }
    }
  }
  ParticleBatch batch() const {
    ParticleBatch b;
    b.n = n;
    b.m = m;
    b.x = x;
    b.ctf = ctf;
    b.inv_sigma2 = inv_sigma2;
    b.noise_row = noise_row;
    b.scale = scale;
    return b;
  }
  TranslationPhases shifts() const { return TranslationPhases{nt, m, phase}; }
  ReferenceSlices refs() const { return ReferenceSlices{nj, m, p}; }
  // Sum of absolute values of the terms of L(i,t,j).
  double magnitude(size_t i, size_t t, size_t j) const {
    const ParticleBatch b = batch();
    const float* w = b.inv_sigma2_row(i);
    double s = 0;
    for (size_t k = 0; k < m; ++k) {
      const double c = double(scale[i]) * ctf[i * m + k];
      const double pp = std::abs(cdouble(p[j * m + k]));
      s += w[k] * (c * c * pp * pp / 2 + std::abs(c) * std::abs(cdouble(x[i * m + k])) * pp);
    }
    (void)t;
    return s;
  }
};

Scores blas_scores(const Problem& pr, int threads, size_t batch = 0) {
  ThreadPool pool(threads);
  Scores s;
  ScoreOptions opt;
  opt.particles_per_batch = batch;
  compute_scores(pr.batch(), pr.shifts(), pr.refs(), s, pool, opt);
  return s;
}

// Class fractions over 3 classes (references j -> class j % 3) and a Gaussian translation prior.
struct Priors {
  std::vector<double> lpt, lpj;
  explicit Priors(const Problem& pr) {
    lpt = gaussian_log_prior(pr.shift2, 2.0, 2, false);
    std::vector<uint32_t> cls(pr.nj);
    for (size_t j = 0; j < pr.nj; ++j) cls[j] = uint32_t(j % 3);
    const std::vector<double> frac = {0.5, 0.3, 0.2};
    lpj = class_log_prior(frac, cls);
  }
  LogPriors view() const { return LogPriors{lpt, lpj}; }
};

}  // namespace

class ScoresVsReference : public ::testing::TestWithParam<std::tuple<double, Noise>> {};

TEST_P(ScoresVsReference, WithinSinglePrecisionBound) {
  const auto [wscale, noise] = GetParam();
  Problem pr(11, wscale, noise);
  const Scores s = blas_scores(pr, 2, 3);
  const std::vector<double> ref = reference::scores(pr.batch(), pr.shifts(), pr.refs());
  ASSERT_EQ(s.value.size(), ref.size());
  double worst = 0;
  for (size_t i = 0; i < pr.n; ++i)
    for (size_t t = 0; t < pr.nt; ++t)
      for (size_t j = 0; j < pr.nj; ++j) {
        const size_t q = (i * pr.nt + t) * pr.nj + j;
        const double bound = std::sqrt(double(pr.m)) * kEps * pr.magnitude(i, t, j);
        worst = std::max(worst, std::abs(s.value[q] - ref[q]) / bound);
        ASSERT_LE(std::abs(s.value[q] - ref[q]), bound) << i << " " << t << " " << j;
      }
  RecordProperty("worst_error_over_sqrtM_eps_mag", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Estep, ScoresVsReference,
                         ::testing::Values(std::tuple{1.0, Noise::PerParticle}, std::tuple{0.02, Noise::Shared},
                                           std::tuple{0.3, Noise::Groups}));

TEST(EstepReference, ScoreIsMinusDiff2PlusParticleConstant) {
  // The identity behind the expansion: L = -diff2 + sum_k w |X|^2 / 2 (|phase| = 1; the float
  // phases have |phase|^2 = 1 within a few float ulps, hence the tolerance).
  Problem pr(12, 0.7, Noise::Groups);
  const auto l = reference::scores(pr.batch(), pr.shifts(), pr.refs());
  const auto d2 = reference::diff2(pr.batch(), pr.shifts(), pr.refs());
  const ParticleConstants pc = particle_constants(pr.batch());
  for (size_t i = 0; i < pr.n; ++i)
    for (size_t q = 0; q < pr.nt * pr.nj; ++q) {
      const size_t idx = i * pr.nt * pr.nj + q;
      EXPECT_NEAR(l[idx] - pc.half_x2[i], -d2[idx], 4 * kEps * (d2[idx] + pc.half_x2[i]));
    }
}

TEST(EstepScores, ThreadCountDoesNotChangeBits) {
  Problem pr(13, 0.5, Noise::PerParticle);
  for (size_t batch : {size_t(1), size_t(2), size_t(3), size_t(0)}) {
    const Scores a = blas_scores(pr, 1, batch);
    const Scores b = blas_scores(pr, 2, batch);
    EXPECT_EQ(a.value, b.value) << "batch " << batch;
  }
}

TEST(EstepScores, BatchSizeChangesOnlyRounding) {
  // OpenBLAS's small-matrix and edge kernels round a row differently depending on its position
  // in the matrix (measured, docs/estep.md), so batch size is not bit-neutral; it stays within
  // the single-precision bound of the reference comparison.
  Problem pr(13, 0.5, Noise::PerParticle);
  const Scores a = blas_scores(pr, 1, 1);
  for (size_t batch : {size_t(2), size_t(3), size_t(7)}) {
    const Scores b = blas_scores(pr, 2, batch);
    for (size_t i = 0; i < pr.n; ++i)
      for (size_t t = 0; t < pr.nt; ++t)
        for (size_t j = 0; j < pr.nj; ++j) {
          const size_t q = (i * pr.nt + t) * pr.nj + j;
          ASSERT_LE(std::abs(a.value[q] - b.value[q]), 2 * std::sqrt(double(pr.m)) * kEps * pr.magnitude(i, t, j));
        }
  }
}

TEST(EstepPosteriors, MatchReferenceAndSumToOne) {
  Problem pr(14, 0.02, Noise::PerParticle);  // small 1/sigma2: broad posteriors
  const Priors pri(pr);
  const ParticleConstants pc = particle_constants(pr.batch());
  std::vector<double> lc(pr.n);
  for (size_t i = 0; i < pr.n; ++i) lc[i] = -pc.half_x2[i] - pc.log_norm[i];

  ThreadPool pool(2);
  const Scores s = blas_scores(pr, 2);
  Posteriors post;
  PosteriorOptions opt;
  opt.keep_significant = true;
  compute_posteriors(s, pri.view(), lc, post, pool, opt);

  const auto lref = reference::scores(pr.batch(), pr.shifts(), pr.refs());
  const auto ref = reference::posteriors(lref, pr.n, pr.nt, pr.nj, pri.view(), lc, 0.999);
  const auto d2 = reference::diff2(pr.batch(), pr.shifts(), pr.refs());

  size_t broad = 0;
  for (size_t i = 0; i < pr.n; ++i) {
    double sum = 0;
    for (size_t q = 0; q < pr.nt * pr.nj; ++q) {
      const size_t idx = i * pr.nt * pr.nj + q;
      EXPECT_NEAR(post.weight[idx], ref.weight[idx], 1e-4);
      sum += post.weight[idx];
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);  // nt*nj float roundings of <= 6e-8
    const ParticlePosterior& a = post.particle[i];
    const ParticlePosterior& b = ref.particle[i];
    EXPECT_TRUE(a.valid);
    EXPECT_EQ(a.n_significant, b.n_significant) << i;
    EXPECT_EQ(a.best_t, b.best_t);
    EXPECT_EQ(a.best_j, b.best_j);
    EXPECT_NEAR(a.max_posterior, b.max_posterior, 1e-4);
    EXPECT_NEAR(a.log_likelihood, b.log_likelihood, 1e-3);
    EXPECT_EQ(post.significant.offset[i + 1] - post.significant.offset[i], a.n_significant);
    broad += a.n_significant > 1;
    // RELION's rlnLogLikeliContribution straight from the model: log sum_poses prior *
    // prod_k N(X^t; sCP, sigma2) = log sum exp(lp_t + lp_j - diff2 - sum log(2 pi sigma2)).
    double mx = -1e300;
    std::vector<double> v;
    for (size_t t = 0; t < pr.nt; ++t)
      for (size_t j = 0; j < pr.nj; ++j) {
        v.push_back(pri.lpt[t] + pri.lpj[j] - d2[(i * pr.nt + t) * pr.nj + j] - pc.log_norm[i]);
        mx = std::max(mx, v.back());
      }
    double se = 0;
    for (double x : v) se += std::exp(x - mx);
    EXPECT_NEAR(a.log_likelihood, mx + std::log(se), 1e-3);
  }
  EXPECT_GE(broad, 3u) << "test data should give broad posteriors for several particles";
}

TEST(EstepPosteriors, UnderflowAndImpossiblePriorsGiveNoNaN) {
  Scores s;
  s.n = 2;
  s.t = 2;
  s.j = 3;
  s.value = {0, -1e30f, -5e3f, -1e4f, -2e3f, -3e38f, 7, 7, 7, 7, 7, 7};
  std::vector<double> lpj = {0, 0, 0, -INFINITY, -INFINITY, -INFINITY};  // particle 1: impossible
  ThreadPool pool(1);
  Posteriors post;
  compute_posteriors(s, LogPriors{{}, lpj}, {}, post, pool);
  EXPECT_TRUE(post.particle[0].valid);
  EXPECT_EQ(post.weight[0], 1.0f);
  for (size_t q = 1; q < 6; ++q) EXPECT_EQ(post.weight[q], 0.0f);
  EXPECT_EQ(post.particle[0].n_significant, 1u);
  EXPECT_DOUBLE_EQ(post.particle[0].log_likelihood, 0.0);
  EXPECT_FALSE(post.particle[1].valid);
  for (float w : post.weight) EXPECT_FALSE(std::isnan(w));
}

TEST(EstepPosteriors, PlantedTruthIsFound) {
  Problem pr(15, 1.0, Noise::Shared);
  const size_t t0 = 3, j0 = 8;
  auto g = make_rng(99, 0);
  for (size_t i = 0; i < pr.n; ++i)
    for (size_t k = 0; k < pr.m; ++k) {
      // X phase_t0 = s C P_j0 + tiny noise
      const cdouble v = double(pr.scale[i]) * pr.ctf[i * pr.m + k] * cdouble(pr.p[j0 * pr.m + k]) /
                        cdouble(pr.phase[t0 * pr.m + k]);
      pr.x[i * pr.m + k] = cfloat(float(v.real() + 1e-3 * normal01(g)), float(v.imag() + 1e-3 * normal01(g)));
    }
  ThreadPool pool(2);
  Posteriors post;
  compute_posteriors(blas_scores(pr, 2), LogPriors{}, {}, post, pool);
  for (size_t i = 0; i < pr.n; ++i) {
    EXPECT_EQ(post.particle[i].best_t, t0);
    EXPECT_EQ(post.particle[i].best_j, j0);
    EXPECT_GT(post.particle[i].max_posterior, 1 - 1e-6);
    EXPECT_EQ(post.particle[i].n_significant, 1u);
  }
}

namespace {
// Posterior weights for the weighted-sum tests (float, as the kernels take them).
std::vector<float> test_weights(const Problem& pr, Posteriors* keep = nullptr) {
  ThreadPool pool(1);
  Posteriors post;
  PosteriorOptions opt;
  opt.keep_significant = true;
  opt.significant_fraction = 0.9;
  const Priors pri(pr);
  compute_posteriors(blas_scores(pr, 1), pri.view(), {}, post, pool, opt);
  if (keep) *keep = post;
  return post.weight;
}
// Magnitudes: the weighted sums with every term replaced by its absolute value.
reference::Sums abs_sums(const Problem& pr, const std::vector<double>& wd) {
  Problem abs_pr = pr;
  for (auto& v : abs_pr.x) v = cfloat(std::abs(v), 0);
  for (auto& v : abs_pr.p) v = cfloat(std::abs(v), 0);
  for (auto& v : abs_pr.ctf) v = std::abs(v);
  for (auto& v : abs_pr.phase) v = cfloat(1, 0);
  return reference::weighted_sums(abs_pr.batch(), abs_pr.shifts(), abs_pr.refs(), wd);
}
void expect_close(const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& mag,
                  double rel, const char* what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t q = 0; q < a.size(); ++q) ASSERT_LE(std::abs(a[q] - b[q]), rel * mag[q] + 1e-12) << what << " " << q;
}
}  // namespace

TEST(EstepWeightedSums, DenseMatchReference) {
  Problem pr(16, 0.05, Noise::Groups);
  const std::vector<float> wf = test_weights(pr);
  const std::vector<double> wd(wf.begin(), wf.end());
  const auto ref = reference::weighted_sums(pr.batch(), pr.shifts(), pr.refs(), wd);
  const auto mag = abs_sums(pr, wd);
  std::vector<double> mag_d2(mag.diff2.size()), mag_s(mag.data.size());
  for (size_t q = 0; q < mag_d2.size(); ++q) mag_d2[q] = mag.diff2[q] + 4 * mag.xa[q];  // (|X|+|CP|)^2 >= all terms
  for (size_t q = 0; q < mag_s.size(); ++q) mag_s[q] = mag.data[q].real();

  ThreadPool pool(2);
  ReferenceSums rs;
  rs.reset(pr.nj, pr.m);
  SumOptions opt;
  opt.particles_per_block = 3;
  opt.pixels_per_chunk = 64;
  accumulate_reference_sums(pr.batch(), pr.shifts(), pr.nj, wf, rs, pool, opt);
  std::vector<double> re_b, im_b, re_r, im_r;
  for (auto v : rs.data) re_b.push_back(v.real()), im_b.push_back(v.imag());
  for (auto v : ref.data) re_r.push_back(v.real()), im_r.push_back(v.imag());
  expect_close(re_b, re_r, mag_s, 1e-5, "S re");
  expect_close(im_b, im_r, mag_s, 1e-5, "S im");
  expect_close(rs.weight, ref.weight, ref.weight, 1e-5, "W");

  ParticleSums ps;
  compute_particle_sums(pr.batch(), pr.shifts(), pr.refs(), wf, ps, pool, opt);
  expect_close(ps.diff2, ref.diff2, mag_d2, 1e-5, "diff2");
  expect_close(ps.xa, ref.xa, mag.xa, 1e-5, "xa");
  expect_close(ps.aa, ref.aa, ref.aa, 1e-5, "aa");
  for (double s : ps.sum_weight) EXPECT_NEAR(s, 1.0, 1e-5);
}

TEST(EstepWeightedSums, DeterministicOverThreads) {
  Problem pr(17, 0.05, Noise::PerParticle);
  const std::vector<float> wf = test_weights(pr);
  ReferenceSums r1, r2;
  ParticleSums p1, p2;
  SumOptions opt;
  opt.particles_per_block = 2;
  opt.pixels_per_chunk = 32;
  {
    ThreadPool pool(1);
    r1.reset(pr.nj, pr.m);
    accumulate_reference_sums(pr.batch(), pr.shifts(), pr.nj, wf, r1, pool, opt);
    compute_particle_sums(pr.batch(), pr.shifts(), pr.refs(), wf, p1, pool, opt);
  }
  {
    ThreadPool pool(2);
    r2.reset(pr.nj, pr.m);
    accumulate_reference_sums(pr.batch(), pr.shifts(), pr.nj, wf, r2, pool, opt);
    compute_particle_sums(pr.batch(), pr.shifts(), pr.refs(), wf, p2, pool, opt);
  }
  EXPECT_EQ(r1.data, r2.data);
  EXPECT_EQ(r1.weight, r2.weight);
  EXPECT_EQ(p1.diff2, p2.diff2);
  EXPECT_EQ(p1.xa, p2.xa);
  EXPECT_EQ(p1.aa, p2.aa);
}

// ParticleBatch::x_sums (the particles unmasked, RELION's Fimg_nomask): the reference sums, dense
// and sparse, are those of a batch whose images are x_sums, bit for bit; the particle sums (noise,
// scale) stay those of x.
TEST(EstepWeightedSums, ReferenceSumsTakeTheUnmaskedParticles) {
  Problem pr(19, 0.05, Noise::Groups);
  Posteriors post;
  const std::vector<float> wf = test_weights(pr, &post);
  std::vector<cfloat> raw(pr.x.size());
  auto g = make_rng(19, 2);
  for (auto& v : raw) v = cfloat(float(normal01(g)), float(normal01(g)));
  ParticleBatch both = pr.batch(), as_raw = pr.batch();
  both.x_sums = raw;
  as_raw.x = raw;
  ThreadPool pool(2);
  ReferenceSums a, b, sa, sb;
  a.reset(pr.nj, pr.m);
  b.reset(pr.nj, pr.m);
  sa.reset(pr.nj, pr.m);
  sb.reset(pr.nj, pr.m);
  accumulate_reference_sums(both, pr.shifts(), pr.nj, wf, a, pool);
  accumulate_reference_sums(as_raw, pr.shifts(), pr.nj, wf, b, pool);
  accumulate_reference_sums(both, pr.shifts(), post.significant, sa, pool);
  accumulate_reference_sums(as_raw, pr.shifts(), post.significant, sb, pool);
  EXPECT_EQ(a.data, b.data);
  EXPECT_EQ(a.weight, b.weight);
  EXPECT_EQ(sa.data, sb.data);
  ReferenceSums masked;
  masked.reset(pr.nj, pr.m);
  accumulate_reference_sums(pr.batch(), pr.shifts(), pr.nj, wf, masked, pool);
  EXPECT_NE(masked.data, a.data) << "x_sums changed nothing: the test lost its point";
  ParticleSums p1, p2;
  compute_particle_sums(both, pr.shifts(), pr.refs(), wf, p1, pool);
  compute_particle_sums(pr.batch(), pr.shifts(), pr.refs(), wf, p2, pool);
  EXPECT_EQ(p1.diff2, p2.diff2);
  EXPECT_EQ(p1.xa, p2.xa);
  // The sums' weight factor (class2d's reach mask): times 2 doubles data and weights of the
  // reference sums (exactly), dense and sparse; the particle sums do not see it.
  const std::vector<float> twice(pr.x.size(), 2.0f);
  ParticleBatch weighted = both;
  weighted.sums_weight = twice;
  ReferenceSums c, sc;
  c.reset(pr.nj, pr.m);
  sc.reset(pr.nj, pr.m);
  accumulate_reference_sums(weighted, pr.shifts(), pr.nj, wf, c, pool);
  accumulate_reference_sums(weighted, pr.shifts(), post.significant, sc, pool);
  for (size_t q = 0; q < a.data.size(); ++q) {
    EXPECT_EQ(c.data[q], 2.0 * a.data[q]);
    EXPECT_EQ(sc.data[q], 2.0 * sa.data[q]);
  }
  for (size_t q = 0; q < a.weight.size(); ++q) EXPECT_EQ(c.weight[q], 2.0 * a.weight[q]);
  ParticleSums p3;
  compute_particle_sums(weighted, pr.shifts(), pr.refs(), wf, p3, pool);
  EXPECT_EQ(p3.diff2, p1.diff2);
  std::vector<cfloat> short_raw(raw.begin(), raw.end() - 1);
  ParticleBatch bad = pr.batch();
  bad.x_sums = short_raw;
  EXPECT_THROW(bad.validate(), Error);
  ParticleBatch bad_w = pr.batch();
  bad_w.sums_weight = std::span<const float>(twice.data(), twice.size() - 1);
  EXPECT_THROW(bad_w.validate(), Error);
}

TEST(EstepWeightedSums, SparseMatchesDenseReferenceOnSignificantSet) {
  Problem pr(18, 0.02, Noise::Shared);
  Posteriors post;
  test_weights(pr, &post);
  ASSERT_GT(post.significant.entry.size(), pr.n);  // some particles have several poses
  // Dense weights that keep only the significant poses.
  std::vector<double> wd(pr.n * pr.nt * pr.nj, 0.0);
  for (size_t i = 0; i < pr.n; ++i)
    for (size_t q = post.significant.offset[i]; q < post.significant.offset[i + 1]; ++q) {
      const PoseWeight& e = post.significant.entry[q];
      wd[(i * pr.nt + e.t) * pr.nj + e.j] = e.weight;
    }
  const auto ref = reference::weighted_sums(pr.batch(), pr.shifts(), pr.refs(), wd);
  const auto mag = abs_sums(pr, wd);
  auto sums = [&](int threads) {
    ThreadPool pool(threads);
    std::pair<ReferenceSums, ParticleSums> out;
    out.first.reset(pr.nj, pr.m);
    accumulate_reference_sums(pr.batch(), pr.shifts(), post.significant, out.first, pool);
    compute_particle_sums(pr.batch(), pr.shifts(), pr.refs(), post.significant, out.second, pool);
    return out;
  };
  const auto [rs, ps] = sums(2);
  // One single-precision product per particle over at most T x J terms, summed in double: the
  // bound of the dense kernels (1e-5 of the magnitude) holds.
  std::vector<double> re_b, im_b, re_r, im_r, mag_s, mag_d2;
  for (auto v : rs.data) re_b.push_back(v.real()), im_b.push_back(v.imag());
  for (auto v : ref.data) re_r.push_back(v.real()), im_r.push_back(v.imag());
  for (auto v : mag.data) mag_s.push_back(v.real());
  for (size_t q = 0; q < mag.diff2.size(); ++q) mag_d2.push_back(mag.diff2[q] + 4 * mag.xa[q]);
  expect_close(re_b, re_r, mag_s, 1e-5, "S re");
  expect_close(im_b, im_r, mag_s, 1e-5, "S im");
  expect_close(rs.weight, ref.weight, ref.weight, 1e-5, "W");
  expect_close(ps.diff2, ref.diff2, mag_d2, 1e-5, "diff2");
  expect_close(ps.xa, ref.xa, mag.xa, 1e-5, "xa");
  expect_close(ps.aa, ref.aa, ref.aa, 1e-5, "aa");
  for (size_t i = 0; i < pr.n; ++i) {
    double sw = 0;
    for (size_t q = post.significant.offset[i]; q < post.significant.offset[i + 1]; ++q)
      sw += post.significant.entry[q].weight;
    EXPECT_DOUBLE_EQ(ps.sum_weight[i], sw);
  }
  // The same bits for one and two threads.
  const auto [rs1, ps1] = sums(1);
  EXPECT_EQ(rs1.data, rs.data);
  EXPECT_EQ(rs1.weight, rs.weight);
  EXPECT_EQ(ps1.diff2, ps.diff2);
}

namespace {
// A random pose list over the problem's poses: each (t, j) with probability 0.3, at least one per
// particle.
PoseList random_poses(const Problem& pr, uint64_t seed) {
  auto g = make_rng(seed, 7);
  PoseList pl;
  pl.n = pr.n;
  pl.t = pr.nt;
  pl.j = pr.nj;
  pl.offset.push_back(0);
  for (size_t i = 0; i < pr.n; ++i) {
    for (size_t t = 0; t < pr.nt; ++t)
      for (size_t j = 0; j < pr.nj; ++j)
        if (uniform01(g) < 0.3) pl.pose.push_back({uint32_t(t), uint32_t(j)});
    if (pl.pose.size() == pl.offset.back()) pl.pose.push_back({uint32_t(i % pr.nt), uint32_t(i % pr.nj)});
    pl.offset.push_back(pl.pose.size());
  }
  return pl;
}
}  // namespace

TEST(EstepFinePass, PoseScoresMatchReference) {
  Problem pr(21, 0.3, Noise::Groups);
  const PoseList pl = random_poses(pr, 1);
  ThreadPool pool(2);
  std::vector<float> sc;
  const double flops = compute_pose_scores(pr.batch(), pr.shifts(), pr.refs(), pl, sc, pool);
  EXPECT_GT(flops, 0);
  ASSERT_EQ(sc.size(), pl.pose.size());
  const std::vector<double> ref = reference::scores(pr.batch(), pr.shifts(), pr.refs());
  for (size_t i = 0; i < pr.n; ++i)
    for (size_t q = pl.offset[i]; q < pl.offset[i + 1]; ++q) {
      const auto [t, j] = pl.pose[q];
      const double bound = std::sqrt(double(pr.m)) * kEps * pr.magnitude(i, t, j);
      ASSERT_LE(std::abs(sc[q] - ref[(i * pr.nt + t) * pr.nj + j]), bound) << i << " " << t << " " << j;
    }
  ThreadPool one(1);
  std::vector<float> sc1;
  compute_pose_scores(pr.batch(), pr.shifts(), pr.refs(), pl, sc1, one);
  EXPECT_EQ(sc, sc1);
}

TEST(EstepFinePass, OversampledPosesAreTheChildrenAndCompactionKeepsThem) {
  SparseWeights coarse;
  coarse.n = 2;
  coarse.t = 3;
  coarse.j = 5;
  coarse.offset = {0, 2, 3};
  coarse.entry = {{2, 4, 0.6f}, {0, 1, 0.4f}, {1, 3, 1.0f}};
  PoseList pl = oversampled_poses(coarse, 4, 2);
  EXPECT_EQ(pl.t, 12u);
  EXPECT_EQ(pl.j, 10u);
  ASSERT_EQ(pl.offset, (std::vector<size_t>{0, 16, 24}));
  for (size_t i = 0; i < 2; ++i)
    for (size_t q = pl.offset[i]; q < pl.offset[i + 1]; ++q) {
      const PoseWeight& parent = coarse.entry[coarse.offset[i] + (q - pl.offset[i]) / 8];
      EXPECT_EQ(pl.pose[q].t / 4, parent.t);
      EXPECT_EQ(pl.pose[q].j / 2, parent.j);
    }
  const PoseList before = pl;
  const std::vector<uint32_t> global = compact_references(pl);
  EXPECT_EQ(global, (std::vector<uint32_t>{2, 3, 6, 7, 8, 9}));
  EXPECT_EQ(pl.j, global.size());
  for (size_t q = 0; q < pl.pose.size(); ++q) EXPECT_EQ(global[pl.pose[q].j], before.pose[q].j);
}

TEST(EstepFinePass, PosePosteriorsAreTheReferencePosteriorsOnTheCandidates) {
  Problem pr(22, 0.02, Noise::PerParticle);  // broad posteriors
  const Priors pri(pr);
  const ParticleConstants pc = particle_constants(pr.batch());
  std::vector<double> lc(pr.n);
  for (size_t i = 0; i < pr.n; ++i) lc[i] = -pc.half_x2[i] - pc.log_norm[i];
  const PoseList pl = random_poses(pr, 2);
  ThreadPool pool(2);
  std::vector<float> sc;
  compute_pose_scores(pr.batch(), pr.shifts(), pr.refs(), pl, sc, pool);
  PosePosteriors post;
  PosteriorOptions opt;
  opt.keep_significant = true;
  compute_pose_posteriors(pl, sc, pri.view(), lc, post, pool, opt);
  const auto d2 = reference::diff2(pr.batch(), pr.shifts(), pr.refs());
  size_t broad = 0;
  for (size_t i = 0; i < pr.n; ++i) {
    // The model's posterior restricted to the candidates, from the reference diff2.
    std::vector<double> v;
    for (size_t q = pl.offset[i]; q < pl.offset[i + 1]; ++q) {
      const auto [t, j] = pl.pose[q];
      v.push_back(pri.lpt[t] + pri.lpj[j] - d2[(i * pr.nt + t) * pr.nj + j] - pc.log_norm[i]);
    }
    const double mx = *std::max_element(v.begin(), v.end());
    double se = 0;
    for (double x : v) se += std::exp(x - mx);
    const ParticlePosterior& a = post.particle[i];
    ASSERT_TRUE(a.valid);
    EXPECT_NEAR(a.log_likelihood, mx + std::log(se), 1e-3);
    EXPECT_NEAR(a.max_posterior, 1.0 / se, 1e-4);
    const size_t best = size_t(std::max_element(v.begin(), v.end()) - v.begin());
    EXPECT_EQ(a.best_t, pl.pose[pl.offset[i] + best].t);
    EXPECT_EQ(a.best_j, pl.pose[pl.offset[i] + best].j);
    double sum = 0;
    for (size_t q = pl.offset[i]; q < pl.offset[i + 1]; ++q) {
      const PoseWeight& e = post.weights.entry[q];
      EXPECT_EQ(e.t, pl.pose[q].t);
      EXPECT_EQ(e.j, pl.pose[q].j);
      EXPECT_NEAR(e.weight, std::exp(v[q - pl.offset[i]] - mx) / se, 1e-4);
      sum += e.weight;
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    // The significant set: the fewest largest weights holding 0.999 of the mass.
    std::vector<double> sorted;
    for (double x : v) sorted.push_back(std::exp(x - mx) / se);
    std::sort(sorted.rbegin(), sorted.rend());
    size_t count = 0;
    for (double acc = 0; count < sorted.size() && acc < 0.999 - 1e-6;) acc += sorted[count++];
    EXPECT_NEAR(double(a.n_significant), double(count), 1.0);
    EXPECT_EQ(post.significant.offset[i + 1] - post.significant.offset[i], a.n_significant);
    broad += a.n_significant > 1;
  }
  EXPECT_GE(broad, 3u);
}

TEST(EstepInput, InconsistentSizesThrow) {
  Problem pr(19, 1.0, Noise::Shared);
  ParticleBatch b = pr.batch();
  b.ctf = b.ctf.subspan(1);
  ThreadPool pool(1);
  Scores s;
  EXPECT_THROW(compute_scores(b, pr.shifts(), pr.refs(), s, pool), Error);
  std::vector<uint32_t> bad(pr.n, 1);  // only one noise row
  b = pr.batch();
  b.noise_row = bad;
  EXPECT_THROW(b.validate(), Error);
}

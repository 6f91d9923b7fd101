#include "regula/estep/posteriors.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>

#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/estep/significance.hpp"

namespace regula::estep {
namespace {

// Prior for particle i, pose index q, from a span of size `count` (shared) or n*count.
const double* prior_row(std::span<const double> p, size_t count, size_t n, size_t i, const char* what) {
  if (p.empty()) return nullptr;
  if (p.size() == count) return p.data();
  if (p.size() == n * count) return p.data() + i * count;
  runtime_error("estep: {} log-prior has {} values, expected {} or {}", what, p.size(), count, n * count);
}

// Turns the log-posteriors e[0..count) of one particle (non-finite = excluded) into normalised
// weights, the particle's statistics and optionally its significant list; pose_of(q) gives the
// (t, j) of entry q. e is overwritten with exp(e - max).
template <class PoseOf>
void finish_posterior(std::vector<double>& e, double log_const, double fraction, float* weight,
                      ParticlePosterior& st, std::vector<uint32_t>& order, std::vector<PoseWeight>* sig,
                      const PoseOf& pose_of) {
  const size_t q_count = e.size();
  double mx = -std::numeric_limits<double>::infinity();
  size_t best = 0;
  for (size_t q = 0; q < q_count; ++q) {
    if (!std::isfinite(e[q])) e[q] = -std::numeric_limits<double>::infinity();
    if (e[q] > mx) {
      mx = e[q];
      best = q;
    }
  }
  st = ParticlePosterior{};
  if (!std::isfinite(mx)) {
    std::fill(weight, weight + q_count, 0.0f);
    return;
  }
  const double sum = exp_relative(std::span<double>(e.data(), q_count), mx);
  // sum >= 1 (the maximum contributes exactly 1).
  // Weights below the smallest normal float are stored as 0: denormal weights would make the
  // SGEMMs of the weighted sums tens of times slower, for a mass below 1e-38 * T * J.
  for (size_t q = 0; q < q_count; ++q) {
    const double v = e[q] / sum;
    weight[q] = v < double(std::numeric_limits<float>::min()) ? 0.0f : float(v);
  }
  st.valid = true;
  st.max_posterior = 1.0 / sum;
  st.log_likelihood = mx + std::log(sum) + log_const;
  const PoseWeight bp = pose_of(best);
  st.best_t = bp.t;
  st.best_j = bp.j;
  st.best_log_posterior = mx;

  // Significant set: largest weights first until their sum reaches fraction * sum (the same
  // selection as the 3D E-step's, estep/significance.hpp).
  SignificantSet set;
  set.index.swap(order);  // reuse the scratch vector's memory
  significant_set(std::span<const double>(e), sum, fraction, 0, set);
  st.n_significant = set.index.size();
  if (sig)
    for (uint32_t q : set.index) {
      PoseWeight pw = pose_of(q);
      pw.weight = weight[q];
      sig->push_back(pw);
    }
  set.index.swap(order);
}

// One particle of a dense score array: fills weight row (T*J), stats and optionally the
// significant list.
void particle_posterior(const float* score, const double* lpt, const double* lpj, double log_const,
                        size_t nt, size_t nj, double fraction, float* weight, ParticlePosterior& st,
                        std::vector<double>& e, std::vector<uint32_t>& order, std::vector<PoseWeight>* sig) {
  e.resize(nt * nj);
  for (size_t t = 0; t < nt; ++t)
    for (size_t j = 0; j < nj; ++j) {
      const size_t q = t * nj + j;
      e[q] = double(score[q]) + (lpt ? lpt[t] : 0.0) + (lpj ? lpj[j] : 0.0);
    }
  finish_posterior(e, log_const, fraction, weight, st, order, sig,
                   [nj](size_t q) { return PoseWeight{uint32_t(q / nj), uint32_t(q % nj), 0.0f}; });
}

void check_posterior_options(const PosteriorOptions& opt, std::span<const double> log_constant, size_t n) {
  if (!(opt.significant_fraction > 0 && opt.significant_fraction <= 1))
    runtime_error("estep: significant_fraction = {} outside (0, 1]", opt.significant_fraction);
  if (!log_constant.empty() && log_constant.size() != n)
    runtime_error("estep: log_constant has {} values, expected n = {}", log_constant.size(), n);
}

// CSR list from per-particle vectors.
void gather_csr(std::vector<std::vector<PoseWeight>>& rows, size_t n, size_t nt, size_t nj, SparseWeights& sw) {
  sw = SparseWeights{};
  sw.n = n;
  sw.t = nt;
  sw.j = nj;
  sw.offset.assign(n + 1, 0);
  for (size_t i = 0; i < n; ++i) sw.offset[i + 1] = sw.offset[i] + rows[i].size();
  sw.entry.reserve(sw.offset[n]);
  for (auto& v : rows) sw.entry.insert(sw.entry.end(), v.begin(), v.end());
}

}  // namespace

void compute_posteriors(const Scores& scores, const LogPriors& priors, std::span<const double> log_constant,
                        Posteriors& out, ThreadPool& pool, const PosteriorOptions& opt) {
  const size_t n = scores.n, nt = scores.t, nj = scores.j;
  if (scores.value.size() != n * nt * nj) runtime_error("estep: scores hold {} values, expected {}", scores.value.size(), n * nt * nj);
  check_posterior_options(opt, log_constant, n);
  if ((nt * nj) >> 32) runtime_error("estep: {} poses per particle exceed 2^32", nt * nj);
  out.n = n;
  out.t = nt;
  out.j = nj;
  out.weight.assign(n * nt * nj, 0.0f);
  out.particle.assign(n, ParticlePosterior{});
  std::vector<std::vector<PoseWeight>> sig(opt.keep_significant ? n : 0);

  struct Scratch {
    std::vector<double> e;
    std::vector<uint32_t> order;
  };
  std::vector<Scratch> scratch(size_t(pool.size()));
  pool.parallel_for(0, n, [&](size_t i, int thread) {
    const double* lpt = prior_row(priors.translation, nt, n, i, "translation");
    const double* lpj = prior_row(priors.reference, nj, n, i, "reference");
    Scratch& s = scratch[size_t(thread)];
    particle_posterior(scores.value.data() + i * nt * nj, lpt, lpj, log_constant.empty() ? 0.0 : log_constant[i],
                       nt, nj, opt.significant_fraction, out.weight.data() + i * nt * nj, out.particle[i], s.e,
                       s.order, opt.keep_significant ? &sig[i] : nullptr);
  });

  out.significant = SparseWeights{};
  if (opt.keep_significant) gather_csr(sig, n, nt, nj, out.significant);
}

void compute_pose_posteriors(const PoseList& poses, std::span<const float> scores, const LogPriors& priors,
                             std::span<const double> log_constant, PosePosteriors& out, ThreadPool& pool,
                             const PosteriorOptions& opt) {
  const size_t n = poses.n;
  check_posterior_options(opt, log_constant, n);
  if (poses.offset.size() != n + 1 || poses.offset.back() != poses.pose.size() || scores.size() != poses.pose.size())
    runtime_error("estep: pose list of {} particles with {} poses and {} scores is inconsistent", n,
                  poses.pose.size(), scores.size());
  if (n > 0) {  // sizes checked once
    prior_row(priors.translation, poses.t, n, 0, "translation");
    prior_row(priors.reference, poses.j, n, 0, "reference");
  }
  for (const PoseList::Pose& p : poses.pose)
    if (p.t >= poses.t || p.j >= poses.j) runtime_error("estep: pose ({}, {}) out of range", p.t, p.j);
  out.particle.assign(n, ParticlePosterior{});
  SparseWeights& w = out.weights;
  w = SparseWeights{};
  w.n = n;
  w.t = poses.t;
  w.j = poses.j;
  w.offset = poses.offset;
  w.entry.resize(poses.pose.size());
  std::vector<std::vector<PoseWeight>> sig(opt.keep_significant ? n : 0);
  struct Scratch {
    std::vector<double> e;
    std::vector<float> weight;
    std::vector<uint32_t> order;
  };
  std::vector<Scratch> scratch(size_t(pool.size()));
  pool.parallel_for(0, n, [&](size_t i, int thread) {
    Scratch& s = scratch[size_t(thread)];
    const double* lpt = prior_row(priors.translation, poses.t, n, i, "translation");
    const double* lpj = prior_row(priors.reference, poses.j, n, i, "reference");
    const size_t q0 = poses.offset[i], q1 = poses.offset[i + 1];
    s.e.resize(q1 - q0);
    s.weight.resize(q1 - q0);
    for (size_t q = q0; q < q1; ++q) {
      const PoseList::Pose& p = poses.pose[q];
      s.e[q - q0] = double(scores[q]) + (lpt ? lpt[p.t] : 0.0) + (lpj ? lpj[p.j] : 0.0);
    }
    const auto pose_of = [&](size_t q) {
      const PoseList::Pose& p = poses.pose[q0 + q];
      return PoseWeight{p.t, p.j, 0.0f};
    };
    finish_posterior(s.e, log_constant.empty() ? 0.0 : log_constant[i], opt.significant_fraction, s.weight.data(),
                     out.particle[i], s.order, opt.keep_significant ? &sig[i] : nullptr, pose_of);
    for (size_t q = q0; q < q1; ++q)
      w.entry[q] = PoseWeight{poses.pose[q].t, poses.pose[q].j, s.weight[q - q0]};
  });
  out.significant = SparseWeights{};
  if (opt.keep_significant) gather_csr(sig, n, poses.t, poses.j, out.significant);
}

double exp_relative(std::span<double> v, double mx) {
  double sum = 0;
  for (double& x : v) {
    const double d = x - mx;  // -inf for an excluded pose
    x = d > kExpCut ? std::exp(d) : 0.0;
    sum += x;
  }
  return sum;
}

std::vector<double> gaussian_log_prior(std::span<const double> d2, double sigma2, int dims, bool normalise_over_set) {
  if (!(sigma2 > 0)) runtime_error("estep: Gaussian prior variance {} must be positive", sigma2);
  std::vector<double> out(d2.size());
  const double c = -0.5 * dims * std::log(2.0 * std::numbers::pi * sigma2);
  for (size_t q = 0; q < d2.size(); ++q) out[q] = -d2[q] / (2.0 * sigma2) + c;
  if (normalise_over_set && !out.empty()) {
    const double mx = *std::max_element(out.begin(), out.end());
    double s = 0;
    for (double v : out) s += std::exp(v - mx);
    const double lse = mx + std::log(s);
    for (double& v : out) v -= lse;
  }
  return out;
}

std::vector<double> class_log_prior(std::span<const double> fraction, std::span<const uint32_t> class_of) {
  std::vector<double> out(class_of.size());
  for (size_t j = 0; j < class_of.size(); ++j) {
    if (class_of[j] >= fraction.size()) runtime_error("estep: class index {} of reference {} out of range [0, {})", class_of[j], j, fraction.size());
    out[j] = std::log(fraction[class_of[j]]);  // log(0) = -inf: class switched off
  }
  return out;
}

}  // namespace regula::estep

// Posterior weights from E-step scores (see docs/estep.md).
//
// For particle i and pose (t, j) the log-posterior up to a per-particle constant is
//     v(t,j) = L(i,t,j) + log_prior_t(t) + log_prior_j(j),
// L from compute_scores (= -diff2 + const). In double precision:
//     mx = max v,  e(t,j) = exp(v - mx) (in [0, 1], no overflow, the maximum is exactly 1),
//     S = sum e,   weight(t,j) = e / S.
// rlnLogLikeliContribution (RELION: log(sum_weight) - min_diff2 - logsigma2) is
//     log_likelihood = mx + log(S) + log_constant[i],
// where the caller passes log_constant[i] = -half_x2[i] - log_norm[i] - highres_term
// (particle_constants) to obtain RELION's value, with priors given as normalised log-probabilities.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "regula/estep/scores.hpp"

namespace regula {
class ThreadPool;
}

namespace regula::estep {

// Log-priors, each either empty (0), shared (one value per pose) or per particle.
struct LogPriors {
  std::span<const double> translation;  // T or N*T
  std::span<const double> reference;    // J or N*J (class fraction, angular prior, ...)
};

struct PosteriorOptions {
  double significant_fraction = 0.999;  // mass held by the significant set, in (0, 1]
  bool keep_significant = false;        // fill Posteriors::significant (sparse list)
};

struct ParticlePosterior {
  bool valid = false;          // false when no pose had a finite log-posterior (all weights 0)
  double max_posterior = 0;    // rlnMaxValueProbDistribution: largest normalised weight
  size_t n_significant = 0;    // rlnNrOfSignificantSamples: smallest number of poses holding
                               // significant_fraction of the mass (ties broken by index)
  double log_likelihood = 0;   // rlnLogLikeliContribution as defined above
  uint32_t best_t = 0, best_j = 0;  // argmax pose (first index on ties)
  double best_log_posterior = 0;    // v at the argmax (= mx)
};

struct PoseWeight {
  uint32_t t = 0, j = 0;
  float weight = 0;  // normalised posterior (over all poses, not only the significant ones)
};

// Per-particle lists of poses, CSR: entries of particle i are entry[offset[i] .. offset[i+1]).
struct SparseWeights {
  size_t n = 0, t = 0, j = 0;
  std::vector<size_t> offset;  // n + 1
  std::vector<PoseWeight> entry;
};

// Per-particle lists of candidate poses without weights (CSR as SparseWeights): the poses of a
// finer pass (sparse_scores.hpp). Pose indices t < t_count, j < j_count.
struct PoseList {
  struct Pose {
    uint32_t t = 0, j = 0;
  };
  size_t n = 0, t = 0, j = 0;
  std::vector<size_t> offset;  // n + 1
  std::vector<Pose> pose;
};

struct Posteriors {
  size_t n = 0, t = 0, j = 0;
  std::vector<float> weight;  // n*t*j, layout as Scores; rows of invalid particles are 0;
                              // weights below FLT_MIN (denormal in float) are stored as 0
  std::vector<ParticlePosterior> particle;
  SparseWeights significant;  // filled when keep_significant: each particle's significant set
                              // sorted by decreasing weight
};

// log_constant: per particle (size N) or empty (0). Non-finite log-posteriors (NaN, -inf,
// +inf) get weight 0. Deterministic: particles are independent; the pool only splits them.
void compute_posteriors(const Scores& scores, const LogPriors& priors, std::span<const double> log_constant,
                        Posteriors& out, ThreadPool& pool, const PosteriorOptions& opt = {});

// Posteriors over per-particle pose lists (the finer pass): for particle i and its candidate q
// (pose (t, j) = poses.pose[q]), v = score[q] + log_prior_t(t) + log_prior_j(j), normalised over
// the particle's candidates only, with the definitions of compute_posteriors (max_posterior,
// n_significant among the candidates, log_likelihood = mx + log S + log_constant, best pose).
struct PosePosteriors {
  std::vector<ParticlePosterior> particle;  // best_t, best_j: pose indices of the list
  SparseWeights weights;                    // every candidate, in the order of the list
  SparseWeights significant;                // when keep_significant: by decreasing weight
};
// scores: one per candidate (poses.pose order). Priors as for compute_posteriors: each empty,
// shared (poses.t or poses.j values) or per particle (n times that).
void compute_pose_posteriors(const PoseList& poses, std::span<const float> scores, const LogPriors& priors,
                             std::span<const double> log_constant, PosePosteriors& out, ThreadPool& pool,
                             const PosteriorOptions& opt = {});

// log N(d; 0, sigma2) density for squared distances d2 in `dims` dimensions:
//   -d2/(2 sigma2) - dims/2 log(2 pi sigma2)                 (normalise_over_set = false; RELION's
//                                                            pdf_offset for dims = 2)
// or that renormalised so that sum_exp = 1 over the given set (normalise_over_set = true).
// d2 and sigma2 in the same units (e.g. Å^2 for offsets, degrees^2 for angular distances).
std::vector<double> gaussian_log_prior(std::span<const double> d2, double sigma2, int dims,
                                       bool normalise_over_set);

// v[q] <- exp(v[q] - mx) for every q, and their sum. Terms below exp(kExpCut) (1e-38, under the
// smallest normal float) are set to 0 without calling exp: every caller stores normalised weights
// below FLT_MIN (or 1e-30) as 0, and the maximum contributes exactly 1, so the sum (>= 1) does not
// see them in double precision. Most poses of a search are far below the best one, and exp of a
// large negative argument is the slow path of libm (the underflow handling took 6% of a global
// refinement's time).
inline constexpr double kExpCut = -87.5;
double exp_relative(std::span<double> v, double mx);

// Log class fractions spread over references: out[j] = log(fraction[class_of[j]]).
std::vector<double> class_log_prior(std::span<const double> fraction, std::span<const uint32_t> class_of);

}  // namespace regula::estep

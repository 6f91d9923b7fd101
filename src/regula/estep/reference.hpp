// Plain double-precision E-step: the test oracle for the SGEMM kernels (OpenMM's "reference
// platform" idea). Straight loops over i, t, j, k from the defining formulas; no BLAS, no
// expansion tricks, no threads. Slow by design: use on small problems only.
#pragma once
#include <complex>
#include <cstddef>
#include <span>
#include <vector>

#include "regula/estep/posteriors.hpp"
#include "regula/estep/scores.hpp"

namespace regula::estep::reference {

// diff2(i,t,j) = sum_k |X_i(k) phase_t(k) - s_i C_i(k) P_j(k)|^2 / (2 sigma2_i(k))  (RELION's),
// layout [(i*T + t)*J + j].
std::vector<double> diff2(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs);

// L(i,t,j) = -sum_k w_i(k) [ s^2 C^2 |P_j|^2 - 2 Re(conj(X^t) s C P_j) ] / 2, the quantity
// compute_scores returns; equals -diff2 + sum_k w |X|^2 / 2.
std::vector<double> scores(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs);

struct PosteriorResult {
  std::vector<double> weight;  // n*T*J normalised
  std::vector<ParticlePosterior> particle;
};
// Same definitions as compute_posteriors, from double scores.
PosteriorResult posteriors(std::span<const double> scores, size_t n, size_t nt, size_t nj,
                           const LogPriors& priors, std::span<const double> log_constant, double fraction);

struct Sums {
  std::vector<std::complex<double>> data;  // J*m
  std::vector<double> weight;              // J*m
  std::vector<double> diff2, xa, aa;       // n*m
};
// All weighted sums of weighted_sums.hpp from dense weights [(i*T + t)*J + j].
Sums weighted_sums(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                   std::span<const double> weights);

}  // namespace regula::estep::reference

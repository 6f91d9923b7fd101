// M-step sums from E-step posteriors, as matrix products the other way round (docs/estep.md).
//
// With weights w_itj (Posteriors::weight, layout [(i*T + t)*J + j]), effective CTF s_i C_i(k)
// and inverse noise w_i(k) = 1/sigma2_i(k) (RELION's Minvsigma2, no factor 1/2):
//   per reference   S_j(k) = sum_{i,t} w_itj s_i C_i(k) w_i(k) X_i(k) phase_t(k)        (complex)
//                   W_j(k) = sum_{i,t} w_itj s_i^2 C_i(k)^2 w_i(k)
//     (CTF-premultiplied particles, whose C is CTF^2: S_j without C_i and W_j with C_i instead of
//      C_i^2, i.e. data X and weight CTF^2, as RELION's storeWeightedSums)
//     (the data and weight that the caller inserts once per reference slice into the 3D
//      back-projector or 2D class sums);
//   per particle    diff2_i(k) = sum_{t,j} w_itj |X_i^t(k) - s_i C_i(k) P_j(k)|^2   (noise update)
//                   xa_i(k)    = sum_{t,j} w_itj Re(conj(X_i^t(k)) s_i C_i(k) P_j(k)) (scale corr.)
//                   aa_i(k)    = sum_{t,j} w_itj |s_i C_i(k) P_j(k)|^2                (scale corr.)
//     per selected pixel; the caller bins them by resolution shell / optics group.
// Dense kernels use SGEMM with double accumulation across particle blocks. Sparse kernels take
// per-particle pose lists (the significant poses of a pass) and do one small SGEMM per particle,
// dense over that particle's distinct translations and references (weights 0 where it has no
// pose), accumulated in double across particles in particle order. All are deterministic for any
// thread count (reductions in a fixed order).
#pragma once
#include <complex>
#include <cstddef>
#include <span>
#include <vector>

#include "regula/estep/posteriors.hpp"
#include "regula/estep/scores.hpp"

namespace regula {
class ThreadPool;
}

namespace regula::estep {

// Accumulators (double) for J references at m pixels; calls add to them.
struct ReferenceSums {
  size_t j = 0, m = 0;
  std::vector<std::complex<double>> data;  // j*m: S_j(k)
  std::vector<double> weight;              // j*m: W_j(k)
  void reset(size_t nj, size_t nm);
};

struct ParticleSums {
  size_t n = 0, m = 0;
  std::vector<double> diff2, xa, aa;  // n*m each
  std::vector<double> sum_weight;     // n: sum of the weights used (1 for dense normalised weights)
};

struct SumOptions {
  // Particles per SGEMM block (reference sums: summed over in float inside a block, blocks added
  // in double in order; particle sums: one block per thread task). 0 = automatic from sizes.
  // Reference sums depend on this value at the level of float rounding; nothing depends on the
  // thread count.
  size_t particles_per_block = 0;
  size_t pixels_per_chunk = 256;  // reference sums: columns per thread task
};

// acc must have been reset to (refs J, pb.m) or be non-empty with those sizes.
void accumulate_reference_sums(const ParticleBatch& pb, const TranslationPhases& tp, size_t nj,
                               std::span<const float> weights, ReferenceSums& acc, ThreadPool& pool,
                               const SumOptions& opt = {});
void accumulate_reference_sums(const ParticleBatch& pb, const TranslationPhases& tp, const SparseWeights& weights,
                               ReferenceSums& acc, ThreadPool& pool);

void compute_particle_sums(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                           std::span<const float> weights, ParticleSums& out, ThreadPool& pool,
                           const SumOptions& opt = {});
void compute_particle_sums(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                           const SparseWeights& weights, ParticleSums& out, ThreadPool& pool);

// Flop counts of the dense kernels (for benchmarks): reference sums 4*N*T*J*m + 2*N*J*m,
// particle sums 4*N*T*J*m + 2*N*J*m.
double reference_sums_flops(size_t n, size_t nt, size_t nj, size_t m);
double particle_sums_flops(size_t n, size_t nt, size_t nj, size_t m);

}  // namespace regula::estep

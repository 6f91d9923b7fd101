// E-step scores as matrix products (see docs/estep.md for the derivation).
//
// Model (RELION's): every selected Fourier pixel k of particle i is a complex Gaussian
//     X_i(k) ~ s_i C_i(k) P_j(k) / phase_t(k)  +  noise of variance sigma2(k) per component,
// so that for a particle shifted by translation t (X_i^t(k) = X_i(k) phase_t(k)) and
// reference slice j the log-likelihood is
//     log p = -sum_k |X_i^t(k) - s_i C_i(k) P_j(k)|^2 / (2 sigma2(k)) - sum_k log(2 pi sigma2(k)).
// RELION calls the first sum diff2. Expanding |X^t|^2 = |X|^2 (|phase| = 1), the score
//     L(i,t,j) = sum_k w_i(k) [ Re(conj(X_i^t) s_i C_i P_j) - s_i^2 C_i^2 |P_j|^2 / 2 ],
//     w_i(k) = 1/sigma2_i(k),
// equals -diff2 up to the per-particle constant -sum_k w_i(k) |X_i(k)|^2 / 2 (see
// particle_constants). Posteriors only need L; rlnLogLikeliContribution needs the constants.
//
// Layouts: all arrays are row-major, pixel index fastest. Complex values are interleaved
// (re, im) std::complex<float>. Fourier pixels are whatever the caller selected (those within
// the current frequency limit, flattened); units are irrelevant here.
#pragma once
#include <complex>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace regula {
class ThreadPool;
}

namespace regula::estep {

using cfloat = std::complex<float>;

// A batch of n particles, m selected Fourier pixels each. A view: the caller owns the data.
struct ParticleBatch {
  size_t n = 0;                          // particles
  size_t m = 0;                          // selected Fourier pixels per particle
  std::span<const cfloat> x;             // n*m: X_i(k), the (unshifted) particle image
  // n*m: the particles as the reference sums take them (RELION: unmasked, Fimg_nomask, as the CTF
  // spreads the signal outside the particle mask); empty: x. Scores and particle sums use x.
  std::span<const cfloat> x_sums;
  // n*m: a factor of the weights of the reference sums (the noise the scored x keeps over the noise
  // x_sums keeps, class2d's reach mask); empty: 1.
  std::span<const float> sums_weight;
  std::span<const float> ctf;            // n*m: C_i(k), real CTF (1 where no CTF)
  std::span<const float> inv_sigma2;     // rows*m: w(k) = 1/sigma2(k), one row per noise group
  std::span<const uint32_t> noise_row;   // n: row of inv_sigma2 used by particle i; may be empty
                                         // when inv_sigma2 has exactly n rows (row i) or 1 row
  std::span<const float> scale;          // n: s_i multiplying the CTF (RELION's scale correction);
                                         // empty means 1
  // n: 1 where particle i's image is CTF-premultiplied (its ctf row then holds CTF^2, the
  // likelihood's factor, and the reference sums take X itself with weight CTF^2, as RELION);
  // empty means none.
  std::span<const uint8_t> premultiplied;

  // Throws regula::Error when sizes are inconsistent (a programming error of the caller).
  void validate() const;
  // Row of inv_sigma2 for particle i.
  const float* inv_sigma2_row(size_t i) const;
  float scale_of(size_t i) const { return scale.empty() ? 1.0f : scale[i]; }
  bool premultiplied_of(size_t i) const { return !premultiplied.empty() && premultiplied[i]; }
};

// T translations as per-pixel phase factors: X^t(k) = X(k) * phase[t*m + k]. |phase| = 1
// (not checked; the constants assume it).
struct TranslationPhases {
  size_t t = 0, m = 0;
  std::span<const cfloat> phase;  // t*m
  void validate(size_t m_expected) const;
};

// J reference slices P_j(k) (3D: projections in J orientations, possibly of several classes;
// 2D: rotated class averages), sampled at the same m pixels as the particles.
struct ReferenceSlices {
  size_t j = 0, m = 0;
  std::span<const cfloat> p;  // j*m
  void validate(size_t m_expected) const;
};

// Scores L(i,t,j), layout value[(i*T + t)*J + j].
struct Scores {
  size_t n = 0, t = 0, j = 0;
  std::vector<float> value;
  float at(size_t i, size_t it, size_t ij) const { return value[(i * t + it) * j + ij]; }
};

struct ScoreOptions {
  // Particles per BLAS call (one batch per thread task). 0 = choose from the sizes so that
  // the per-batch matrix of shifted, weighted particles stays around 2 MB. Results are
  // independent of this value and of the thread count (each particle's rows are computed
  // by the same kernels whatever batch they fall in; checked by the tests).
  size_t particles_per_batch = 0;
};

// Computes L(i,t,j) for all particles, translations and references with two single-precision
// SGEMMs per batch: A1 = (s^2 C^2 w)[n x m] |P|^2^T and A2 = (s C w X^t)[n*T x 2m] P^T[2m x J]
// (complex as interleaved re/im so the real inner product is Re(conj(a) P)); L = A2 - A1/2.
// Flops: 4*n*T*m*J (A2) + 2*n*m*J (A1). Threads: particle batches in parallel over `pool`,
// OpenBLAS itself single-threaded (core/blas.hpp).
void compute_scores(const ParticleBatch& particles, const TranslationPhases& shifts,
                    const ReferenceSlices& refs, Scores& out, ThreadPool& pool,
                    const ScoreOptions& opt = {});

// Flops of compute_scores: 4*n*T*m*J + 2*n*m*J.
double score_flops(size_t n, size_t nt, size_t nj, size_t m);

// Per-particle constants turning scores into RELION's full log-likelihood over the m selected
// pixels:  log p(i,t,j) = L(i,t,j) - half_x2[i] - log_norm[i], with
//   half_x2[i]  = sum_k w_i(k) |X_i(k)|^2 / 2
//   log_norm[i] = sum_k log(2 pi sigma2_i(k))   (pixels with w_i(k) = 0 are skipped)
// Computed in double. Pixels outside the selection (RELION adds their |X|^2/(2 sigma2) to diff2
// as "highres_Xi2") are the caller's to add.
struct ParticleConstants {
  std::vector<double> half_x2;
  std::vector<double> log_norm;
};
ParticleConstants particle_constants(const ParticleBatch& particles);

// Particles per batch used when ScoreOptions::particles_per_batch == 0.
size_t default_particles_per_batch(size_t n, size_t t, size_t m);

}  // namespace regula::estep

// Internal to the estep layer: building the matrices that the SGEMM kernels multiply.
#pragma once
#include <cstddef>
#include <vector>

#include "regula/estep/scores.hpp"

namespace regula::estep::detail {

// The T rows (t = 0..T-1, m complex values each) of particle i of the matrix
// a(i,t,k) = s_i C_i(k) w_i(k) X_i(k) phase_t(k), written to dst[t*m + k].
void shifted_weighted_rows(const ParticleBatch& pb, const TranslationPhases& tp, size_t i, cfloat* dst);

// Row i of c2w(i,k) = s_i^2 C_i(k)^2 w_i(k), written to dst[k].
void ctf2_weight_row(const ParticleBatch& pb, size_t i, float* dst);

// |P_j(k)|^2, j*m.
std::vector<float> reference_power(const ReferenceSlices& refs);

// Row-major single-precision C[m x n] = op(A) op(B) (+ beta C), thin wrapper over cblas_sgemm.
void sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, const float* a, size_t lda,
           const float* b, size_t ldb, float beta, float* c, size_t ldc);

}  // namespace regula::estep::detail

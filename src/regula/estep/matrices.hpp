// Internal to the estep layer: building the matrices that the SGEMM kernels multiply.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "regula/estep/scores.hpp"

namespace regula::estep::detail {

// The T rows (t = 0..T-1, m complex values each) of particle i of the matrix
// a(i,t,k) = s_i C_i(k) w_i(k) X_i(k) phase_t(k), written to dst[t*m + k]. `for_sums`: the rows of
// the reference sums, which for a CTF-premultiplied particle have no C (data X, as RELION).
void shifted_weighted_rows(const ParticleBatch& pb, const TranslationPhases& tp, size_t i, cfloat* dst,
                           bool for_sums = false);

// One of those rows: translation t only, written to dst[k].
void shifted_weighted_row(const ParticleBatch& pb, const TranslationPhases& tp, size_t i, size_t t, cfloat* dst,
                          bool for_sums = false);

// Row i of c2w(i,k) = s_i^2 C_i(k)^2 w_i(k), written to dst[k]. `for_sums`: the weight of the
// reference sums, s_i^2 C_i(k) w_i(k) for a CTF-premultiplied particle (C = CTF^2: weight CTF^2).
void ctf2_weight_row(const ParticleBatch& pb, size_t i, float* dst, bool for_sums = false);

// |P_j(k)|^2, j*m.
std::vector<float> reference_power(const ReferenceSlices& refs);

// The distinct translations and references of one particle's poses (items with fields t and j),
// sorted, and the position of each in those lists (slot arrays indexed by translation and
// reference, sized T and J; only the entries of present values are meaningful). O(items + T + J).
struct DistinctPoses {
  std::vector<uint32_t> t, j, t_slot, j_slot;
  template <class Item>
  void build(std::span<const Item> items, size_t nt, size_t nj) {
    t_slot.assign(nt, 0);
    j_slot.assign(nj, 0);
    for (const Item& e : items) {
      t_slot[e.t] = 1;
      j_slot[e.j] = 1;
    }
    t.clear();
    j.clear();
    for (size_t v = 0; v < nt; ++v)
      if (t_slot[v]) {
        t_slot[v] = uint32_t(t.size());
        t.push_back(uint32_t(v));
      }
    for (size_t v = 0; v < nj; ++v)
      if (j_slot[v]) {
        j_slot[v] = uint32_t(j.size());
        j.push_back(uint32_t(v));
      }
  }
};

// Row-major single-precision C[m x n] = op(A) op(B) (+ beta C), thin wrapper over cblas_sgemm
// (denormals flushed for the call; its 2 m n k flops counted in sgemm_flops()).
void sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, const float* a, size_t lda,
           const float* b, size_t ldb, float beta, float* c, size_t ldc);

// Flops of every sgemm() call of the process so far, and the time spent in them summed over the
// threads: the jobs log their E-step's SGEMM rate against the machine's.
uint64_t sgemm_flops();
double sgemm_thread_seconds();
// The OpenBLAS kernel family in use (e.g. "Haswell", "SkylakeX"): the environment variable
// OPENBLAS_CORETYPE overrides OpenBLAS's own choice, and on an AVX-512 machine the AVX2 kernel
// runs the SGEMMs at about half the rate (docs/estep.md).
const char* blas_kernel();

}  // namespace regula::estep::detail

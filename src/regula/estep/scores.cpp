#include "regula/estep/scores.hpp"

#include <cblas.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <numbers>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/estep/matrices.hpp"

namespace regula::estep {

void ParticleBatch::validate() const {
  if (x.size() != n * m) runtime_error("estep: particle images have {} values, expected n*m = {}", x.size(), n * m);
  if (!x_sums.empty() && x_sums.size() != n * m)
    runtime_error("estep: unmasked particle images have {} values, expected n*m = {}", x_sums.size(), n * m);
  if (!sums_weight.empty() && sums_weight.size() != n * m)
    runtime_error("estep: sums weights have {} values, expected n*m = {}", sums_weight.size(), n * m);
  if (ctf.size() != n * m) runtime_error("estep: CTF has {} values, expected n*m = {}", ctf.size(), n * m);
  if (m == 0 || inv_sigma2.size() % m != 0 || inv_sigma2.empty())
    runtime_error("estep: inverse noise variances have {} values, expected a positive multiple of m = {}",
                  inv_sigma2.size(), m);
  const size_t rows = inv_sigma2.size() / m;
  if (noise_row.empty()) {
    if (rows != 1 && rows != n)
      runtime_error("estep: {} noise rows without noise_row map; expected 1 or n = {}", rows, n);
  } else {
    if (noise_row.size() != n) runtime_error("estep: noise_row has {} entries, expected n = {}", noise_row.size(), n);
    for (size_t i = 0; i < n; ++i)
      if (noise_row[i] >= rows) runtime_error("estep: noise_row[{}] = {} out of range [0, {})", i, noise_row[i], rows);
  }
  if (!scale.empty() && scale.size() != n) runtime_error("estep: scale has {} entries, expected n = {}", scale.size(), n);
}

const float* ParticleBatch::inv_sigma2_row(size_t i) const {
  size_t row = !noise_row.empty() ? noise_row[i] : (inv_sigma2.size() == m ? 0 : i);
  return inv_sigma2.data() + row * m;
}

void TranslationPhases::validate(size_t m_expected) const {
  if (m != m_expected) runtime_error("estep: translations have m = {}, particles m = {}", m, m_expected);
  if (t == 0 || phase.size() != t * m) runtime_error("estep: {} phase values, expected t*m = {} (t > 0)", phase.size(), t * m);
}

void ReferenceSlices::validate(size_t m_expected) const {
  if (m != m_expected) runtime_error("estep: references have m = {}, particles m = {}", m, m_expected);
  if (j == 0 || p.size() != j * m) runtime_error("estep: {} reference values, expected j*m = {} (j > 0)", p.size(), j * m);
}

size_t default_particles_per_batch(size_t n, size_t t, size_t m) {
  const size_t bytes_per_particle = std::max<size_t>(1, t * m * sizeof(cfloat));
  const size_t target = size_t(2) << 20;
  return std::clamp<size_t>(target / bytes_per_particle, 1, std::max<size_t>(n, 1));
}

namespace detail {

void shifted_weighted_row(const ParticleBatch& pb, const TranslationPhases& tp, size_t i, size_t t, cfloat* row,
                          bool for_sums) {
  const size_t m = pb.m;
  const float s = pb.scale_of(i);
  const float* w = pb.inv_sigma2_row(i);
  const cfloat* x = (for_sums && !pb.x_sums.empty() ? pb.x_sums : pb.x).data() + i * m;
  const float* c = pb.ctf.data() + i * m;
  const bool no_ctf = for_sums && pb.premultiplied_of(i);
  const cfloat* ph = tp.phase.data() + t * m;
  const float* sw = for_sums && !pb.sums_weight.empty() ? pb.sums_weight.data() + i * m : nullptr;
  for (size_t k = 0; k < m; ++k) {
    // Written out so that the compiler does not use the NaN-safe complex multiply.
    const float f = s * (no_ctf ? 1.0f : c[k]) * w[k] * (sw ? sw[k] : 1.0f);
    const float br = x[k].real() * f, bi = x[k].imag() * f, pr = ph[k].real(), pi = ph[k].imag();
    row[k] = cfloat(br * pr - bi * pi, br * pi + bi * pr);
  }
}

void shifted_weighted_rows(const ParticleBatch& pb, const TranslationPhases& tp, size_t i, cfloat* dst,
                           bool for_sums) {
  for (size_t t = 0; t < tp.t; ++t) shifted_weighted_row(pb, tp, i, t, dst + t * pb.m, for_sums);
}

void ctf2_weight_row(const ParticleBatch& pb, size_t i, float* dst, bool for_sums) {
  const float s = pb.scale_of(i);
  const float* w = pb.inv_sigma2_row(i);
  const float* c = pb.ctf.data() + i * pb.m;
  if (for_sums && pb.premultiplied_of(i)) {
    for (size_t k = 0; k < pb.m; ++k) dst[k] = s * s * c[k] * w[k];
  } else {
    for (size_t k = 0; k < pb.m; ++k) {
      const float sc = s * c[k];
      dst[k] = sc * sc * w[k];
    }
  }
  if (for_sums && !pb.sums_weight.empty())
    for (size_t k = 0; k < pb.m; ++k) dst[k] *= pb.sums_weight[i * pb.m + k];
}

std::vector<float> reference_power(const ReferenceSlices& refs) {
  std::vector<float> out(refs.p.size());
  for (size_t q = 0; q < out.size(); ++q) out[q] = std::norm(refs.p[q]);
  return out;
}

namespace {
std::atomic<uint64_t> g_sgemm_flops{0}, g_sgemm_ns{0};
}

uint64_t sgemm_flops() { return g_sgemm_flops.load(std::memory_order_relaxed); }
double sgemm_thread_seconds() { return 1e-9 * double(g_sgemm_ns.load(std::memory_order_relaxed)); }

const char* blas_kernel() { return openblas_get_corename(); }

void sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, const float* a, size_t lda,
           const float* b, size_t ldb, float beta, float* c, size_t ldc) {
  for (size_t v : {m, n, k, lda, ldb, ldc})
    if (v > size_t(INT_MAX)) runtime_error("estep: matrix dimension {} exceeds the BLAS integer range", v);
  if (m == 0 || n == 0) return;
  g_sgemm_flops.fetch_add(uint64_t(2) * m * n * k, std::memory_order_relaxed);
  // Flush denormals to zero (FTZ) and read them as zero (DAZ) for this call: tiny posterior
  // weights times small pixel values otherwise produce denormals that slow SGEMM down tens of
  // times. Changes only values below 1.2e-38. OpenBLAS runs in this thread (one BLAS thread).
#if defined(__SSE__)
  struct CsrGuard {
    unsigned saved = _mm_getcsr();
    CsrGuard() { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
    ~CsrGuard() { _mm_setcsr(saved); }
  } guard;
#endif
  const auto t0 = std::chrono::steady_clock::now();
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              int(m), int(n), int(k), 1.0f, a, int(lda), b, int(ldb), beta, c, int(ldc));
  g_sgemm_ns.fetch_add(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::chrono::steady_clock::now() - t0).count()),
                       std::memory_order_relaxed);
}

}  // namespace detail

void compute_scores(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                    Scores& out, ThreadPool& pool, const ScoreOptions& opt) {
  pb.validate();
  tp.validate(pb.m);
  refs.validate(pb.m);
  set_blas_single_threaded();
  const size_t n = pb.n, nt = tp.t, nj = refs.j, m = pb.m;
  out.n = n;
  out.t = nt;
  out.j = nj;
  out.value.assign(n * nt * nj, 0.0f);
  if (n == 0) return;

  const std::vector<float> p2 = detail::reference_power(refs);
  const float* p = reinterpret_cast<const float*>(refs.p.data());
  const size_t nb = opt.particles_per_batch ? opt.particles_per_batch : default_particles_per_batch(n, nt, m);
  const size_t nbatch = (n + nb - 1) / nb;

  struct Scratch {
    std::vector<cfloat> a;
    std::vector<float> c2w, a1;
  };
  std::vector<Scratch> scratch(size_t(pool.size()));
  pool.parallel_for(0, nbatch, [&](size_t b, int thread) {
    Scratch& s = scratch[size_t(thread)];
    const size_t i0 = b * nb, i1 = std::min(n, i0 + nb), rows = i1 - i0;
    s.c2w.resize(rows * m);
    s.a.resize(rows * nt * m);
    for (size_t i = i0; i < i1; ++i) {
      detail::ctf2_weight_row(pb, i, s.c2w.data() + (i - i0) * m);
      detail::shifted_weighted_rows(pb, tp, i, s.a.data() + (i - i0) * nt * m);
    }
    s.a1.resize(rows * nj);
    // A1[i, j] = sum_k s^2 C^2 w |P_j|^2
    detail::sgemm(false, true, rows, nj, m, s.c2w.data(), m, p2.data(), m, 0.0f, s.a1.data(), nj);
    // A2[(i,t), j] = sum_k Re(conj(s C w X^t) P_j), written straight into the output rows.
    float* l = out.value.data() + i0 * nt * nj;
    detail::sgemm(false, true, rows * nt, nj, 2 * m, reinterpret_cast<const float*>(s.a.data()), 2 * m, p,
                  2 * m, 0.0f, l, nj);
    for (size_t i = 0; i < rows; ++i)
      for (size_t t = 0; t < nt; ++t) {
        float* row = l + (i * nt + t) * nj;
        const float* a1 = s.a1.data() + i * nj;
        for (size_t j = 0; j < nj; ++j) row[j] -= 0.5f * a1[j];
      }
  });
}

double score_flops(size_t n, size_t nt, size_t nj, size_t m) {
  return 4.0 * double(n) * double(nt) * double(nj) * double(m) + 2.0 * double(n) * double(nj) * double(m);
}

ParticleConstants particle_constants(const ParticleBatch& pb) {
  pb.validate();
  ParticleConstants c;
  c.half_x2.assign(pb.n, 0.0);
  c.log_norm.assign(pb.n, 0.0);
  const double two_pi = 2.0 * std::numbers::pi;
  for (size_t i = 0; i < pb.n; ++i) {
    const float* w = pb.inv_sigma2_row(i);
    double hx = 0, ln = 0;
    for (size_t k = 0; k < pb.m; ++k) {
      if (w[k] == 0.0f) continue;
      hx += double(w[k]) * std::norm(std::complex<double>(pb.x[i * pb.m + k]));
      ln += std::log(two_pi / double(w[k]));
    }
    c.half_x2[i] = 0.5 * hx;
    c.log_norm[i] = ln;
  }
  return c;
}

}  // namespace regula::estep

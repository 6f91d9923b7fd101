#include "regula/estep/weighted_sums.hpp"

#include <algorithm>
#include <numeric>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/estep/matrices.hpp"

namespace regula::estep {
namespace {

using cdouble = std::complex<double>;

void check_dense(const ParticleBatch& pb, const TranslationPhases& tp, size_t nj, std::span<const float> w) {
  pb.validate();
  tp.validate(pb.m);
  if (w.size() != pb.n * tp.t * nj)
    runtime_error("estep: {} weights, expected n*T*J = {}", w.size(), pb.n * tp.t * nj);
}

void check_sparse(const ParticleBatch& pb, const TranslationPhases& tp, const SparseWeights& sw) {
  pb.validate();
  tp.validate(pb.m);
  if (sw.n != pb.n || sw.t != tp.t || sw.offset.size() != pb.n + 1 || sw.offset.back() != sw.entry.size())
    runtime_error("estep: sparse weights for n = {}, T = {} do not match n = {}, T = {}", sw.n, sw.t, pb.n, tp.t);
  for (const PoseWeight& e : sw.entry)
    if (e.t >= sw.t || e.j >= sw.j) runtime_error("estep: sparse weight pose ({}, {}) out of range", e.t, e.j);
}

// Marginal weights over translations, rows x J.
void marginal_over_t(const float* w, size_t rows, size_t nt, size_t nj, float* out) {
  for (size_t i = 0; i < rows; ++i) {
    float* o = out + i * nj;
    std::fill(o, o + nj, 0.0f);
    for (size_t t = 0; t < nt; ++t) {
      const float* r = w + (i * nt + t) * nj;
      for (size_t j = 0; j < nj; ++j) o[j] += r[j];
    }
  }
}

}  // namespace

void ReferenceSums::reset(size_t nj, size_t nm) {
  j = nj;
  m = nm;
  data.assign(nj * nm, cdouble(0, 0));
  weight.assign(nj * nm, 0.0);
}

double reference_sums_flops(size_t n, size_t nt, size_t nj, size_t m) {
  return 4.0 * double(n) * double(nt) * double(nj) * double(m) + 2.0 * double(n) * double(nj) * double(m);
}
double particle_sums_flops(size_t n, size_t nt, size_t nj, size_t m) { return reference_sums_flops(n, nt, nj, m); }

void accumulate_reference_sums(const ParticleBatch& pb, const TranslationPhases& tp, size_t nj,
                               std::span<const float> weights, ReferenceSums& acc, ThreadPool& pool,
                               const SumOptions& opt) {
  check_dense(pb, tp, nj, weights);
  if (acc.j != nj || acc.m != pb.m || acc.data.size() != nj * pb.m || acc.weight.size() != nj * pb.m)
    runtime_error("estep: reference sums sized ({}, {}), expected ({}, {})", acc.j, acc.m, nj, pb.m);
  set_blas_single_threaded();
  const size_t n = pb.n, nt = tp.t, m = pb.m;
  if (n == 0) return;
  const size_t nb = opt.particles_per_block ? opt.particles_per_block
                                            : std::min(n, 4 * default_particles_per_batch(n, nt, m));
  const size_t cw = std::max<size_t>(1, opt.pixels_per_chunk);
  const size_t nchunk = (m + cw - 1) / cw;

  std::vector<cfloat> a;
  std::vector<float> c2w, wm;
  std::vector<std::vector<float>> tmp(size_t(pool.size()));
  for (size_t i0 = 0; i0 < n; i0 += nb) {
    const size_t i1 = std::min(n, i0 + nb), rows = i1 - i0;
    a.resize(rows * nt * m);
    c2w.resize(rows * m);
    wm.resize(rows * nj);
    const float* wb = weights.data() + i0 * nt * nj;
    pool.parallel_for(i0, i1, [&](size_t i, int) {
      detail::shifted_weighted_rows(pb, tp, i, a.data() + (i - i0) * nt * m, true);
      detail::ctf2_weight_row(pb, i, c2w.data() + (i - i0) * m, true);
      marginal_over_t(wb + (i - i0) * nt * nj, 1, nt, nj, wm.data() + (i - i0) * nj);
    });
    pool.parallel_for(0, nchunk, [&](size_t c, int thread) {
      const size_t k0 = c * cw, k1 = std::min(m, k0 + cw), w = k1 - k0;
      std::vector<float>& t = tmp[size_t(thread)];
      t.resize(nj * 2 * w + nj * w);
      float* s = t.data();
      float* g = t.data() + nj * 2 * w;
      // S[j, k] = sum_{(i,t)} W[(i,t), j] a[(i,t), k]   (J x 2w)
      detail::sgemm(true, false, nj, 2 * w, rows * nt, wb, nj, reinterpret_cast<const float*>(a.data()) + 2 * k0,
                    2 * m, 0.0f, s, 2 * w);
      // W[j, k] = sum_i Wm[i, j] c2w[i, k]              (J x w)
      detail::sgemm(true, false, nj, w, rows, wm.data(), nj, c2w.data() + k0, m, 0.0f, g, w);
      for (size_t j = 0; j < nj; ++j)
        for (size_t k = 0; k < w; ++k) {
          acc.data[j * m + k0 + k] += cdouble(s[j * 2 * w + 2 * k], s[j * 2 * w + 2 * k + 1]);
          acc.weight[j * m + k0 + k] += g[j * w + k];
        }
    });
  }
}

namespace {

// One particle's poses as a dense matrix over its distinct translations and references.
struct LocalWeights {
  std::vector<uint32_t> t, j;  // distinct translations and references (sorted)
  std::vector<float> w;        // t.size() x j.size(), row-major
  std::vector<float> wm;       // j.size(): sums over translations
  double sum = 0;              // sum of all weights
};

void local_weights(const SparseWeights& sw, size_t i, detail::DistinctPoses& d, LocalWeights& out) {
  const std::span<const PoseWeight> e(sw.entry.data() + sw.offset[i], sw.offset[i + 1] - sw.offset[i]);
  d.build(e, sw.t, sw.j);
  out.t = d.t;
  out.j = d.j;
  const size_t nj = d.j.size();
  out.w.assign(d.t.size() * nj, 0.0f);
  out.wm.assign(nj, 0.0f);
  out.sum = 0;
  for (const PoseWeight& p : e) {
    out.w[d.t_slot[p.t] * nj + d.j_slot[p.j]] += p.weight;
    out.wm[d.j_slot[p.j]] += p.weight;
    out.sum += p.weight;
  }
}

}  // namespace

void accumulate_reference_sums(const ParticleBatch& pb, const TranslationPhases& tp, const SparseWeights& sw,
                               ReferenceSums& acc, ThreadPool& pool) {
  check_sparse(pb, tp, sw);
  const size_t n = pb.n, m = pb.m;
  if (acc.j != sw.j || acc.m != m || acc.data.size() != sw.j * m || acc.weight.size() != sw.j * m)
    runtime_error("estep: reference sums sized ({}, {}), expected ({}, {})", acc.j, acc.m, sw.j, m);
  set_blas_single_threaded();
  std::vector<LocalWeights> lw(n);
  std::vector<detail::DistinctPoses> dp(size_t(pool.size()));
  pool.parallel_for(0, n, [&](size_t i, int thread) { local_weights(sw, i, dp[size_t(thread)], lw[i]); });
  // Blocks of particles whose shifted rows fit in about 16 MB; in each block, pixel chunks in
  // parallel, particles in order inside a chunk: every sum is added in a fixed order.
  const size_t budget = std::max<size_t>(m, (size_t(16) << 20) / sizeof(cfloat));
  const size_t cw = 256, nchunk = (m + cw - 1) / cw;
  std::vector<cfloat> a;
  std::vector<float> c2w;
  std::vector<size_t> row0;
  std::vector<std::vector<float>> tmp(size_t(pool.size()));
  for (size_t i0 = 0; i0 < n;) {
    size_t i1 = i0, rows = 0;
    row0.clear();
    while (i1 < n && (i1 == i0 || (rows + lw[i1].t.size()) * m <= budget)) {
      row0.push_back(rows);
      rows += lw[i1].sum > 0 ? lw[i1].t.size() : 0;
      ++i1;
    }
    a.resize(rows * m);
    c2w.resize((i1 - i0) * m);
    pool.parallel_for(i0, i1, [&](size_t i, int) {
      if (!(lw[i].sum > 0)) return;
      for (size_t u = 0; u < lw[i].t.size(); ++u)
        detail::shifted_weighted_row(pb, tp, i, lw[i].t[u], a.data() + (row0[i - i0] + u) * m, true);
      detail::ctf2_weight_row(pb, i, c2w.data() + (i - i0) * m, true);
    });
    pool.parallel_for(0, nchunk, [&](size_t c, int thread) {
      const size_t k0 = c * cw, k1 = std::min(m, k0 + cw), w = k1 - k0;
      std::vector<float>& t = tmp[size_t(thread)];
      for (size_t i = i0; i < i1; ++i) {
        const LocalWeights& l = lw[i];
        if (!(l.sum > 0)) continue;
        const size_t nt = l.t.size(), nj = l.j.size();
        t.resize(nj * 2 * w);
        // S[u, k] = sum_t W[t, u] a[t, k]   (nj x 2w)
        detail::sgemm(true, false, nj, 2 * w, nt, l.w.data(), nj,
                      reinterpret_cast<const float*>(a.data() + row0[i - i0] * m) + 2 * k0, 2 * m, 0.0f, t.data(),
                      2 * w);
        const float* g = c2w.data() + (i - i0) * m;
        for (size_t u = 0; u < nj; ++u) {
          cdouble* sd = acc.data.data() + size_t(l.j[u]) * m;
          double* wd = acc.weight.data() + size_t(l.j[u]) * m;
          const double wm = l.wm[u];
          for (size_t k = 0; k < w; ++k) {
            sd[k0 + k] += cdouble(t[u * 2 * w + 2 * k], t[u * 2 * w + 2 * k + 1]);
            wd[k0 + k] += wm * double(g[k0 + k]);
          }
        }
      }
    });
    i0 = i1;
  }
}

void compute_particle_sums(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                           std::span<const float> weights, ParticleSums& out, ThreadPool& pool,
                           const SumOptions& opt) {
  refs.validate(pb.m);
  check_dense(pb, tp, refs.j, weights);
  set_blas_single_threaded();
  const size_t n = pb.n, nt = tp.t, nj = refs.j, m = pb.m;
  out.n = n;
  out.m = m;
  out.diff2.assign(n * m, 0.0);
  out.xa.assign(n * m, 0.0);
  out.aa.assign(n * m, 0.0);
  out.sum_weight.assign(n, 0.0);
  if (n == 0) return;
  const std::vector<float> p2 = detail::reference_power(refs);
  const float* p = reinterpret_cast<const float*>(refs.p.data());
  const size_t nb = opt.particles_per_block ? opt.particles_per_block : default_particles_per_batch(n, nt, m);
  const size_t nbatch = (n + nb - 1) / nb;

  struct Scratch {
    std::vector<float> q, wm, g;
  };
  std::vector<Scratch> scratch(size_t(pool.size()));
  pool.parallel_for(0, nbatch, [&](size_t b, int thread) {
    Scratch& s = scratch[size_t(thread)];
    const size_t i0 = b * nb, i1 = std::min(n, i0 + nb), rows = i1 - i0;
    const float* wb = weights.data() + i0 * nt * nj;
    s.q.resize(rows * nt * 2 * m);
    s.wm.resize(rows * nj);
    s.g.resize(rows * m);
    // Q[(i,t), k] = sum_j w_itj P_j(k)   (complex, rows*T x 2m)
    detail::sgemm(false, false, rows * nt, 2 * m, nj, wb, nj, p, 2 * m, 0.0f, s.q.data(), 2 * m);
    marginal_over_t(wb, rows, nt, nj, s.wm.data());
    // G[i, k] = sum_j (sum_t w_itj) |P_j(k)|^2
    detail::sgemm(false, false, rows, m, nj, s.wm.data(), nj, p2.data(), m, 0.0f, s.g.data(), m);
    for (size_t i = i0; i < i1; ++i) {
      const size_t r = i - i0;
      double sw = 0;
      for (size_t j = 0; j < nj; ++j) sw += s.wm[r * nj + j];
      out.sum_weight[i] = sw;
      const double sc = pb.scale_of(i);
      const cfloat* x = pb.x.data() + i * m;
      const float* c = pb.ctf.data() + i * m;
      for (size_t k = 0; k < m; ++k) {
        // Y = sum_t conj(phase_t) Q_t ; sum_{t,j} w Re(conj(X phase_t) C P_j) = C Re(conj(X) Y)
        cdouble y(0, 0);
        for (size_t t = 0; t < nt; ++t) {
          const float* qr = s.q.data() + ((r * nt + t) * m + k) * 2;
          y += std::conj(cdouble(tp.phase[t * m + k])) * cdouble(qr[0], qr[1]);
        }
        const double sck = sc * double(c[k]);
        const cdouble xk(x[k]);
        const double xa = sck * (std::conj(xk) * y).real();
        const double aa = sck * sck * double(s.g[r * m + k]);
        out.xa[i * m + k] = xa;
        out.aa[i * m + k] = aa;
        out.diff2[i * m + k] = std::norm(xk) * sw - 2.0 * xa + aa;
      }
    }
  });
}

void compute_particle_sums(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                           const SparseWeights& sw, ParticleSums& out, ThreadPool& pool) {
  refs.validate(pb.m);
  check_sparse(pb, tp, sw);
  if (sw.j != refs.j) runtime_error("estep: sparse weights for J = {}, references J = {}", sw.j, refs.j);
  set_blas_single_threaded();
  const size_t n = pb.n, m = pb.m;
  out.n = n;
  out.m = m;
  out.diff2.assign(n * m, 0.0);
  out.xa.assign(n * m, 0.0);
  out.aa.assign(n * m, 0.0);
  out.sum_weight.assign(n, 0.0);
  struct Scratch {
    detail::DistinctPoses d;
    LocalWeights l;
    std::vector<float> r, r2, q, g;
  };
  std::vector<Scratch> scratch(size_t(pool.size()));
  pool.parallel_for(0, n, [&](size_t i, int thread) {
    Scratch& s = scratch[size_t(thread)];
    local_weights(sw, i, s.d, s.l);
    out.sum_weight[i] = s.l.sum;
    if (!(s.l.sum > 0)) return;
    const size_t nt = s.l.t.size(), nj = s.l.j.size();
    // The particle's references, complex interleaved rows and |P|^2 rows.
    s.r.resize(nj * 2 * m);
    s.r2.resize(nj * m);
    for (size_t u = 0; u < nj; ++u) {
      const cfloat* src = refs.p.data() + size_t(s.l.j[u]) * m;
      std::copy(reinterpret_cast<const float*>(src), reinterpret_cast<const float*>(src + m), s.r.data() + u * 2 * m);
      for (size_t k = 0; k < m; ++k) s.r2[u * m + k] = std::norm(src[k]);
    }
    s.q.resize(nt * 2 * m);
    s.g.resize(m);
    // Q[t, k] = sum_j W[t, j] P_j(k) (complex),  G[k] = sum_j (sum_t W[t, j]) |P_j(k)|^2
    detail::sgemm(false, false, nt, 2 * m, nj, s.l.w.data(), nj, s.r.data(), 2 * m, 0.0f, s.q.data(), 2 * m);
    detail::sgemm(false, false, 1, m, nj, s.l.wm.data(), nj, s.r2.data(), m, 0.0f, s.g.data(), m);
    const double sc = pb.scale_of(i), sw_i = s.l.sum;
    const cfloat* x = pb.x.data() + i * m;
    const float* c = pb.ctf.data() + i * m;
    for (size_t k = 0; k < m; ++k) {
      // Y = sum_t conj(phase_t) Q_t ; sum_{t,j} w Re(conj(X phase_t) C P_j) = C Re(conj(X) Y)
      cdouble y(0, 0);
      for (size_t u = 0; u < nt; ++u) {
        const float* qr = s.q.data() + (u * m + k) * 2;
        y += std::conj(cdouble(tp.phase[size_t(s.l.t[u]) * m + k])) * cdouble(qr[0], qr[1]);
      }
      const double sck = sc * double(c[k]);
      const cdouble xk(x[k]);
      const double xa = sck * (std::conj(xk) * y).real();
      const double aa = sck * sck * double(s.g[k]);
      out.xa[i * m + k] = xa;
      out.aa[i * m + k] = aa;
      out.diff2[i * m + k] = std::norm(xk) * sw_i - 2.0 * xa + aa;
    }
  });
}

}  // namespace regula::estep

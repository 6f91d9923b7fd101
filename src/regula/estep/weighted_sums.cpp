#include "regula/estep/weighted_sums.hpp"

#include <algorithm>
#include <numeric>

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
      detail::shifted_weighted_rows(pb, tp, i, a.data() + (i - i0) * nt * m);
      detail::ctf2_weight_row(pb, i, c2w.data() + (i - i0) * m);
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

void accumulate_reference_sums(const ParticleBatch& pb, const TranslationPhases& tp, const SparseWeights& sw,
                               ReferenceSums& acc, ThreadPool& pool) {
  check_sparse(pb, tp, sw);
  const size_t m = pb.m;
  if (acc.j != sw.j || acc.m != m || acc.data.size() != sw.j * m || acc.weight.size() != sw.j * m)
    runtime_error("estep: reference sums sized ({}, {}), expected ({}, {})", acc.j, acc.m, sw.j, m);
  // Group entries by reference, in particle order within a reference: fixed summation order.
  struct Item {
    uint32_t j, t;
    size_t i;
    float w;
  };
  std::vector<Item> items;
  items.reserve(sw.entry.size());
  for (size_t i = 0; i < sw.n; ++i)
    for (size_t q = sw.offset[i]; q < sw.offset[i + 1]; ++q) {
      const PoseWeight& e = sw.entry[q];
      if (e.weight != 0.0f) items.push_back(Item{e.j, e.t, i, e.weight});
    }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) {
    return x.j < y.j || (x.j == y.j && (x.i < y.i || (x.i == y.i && x.t < y.t)));
  });
  std::vector<size_t> start;
  for (size_t q = 0; q < items.size(); ++q)
    if (q == 0 || items[q].j != items[q - 1].j) start.push_back(q);
  start.push_back(items.size());
  pool.parallel_for(0, start.size() - 1, [&](size_t g, int) {
    const size_t j = items[start[g]].j;
    cdouble* s = acc.data.data() + j * m;
    double* wsum = acc.weight.data() + j * m;
    for (size_t q = start[g]; q < start[g + 1]; ++q) {
      const Item& it = items[q];
      const double sc = pb.scale_of(it.i);
      const float* w = pb.inv_sigma2_row(it.i);
      const cfloat* x = pb.x.data() + it.i * m;
      const float* c = pb.ctf.data() + it.i * m;
      const cfloat* ph = tp.phase.data() + size_t(it.t) * m;
      for (size_t k = 0; k < m; ++k) {
        const double f = double(it.w) * sc * double(c[k]) * double(w[k]);
        s[k] += f * cdouble(x[k]) * cdouble(ph[k]);
        wsum[k] += f * sc * double(c[k]);
      }
    }
  });
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
  const size_t n = pb.n, m = pb.m;
  out.n = n;
  out.m = m;
  out.diff2.assign(n * m, 0.0);
  out.xa.assign(n * m, 0.0);
  out.aa.assign(n * m, 0.0);
  out.sum_weight.assign(n, 0.0);
  pool.parallel_for(0, n, [&](size_t i, int) {
    const double sc = pb.scale_of(i);
    const cfloat* x = pb.x.data() + i * m;
    const float* c = pb.ctf.data() + i * m;
    double* d2 = out.diff2.data() + i * m;
    double* xa = out.xa.data() + i * m;
    double* aa = out.aa.data() + i * m;
    for (size_t q = sw.offset[i]; q < sw.offset[i + 1]; ++q) {
      const PoseWeight& e = sw.entry[q];
      const double w = e.weight;
      out.sum_weight[i] += w;
      const cfloat* ph = tp.phase.data() + size_t(e.t) * m;
      const cfloat* pj = refs.p.data() + size_t(e.j) * m;
      for (size_t k = 0; k < m; ++k) {
        const cdouble xt = cdouble(x[k]) * cdouble(ph[k]);
        const cdouble cp = sc * double(c[k]) * cdouble(pj[k]);
        d2[k] += w * std::norm(xt - cp);
        xa[k] += w * (std::conj(xt) * cp).real();
        aa[k] += w * std::norm(cp);
      }
    }
  });
}

}  // namespace regula::estep

#include "regula/estep/reference.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

#include "regula/core/error.hpp"

namespace regula::estep::reference {
namespace {
using cdouble = std::complex<double>;

// The value of every per-pixel quantity for (i, t, j, k), in double.
struct Pixel {
  cdouble xt, cp;  // X^t and s C P
  double w;        // 1/sigma2
};
Pixel pixel(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs, size_t i, size_t t,
            size_t j, size_t k) {
  const size_t m = pb.m;
  Pixel p;
  p.xt = cdouble(pb.x[i * m + k]) * cdouble(tp.phase[t * m + k]);
  p.cp = double(pb.scale_of(i)) * double(pb.ctf[i * m + k]) * cdouble(refs.p[j * m + k]);
  p.w = pb.inv_sigma2_row(i)[k];
  return p;
}

std::vector<double> over_poses(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                               const std::function<double(const Pixel&)>& term) {
  pb.validate();
  tp.validate(pb.m);
  refs.validate(pb.m);
  std::vector<double> out(pb.n * tp.t * refs.j, 0.0);
  for (size_t i = 0; i < pb.n; ++i)
    for (size_t t = 0; t < tp.t; ++t)
      for (size_t j = 0; j < refs.j; ++j) {
        double s = 0;
        for (size_t k = 0; k < pb.m; ++k) s += term(pixel(pb, tp, refs, i, t, j, k));
        out[(i * tp.t + t) * refs.j + j] = s;
      }
  return out;
}

const double* row_or_null(std::span<const double> p, size_t count, size_t i) {
  if (p.empty()) return nullptr;
  return p.size() == count ? p.data() : p.data() + i * count;
}

}  // namespace

std::vector<double> diff2(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs) {
  return over_poses(pb, tp, refs, [](const Pixel& p) { return std::norm(p.xt - p.cp) * p.w / 2.0; });
}

std::vector<double> scores(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs) {
  return over_poses(pb, tp, refs, [](const Pixel& p) {
    return -p.w * (std::norm(p.cp) - 2.0 * (std::conj(p.xt) * p.cp).real()) / 2.0;
  });
}

PosteriorResult posteriors(std::span<const double> scores, size_t n, size_t nt, size_t nj, const LogPriors& priors,
                           std::span<const double> log_constant, double fraction) {
  PosteriorResult r;
  r.weight.assign(n * nt * nj, 0.0);
  r.particle.assign(n, ParticlePosterior{});
  for (size_t i = 0; i < n; ++i) {
    const double* lpt = row_or_null(priors.translation, nt, i);
    const double* lpj = row_or_null(priors.reference, nj, i);
    std::vector<double> v(nt * nj);
    for (size_t t = 0; t < nt; ++t)
      for (size_t j = 0; j < nj; ++j)
        v[t * nj + j] = scores[(i * nt + t) * nj + j] + (lpt ? lpt[t] : 0.0) + (lpj ? lpj[j] : 0.0);
    const size_t best = size_t(std::max_element(v.begin(), v.end()) - v.begin());
    const double mx = v[best];
    double sum = 0;
    for (double x : v) sum += std::exp(x - mx);
    ParticlePosterior& st = r.particle[i];
    st.valid = true;
    st.best_t = uint32_t(best / nj);
    st.best_j = uint32_t(best % nj);
    st.best_log_posterior = mx;
    st.log_likelihood = mx + std::log(sum) + (log_constant.empty() ? 0.0 : log_constant[i]);
    std::vector<double> w(nt * nj);
    for (size_t q = 0; q < v.size(); ++q) w[q] = r.weight[i * nt * nj + q] = std::exp(v[q] - mx) / sum;
    st.max_posterior = w[best];
    std::sort(w.begin(), w.end(), std::greater<>());
    double acc = 0;
    size_t count = 0;
    while (count < w.size() && acc < fraction) acc += w[count++];
    st.n_significant = count;
  }
  return r;
}

Sums weighted_sums(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                   std::span<const double> weights) {
  pb.validate();
  tp.validate(pb.m);
  refs.validate(pb.m);
  const size_t n = pb.n, nt = tp.t, nj = refs.j, m = pb.m;
  if (weights.size() != n * nt * nj) runtime_error("estep reference: {} weights, expected {}", weights.size(), n * nt * nj);
  Sums s;
  s.data.assign(nj * m, cdouble(0, 0));
  s.weight.assign(nj * m, 0.0);
  s.diff2.assign(n * m, 0.0);
  s.xa.assign(n * m, 0.0);
  s.aa.assign(n * m, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t t = 0; t < nt; ++t)
      for (size_t j = 0; j < nj; ++j) {
        const double wt = weights[(i * nt + t) * nj + j];
        for (size_t k = 0; k < m; ++k) {
          const Pixel p = pixel(pb, tp, refs, i, t, j, k);
          const double c = double(pb.scale_of(i)) * double(pb.ctf[i * m + k]);
          s.data[j * m + k] += wt * c * p.w * p.xt;
          s.weight[j * m + k] += wt * c * c * p.w;
          s.diff2[i * m + k] += wt * std::norm(p.xt - p.cp);
          s.xa[i * m + k] += wt * (std::conj(p.xt) * p.cp).real();
          s.aa[i * m + k] += wt * std::norm(p.cp);
        }
      }
  return s;
}

}  // namespace regula::estep::reference

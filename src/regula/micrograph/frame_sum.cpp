#include "regula/micrograph/frame_sum.hpp"

#include <cmath>

#include "regula/core/error.hpp"

namespace regula {
namespace {

// One row of one frame: v = F * px * (cr + i ci); plain += v; weighted += v w; w *= q.
template <bool Weighted, bool Plain>
void add_row(const float* F, const float* p, float cr, float ci, float* w, const float* q, float* ow, float* op,
             int n) {
  for (int i = 0; i < n; ++i) {
    const float pr = p[2 * i] * cr - p[2 * i + 1] * ci, pi = p[2 * i] * ci + p[2 * i + 1] * cr;
    const float vr = F[2 * i] * pr - F[2 * i + 1] * pi, vi = F[2 * i] * pi + F[2 * i + 1] * pr;
    if constexpr (Plain) {
      op[2 * i] += vr;
      op[2 * i + 1] += vi;
    }
    if constexpr (Weighted) {
      ow[2 * i] += vr * w[i];
      ow[2 * i + 1] += vi * w[i];
      w[i] *= q[i];
    }
  }
}

}  // namespace

void sum_frames(const FrameStore& store, int f0, int f1, const std::vector<double>& sx, const std::vector<double>& sy,
                const DoseWeighting* dose, cfloat* weighted, cfloat* plain, ThreadPool& pool) {
  constexpr double kTwoPi = 6.283185307179586;
  const int nx = store.nx(), ny = store.ny(), nxh = store.nxh();
  if (weighted && !dose) runtime_error("sum_frames: dose-weighted sum without dose weights");
  if (dose && dose->nxh() != nxh) runtime_error("sum_frames: dose weights for another frame size");
  // Phases along x, one table per frame (interleaved re, im).
  const int nf = f1 - f0;
  std::vector<float> px(size_t(nf) * size_t(2 * nxh));
  for (int f = f0; f < f1; ++f)
    for (int i = 0; i < nxh; ++i) {
      const double a = -kTwoPi * i * sx[size_t(f)] / nx;
      px[size_t(f - f0) * size_t(2 * nxh) + size_t(2 * i)] = float(std::cos(a));
      px[size_t(f - f0) * size_t(2 * nxh) + size_t(2 * i) + 1] = float(std::sin(a));
    }
  std::vector<std::vector<float>> wbuf(static_cast<size_t>(pool.size())), qbuf(static_cast<size_t>(pool.size()));
  pool.parallel_for(0, size_t(ny), [&](size_t jj, int thread) {
    const int j = int(jj);
    std::vector<float>& w = wbuf[size_t(thread)];
    const float* q = nullptr;
    if (dose) {
      w.assign(dose->first_row(j), dose->first_row(j) + nxh);
      q = dose->ratio_row(j);
      // Frame f0's weights: w0 q^f0, the power by squaring.
      if (f0 > 0) {
        std::vector<float>& qp = qbuf[size_t(thread)];
        qp.assign(q, q + nxh);
        for (int e = f0;;) {
          if (e & 1)
            for (int i = 0; i < nxh; ++i) w[size_t(i)] *= qp[size_t(i)];
          e >>= 1;
          if (!e) break;
          for (int i = 0; i < nxh; ++i) qp[size_t(i)] *= qp[size_t(i)];
        }
      }
    }
    float* ow = weighted ? reinterpret_cast<float*>(weighted + size_t(j) * size_t(nxh)) : nullptr;
    float* op = plain ? reinterpret_cast<float*>(plain + size_t(j) * size_t(nxh)) : nullptr;
    // The row starts at zero here, where it is about to be summed into (in cache), not in a pass of its own.
    if (ow) std::fill(ow, ow + 2 * size_t(nxh), 0.0f);
    if (op) std::fill(op, op + 2 * size_t(nxh), 0.0f);
    const int ky = fft_freq(j, ny);
    for (int f = f0; f < f1; ++f) {
      const double a = -kTwoPi * ky * sy[size_t(f)] / ny;
      const float cr = float(std::cos(a)), ci = float(std::sin(a));
      const float* F = reinterpret_cast<const float*>(store.spectrum(f) + size_t(j) * size_t(nxh));
      const float* p = px.data() + size_t(f - f0) * size_t(2 * nxh);
      if (ow && op)
        add_row<true, true>(F, p, cr, ci, w.data(), q, ow, op, nxh);
      else if (ow)
        add_row<true, false>(F, p, cr, ci, w.data(), q, ow, op, nxh);
      else
        add_row<false, true>(F, p, cr, ci, w.data(), q, ow, op, nxh);
    }
  }, 4);
}

}  // namespace regula

#include "regula/micrograph/motion_align.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/fft.hpp"
#include "regula/micrograph/scene.hpp"

namespace regula {
namespace {
constexpr double kTwoPi = 6.283185307179586;

void phases(std::vector<cfloat>& out, int n, int len, double s, bool fft_order) {
  out.resize(size_t(len));
  for (int i = 0; i < len; ++i) {
    const int k = fft_order ? fft_freq(i, len) : i;
    const double a = -kTwoPi * k * s / n;
    out[size_t(i)] = cfloat(float(std::cos(a)), float(std::sin(a)));
  }
}
// Penalised least squares: minimise sum (s_f - m_f)^2 + lambda sum (s_{f+1} - 2 s_f + s_{f-1})^2
// (dense elimination of the symmetric pentadiagonal system; T is small).
void smooth_trajectory(std::vector<double>& m, double lambda) {
  const size_t T = m.size();
  std::vector<double> A(T * T, 0.0), b = m;
  for (size_t i = 0; i < T; ++i) A[i * T + i] = 1;
  for (size_t f = 1; f + 1 < T; ++f) {
    const size_t idx[3] = {f - 1, f, f + 1};
    const double c[3] = {1, -2, 1};
    for (int a = 0; a < 3; ++a)
      for (int q = 0; q < 3; ++q) A[idx[a] * T + idx[q]] += lambda * c[a] * c[q];
  }
  for (size_t col = 0; col < T; ++col) {
    for (size_t r = col + 1; r < std::min(T, col + 3); ++r) {
      const double fct = A[r * T + col] / A[col * T + col];
      if (fct == 0) continue;
      for (size_t k = col; k < std::min(T, col + 3); ++k) A[r * T + k] -= fct * A[col * T + k];
      b[r] -= fct * b[col];
    }
  }
  for (size_t r = T; r-- > 0;) {
    double v = b[r];
    for (size_t k = r + 1; k < std::min(T, r + 3); ++k) v -= A[r * T + k] * m[k];
    m[r] = v / A[r * T + r];
  }
}

}  // namespace

void shift_half_complex(Grid<cfloat>& F, int nx, double sx, double sy) {
  const int nxh = F.nx(), ny = F.ny();
  std::vector<cfloat> px, py;
  phases(px, nx, nxh, sx, false);
  phases(py, ny, ny, sy, true);
  for (int j = 0; j < ny; ++j)
    for (int i = 0; i < nxh; ++i) F(i, j) *= px[size_t(i)] * py[size_t(j)];
}

AlignResult align_frames(const std::vector<const Grid<cfloat>*>& frames, int nx, int ny, const AlignParams& p,
                         ThreadPool& pool) {
  const size_t T = frames.size();
  AlignResult res;
  res.sx.assign(T, 0.0);
  res.sy.assign(T, 0.0);
  if (T < 2) {
    res.converged = true;
    return res;
  }
  // Cropped, weighted copies: k in cycles per pixel up to kc.
  const double kc = std::min(0.5, std::sqrt(std::log(1e3) / (2 * std::max(1e-3, p.bfactor))));
  const int hx = std::min(nx / 2, int(std::ceil(kc * nx)) + 1), hy = std::min(ny / 2, int(std::ceil(kc * ny)) + 1);
  const int cx = std::min(nx, good_fft_size(2 * hx)), cy = std::min(ny, good_fft_size(2 * hy));
  const int cxh = cx / 2 + 1;
  std::vector<Grid<cfloat>> C(T, Grid<cfloat>(cxh, cy));
  std::vector<float> mult(static_cast<size_t>(cxh));  // Hermitian multiplicity of a column
  for (int i = 0; i < cxh; ++i) mult[size_t(i)] = (i == 0 || (i == cx / 2 && cx == nx)) ? 1.0f : 2.0f;
  pool.parallel_for(0, T, [&](size_t f, int) {
    const Grid<cfloat>& F = *frames[f];
    for (int j = 0; j < cy; ++j) {
      const int ky = fft_freq(j, cy);
      if (std::abs(ky) > hy - 1 && !(cy == ny)) continue;
      const int sj = fft_index(ky, ny);
      for (int i = 0; i < cxh && i < F.nx(); ++i) {
        const double k2 = double(i) * i / (double(nx) * nx) + double(ky) * ky / (double(ny) * ny);
        C[f](i, j) = F(i, sj) * float(std::exp(-p.bfactor * k2));
      }
    }
  });
  std::vector<float> kxs(static_cast<size_t>(cxh)), kys(static_cast<size_t>(cy));
  for (int i = 0; i < cxh; ++i) kxs[size_t(i)] = float(double(i) / nx);
  for (int j = 0; j < cy; ++j) kys[size_t(j)] = float(double(fft_freq(j, cy)) / ny);

  auto shifted = [&](size_t f, Grid<cfloat>& G) {
    std::vector<cfloat> px, py;
    phases(px, nx, cxh, res.sx[f], false);
    // Rows of the cropped grid are frequencies fft_freq(j, cy) of the original ny.
    py.resize(size_t(cy));
    for (int j = 0; j < cy; ++j) {
      const double a = -kTwoPi * fft_freq(j, cy) * res.sy[f] / ny;
      py[size_t(j)] = cfloat(float(std::cos(a)), float(std::sin(a)));
    }
    G = C[f];
    for (int j = 0; j < cy; ++j)
      for (int i = 0; i < cxh; ++i) G(i, j) *= px[size_t(i)] * py[size_t(j)];
  };

  std::vector<Grid<cfloat>> G(T);
  std::vector<double> tx(T), ty(T);
  for (int it = 1; it <= p.max_iterations; ++it) {
    pool.parallel_for(0, T, [&](size_t f, int) { shifted(f, G[f]); });
    Grid<cfloat> S(cxh, cy);
    for (size_t f = 0; f < T; ++f)
      for (size_t k = 0; k < S.size(); ++k) S[k] += G[f][k];
    pool.parallel_for(0, T, [&](size_t f, int) {
      Grid<cfloat> X(cxh, cy);
      for (size_t k = 0; k < X.size(); ++k) X[k] = (S[k] - G[f][k]) * std::conj(G[f][k]);
      double t0x = 0, t0y = 0;
      if (it == 1) {
        // Integer peak of the cross-correlation on the cropped grid.
        const Grid<float> cc = fft_inverse(X, cx);
        const int rx = std::max(1, std::min(cx / 2 - 2, int(p.search * cx / nx)));
        const int ry = std::max(1, std::min(cy / 2 - 2, int(p.search * cy / ny)));
        float best = -1e30f;
        int bx = 0, by = 0;
        for (int y = -ry; y <= ry; ++y)
          for (int x = -rx; x <= rx; ++x) {
            const float v = cc(fft_index(x, cx), fft_index(y, cy));
            if (v > best) {
              best = v;
              bx = x;
              by = y;
            }
          }
        t0x = double(bx) * nx / cx;
        t0y = double(by) * ny / cy;
      }
      // Newton on c(t) = sum m Re(X e^{2 pi i k.t}).
      double ux = t0x, uy = t0y;
      for (int step = 0; step < 8; ++step) {
        double gx = 0, gy = 0, hxx = 0, hxy = 0, hyy = 0;
        std::vector<cfloat> ex(static_cast<size_t>(cxh)), ey(static_cast<size_t>(cy));
        for (int i = 0; i < cxh; ++i) {
          const double a = kTwoPi * kxs[size_t(i)] * ux;
          ex[size_t(i)] = cfloat(float(std::cos(a)), float(std::sin(a)));
        }
        for (int j = 0; j < cy; ++j) {
          const double a = kTwoPi * kys[size_t(j)] * uy;
          ey[size_t(j)] = cfloat(float(std::cos(a)), float(std::sin(a)));
        }
        for (int j = 0; j < cy; ++j) {
          const double ky = kys[size_t(j)];
          double rgx = 0, rgy = 0, rxx = 0, rxy = 0, ryy = 0;
          for (int i = 0; i < cxh; ++i) {
            const cfloat y = X(i, j) * ex[size_t(i)] * ey[size_t(j)];
            const double m = mult[size_t(i)], kx = kxs[size_t(i)];
            const double re = m * y.real(), im = m * y.imag();
            rgx -= kx * im;
            rgy -= ky * im;
            rxx -= kx * kx * re;
            rxy -= kx * ky * re;
            ryy -= ky * ky * re;
          }
          gx += rgx;
          gy += rgy;
          hxx += rxx;
          hxy += rxy;
          hyy += ryy;
        }
        gx *= kTwoPi;
        gy *= kTwoPi;
        hxx *= kTwoPi * kTwoPi;
        hxy *= kTwoPi * kTwoPi;
        hyy *= kTwoPi * kTwoPi;
        const double det = hxx * hyy - hxy * hxy;
        double dx, dy;
        if (hxx < 0 && det > 0) {
          dx = -(hyy * gx - hxy * gy) / det;
          dy = -(-hxy * gx + hxx * gy) / det;
        } else {  // not concave here: a small gradient step
          dx = gx > 0 ? 0.25 : -0.25;
          dy = gy > 0 ? 0.25 : -0.25;
        }
        const double len = std::hypot(dx, dy);
        if (len > 0.5) {
          dx *= 0.5 / len;
          dy *= 0.5 / len;
        }
        ux += dx;
        uy += dy;
        if (len < 1e-3) break;
      }
      tx[f] = ux;
      ty[f] = uy;
    });
    double ss = 0;
    const std::vector<double> px = res.sx, py = res.sy;
    for (size_t f = 0; f < T; ++f) {
      res.sx[f] += tx[f];
      res.sy[f] += ty[f];
    }
    if (p.smoothness > 0 && T >= 4) {
      smooth_trajectory(res.sx, p.smoothness);
      smooth_trajectory(res.sy, p.smoothness);
    }
    const double x0 = res.sx[0], y0 = res.sy[0];
    for (size_t f = 0; f < T; ++f) {
      res.sx[f] -= x0;
      res.sy[f] -= y0;
      const double dx = res.sx[f] - px[f], dy = res.sy[f] - py[f];  // change of the trajectory this round
      ss += dx * dx + dy * dy;
    }
    res.iterations = it;
    if (std::sqrt(ss / double(T)) < p.tolerance) {
      res.converged = true;
      break;
    }
  }
  return res;
}

}  // namespace regula

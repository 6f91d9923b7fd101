#include "regula/micrograph/motion_align.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>

#include "regula/core/blas.hpp"
#include "regula/core/fft.hpp"
#include "regula/micrograph/scene.hpp"

namespace regula {
namespace {
constexpr double kTwoPi = 6.283185307179586;

struct Peak {
  double gx, gy, hxx, hxy, hyy;
};
// cos(t r) and sin(t r) for r = 0 .. n - 1: exact every 16th, by rotation in between (errors of a
// few 1e-16).
void phase_table(double t, int n, std::vector<double>& c, std::vector<double>& s) {
  c.resize(size_t(n));
  s.resize(size_t(n));
  const double c1 = std::cos(t), s1 = std::sin(t);
  for (int r = 0; r < n; ++r) {
    if (r % 16 == 0) {
      c[size_t(r)] = std::cos(t * r);
      s[size_t(r)] = std::sin(t * r);
    } else {
      c[size_t(r)] = c[size_t(r) - 1] * c1 - s[size_t(r) - 1] * s1;
      s[size_t(r)] = c[size_t(r) - 1] * s1 + s[size_t(r) - 1] * c1;
    }
  }
}
// The lattice of the correlations: columns kx[i] = i / nx, rows ky[j] = freq[j] / ny.
struct Lattice {
  int cxh = 0, ncol = 0, fmax = 0;  // fmax: the largest |freq| of the rows used
  double nx = 0, ny = 0;
  std::vector<int> rows, freq;  // the rows used and every row's frequency
  std::vector<float> kx, ky, mult;
};
struct PhaseBuffers {
  std::vector<float> er, ei;
  std::vector<double> c, s, cy, sy;
};
// Value, gradient and Hessian of c(t) = sum_k m(kx) Re(X(k) exp(2 pi i k.t)) (k in cycles per
// pixel; m = 2 for the columns standing for a Hermitian pair) over the columns 0 .. ncol - 1 of the
// rows `rows` of X (rows cxh apart). Separable: the sums along x are done once per row for the three
// x-weights 1, kx, kx^2.
Peak correlation_derivatives(const cfloat* X, const Lattice& L0, double ux, double uy, PhaseBuffers& b) {
  const int cxh = L0.cxh, ncol = L0.ncol;
  const std::vector<float>& kx = L0.kx;
  const std::vector<float>& ky = L0.ky;
  std::vector<float>& e0r = b.er;
  std::vector<float>& e0i = b.ei;
  e0r.resize(size_t(ncol));
  e0i.resize(size_t(ncol));
  phase_table(kTwoPi * ux / L0.nx, ncol, b.c, b.s);
  for (int i = 0; i < ncol; ++i) {
    e0r[size_t(i)] = float(L0.mult[size_t(i)] * b.c[size_t(i)]);
    e0i[size_t(i)] = float(L0.mult[size_t(i)] * b.s[size_t(i)]);
  }
  phase_table(kTwoPi * uy / L0.ny, L0.fmax + 1, b.cy, b.sy);
  double gx = 0, gy = 0, hxx = 0, hxy = 0, hyy = 0;
  const float* xk = kx.data();
  for (const int j : L0.rows) {
    const float* row = reinterpret_cast<const float*>(X + size_t(j) * size_t(cxh));
    // Sums with the weights 1, kx, kx^2 in 8 lanes (so that the compiler vectorises them; the lane
    // order is fixed, so the result does not depend on anything but the data).
    constexpr int L = 8;
    float acc[6][L] = {};
    int i = 0;
    for (; i + L <= ncol; i += L)
      for (int l = 0; l < L; ++l) {
        const float xr = row[2 * (i + l)], xi = row[2 * (i + l) + 1];
        const float er = e0r[size_t(i + l)], ei = e0i[size_t(i + l)], k = xk[i + l];
        const float tr = xr * er - xi * ei, ti = xr * ei + xi * er;
        acc[0][l] += tr;
        acc[1][l] += ti;
        acc[2][l] += k * tr;
        acc[3][l] += k * ti;
        acc[4][l] += k * k * tr;
        acc[5][l] += k * k * ti;
      }
    for (; i < ncol; ++i) {
      const float xr = row[2 * i], xi = row[2 * i + 1];
      const float er = e0r[size_t(i)], ei = e0i[size_t(i)], k = xk[i];
      const float tr = xr * er - xi * ei, ti = xr * ei + xi * er;
      acc[0][0] += tr;
      acc[1][0] += ti;
      acc[2][0] += k * tr;
      acc[3][0] += k * ti;
      acc[4][0] += k * k * tr;
      acc[5][0] += k * k * ti;
    }
    double sum[6] = {};
    for (int a = 0; a < 6; ++a)
      for (int l = 0; l < L; ++l) sum[a] += acc[a][l];
    const double ar = sum[0], ai = sum[1], br = sum[2], bi = sum[3], cr = sum[4], ci = sum[5];
    const int r = L0.freq[size_t(j)];
    const double c = b.cy[size_t(std::abs(r))], s = r < 0 ? -b.sy[size_t(-r)] : b.sy[size_t(r)], q = ky[size_t(j)];
    // Re and Im of (row sums) * exp(2 pi i ky uy).
    const double Ar = ar * c - ai * s, Ai = ar * s + ai * c;
    const double Br = br * c - bi * s, Bi = br * s + bi * c;
    const double Cr = cr * c - ci * s;
    gx -= Bi;
    gy -= q * Ai;
    hxx -= Cr;
    hxy -= q * Br;
    hyy -= q * q * Ar;
  }
  const double w = kTwoPi * kTwoPi;
  return {kTwoPi * gx, kTwoPi * gy, w * hxx, w * hxy, w * hyy};
}

// Newton's method from (ux, uy) on the correlation; steps of at most 0.5 px.
void refine_peak(const cfloat* X, const Lattice& lat, double& ux, double& uy) {
  PhaseBuffers b;
  for (int step = 0; step < 12; ++step) {
    const Peak d = correlation_derivatives(X, lat, ux, uy, b);
    const double det = d.hxx * d.hyy - d.hxy * d.hxy;
    double dx, dy;
    if (d.hxx < 0 && det > 0) {
      dx = -(d.hyy * d.gx - d.hxy * d.gy) / det;
      dy = -(-d.hxy * d.gx + d.hxx * d.gy) / det;
    } else {  // not concave here: a small step uphill
      dx = d.gx > 0 ? 0.25 : -0.25;
      dy = d.gy > 0 ? 0.25 : -0.25;
    }
    const double len = std::hypot(dx, dy);
    if (len > 0.5) {
      dx *= 0.5 / len;
      dy *= 0.5 / len;
    }
    ux += dx;
    uy += dy;
    if (len < 1e-4) break;
  }
}

}  // namespace

void alignment_crop(int nx, int ny, double bfactor, int& cx, int& cy) {
  const double kc = std::min(0.5, std::sqrt(std::log(1e3) / (2 * std::max(1e-3, bfactor))));
  const int hx = std::min(nx / 2, int(std::ceil(kc * nx)) + 1), hy = std::min(ny / 2, int(std::ceil(kc * ny)) + 1);
  cx = std::min(nx, good_fft_size(2 * hx));
  cy = std::min(ny, good_fft_size(2 * hy));
}

void crop_spectrum(const cfloat* F, int nx, int ny, int cx, int cy, cfloat* out) {
  const int nxh = nx / 2 + 1, cxh = cx / 2 + 1;
  for (int j = 0; j < cy; ++j) {
    cfloat* o = out + size_t(j) * size_t(cxh);
    const int ky = fft_freq(j, cy);
    if (cy < ny && ky == cy / 2) {
      std::fill(o, o + cxh, cfloat(0));
      continue;
    }
    const cfloat* row = F + size_t(fft_index(ky, ny)) * size_t(nxh);
    std::copy(row, row + cxh, o);
  }
}

void edge_differences(const float* img, size_t stride, int nx, int ny, float* rows, float* cols) {
  const float* top = img + size_t(ny - 1) * stride;
  for (int x = 0; x < nx; ++x) rows[x] = top[x] - img[x];
  for (int y = 0; y < ny; ++y) {
    const float* r = img + size_t(y) * stride;
    cols[y] = r[nx - 1] - r[0];
  }
}

void remove_smooth_component(cfloat* crop, int cx, int cy, int nx, int ny, const float* rows, const float* cols) {
  // 1D spectra of the edge differences (A along x, B along y).
  Grid<float> a(nx), b(ny);
  std::copy(rows, rows + nx, a.data());
  std::copy(cols, cols + ny, b.data());
  const Grid<cfloat> A = fft_forward(a), B = fft_forward(b);
  const int cxh = cx / 2 + 1;
  std::vector<cfloat> ex(static_cast<size_t>(cxh));
  std::vector<double> cosx(static_cast<size_t>(cxh));
  for (int q = 0; q < cxh; ++q) {
    const double t = kTwoPi * q / nx;
    ex[size_t(q)] = cfloat(float(1 - std::cos(t)), float(-std::sin(t)));  // 1 - exp(2 pi i q / nx)
    cosx[size_t(q)] = 2 * std::cos(t);
  }
  for (int j = 0; j < cy; ++j) {
    const int r = fft_freq(j, cy);
    const double t = kTwoPi * r / ny;
    const cfloat ey(float(1 - std::cos(t)), float(-std::sin(t)));  // 1 - exp(2 pi i r / ny)
    const cfloat Br = r >= 0 ? B[size_t(r)] : std::conj(B[size_t(-r)]);
    const double cy2 = 2 * std::cos(t) - 4;
    cfloat* o = crop + size_t(j) * size_t(cxh);
    for (int q = 0; q < cxh; ++q) {
      if (q == 0 && r == 0) continue;
      const cfloat v = A[size_t(q)] * ey + Br * ex[size_t(q)];
      o[q] -= v / float(cosx[size_t(q)] + cy2);
    }
  }
}

AlignResult align_frames(const std::vector<const Grid<cfloat>*>& spectra, double nx, double ny, bool cropped,
                         const AlignParams& p, ThreadPool& pool, const AlignResult* start, AlignBuffers* buffers) {
  const size_t T = spectra.size();
  AlignResult res;
  res.sx.assign(T, 0.0);
  res.sy.assign(T, 0.0);
  if (start && start->sx.size() == T && start->sy.size() == T) {
    for (size_t f = 0; f < T; ++f) {  // relative to the first frame, as the result
      res.sx[f] = start->sx[f] - start->sx[0];
      res.sy[f] = start->sy[f] - start->sy[0];
    }
  } else {
    start = nullptr;
  }
  if (T < 2) {
    res.converged = true;
    return res;
  }
  const int cxh = spectra[0]->nx(), cy = spectra[0]->ny(), cx = 2 * (cxh - 1);
  const size_t nk = size_t(cxh) * size_t(cy);
  Lattice lat;
  lat.cxh = cxh;
  lat.nx = nx;
  lat.ny = ny;
  lat.kx.resize(size_t(cxh));
  lat.mult.resize(size_t(cxh));
  lat.ky.resize(size_t(cy));
  lat.freq.resize(size_t(cy));
  std::vector<float>& kx = lat.kx;
  std::vector<float>& ky = lat.ky;
  for (int i = 0; i < cxh; ++i) {
    kx[size_t(i)] = float(double(i) / nx);
    lat.mult[size_t(i)] = (i == 0 || (i == cx / 2 && !cropped)) ? 1.0f : 2.0f;
  }
  for (int j = 0; j < cy; ++j) {
    lat.freq[size_t(j)] = fft_freq(j, cy);
    ky[size_t(j)] = float(double(lat.freq[size_t(j)]) / ny);
  }
  // Weights: B-factor and high-pass, on each spectrum.
  std::vector<float> w(nk);
  pool.parallel_for(0, size_t(cy), [&](size_t j, int) {
    for (int i = 0; i < cxh; ++i) {
      const double k2 = double(kx[size_t(i)]) * kx[size_t(i)] + double(ky[j]) * ky[j];
      double v = std::exp(-p.bfactor * k2);
      if (p.highpass > 0) v *= 1 - std::exp(-k2 / (2 * p.highpass * p.highpass));
      w[j * size_t(cxh) + size_t(i)] = float(v);
    }
  }, 16);
  // The cross-correlations X = (S - G_f) conj(G_f) carry the weight twice: the peak search uses the
  // rows and columns where some w^2 reaches 1e-3 of its largest value (the criterion of the crop,
  // alignment_crop, applied to w^2: half the coefficients of the crop with the B-factor alone).
  float wmax = 0;
  for (const float v : w) wmax = std::max(wmax, v);
  const float wcut = wmax * std::sqrt(1e-3f);
  lat.ncol = 1;
  for (int j = 0; j < cy; ++j) {
    bool any = false;
    for (int i = 0; i < cxh; ++i)
      if (w[size_t(j) * size_t(cxh) + size_t(i)] >= wcut) {
        any = true;
        lat.ncol = std::max(lat.ncol, i + 1);
      }
    if (any) {
      lat.rows.push_back(j);
      lat.fmax = std::max(lat.fmax, std::abs(lat.freq[size_t(j)]));
    }
  }

  // The weighted, shifted spectra and their sum.
  AlignBuffers own;
  AlignBuffers& buf = buffers ? *buffers : own;
  std::vector<AlignedArray<cfloat>>& G = buf.g;
  AlignedArray<cfloat>& S = buf.s;
  if (G.size() < T) G.resize(T);
  for (size_t f = 0; f < T; ++f) G[f].resize(nk);
  S.resize(nk);
  std::vector<AlignedArray<cfloat>>& X = buf.x;
  std::vector<AlignedArray<cfloat>>& CC = buf.cc;
  if (X.size() < size_t(pool.size())) X.resize(size_t(pool.size()));
  if (CC.size() < size_t(pool.size())) CC.resize(size_t(pool.size()));
  std::vector<double> tx(T), ty(T);
  for (int it = 1; it <= p.max_iterations; ++it) {
    // Weighted spectra moved by the current shifts, and their sum (frames added in order).
    pool.parallel_for(0, T, [&](size_t f, int) {
      std::vector<cfloat> px(static_cast<size_t>(cxh));
      for (int i = 0; i < cxh; ++i) {
        const double a = -kTwoPi * kx[size_t(i)] * res.sx[f];
        px[size_t(i)] = cfloat(float(std::cos(a)), float(std::sin(a)));
      }
      const cfloat* in = spectra[f]->data();
      cfloat* g = G[f].data();
      for (int j = 0; j < cy; ++j) {
        const double a = -kTwoPi * ky[size_t(j)] * res.sy[f];
        const cfloat py(float(std::cos(a)), float(std::sin(a)));
        const size_t o = size_t(j) * size_t(cxh);
        for (int i = 0; i < cxh; ++i) g[o + size_t(i)] = in[o + size_t(i)] * (px[size_t(i)] * py * w[o + size_t(i)]);
      }
    });
    pool.parallel_for(0, size_t(cy), [&](size_t j, int) {
      cfloat* s = S.data() + j * size_t(cxh);
      std::fill(s, s + cxh, cfloat(0));
      for (size_t f = 0; f < T; ++f) {
        const cfloat* g = G[f].data() + j * size_t(cxh);
        for (int i = 0; i < cxh; ++i) s[i] += g[i];
      }
    }, 8);
    pool.parallel_for(0, T, [&](size_t f, int thread) {
      AlignedArray<cfloat>& x = X[size_t(thread)];
      x.resize(nk);
      const cfloat* g = G[f].data();
      for (size_t k = 0; k < nk; ++k) x[k] = (S[k] - g[k]) * std::conj(g[k]);
      double ux = 0, uy = 0;
      if (it == 1 && !start) {
        // Integer peak of the cross-correlation on the cropped grid (in place: x is consumed).
        AlignedArray<cfloat>& cc = CC[size_t(thread)];
        cc.resize(nk);
        std::copy(x.data(), x.data() + nk, cc.data());
        fft2_inverse_inplace(cc.data(), cx, cy);
        const float* r = reinterpret_cast<const float*>(cc.data());
        const size_t stride = size_t(2 * cxh);
        const int rx = std::max(1, std::min(cx / 2 - 2, int(p.search * cx / nx)));
        const int ry = std::max(1, std::min(cy / 2 - 2, int(p.search * cy / ny)));
        // (a crop's real image is the frame binned to cx x cy samples)
        float best = -1e30f;
        int bx = 0, by = 0;
        for (int y = -ry; y <= ry; ++y)
          for (int xx = -rx; xx <= rx; ++xx) {
            const float v = r[size_t(fft_index(y, cy)) * stride + size_t(fft_index(xx, cx))];
            if (v > best) {
              best = v;
              bx = xx;
              by = y;
            }
          }
        ux = double(bx) * nx / cx;
        uy = double(by) * ny / cy;
      }
      refine_peak(x.data(), lat, ux, uy);
      tx[f] = ux;
      ty[f] = uy;
    });
    double ss = 0;
    for (size_t f = 0; f < T; ++f) {
      const double dx = tx[f] - tx[0], dy = ty[f] - ty[0];  // change of the trajectory this round
      res.sx[f] += dx;
      res.sy[f] += dy;
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

double smooth_trajectory(std::vector<double>& sx, std::vector<double>& sy, int first_penalised) {
  const size_t T = sx.size();
  first_penalised = std::max(first_penalised, 1);
  if (T < 4 || size_t(first_penalised) + 1 >= T) return 0;
  const size_t n = T - 1;  // unknowns s_1 .. s_{T-1}
  // Penalty matrix P = sum over centres c >= first_penalised of d_c d_c^T, d_c = (1, -2, 1) at c-1, c, c+1
  // (column of s_0 dropped: s_0 = 0), and its eigen-decomposition P = V diag(mu) V^T, made once per
  // (T, first_penalised): the hat matrix of every lambda is then V diag(1 / (1 + lambda mu)) V^T, its trace
  // a sum and the fit two products (a patch alignment smooths 25 or more trajectories of one shape).
  struct Basis {
    std::vector<double> mu;
    std::vector<std::vector<double>> v;
  };
  static std::mutex mu_cache;
  static std::map<std::pair<size_t, int>, std::shared_ptr<const Basis>> cache;
  std::shared_ptr<const Basis> basis;
  {
    std::lock_guard lk(mu_cache);
    auto& slot = cache[{T, first_penalised}];
    if (!slot) {
      std::vector<double> P(n * n, 0.0);
      for (size_t c = size_t(first_penalised); c + 1 < T; ++c) {
        const size_t idx[3] = {c - 1, c, c + 1};
        const double d[3] = {1, -2, 1};
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b)
            if (idx[a] > 0 && idx[b] > 0) P[(idx[a] - 1) * n + (idx[b] - 1)] += d[a] * d[b];
      }
      auto b = std::make_shared<Basis>();
      symmetric_eigen(P, n, b->mu, b->v);
      for (auto& m : b->mu) m = std::max(m, 0.0);  // (positive semi-definite; rounding)
      slot = b;
    }
    basis = slot;
  }
  const auto& V = basis->v;
  const auto& mu = basis->mu;
  // Coordinates of the data in the eigenbasis.
  std::vector<double> cx(n, 0.0), cy(n, 0.0);
  for (size_t e = 0; e < n; ++e)
    for (size_t i = 0; i < n; ++i) {
      cx[e] += V[e][i] * sx[i + 1];
      cy[e] += V[e][i] * sy[i + 1];
    }
  double best_score = 1e300, best_lambda = 0;
  std::vector<double> fx(n), fy(n), best_x, best_y;
  for (int l = 0; l <= 40; ++l) {
    const double lambda = std::exp(std::log(0.01) + (std::log(1000.0) - std::log(0.01)) * l / 40.0);
    double trace = 0;
    std::fill(fx.begin(), fx.end(), 0.0);
    std::fill(fy.begin(), fy.end(), 0.0);
    for (size_t e = 0; e < n; ++e) {
      const double h = 1 / (1 + lambda * mu[e]);
      trace += h;
      const double ax = h * cx[e], ay = h * cy[e];
      for (size_t i = 0; i < n; ++i) {
        fx[i] += ax * V[e][i];
        fy[i] += ay * V[e][i];
      }
    }
    double rss = 0;
    for (size_t i = 0; i < n; ++i)
      rss += (sx[i + 1] - fx[i]) * (sx[i + 1] - fx[i]) + (sy[i + 1] - fy[i]) * (sy[i + 1] - fy[i]);
    const double score = double(n) * rss / std::max(1e-12, (double(n) - trace) * (double(n) - trace));
    if (score < best_score) {
      best_score = score;
      best_lambda = lambda;
      best_x = fx;
      best_y = fy;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    sx[i + 1] = best_x[i];
    sy[i + 1] = best_y[i];
  }
  return best_lambda;
}

}  // namespace regula

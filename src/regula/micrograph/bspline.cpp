#include "regula/micrograph/bspline.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace regula {
namespace {

constexpr double kPole = -0.2679491924311228;  // sqrt(3) - 2

// Causal + anti-causal recursion on n samples with stride s (mirror-symmetric boundaries).
void prefilter_line(float* c, int n, size_t s, std::vector<double>& buf) {
  buf.resize(size_t(n));
  for (int i = 0; i < n; ++i) buf[size_t(i)] = 6.0 * c[size_t(i) * s];  // gain (1 - z)(1 - 1/z) = 6
  // Initial causal coefficient: sum over a horizon where z^k is negligible.
  const int horizon = std::min(n, 30);
  double zk = kPole, sum = buf[0];
  for (int k = 1; k < horizon; ++k) {
    sum += zk * buf[size_t(k)];
    zk *= kPole;
  }
  buf[0] = sum;
  for (int i = 1; i < n; ++i) buf[size_t(i)] += kPole * buf[size_t(i) - 1];
  buf[size_t(n) - 1] = (kPole / (kPole * kPole - 1.0)) * (buf[size_t(n) - 1] + kPole * buf[size_t(n) - 2]);
  for (int i = n - 2; i >= 0; --i) buf[size_t(i)] = kPole * (buf[size_t(i) + 1] - buf[size_t(i)]);
  for (int i = 0; i < n; ++i) c[size_t(i) * s] = float(buf[size_t(i)]);
}

inline int mirror(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * n - 2;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

inline void weights(double t, double w[4]) {
  // B-spline weights for offsets -1, 0, 1, 2 of a point at fraction t in [0, 1).
  const double t2 = t * t, t3 = t2 * t, u = 1.0 - t;
  w[0] = u * u * u / 6.0;
  w[1] = (3 * t3 - 6 * t2 + 4) / 6.0;
  w[2] = (-3 * t3 + 3 * t2 + 3 * t + 1) / 6.0;
  w[3] = t3 / 6.0;
}

}  // namespace

void bspline_prefilter(Grid<float>& img) {
  const int nx = img.nx(), ny = img.ny();
  std::vector<double> buf;
  if (nx >= 2)
    for (int y = 0; y < ny; ++y) prefilter_line(img.data() + size_t(y) * size_t(nx), nx, 1, buf);
  if (ny >= 2)
    for (int x = 0; x < nx; ++x) prefilter_line(img.data() + x, ny, size_t(nx), buf);
}

void bspline_prefilter(Grid<float>& img, ThreadPool& pool) {
  const int nx = img.nx(), ny = img.ny();
  if (nx >= 2)
    pool.parallel_for(0, size_t(ny), [&](size_t y, int) {
      std::vector<double> buf;
      prefilter_line(img.data() + y * size_t(nx), nx, 1, buf);
    }, 16);
  if (ny >= 2)
    pool.parallel_for(0, size_t(nx), [&](size_t x, int) {
      std::vector<double> buf;
      prefilter_line(img.data() + x, ny, size_t(nx), buf);
    }, 16);
}

float bspline_sample(const Grid<float>& c, double x, double y) {
  const int nx = c.nx(), ny = c.ny();
  const double fx = std::floor(x), fy = std::floor(y);
  const int ix = int(fx), iy = int(fy);
  double wx[4], wy[4];
  weights(x - fx, wx);
  weights(y - fy, wy);
  double v = 0;
  const bool inside = ix >= 1 && iy >= 1 && ix + 2 < nx && iy + 2 < ny;
  for (int j = 0; j < 4; ++j) {
    const int yy = inside ? iy - 1 + j : mirror(iy - 1 + j, ny);
    const float* row = c.data() + size_t(yy) * size_t(nx);
    double r = 0;
    if (inside) {
      const float* p = row + ix - 1;
      r = wx[0] * p[0] + wx[1] * p[1] + wx[2] * p[2] + wx[3] * p[3];
    } else {
      for (int i = 0; i < 4; ++i) r += wx[i] * row[mirror(ix - 1 + i, nx)];
    }
    v += wy[j] * r;
  }
  return float(v);
}

void bspline_prefilter_spectrum(cfloat* spec, int nx, int ny, float scale) {
  const int nxh = nx / 2 + 1;
  constexpr double kTwoPi = 6.283185307179586;
  std::vector<float> fx(static_cast<size_t>(nxh));
  for (int i = 0; i < nxh; ++i) fx[size_t(i)] = float(6.0 / (4.0 + 2.0 * std::cos(kTwoPi * i / nx)));
  for (int j = 0; j < ny; ++j) {
    const int k = j <= ny / 2 ? j : j - ny;
    const float fy = float(6.0 / (4.0 + 2.0 * std::cos(kTwoPi * k / ny))) * scale;
    cfloat* row = spec + size_t(j) * size_t(nxh);
    for (int i = 0; i < nxh; ++i) row[i] *= fx[size_t(i)] * fy;
  }
}

namespace {
// Weights of the cubic B-spline for offsets -1, 0, 1, 2 of a point at fraction t in [0, 1).
inline void weights4(float t, float& w0, float& w1, float& w2, float& w3) {
  const float u = 1 - t, t2 = t * t;
  w0 = u * u * u * (1.0f / 6);
  w1 = (3 * t2 * t - 6 * t2 + 4) * (1.0f / 6);
  w2 = (-3 * t2 * t + 3 * t2 + 3 * t + 1) * (1.0f / 6);
  w3 = t2 * t * (1.0f / 6);
}
}  // namespace

void bspline_add_row_periodic(const float* coeff, size_t stride, int nx, int ny, int y, const float* dx,
                              const float* dy, float* out) {
  const auto wrap = [](int i, int n) {
    i %= n;
    return i < 0 ? i + n : i;
  };
  const auto one = [&](int x) {
    const float px = float(x) - dx[x], py = float(y) - dy[x];
    const float fx = std::floor(px), fy = std::floor(py);
    const int ix = int(fx), iy = int(fy);
    float wx[4], wy[4];
    weights4(px - fx, wx[0], wx[1], wx[2], wx[3]);
    weights4(py - fy, wy[0], wy[1], wy[2], wy[3]);
    float v = 0;
    for (int j = 0; j < 4; ++j) {
      const float* row = coeff + size_t(wrap(iy - 1 + j, ny)) * stride;
      float r = 0;
      for (int i = 0; i < 4; ++i) r += wx[i] * row[wrap(ix - 1 + i, nx)];
      v += wy[j] * r;
    }
    out[x] += v;
  };
  // Blocks of 8 pixels: the shifts vary slowly along a row, so the 8 usually share the integer
  // offset floor(x - dx) - x and the row floor(y - dy); then the 4 x 4 neighbourhoods of the 8 are
  // 4 rows of 11 consecutive coefficients and the sums vectorise. Otherwise, and near the edges,
  // pixel by pixel (the same arithmetic up to float rounding).
  constexpr int L = 8;
  int x0 = 0;
  for (; x0 + L <= nx; x0 += L) {
    // (Simple loops over the lanes, so that the compiler vectorises them.)
    float fx[L], fy[L], tx[L], ty[L];
    for (int l = 0; l < L; ++l) {
      const float px = float(x0 + l) - dx[x0 + l], py = float(y) - dy[x0 + l];
      fx[l] = std::floor(px);
      fy[l] = std::floor(py);
      tx[l] = px - fx[l];
      ty[l] = py - fy[l];
    }
    bool same = true;
    for (int l = 1; l < L; ++l) same = same && fx[l] - fx[0] == float(l) && fy[l] == fy[0];
    if (!same) {
      for (int l = 0; l < L; ++l) one(x0 + l);
      continue;
    }
    float wx[4][L], wy[4][L];
    for (int l = 0; l < L; ++l) weights4(tx[l], wx[0][l], wx[1][l], wx[2][l], wx[3][l]);
    for (int l = 0; l < L; ++l) weights4(ty[l], wy[0][l], wy[1][l], wy[2][l], wy[3][l]);
    const int first = int(fx[0]) - 1, iy = int(fy[0]);
    if (first < 0 || first + L + 3 > nx || iy < 1 || iy + 2 >= ny) {
      for (int l = 0; l < L; ++l) one(x0 + l);
      continue;
    }
    float acc[L] = {};
    for (int j = 0; j < 4; ++j) {
      const float* r = coeff + size_t(iy - 1 + j) * stride + size_t(first);
      for (int l = 0; l < L; ++l)
        acc[l] += wy[j][l] * (wx[0][l] * r[l] + wx[1][l] * r[l + 1] + wx[2][l] * r[l + 2] + wx[3][l] * r[l + 3]);
    }
    for (int l = 0; l < L; ++l) out[x0 + l] += acc[l];
  }
  for (; x0 < nx; ++x0) one(x0);
}

}  // namespace regula

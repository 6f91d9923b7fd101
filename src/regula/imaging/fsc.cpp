#include "regula/imaging/fsc.hpp"

#include <cmath>
#include <limits>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/filter.hpp"

namespace regula {

namespace {

// num / sqrt(da db) per shell (0 where either has no power); shell 0 set to 1, as RELION.
std::vector<double> fsc_from_sums(const std::vector<double>& num, const std::vector<double>& da,
                                  const std::vector<double>& db) {
  std::vector<double> out(num.size(), 0.0);
  for (size_t s = 0; s < out.size(); ++s) {
    const double d = std::sqrt(da[s] * db[s]);
    out[s] = d > 0 ? num[s] / d : 0.0;
  }
  if (!out.empty()) out[0] = 1.0;
  return out;
}

}  // namespace

std::vector<double> fsc_fourier(const Grid<cfloat>& A, const Grid<cfloat>& B) {
  if (!A.same_shape(B))
    runtime_error("fsc: transforms differ in shape ({}x{}x{} vs {}x{}x{})", A.nx(), A.ny(), A.nz(), B.nx(),
                  B.ny(), B.nz());
  const int n = A.ny();
  std::vector<double> num(size_t(n / 2 + 1), 0.0), da(num.size(), 0.0), db(num.size(), 0.0);
  for (int z = 0; z < A.nz(); ++z) {
    const int kz = A.nz() > 1 ? fft_freq(z, A.nz()) : 0;
    for (int y = 0; y < A.ny(); ++y) {
      const int ky = fft_freq(y, n);
      for (int x = 0; x < A.nx(); ++x) {
        const size_t s = size_t(std::lround(std::sqrt(double(x) * x + double(ky) * ky + double(kz) * kz)));
        if (s >= num.size()) continue;
        const cdouble a = A(x, y, z), b = B(x, y, z);
        num[s] += (std::conj(a) * b).real();
        da[s] += std::norm(a);
        db[s] += std::norm(b);
      }
    }
  }
  return fsc_from_sums(num, da, db);
}

std::vector<int16_t> fourier_shells(int n) {
  std::vector<int16_t> t(size_t(n / 2 + 1) * size_t(n) * size_t(n));
  size_t i = 0;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x <= n / 2; ++x) {
        const int kz = fft_freq(z, n), ky = fft_freq(y, n);
        const long s = std::lround(std::sqrt(double(x * x + ky * ky + kz * kz)));
        t[i++] = int16_t(s <= n / 2 ? s : -1);
      }
  return t;
}

std::vector<double> fsc_fourier(const Grid<cfloat>& A, const Grid<cfloat>& B, const std::vector<int16_t>& shells) {
  if (!A.same_shape(B) || shells.size() != A.size())
    runtime_error("fsc: transforms of {}x{}x{} and {}x{}x{} with a shell table of {}", A.nx(), A.ny(), A.nz(),
                  B.nx(), B.ny(), B.nz(), shells.size());
  const int n = A.ny();
  std::vector<double> num(size_t(n / 2 + 1), 0.0), da(num.size(), 0.0), db(num.size(), 0.0);
  for (size_t i = 0; i < A.size(); ++i) {
    if (shells[i] < 0) continue;
    const size_t s = size_t(shells[i]);
    const cfloat a = A[i], b = B[i];
    num[s] += double(a.real()) * b.real() + double(a.imag()) * b.imag();
    da[s] += std::norm(a);
    db[s] += std::norm(b);
  }
  return fsc_from_sums(num, da, db);
}

std::vector<double> fsc_weights(const std::vector<double>& f) {
  std::vector<double> w(f.size(), 0.0);
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] < 0.0001) break;
    w[i] = f[i] > 0 ? std::sqrt(2 * f[i] / (1 + f[i])) : 0.0;
  }
  return w;
}

void apply_fsc_weighting(Grid<cfloat>& F, const std::vector<double>& f) {
  const std::vector<double> w = fsc_weights(f);
  const int n = F.ny();
  for (int z = 0; z < F.nz(); ++z) {
    const int kz = F.nz() > 1 ? fft_freq(z, F.nz()) : 0;
    for (int y = 0; y < F.ny(); ++y) {
      const int ky = fft_freq(y, n);
      for (int x = 0; x < F.nx(); ++x) {
        const size_t i = size_t(std::lround(std::sqrt(double(x * x + ky * ky + kz * kz))));
        F(x, y, z) *= i < w.size() ? float(w[i]) : 0.0f;
      }
    }
  }
}

std::vector<double> fsc(const Grid<float>& a, const Grid<float>& b) {
  if (!a.same_shape(b))
    input_error("fsc: maps differ in shape ({}x{}x{} vs {}x{}x{})", a.nx(), a.ny(), a.nz(), b.nx(), b.ny(),
                b.nz());
  if (a.nx() != a.ny() || (a.nz() != 1 && a.nz() != a.nx()))
    input_error("fsc: map is {}x{}x{}, expected a square image or a cubic map", a.nx(), a.ny(), a.nz());
  return fsc_fourier(fft_forward(a), fft_forward(b));
}

double resolution_at(const std::vector<double>& f, double threshold, double pixel_size, int n,
                     bool interpolate) {
  if (f.size() < 2 || !(f[1] >= threshold)) return std::numeric_limits<double>::infinity();
  size_t last = 1;
  while (last + 1 < f.size() && f[last + 1] >= threshold) ++last;
  if (interpolate && last + 1 < f.size()) {
    const double v0 = f[last] - threshold, v1 = f[last + 1] - threshold;
    const double r = v0 / (v0 - v1);
    return n * pixel_size / (double(last) + r);
  }
  return n * pixel_size / double(last);
}

double real_space_correlation(const Grid<float>& a, const Grid<float>& b) {
  if (a.size() != b.size()) runtime_error("correlation of grids of {} and {} values", a.size(), b.size());
  double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
  const double N = double(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    sa += a[i];
    sb += b[i];
    saa += double(a[i]) * a[i];
    sbb += double(b[i]) * b[i];
    sab += double(a[i]) * b[i];
  }
  const double va = saa - sa * sa / N, vb = sbb - sb * sb / N;
  return va > 0 && vb > 0 ? (sab - sa * sb / N) / std::sqrt(va * vb) : 0.0;
}

SolventCorrectedFsc solvent_corrected_fsc(const Grid<float>& h1, const Grid<float>& h2, const Grid<float>& mask,
                                          double randomize_at_fsc, uint64_t seed) {
  if (!h1.same_shape(h2) || !h1.same_shape(mask))
    runtime_error("solvent_corrected_fsc: half maps and mask of different shapes");
  auto times = [&](const Grid<float>& a) {
    Grid<float> out = a;
    for (size_t i = 0; i < out.size(); ++i) out[i] *= mask[i];
    return out;
  };
  SolventCorrectedFsc r;
  r.unmasked = fsc(h1, h2);
  r.masked = fsc(times(h1), times(h2));
  if (r.masked[0] <= 0) r.masked[0] = 1;
  const size_t hs = r.unmasked.size();
  for (size_t i = 1; i < hs; ++i)
    if (r.unmasked[i] < randomize_at_fsc) {
      r.randomize_at = int(i);
      break;
    }
  if (r.randomize_at < 0) {
    r.corrected = r.masked;
    return r;
  }
  // Shells round(|k|) > randomize_at, i.e. |k| >= randomize_at + 0.5.
  const Grid<float> r1 = randomize_phases(h1, r.randomize_at + 0.5, seed, 1);
  const Grid<float> r2 = randomize_phases(h2, r.randomize_at + 0.5, seed, 2);
  r.random = fsc(times(r1), times(r2));
  if (r.random[0] <= 0) r.random[0] = 1;
  r.corrected.resize(hs);
  for (size_t i = 0; i < hs; ++i) {
    if (int(i) < r.randomize_at + 2) {
      r.corrected[i] = r.masked[i];
    } else {
      const double t = r.masked[i], q = r.random[i];
      r.corrected[i] = (t - q) / (1 - q);
    }
  }
  return r;
}

}  // namespace regula

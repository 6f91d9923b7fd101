#include "regula/mstep/class_average.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/mstep/model_update.hpp"
#include "regula/sampling/euler.hpp"

namespace regula::mstep {

std::vector<double> FourierPixels::shell_counts() const {
  std::vector<double> c(size_t(n / 2 + 1), 0.0);
  for (int s : shell) c[size_t(s)] += 1;
  return c;
}

FourierPixels select_fourier_pixels(int n, int r_max) {
  FourierPixels p;
  p.n = n;
  p.r_max = std::clamp(r_max, 0, n / 2);
  const int hx = n / 2 + 1;
  for (int iy = 0; iy < n; ++iy) {
    int fy = fft_freq(iy, n);
    for (int x = 0; x < hx; ++x) {
      if (x == 0 && fy <= 0) continue;  // redundant half of the kx = 0 column, and DC
      int s = int(std::lround(std::sqrt(double(x) * x + double(fy) * fy)));
      if (s < 1 || s > p.r_max) continue;
      p.index.push_back(uint32_t(iy * hx + x));
      p.kx.push_back(x);
      p.ky.push_back(fy);
      p.shell.push_back(s);
    }
  }
  return p;
}

BackProjector class_accumulator(int n, int r_max, int padding) {
  return BackProjector(n, padding, std::min(n / 2, r_max + 1), 2);
}

void insert_class_sums(BackProjector& acc, const FourierPixels& pixels, double psi_deg,
                       const std::complex<double>* data, const double* weight) {
  const size_t m = pixels.size();
  std::vector<float> kx, ky, d, w;
  kx.reserve(m);
  ky.reserve(m);
  d.reserve(2 * m);
  w.reserve(m);
  for (size_t k = 0; k < m; ++k) {
    if (weight[k] == 0 && data[k] == std::complex<double>(0, 0)) continue;
    kx.push_back(float(pixels.kx[k]));
    ky.push_back(float(pixels.ky[k]));
    d.push_back(float(data[k].real()));
    d.push_back(float(data[k].imag()));
    w.push_back(float(weight[k]));
  }
  if (kx.empty()) return;
  acc.insert_pixels(kx, ky, d.data(), w.data(), euler_to_matrix(0, 0, psi_deg));
}

ClassAverage reconstruct_class_2d(const BackProjector& acc, const ClassAverageOptions& opt) {
  const int n = acc.size();
  const int r_lat = std::min(n / 2, opt.r_max + 1);
  if (acc.dim() != 2 || acc.r_max() != r_lat || acc.padding() != opt.padding)
    runtime_error("reconstruct_class_2d: accumulator (dim {}, r_max {}, padding {}) does not match r_max {} + 1 "
                  "and padding {}", acc.dim(), acc.r_max(), acc.padding(), opt.r_max, opt.padding);
  ReconstructOptions ro;
  ro.tau2 = opt.tau2;
  ro.tau2_fudge = opt.tau2_fudge;
  ro.iterative_gridding = opt.iterative_gridding;
  ro.max_frequency = r_lat;
  ro.zero_tau2_unregularised = opt.zero_tau2_unregularised;
  ClassAverage out;
  out.image = acc.reconstruct(ro);
  out.ssnr.assign(size_t(n / 2 + 1), 0.0);
  if (!opt.tau2.empty()) {
    std::vector<double> mw = acc.mean_weight_per_shell();
    for (size_t s = 0; s < out.ssnr.size() && s < opt.tau2.size() && s < mw.size(); ++s) {
      const bool no_prior = opt.zero_tau2_unregularised && opt.tau2[s] == 0 && mw[s] > 0 && int(s) <= opt.r_max;
      out.ssnr[s] = no_prior ? kNoPriorSsnr : mw[s] * opt.tau2_fudge * opt.tau2[s];
    }
  }
  return out;
}

ClassAverage reconstruct_class_2d(const FourierPixels& pixels, std::span<const double> psi_deg,
                                  std::span<const std::complex<double>> data, std::span<const double> weight,
                                  const ClassAverageOptions& opt) {
  const size_t m = pixels.size();
  if (data.size() != psi_deg.size() * m || weight.size() != psi_deg.size() * m)
    runtime_error("reconstruct_class_2d: {} angles x {} pixels but {} data and {} weights", psi_deg.size(), m,
                  data.size(), weight.size());
  BackProjector acc = class_accumulator(pixels.n, opt.r_max, opt.padding);
  for (size_t p = 0; p < psi_deg.size(); ++p)
    insert_class_sums(acc, pixels, psi_deg[p], data.data() + p * m, weight.data() + p * m);
  return reconstruct_class_2d(acc, opt);
}

double rotational_correlation(const Image& a, const Image& b, std::span<const double> psi_deg, int r) {
  const int n = a.nx();
  if (b.nx() != n || a.ny() != n || b.ny() != n)
    runtime_error("rotational_correlation: images of {}x{} and {}x{} px", a.nx(), a.ny(), b.nx(), b.ny());
  FourierPixels px = select_fourier_pixels(n, r);
  Grid<cfloat> B = fourier_centred(b), out;
  Projector2D proj(a, 2, std::min(n / 2, r + 1));
  double best = -1;
  for (double psi : psi_deg) {
    proj.project_psi(psi, out);
    double num = 0, na = 0, nb = 0;
    for (size_t q = 0; q < px.size(); ++q) {
      const std::complex<double> x(out[px.index[q]]), y(B[px.index[q]]);
      num += (std::conj(x) * y).real();
      na += std::norm(x);
      nb += std::norm(y);
    }
    if (na > 0 && nb > 0) best = std::max(best, num / std::sqrt(na * nb));
  }
  return best;
}

std::array<double, 2> positive_centre_of_mass(const Image& img, double radius_px) {
  const int n = img.nx();
  double sw = 0, sx = 0, sy = 0;
  const double r2 = radius_px * radius_px;
  for (int y = 0; y < img.ny(); ++y)
    for (int x = 0; x < n; ++x) {
      double dx = x - n / 2, dy = y - img.ny() / 2;
      if (dx * dx + dy * dy > r2) continue;
      double v = img(x, y);
      if (v <= 0) continue;
      sw += v;
      sx += v * dx;
      sy += v * dy;
    }
  if (sw <= 0) return {0, 0};
  return {sx / sw, sy / sw};
}

void shift_image(Image& img, double dx_px, double dy_px) {
  const int n = img.nx();
  Grid<cfloat> F = fourier_centred(img);
  shift_phase(F, dx_px, dy_px, n);
  img = from_fourier_centred(F, n);
}

}  // namespace regula::mstep

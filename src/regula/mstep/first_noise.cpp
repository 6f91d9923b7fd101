#include "regula/mstep/first_noise.hpp"

#include <algorithm>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"

namespace regula::mstep {

namespace {

__extension__ typedef __int128 Fixed;  // image sums in units of 2^-40
constexpr double kFixedScale = 0x1p40;
constexpr double kFixedLimit = 0x1p100;  // |value| * scale beyond this is clamped (no overflow)

Fixed to_fixed(float v) {
  const double x = double(v) * kFixedScale;
  if (!std::isfinite(x)) return 0;  // (a non-finite image shows in the power sum instead)
  return Fixed(std::nearbyint(std::clamp(x, -kFixedLimit, kFixedLimit)));
}

// Sum of |F(k)|^2 and number of Fourier pixels per shell 0..n/2 over the half-complex transform.
void add_shell_power(const Image& img, std::vector<double>& power, std::vector<double>* pixels) {
  const int n = img.nx();
  const Grid<cfloat> F = fft_forward(img);
  for (int y = 0; y < F.ny(); ++y) {
    const int ky = fft_freq(y, n);
    for (int x = 0; x < F.nx(); ++x) {
      const size_t s = size_t(std::lround(std::sqrt(double(x) * x + double(ky) * ky)));
      if (s >= power.size()) continue;
      power[s] += std::norm(F(x, y));
      if (pixels) (*pixels)[s] += 1;
    }
  }
}

}  // namespace

struct FirstNoiseEstimate::Group {
  int n = 0;
  std::mutex m;
  std::vector<Fixed> sum;
  ExactSums power;
  ExactSum count;
};

FirstNoiseEstimate::FirstNoiseEstimate(int n, size_t groups)
    : FirstNoiseEstimate(std::vector<int>(groups, n)) {}

FirstNoiseEstimate::FirstNoiseEstimate(const std::vector<int>& box) {
  for (int n : box) {
    auto p = std::make_unique<Group>();
    p->n = n;
    p->sum.assign(size_t(n) * size_t(n), 0);
    p->power.resize(size_t(n / 2 + 1));
    g_.push_back(std::move(p));
  }
}

FirstNoiseEstimate::~FirstNoiseEstimate() = default;

void FirstNoiseEstimate::add(size_t group, const Image& img) {
  Group& g = *g_.at(group);
  if (img.nx() != g.n || img.ny() != g.n)
    runtime_error("FirstNoiseEstimate: a {}x{} image for group {} of {} px", img.nx(), img.ny(), group, g.n);
  std::vector<double> power(size_t(g.n / 2 + 1), 0.0);
  add_shell_power(img, power, nullptr);
  std::lock_guard lock(g.m);
  size_t i = 0;
  for (float v : img) g.sum[i++] += to_fixed(v);
  for (size_t s = 0; s < power.size(); ++s) g.power[s].add(power[s]);
  g.count.add(1.0);
}

size_t FirstNoiseEstimate::count(size_t group) const { return size_t(g_.at(group)->count.value()); }

std::vector<std::vector<double>> FirstNoiseEstimate::sigma2(double empty_value, bool subtract_average) const {
  std::vector<std::vector<double>> out(g_.size());
  for (size_t gi = 0; gi < g_.size(); ++gi) {
    const Group& g = *g_[gi];
    const size_t hs = size_t(g.n / 2 + 1);
    out[gi].assign(hs, empty_value);
    const double count = g.count.value();
    if (count <= 0) continue;
    Image avg(g.n, g.n);
    size_t i = 0;
    for (float& v : avg) v = float(double(g.sum[i++]) / kFixedScale / count);
    std::vector<double> avg_power(hs, 0.0), pixels(hs, 0.0);
    add_shell_power(avg, avg_power, &pixels);
    const std::vector<double> power = g.power.values();
    std::vector<double>& s2 = out[gi];
    s2[0] = 0;
    for (size_t s = 1; s < hs; ++s)
      s2[s] = pixels[s] > 0 ? (power[s] / count - (subtract_average ? avg_power[s] : 0.0)) / (2 * pixels[s]) : 0.0;
    // Not positive (the images' power is no larger than their average's, e.g. identical images):
    // the previous shell's value, else the next positive one.
    for (size_t s = 1; s < hs; ++s) {
      if (s2[s] > 0) continue;
      if (s > 1 && s2[s - 1] > 0) {
        s2[s] = s2[s - 1];
        continue;
      }
      size_t t = s + 1;
      while (t < hs && !(s2[t] > 0)) ++t;
      s2[s] = t < hs ? s2[t] : empty_value;
    }
  }
  return out;
}

}  // namespace regula::mstep

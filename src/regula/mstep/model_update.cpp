#include "regula/mstep/model_update.hpp"

#include <algorithm>
#include <cmath>

#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"

namespace regula::mstep {

std::vector<double> map_prior_tau2(const Grid<float>& map, int padding) {
  Grid<float> g = map;
  const int n = map.nx(), c = n / 2, N = padding * n;
  const int cz = map.nz() == 1 ? 0 : c;
  for (int z = 0; z < map.nz(); ++z)
    for (int y = 0; y < map.ny(); ++y)
      for (int x = 0; x < n; ++x) {
        const double r = std::sqrt(double((x - c) * (x - c) + (y - c) * (y - c) + (z - cz) * (z - cz)));
        g(x, y, z) = float(g(x, y, z) / gridding_sinc2(r, N));
      }
  std::vector<double> t = shell_power(g);
  for (double& v : t) v *= 0.5;
  return t;
}

std::vector<double> held_shell_power(const Grid<float>& map) {
  std::vector<double> t = shell_power(map);
  double last = 0;
  for (size_t s = 1; s < t.size(); ++s) {
    if (t[s] > 0) last = t[s];
    else t[s] = last;
  }
  return t;
}

std::vector<double> noise_spectrum(const std::vector<double>& diff2, const std::vector<double>& weighted_pixels,
                                   const std::vector<double>& previous) {
  std::vector<double> out = previous;
  out.resize(diff2.size(), 0.0);
  for (size_t s = 1; s < diff2.size(); ++s)
    if (s < weighted_pixels.size() && weighted_pixels[s] > 0 && diff2[s] > 0) out[s] = diff2[s] / (2 * weighted_pixels[s]);
  // Shells that never got data take their neighbour's value below (RELION does the same for zeros).
  for (size_t s = 2; s < out.size(); ++s)
    if (!(out[s] > 0)) out[s] = out[s - 1];
  return out;
}

Prior prior_from_fsc(const std::vector<double>& fsc, const std::vector<double>& mean_weight, int r_max,
                     double tau2_fudge, bool whole) {
  Prior p;
  const size_t hs = mean_weight.size();
  p.ssnr.assign(hs, 0.0);
  p.tau2.assign(hs, 0.0);
  for (size_t s = 0; s < hs && s <= size_t(std::max(r_max, 0)); ++s) {
    double f = std::max(0.001, s < fsc.size() ? fsc[s] : 0.0);
    if (whole) f = std::sqrt(2 * f / (f + 1));
    f = std::min(0.999, f);
    p.ssnr[s] = tau2_fudge * f / (1 - f);
    p.tau2[s] = mean_weight[s] > 0 ? p.ssnr[s] / mean_weight[s] : 0.0;
  }
  if (hs > 1) p.tau2[0] = p.tau2[1];
  return p;
}

std::vector<double> group_scales(const std::vector<double>& xa, const std::vector<double>& aa,
                                 const std::vector<double>& particles_per_group, const std::vector<double>& old) {
  const size_t G = old.size();
  std::vector<double> s = old;
  for (size_t g = 0; g < G; ++g)
    if (g < aa.size() && aa[g] > 0 && xa[g] > 0) s[g] = xa[g] / aa[g];
  std::vector<double> sorted = s;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.empty() ? 1.0 : sorted[sorted.size() / 2];
  double avg = 0, np = 0;
  for (size_t g = 0; g < G; ++g) {
    s[g] = std::clamp(s[g], median / 5, 5 * median);
    const double w = g < particles_per_group.size() ? particles_per_group[g] : 0.0;
    avg += w * s[g];
    np += w;
  }
  if (np > 0 && avg > 0)
    for (double& v : s) v /= avg / np;
  return s;
}

}  // namespace regula::mstep

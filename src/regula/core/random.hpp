// Reproducible randomness: every random choice derives from the user's seed and
// a stable stream id (e.g. particle index), never from thread identity or
// order, so results are the same for any thread count.
#pragma once
#include <cstdint>
#include <cmath>
#include <random>
#include <utility>

namespace regula {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A generator for stream `stream` under `seed` (e.g. seed, particle index).
inline std::mt19937_64 make_rng(uint64_t seed, uint64_t stream = 0, uint64_t substream = 0) {
  return std::mt19937_64(splitmix64(splitmix64(seed) ^ splitmix64(stream * 0x100000001b3ULL + substream)));
}

// Standard normal from a 64-bit generator, independent of the standard library's
// normal_distribution (whose algorithm differs between implementations).
inline double normal01(std::mt19937_64& g) {
  constexpr double two_pi = 6.283185307179586;
  double u1 = (double(g() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = (double(g() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2);
}
// Two independent standard normals from one Box-Muller draw (both of its outputs).
inline std::pair<double, double> normal_pair(std::mt19937_64& g) {
  constexpr double two_pi = 6.283185307179586;
  double u1 = (double(g() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = (double(g() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  const double r = std::sqrt(-2.0 * std::log(u1));
  return {r * std::cos(two_pi * u2), r * std::sin(two_pi * u2)};
}
inline double uniform01(std::mt19937_64& g) { return double(g() >> 11) * (1.0 / 9007199254740992.0); }

// A Poisson count of mean `lambda` (>= 0): exact inversion (sequential search from 0) for
// lambda < 30, which costs about lambda + 1 steps; beyond that the normal approximation
// round(lambda + sqrt(lambda) z), clamped at 0 (relative error of the variance below 1/lambda).
// Independent of the standard library's poisson_distribution.
inline long poisson(std::mt19937_64& g, double lambda) {
  if (!(lambda > 0)) return 0;
  if (lambda >= 30) {
    const double v = std::nearbyint(lambda + std::sqrt(lambda) * normal01(g));
    return v < 0 ? 0 : long(v);
  }
  double p = std::exp(-lambda), cdf = p;
  const double u = uniform01(g);
  long k = 0;
  while (u > cdf && k < 1000) {
    ++k;
    p *= lambda / double(k);
    cdf += p;
  }
  return k;
}

}  // namespace regula

// The significant set of a posterior (RELION's adaptive oversampling, --adaptive_fraction and
// --maxsig): the smallest set of poses, taken in decreasing weight (ties by index), whose weights
// hold `fraction` of the total mass; at most `max_count` of them when max_count > 0, in which case
// the set may hold less than the fraction and `bound` says so. Shared by the 2D and 3D E-steps.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace regula::estep {

struct SignificantSet {
  std::vector<uint32_t> index;  // by decreasing weight
  double mass = 0;              // sum of their weights
  bool bound = false;           // max_count stopped the set before it held the fraction
};

// `weight`: non-negative values (normalised or not); `total`: their sum (> 0). Only entries with
// weight > 0 are candidates. Deterministic. Work: O(n) plus a sort of the candidates above a
// threshold that already holds the target mass.
void significant_set(std::span<const float> weight, double total, double fraction, long max_count,
                     SignificantSet& out);
void significant_set(std::span<const double> weight, double total, double fraction, long max_count,
                     SignificantSet& out);

}  // namespace regula::estep

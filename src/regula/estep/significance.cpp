#include "regula/estep/significance.hpp"

#include <algorithm>

namespace regula::estep {
namespace {

template <class T>
void select(std::span<const T> w, double total, double fraction, long max_count, SignificantSet& out) {
  out.index.clear();
  out.mass = 0;
  out.bound = false;
  if (!(total > 0)) return;
  const double target = fraction * total;
  // Candidates above a threshold tau that already hold the target: every other entry is smaller
  // than every candidate, so the sorted prefix equals that of a full sort.
  std::vector<uint32_t>& idx = out.index;
  for (double tau = 1e-3 * total;; tau *= 1e-3) {
    if (tau < 1e-300 * total) tau = 0;
    idx.clear();
    double cand = 0;
    for (size_t q = 0; q < w.size(); ++q)
      if (w[q] > 0 && double(w[q]) >= tau) {
        idx.push_back(uint32_t(q));
        cand += double(w[q]);
      }
    if (cand >= target || tau == 0) break;
  }
  std::sort(idx.begin(), idx.end(), [&](uint32_t a, uint32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  size_t count = 0;
  double acc = 0;
  while (count < idx.size()) {
    if (max_count > 0 && count >= size_t(max_count)) {
      out.bound = true;
      break;
    }
    acc += double(w[idx[count]]);
    ++count;
    if (acc >= target) break;
  }
  if (count == 0 && !idx.empty()) {  // max_count > 0 always lets at least one in; kept for safety
    acc = double(w[idx[0]]);
    count = 1;
  }
  idx.resize(count);
  out.mass = acc;
}

}  // namespace

void significant_set(std::span<const float> weight, double total, double fraction, long max_count,
                     SignificantSet& out) {
  select(weight, total, fraction, max_count, out);
}
void significant_set(std::span<const double> weight, double total, double fraction, long max_count,
                     SignificantSet& out) {
  select(weight, total, fraction, max_count, out);
}

}  // namespace regula::estep

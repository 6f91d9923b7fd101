// Exact sums of doubles (a long fixed-point accumulator covering every double, Kulisch-style):
// the value of a sum does not depend on the order of its terms, so per-thread or per-process partial
// sums merged in any order give the same bits. Used for the reductions of the iterative jobs (noise
// spectra, scale products, statistics), whose results must not depend on --j or the number of MPI
// ranks. About 600 bytes per sum; adding a term costs a few integer operations.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace regula {

class ExactSum {
 public:
  static constexpr int kDigits = 72;  // radix 2^32 digits covering 2^-1152 .. 2^1152
  void add(double v);
  void merge(const ExactSum& o);
  double value() const;  // correctly ordered, deterministic rounding of the exact sum
  void clear();
  // Normalised digits (for sending to other processes) and back.
  const std::array<int64_t, kDigits>& digits() const;
  void merge_digits(std::span<const int64_t> d);
  bool finite() const { return nonfinite_ == 0; }

 private:
  void normalise() const;
  mutable std::array<int64_t, kDigits> d_{};
  mutable uint32_t pending_ = 0;  // additions since the last normalisation
  double nonfinite_ = 0;          // sum of non-finite terms (NaN or inf), kept apart
};

// A vector of exact sums (e.g. one per resolution shell).
class ExactSums {
 public:
  ExactSums() = default;
  explicit ExactSums(size_t n) : s_(n) {}
  size_t size() const { return s_.size(); }
  void resize(size_t n) { s_.assign(n, ExactSum()); }
  ExactSum& operator[](size_t i) { return s_[i]; }
  const ExactSum& operator[](size_t i) const { return s_[i]; }
  void merge(const ExactSums& o);
  std::vector<double> values() const;
  // All digits, size() * ExactSum::kDigits values (for MPI) and back.
  std::vector<int64_t> pack() const;
  void merge_packed(std::span<const int64_t> d);

 private:
  std::vector<ExactSum> s_;
};

}  // namespace regula

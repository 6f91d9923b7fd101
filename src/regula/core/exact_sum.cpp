#include "regula/core/exact_sum.hpp"

#include <cmath>

#include "regula/core/error.hpp"

namespace regula {
namespace {
constexpr int kOffsetBits = 1152;  // bit 0 of digit 0 has weight 2^-1152
constexpr int64_t kMask = 0xFFFFFFFFLL;
}  // namespace

void ExactSum::add(double v) {
  if (v == 0) return;
  if (!std::isfinite(v)) {
    nonfinite_ += v;
    return;
  }
  int e = 0;
  const double m = std::frexp(v, &e);  // v = m 2^e, 0.5 <= |m| < 1
  const int64_t M = int64_t(std::ldexp(m, 53));  // exact: |M| < 2^53
  const int p = e - 53 + kOffsetBits;   // bit position of M's lowest bit (>= 0 for every double)
  const int d = p / 32, s = p % 32;
  // |M| << s split over three digits: M = mh 2^32 + ml.
  const uint64_t am = uint64_t(M < 0 ? -M : M), ml = am & uint64_t(kMask), mh = am >> 32;
  const uint64_t a = ml << s, b = mh << s;  // < 2^64 and < 2^53
  const int64_t v0 = int64_t(a & uint64_t(kMask)), v1 = int64_t(a >> 32) + int64_t(b & uint64_t(kMask)),
                v2 = int64_t(b >> 32);
  if (M < 0) {
    d_[size_t(d)] -= v0;
    d_[size_t(d + 1)] -= v1;
    d_[size_t(d + 2)] -= v2;
  } else {
    d_[size_t(d)] += v0;
    d_[size_t(d + 1)] += v1;
    d_[size_t(d + 2)] += v2;
  }
  if (++pending_ >= (1u << 28)) normalise();  // each add moves a digit by < 2^33
}

void ExactSum::normalise() const {
  if (pending_ == 0) return;
  int64_t carry = 0;
  for (int i = 0; i < kDigits - 1; ++i) {
    const int64_t v = d_[size_t(i)] + carry;
    d_[size_t(i)] = v & kMask;  // in [0, 2^32)
    carry = v >> 32;            // floor division (arithmetic shift)
  }
  d_[size_t(kDigits - 1)] += carry;
  pending_ = 0;
}

void ExactSum::merge(const ExactSum& o) {
  normalise();
  o.normalise();
  for (int i = 0; i < kDigits; ++i) d_[size_t(i)] += o.d_[size_t(i)];
  nonfinite_ += o.nonfinite_;
  pending_ = 1;
  normalise();
}

const std::array<int64_t, ExactSum::kDigits>& ExactSum::digits() const {
  normalise();
  return d_;
}

void ExactSum::merge_digits(std::span<const int64_t> d) {
  if (d.size() != size_t(kDigits)) runtime_error("ExactSum: {} digits, expected {}", d.size(), kDigits);
  normalise();
  for (int i = 0; i < kDigits; ++i) d_[size_t(i)] += d[size_t(i)];
  pending_ = 1;
  normalise();
}

double ExactSum::value() const {
  if (nonfinite_ != 0 || std::isnan(nonfinite_)) return nonfinite_;
  normalise();
  // The normalised digits are unique for a value, so this rounding depends only on the value.
  // Sum from the most significant digit; each digit below the leading ones adds less than an ulp
  // at the end, in long double to keep the first 64 bits.
  long double r = 0;
  for (int i = kDigits - 1; i >= 0; --i)
    if (d_[size_t(i)] != 0) r += std::ldexp(static_cast<long double>(d_[size_t(i)]), 32 * i - kOffsetBits);
  return double(r);
}

void ExactSum::clear() {
  d_.fill(0);
  pending_ = 0;
  nonfinite_ = 0;
}

void ExactSums::merge(const ExactSums& o) {
  if (o.size() != size()) runtime_error("ExactSums: merging {} sums into {}", o.size(), size());
  for (size_t i = 0; i < s_.size(); ++i) s_[i].merge(o.s_[i]);
}

std::vector<double> ExactSums::values() const {
  std::vector<double> v(s_.size());
  for (size_t i = 0; i < s_.size(); ++i) v[i] = s_[i].value();
  return v;
}

std::vector<int64_t> ExactSums::pack() const {
  std::vector<int64_t> out;
  out.reserve(s_.size() * ExactSum::kDigits);
  for (const ExactSum& s : s_) {
    const auto& d = s.digits();
    out.insert(out.end(), d.begin(), d.end());
  }
  return out;
}

void ExactSums::merge_packed(std::span<const int64_t> d) {
  if (d.size() != s_.size() * ExactSum::kDigits)
    runtime_error("ExactSums: {} packed digits for {} sums", d.size(), s_.size());
  for (size_t i = 0; i < s_.size(); ++i) s_[i].merge_digits(d.subspan(i * ExactSum::kDigits, ExactSum::kDigits));
}

}  // namespace regula

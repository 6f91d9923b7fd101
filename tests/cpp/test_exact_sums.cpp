// Order-independent sums: ExactSum (long fixed-point accumulator) and the BackProjector's exact
// mode (quantised 64-bit sums, atomic insertion). Both give the same bits whatever the order of
// the terms, the thread split or the merge order: the property that makes refine3d's results
// independent of --j and of the number of MPI ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>
#include <tuple>
#include <vector>

#include "regula/core/exact_sum.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {

std::vector<double> mixed_terms(uint64_t seed, size_t n) {
  auto g = make_rng(seed);
  std::vector<double> v(n);
  for (double& x : v) x = normal01(g) * std::ldexp(1.0, int(uniform01(g) * 80) - 40);  // 2^-40 .. 2^40
  return v;
}

}  // namespace

// The exact sum of values whose exact sum is known: integers and dyadic fractions cancel exactly.
TEST(ExactSum, KnownValues) {
  ExactSum s;
  s.add(1e300);
  s.add(1.0);
  s.add(-1e300);
  EXPECT_EQ(s.value(), 1.0);  // a double sum would give 0
  ExactSum t;
  for (int i = 0; i < 1000; ++i) t.add(0.1);
  // 1000 * fl(0.1) exactly = 100.0000000000000055511..., whose nearest double is 100 (a
  // left-to-right double sum gives 99.9999999999986)
  EXPECT_EQ(t.value(), 100.0);
  double naive = 0;
  for (int i = 0; i < 1000; ++i) naive += 0.1;
  EXPECT_NE(naive, 100.0);
  ExactSum tiny;
  tiny.add(std::ldexp(1.0, -1074));  // smallest denormal
  tiny.add(std::ldexp(1.0, -1074));
  EXPECT_EQ(tiny.value(), std::ldexp(1.0, -1073));
  ExactSum big;
  big.add(std::ldexp(1.0, 1020));
  big.add(-std::ldexp(1.0, 1020));
  big.add(-2.5);
  EXPECT_EQ(big.value(), -2.5);
}

// Any order, any split into partial sums merged in any order: the same bits; and the value is the
// correctly ordered sum to within a double rounding of the long double reference.
TEST(ExactSum, IndependentOfOrderAndSplit) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    std::vector<double> v = mixed_terms(seed, 5000);
    ExactSum a;
    for (double x : v) a.add(x);
    std::vector<double> r = v;
    std::shuffle(r.begin(), r.end(), make_rng(seed + 100));
    std::vector<ExactSum> parts(7);
    for (size_t i = 0; i < r.size(); ++i) parts[i % 7].add(r[i]);
    ExactSum b;
    for (int k : {3, 0, 6, 1, 5, 2, 4}) b.merge(parts[size_t(k)]);
    EXPECT_EQ(a.value(), b.value()) << "seed " << seed;
    EXPECT_EQ(a.digits(), b.digits());
    long double ref = 0;
    std::sort(v.begin(), v.end(), [](double x, double y) { return std::abs(x) < std::abs(y); });
    for (double x : v) ref += x;
    EXPECT_NEAR(a.value(), double(ref), 1e-12 * std::abs(double(ref)) + 1e-300);
  }
}

TEST(ExactSum, PackRoundTrip) {
  ExactSums s(3), t(3), u(3);
  const std::vector<double> v = mixed_terms(9, 300);
  for (size_t i = 0; i < v.size(); ++i) (i % 2 ? s : t)[i % 3].add(v[i]);
  u.merge(s);
  u.merge(t);
  ExactSums w(3);
  w.merge_packed(s.pack());
  w.merge_packed(t.pack());
  EXPECT_EQ(u.values(), w.values());
}

// The exact back-projector: the same bits for any thread split and insertion order, and the float
// accumulator's values within the quantum (bound / 2^61) plus float rounding.
TEST(BackProjectorExact, SameBitsForAnySplitAndCloseToFloat) {
  const int n = 24;
  Volume v(n, n, n);
  auto g = make_rng(5);
  for (float& x : v) x = float(normal01(g));
  Projector P(v, 2);
  std::vector<Mat3> rots;
  for (int i = 0; i < 120; ++i) rots.push_back(euler_to_matrix(360 * uniform01(g), 180 * uniform01(g), 360 * uniform01(g)));
  std::vector<Grid<cfloat>> imgs(rots.size());
  for (size_t i = 0; i < rots.size(); ++i) P.project(rots[i], imgs[i]);
  double dmax = 0;
  for (const auto& im : imgs)
    for (const cfloat& c : im) dmax = std::max(dmax, double(std::max(std::abs(c.real()), std::abs(c.imag()))));
  const double dbound = 4 * double(rots.size()) * dmax, wbound = 4 * double(rots.size());
  auto run = [&](int threads, uint64_t order_seed) {
    BackProjector bp(n, 2, -1, 3);
    bp.start_exact(dbound, wbound);
    std::vector<size_t> order(rots.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), make_rng(order_seed));
    std::vector<std::thread> th;
    for (int t = 0; t < threads; ++t)
      th.emplace_back([&, t] {
        for (size_t k = size_t(t); k < order.size(); k += size_t(threads))
          bp.insert(imgs[order[k]], Grid<float>(), rots[order[k]]);
      });
    for (auto& x : th) x.join();
    bp.finish_exact();
    return bp;
  };
  const BackProjector a = run(1, 1), b = run(3, 2), c = run(4, 3);
  ASSERT_EQ(a.data_values().size(), b.data_values().size());
  EXPECT_TRUE(std::equal(a.data_values().begin(), a.data_values().end(), b.data_values().begin()));
  EXPECT_TRUE(std::equal(a.weight_values().begin(), a.weight_values().end(), c.weight_values().begin()));
  EXPECT_TRUE(std::equal(a.data_values().begin(), a.data_values().end(), c.data_values().begin()));
  BackProjector f(n, 2, -1, 3);
  for (size_t i = 0; i < rots.size(); ++i) f.insert(imgs[i], Grid<float>(), rots[i]);
  double err = 0, mag = 0;
  for (size_t i = 0; i < f.data_values().size(); ++i) {
    err = std::max(err, double(std::abs(f.data_values()[i] - a.data_values()[i])));
    mag = std::max(mag, double(std::abs(f.data_values()[i])));
  }
  // Float accumulation of 120 terms: relative error ~1e-6 of the largest sum; the exact sums' own
  // error is 2^-61 of the bound, far below.
  EXPECT_LT(err, 2e-6 * mag);
  EXPECT_GT(mag, 0);
}

// insert_slices and shared insert_pixels (each call's contributions summed in a thread-private
// buffer of bricks, then added once per point) give the sums of the direct per-contribution path
// (unshared insert_pixels, one slice at a time): the same values up to the float rounding of the
// buffer, for orientations close together and far apart, in 3D and 2D, over several calls, and
// with a buffer of 40 bricks (emptied into the sums and refilled many times during a call).
TEST(BackProjectorExact, InsertSlicesMatchesSliceBySlice) {
  auto g = make_rng(21);
  for (const auto& [dim, n, J, bricks] : {std::tuple{3, 32, 60, 0}, std::tuple{2, 32, 60, 0},
                                          std::tuple{3, 32, 60, 40}, std::tuple{2, 32, 60, 40}}) {
    if (bricks > 0) BackProjector::set_insert_buffer_bricks(size_t(bricks));
    const int r = n / 2 - 2;
    std::vector<float> kx, ky;
    for (int y = -r; y <= r; ++y)
      for (int x = 0; x <= r; ++x)
        if ((x > 0 || y > 0) && x * x + y * y <= r * r) kx.push_back(float(x)), ky.push_back(float(y));
    const size_t m = kx.size();
    std::vector<float> data(size_t(J) * 2 * m), weight(size_t(J) * m);
    for (float& v : data) v = float(normal01(g));
    for (float& v : weight) v = float(uniform01(g));
    std::vector<Mat3> A(static_cast<size_t>(J));
    for (size_t j = 0; j < A.size(); ++j) {
      // Two clusters within 4 degrees of two orientations, and a few anywhere.
      const double spread = j % 13 == 0 ? 360.0 : 4.0;
      const double base = j % 2 ? 40.0 : 110.0;
      A[j] = dim == 3 ? euler_to_matrix(base + spread * (uniform01(g) - 0.5), 70 + spread * (uniform01(g) - 0.5),
                                        spread * (uniform01(g) - 0.5))
                      : euler_to_matrix(0, 0, 360 * uniform01(g));
    }
    BackProjector a(n, 2, r, dim), b(n, 2, r, dim), c(n, 2, r, dim);
    a.start_exact(1e4, 1e4, false);  // unshared: contribution by contribution, no buffer for single slices
    b.start_exact(1e4, 1e4);
    c.start_exact(1e4, 1e4);
    for (size_t j = 0; j < A.size(); ++j) a.insert_pixels(kx, ky, data.data() + j * 2 * m, weight.data() + j * m, A[j]);
    // In two calls (one thread's buffer reused: it must be left clean).
    const size_t J1 = 23;
    b.insert_slices(kx, ky, data.data(), weight.data(), std::span<const Mat3>(A.data(), J1));
    b.insert_slices(kx, ky, data.data() + J1 * 2 * m, weight.data() + J1 * m,
                    std::span<const Mat3>(A.data() + J1, A.size() - J1));
    // Shared insert_pixels: the buffer, one slice per call.
    for (size_t j = 0; j < A.size(); ++j) c.insert_pixels(kx, ky, data.data() + j * 2 * m, weight.data() + j * m, A[j]);
    a.finish_exact();
    b.finish_exact();
    c.finish_exact();
    double err_b = 0, err_c = 0, mag = 0;
    for (size_t i = 0; i < a.data_values().size(); ++i) {
      err_b = std::max({err_b, double(std::abs(a.data_values()[i] - b.data_values()[i])),
                        double(std::abs(a.weight_values()[i] - b.weight_values()[i]))});
      err_c = std::max({err_c, double(std::abs(a.data_values()[i] - c.data_values()[i])),
                        double(std::abs(a.weight_values()[i] - c.weight_values()[i]))});
      mag = std::max(mag, double(std::abs(a.data_values()[i])));
    }
    EXPECT_GT(mag, 1.0) << "dim " << dim;
    // Float sums in the buffer of up to J x 8 terms per point: about sqrt(J x 8) roundings of
    // 2^-24 of the sum each (1.3e-6 for 480 terms; the bound of the worst case, J x 8 x 2^-24, is
    // 3e-5); the quanta are 1e4 / 2^61, negligible.
    EXPECT_LT(err_b, 4e-6 * mag) << "dim " << dim << " n " << n;
    EXPECT_LT(err_c, 4e-6 * mag) << "dim " << dim << " n " << n;
  }
  BackProjector::set_insert_buffer_bricks(size_t(1) << 15);
}

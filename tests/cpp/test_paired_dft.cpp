// PairedInverseDft (micrograph/paired_dft.hpp): two inverse 2D DFTs at once for sizes with a large
// prime factor, against a direct double-precision DFT and against FFTW's complex-to-real transform.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <numbers>
#include <random>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/micrograph/paired_dft.hpp"

using namespace regula;

namespace {

Grid<float> random_image(int n, std::mt19937& rng) {
  std::normal_distribution<float> g;
  Grid<float> im(n, n);
  for (auto& v : im) v = g(rng);
  return im;
}

// Arbitrary (not Hermitian) half-plane values.
Grid<cfloat> random_half(int n, std::mt19937& rng) {
  std::normal_distribution<float> g;
  Grid<cfloat> F(n / 2 + 1, n);
  for (auto& v : F) v = cfloat(g(rng), g(rng));
  return F;
}

double rms(const Grid<float>& a) {
  double s = 0;
  for (float v : a) s += double(v) * v;
  return std::sqrt(s / double(a.size()));
}

double max_diff(const Grid<float>& a, const Grid<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

// The inverse of a half-plane transform of a real image written out in double precision: the full
// plane from the Hermitian mirrors, sum over all (kx, ky) of F exp(+2 pi i (kx x + ky y) / n) / n^2.
Grid<float> direct_inverse(const Grid<cfloat>& F, int n) {
  const int nh = n / 2 + 1;
  std::vector<std::complex<double>> full(size_t(n) * n);
  for (int ky = 0; ky < n; ++ky)
    for (int kx = 0; kx < n; ++kx) {
      const int my = (n - ky) % n;
      std::complex<double> v;
      if (kx == 0 || kx == n / 2)
        v = 0.5 * (std::complex<double>(F(kx, ky)) + std::conj(std::complex<double>(F(kx, my))));
      else if (kx < nh)
        v = std::complex<double>(F(kx, ky));
      else
        v = std::conj(std::complex<double>(F(n - kx, my)));
      full[size_t(ky) * n + kx] = v;
    }
  // Separable: along x, then along y.
  std::vector<std::complex<double>> w(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) w[size_t(k)] = std::polar(1.0, 2.0 * std::numbers::pi * k / n);
  std::vector<std::complex<double>> rowsum(size_t(n) * n);
  for (int ky = 0; ky < n; ++ky)
    for (int x = 0; x < n; ++x) {
      std::complex<double> s;
      for (int kx = 0; kx < n; ++kx) s += full[size_t(ky) * n + kx] * w[size_t((kx * x) % n)];
      rowsum[size_t(ky) * n + x] = s;
    }
  Grid<float> out(n, n);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      std::complex<double> s;
      for (int ky = 0; ky < n; ++ky) s += rowsum[size_t(ky) * n + x] * w[size_t((ky * y) % n)];
      out(x, y) = float(s.real() / (double(n) * n));
    }
  return out;
}

}  // namespace

TEST(PairedInverseDft, LargestPrimeFactorAndWhenPreferred) {
  EXPECT_EQ(PairedInverseDft::largest_prime_factor(820), 41);
  EXPECT_EQ(PairedInverseDft::largest_prime_factor(1024), 2);
  EXPECT_EQ(PairedInverseDft::largest_prime_factor(86), 43);
  EXPECT_EQ(PairedInverseDft::largest_prime_factor(37), 37);
  EXPECT_TRUE(PairedInverseDft::preferred(820));
  EXPECT_TRUE(PairedInverseDft::preferred(68));   // 4 x 17
  EXPECT_FALSE(PairedInverseDft::preferred(840));  // factors up to 7: FFTW's codelets
  EXPECT_FALSE(PairedInverseDft::preferred(52));   // 4 x 13
  EXPECT_FALSE(PairedInverseDft::preferred(41));   // odd
}

// Against the direct DFT in double precision, on real images' transforms and on arbitrary
// half-planes (whose self-mirrored columns count through their Hermitian halves), for sizes whose
// cofactor m is 2, 4, 6 and 20.
TEST(PairedInverseDft, EqualsTheDirectTransform) {
  for (int n : {34, 68, 86, 114, 82}) {
    for (int seed : {1, 2}) {
      std::mt19937 rng(uint32_t(seed * 1000 + n));
      const Grid<float> ia = random_image(n, rng), ib = random_image(n, rng);
      const Grid<cfloat> A = seed == 1 ? fft_forward(ia) : random_half(n, rng);
      const Grid<cfloat> B = seed == 1 ? fft_forward(ib) : random_half(n, rng);
      PairedInverseDft dft(n);
      Grid<float> a, b;
      dft.inverse(A, B, a, b);
      const Grid<float> ra = direct_inverse(A, n), rb = direct_inverse(B, n);
      // Single-precision sums of n^2 terms of unit size: relative errors of a few 1e-7 times log n.
      EXPECT_LT(max_diff(a, ra), 2e-5 * rms(ra)) << "n " << n << " seed " << seed;
      EXPECT_LT(max_diff(b, rb), 2e-5 * rms(rb)) << "n " << n << " seed " << seed;
      if (seed == 1) {
        EXPECT_LT(max_diff(a, ia), 2e-5 * rms(ia)) << "n " << n;
      }
    }
  }
}

// At the picker's size for a 4096 px micrograph at 2 Å/px and 20 Å (820 = 20 x 41), against FFTW's
// complex-to-real transform (fft_inverse), repeated calls on one object giving the same numbers.
TEST(PairedInverseDft, EqualsFftwAtThePickersSize) {
  const int n = 820;
  std::mt19937 rng(7);
  const Grid<cfloat> A = random_half(n, rng), B = random_half(n, rng);
  const Grid<float> ra = fft_inverse(A, n), rb = fft_inverse(B, n);
  PairedInverseDft dft(n);
  Grid<float> a, b, a2, b2;
  dft.inverse(A, B, a, b);
  EXPECT_LT(max_diff(a, ra), 1e-5 * rms(ra));
  EXPECT_LT(max_diff(b, rb), 1e-5 * rms(rb));
  dft.inverse(A, B, a2, b2);
  EXPECT_EQ(max_diff(a, a2), 0.0);
  EXPECT_EQ(max_diff(b, b2), 0.0);
  // The two outputs do not leak into each other: B = 0 gives b = 0 and the same a.
  Grid<cfloat> Z(n / 2 + 1, n);
  dft.inverse(A, Z, a2, b2);
  EXPECT_LT(max_diff(a, a2), 1e-5 * rms(ra));
  EXPECT_LT(rms(b2), 1e-6 * rms(rb));
}

// M-step of 2D classification (mstep/class_average.hpp): the class average recovered from rotated
// noiseless copies, the 2D insert_pixels path against insert(), the rotational correlation, and
// the centre of mass. The first noise estimate (mstep/first_noise.hpp) against white noise of known
// variance under a strong common signal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numbers>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/core/random.hpp"
#include "regula/core/parallel.hpp"
#include "regula/mstep/class_average.hpp"
#include "regula/mstep/first_noise.hpp"
#include "regula/mstep/model_update.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/healpix.hpp"

using namespace regula;
using namespace regula::mstep;

namespace {

constexpr int kN = 48;

// An asymmetric "L" of two Gaussian-edged bars, off centre.
Image l_shape(double dx = 0, double dy = 0) {
  Image img(kN, kN);
  for (int y = 0; y < kN; ++y)
    for (int x = 0; x < kN; ++x) {
      const double u = x - kN / 2 - dx, v = y - kN / 2 - dy;
      auto bar = [](double a, double lo, double hi) {
        return 1 / (1 + std::exp(-2 * (a - lo))) / (1 + std::exp(2 * (a - hi)));
      };
      img(x, y) = float(bar(u, -8, -3) * bar(v, -10, 10) + bar(u, -3, 8) * bar(v, 5, 10));
    }
  return img;
}

// Pixels of the rotated copy of `img` at psi, as the E-step sees a reference.
std::vector<std::complex<double>> rotated_row(const Projector2D& proj, const FourierPixels& px, double psi) {
  Grid<cfloat> out;
  proj.project_psi(psi, out);
  std::vector<std::complex<double>> row(px.size());
  for (size_t q = 0; q < px.size(); ++q) row[q] = out[px.index[q]];
  return row;
}

// The sum rows of noiseless unit-weight particles of `img` at every angle of `psi`: a particle at
// angle a is the reference rotated (project_psi), its sum row that image (data and weight rows of
// px.size() values, angle by angle).
void rotated_copies(const Image& img, const FourierPixels& px, const std::vector<double>& psi,
                    std::vector<std::complex<double>>& data, std::vector<double>& weight) {
  const Projector2D proj(img, 2, px.r_max + 1);
  for (double a : psi) {
    const auto row = rotated_row(proj, px, a);
    data.insert(data.end(), row.begin(), row.end());
    weight.insert(weight.end(), px.size(), 1.0);
  }
}

double correlation_to_shell(const Image& a, const Image& b, int r) {
  const std::vector<double> one = {0.0};
  return rotational_correlation(a, b, one, r);
}

}  // namespace

TEST(ClassAverage, RotatedNoiselessCopiesGiveTheImageBack) {
  // Sums of unit-weight copies of the L rotated by every psi of a 6-degree grid: the class average
  // (no prior) is the L up to the band limit; its correlation with the L over shells 1..r is
  // limited by the linear interpolation of the rotations (measured 0.999).
  const Image L = l_shape(1.5, -2);
  const int r = 16;
  const FourierPixels px = select_fourier_pixels(kN, r);
  const std::vector<double> psi = psi_angles(6);
  std::vector<std::complex<double>> data;
  std::vector<double> weight;
  rotated_copies(L, px, psi, data, weight);
  ClassAverageOptions co;
  co.r_max = r;
  const ClassAverage avg = reconstruct_class_2d(px, psi, data, weight, co);
  EXPECT_GT(correlation_to_shell(avg.image, L, r), 0.995);

  // The same through an accumulator filled row by row.
  BackProjector acc = class_accumulator(kN, r);
  for (size_t p = 0; p < psi.size(); ++p)
    insert_class_sums(acc, px, psi[p], data.data() + p * px.size(), weight.data() + p * px.size());
  const ClassAverage avg2 = reconstruct_class_2d(acc, co);
  EXPECT_EQ(avg.image.vec(), avg2.image.vec());
  // Geometry mismatch is a programming error with a message.
  co.r_max = r + 3;
  EXPECT_THROW(reconstruct_class_2d(acc, co), Error);
}

TEST(ClassAverage, ShellsWithoutPriorAreMadeFromTheDataAlone) {
  // Rotated noiseless copies as above, with a prior only up to shell 8 (tau2 0 beyond: a reference
  // whose band stopped there). zero_tau2_unregularised: shells 9..r are the plain reconstruction's
  // (the prior, 1e6 times the data's power, changes the shells below by ~1e-6) and their SSNR is
  // kNoPriorSsnr; without it they are cut (what is left is the gridding correction's spread).
  const Image L = l_shape(1.5, -2);
  const int r = 16, band = 8;
  const FourierPixels px = select_fourier_pixels(kN, r);
  const std::vector<double> psi = psi_angles(6);
  std::vector<std::complex<double>> data;
  std::vector<double> weight;
  rotated_copies(L, px, psi, data, weight);
  ClassAverageOptions plain;
  plain.r_max = r;
  const std::vector<double> p0 = shell_power(reconstruct_class_2d(px, psi, data, weight, plain).image);
  ClassAverageOptions co = plain;
  co.tau2.assign(kN / 2 + 1, 0.0);
  for (int s = 0; s <= band; ++s) co.tau2[size_t(s)] = 1e6 * (p0[size_t(s)] + 1);
  co.zero_tau2_unregularised = true;
  const ClassAverage with = reconstruct_class_2d(px, psi, data, weight, co);
  const std::vector<double> p1 = shell_power(with.image);
  for (int s = 1; s <= r; ++s) {
    EXPECT_NEAR(p1[size_t(s)], p0[size_t(s)], 1e-3 * p0[size_t(s)] + 1e-9) << "shell " << s;
    if (s > band) EXPECT_EQ(with.ssnr[size_t(s)], kNoPriorSsnr) << "shell " << s;
    else EXPECT_NEAR(with.ssnr[size_t(s)] / co.tau2[size_t(s)], with.ssnr[1] / co.tau2[1], 0.5 * with.ssnr[1] / co.tau2[1])
        << "shell " << s;  // the data-to-prior ratio, proportional to tau2 (weights vary by shell)
  }
  co.zero_tau2_unregularised = false;
  const ClassAverage cut = reconstruct_class_2d(px, psi, data, weight, co);
  const std::vector<double> p2 = shell_power(cut.image);
  for (int s = band + 2; s <= r; ++s) {
    EXPECT_LT(p2[size_t(s)], 0.05 * p0[size_t(s)]) << "shell " << s;
    EXPECT_EQ(cut.ssnr[size_t(s)], 0.0) << "shell " << s;
  }
}

TEST(MapPriorTau2, HalfThePowerOfTheGriddingCorrectedMap) {
  // A point at distance d from the centre: after division by the gridding correction sinc^2(pi d / N)
  // (N = padding * n) its transform has modulus 1 / sinc^2 at every frequency, so tau2 is
  // 0.5 / sinc^4 in every shell; at the centre 0.5. In 2D and in 3D.
  for (int pad : {1, 2}) {
    for (int dim : {2, 3}) {
      const int n = 24, c = n / 2;
      Grid<float> g(n, n, dim == 3 ? n : 1);
      const int dx = 5, dy = -3, dz = dim == 3 ? 2 : 0;
      g(c + dx, c + dy, dim == 3 ? c + dz : 0) = 1.0f;
      const double s2 = gridding_sinc2(std::sqrt(double(dx * dx + dy * dy + dz * dz)), pad * n);
      const std::vector<double> t = map_prior_tau2(g, pad);
      ASSERT_EQ(t.size(), size_t(n / 2 + 1));
      for (size_t s = 0; s < t.size(); ++s) EXPECT_NEAR(t[s], 0.5 / (s2 * s2), 1e-5) << "pad " << pad << " dim " << dim;
      Grid<float> centre(n, n, dim == 3 ? n : 1);
      centre(c, c, dim == 3 ? c : 0) = 2.0f;
      for (double v : map_prior_tau2(centre, pad)) EXPECT_NEAR(v, 0.5 * 4.0, 1e-5);
    }
  }
}

TEST(ClassAverage, InsertPixelsIn2DSpreadsAsInsert) {
  // The 2D accumulator filled from a pixel list equals the one filled from the same image.
  const Image L = l_shape();
  Grid<cfloat> F = fourier_centred(L);
  const int r = 20;
  const FourierPixels px = select_fourier_pixels(kN, r);
  std::vector<float> kx, ky, d, w;
  Grid<cfloat> img(kN / 2 + 1, kN);
  Grid<float> wimg(kN / 2 + 1, kN);
  img.fill(cfloat(0, 0));
  wimg.fill(0.0f);
  for (size_t q = 0; q < px.size(); ++q) {
    kx.push_back(float(px.kx[q]));
    ky.push_back(float(px.ky[q]));
    d.push_back(F[px.index[q]].real());
    d.push_back(F[px.index[q]].imag());
    w.push_back(0.5f + float(q % 7));
    img[px.index[q]] = F[px.index[q]];
    wimg[px.index[q]] = w.back();
  }
  const Mat3 A = euler_to_matrix(0, 0, 37.0);
  BackProjector a(kN, 2, r, 2), b(kN, 2, r, 2);
  a.insert(img, wimg, A);
  b.insert_pixels(kx, ky, d.data(), w.data(), A);
  EXPECT_TRUE(std::equal(a.weight_values().begin(), a.weight_values().end(), b.weight_values().begin()));
  EXPECT_TRUE(std::equal(a.data_values().begin(), a.data_values().end(), b.data_values().begin()));
  // add with a factor: a - b is zero.
  a.add(b, -1.0f);
  for (float v : a.weight_values()) EXPECT_EQ(v, 0.0f);
}

TEST(ClassAverage, RotationalCorrelationFindsTheAngle) {
  const Image L = l_shape();
  const int r = 15;
  const Projector2D proj(L, 2, r + 1);
  // b = L rotated by 42 degrees (as project_psi sees it).
  Grid<cfloat> out;
  proj.project_psi(42.0, out);
  const Image b = from_fourier_centred(out, kN);
  const std::vector<double> with = {0, 12, 42, 84}, without = {0, 12, 84, 200};
  EXPECT_NEAR(rotational_correlation(L, b, with, r), 1.0, 1e-5);
  EXPECT_LT(rotational_correlation(L, b, without, r), 0.95);
  // A different shape correlates less, whatever the angle.
  Image blob(kN, kN);
  for (int y = 0; y < kN; ++y)
    for (int x = 0; x < kN; ++x) blob(x, y) = float(std::exp(-((x - 24.0) * (x - 24.0) + (y - 30.0) * (y - 30.0)) / 8));
  EXPECT_LT(rotational_correlation(L, blob, psi_angles(6), r), 0.9);
}

TEST(ClassAverage, CentreOfMassOfPositiveValues) {
  const Image L = l_shape();
  auto c0 = positive_centre_of_mass(L, 22);
  Image moved = L;
  shift_image(moved, 3, -2);
  auto c1 = positive_centre_of_mass(moved, 22);
  EXPECT_NEAR(c1[0] - c0[0], 3, 0.05);
  EXPECT_NEAR(c1[1] - c0[1], -2, 0.05);
}

// Images = a common L (strong, low resolution) + white Gaussian noise of variance v per pixel, in
// two groups of different v. The unnormalised FFT's noise has E|N(k)|^2 = n^2 v, so the noise
// spectrum per complex component is n^2 v / 2 in every shell, whatever the signal. Each shell's
// estimate averages M images x (>= 8 pixels x 2 components): relative standard deviation
// <= 1/sqrt(2 M 8) = 2.5% for M = 100, so 12% is about 5 sigma; the bias (1 - 1/M) is 1%.
// Without the subtraction of the average image's power the L's power (here over 100 times the
// noise's at shell 1) would be counted as noise. Threads add images in any order: same bits.
TEST(FirstNoiseEstimate, WhiteNoiseUnderACommonSignal) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    const size_t M = 100;
    const double v[2] = {1.0, 4.0};
    std::vector<Image> imgs(2 * M);
    for (size_t i = 0; i < imgs.size(); ++i) {
      auto g = make_rng(seed, i);
      imgs[i] = l_shape();
      for (float& x : imgs[i]) x = float(30.0 * x + std::sqrt(v[i % 2]) * normal01(g));
    }
    std::vector<std::vector<double>> first;
    for (int threads : {1, 2, 3}) {
      FirstNoiseEstimate est(kN, 2);
      ThreadPool pool(threads);
      pool.parallel_for(0, imgs.size(), [&](size_t i, int) { est.add(i % 2, imgs[i]); });
      EXPECT_EQ(est.count(0), M);
      const auto s2 = est.sigma2();
      if (first.empty()) {
        first = s2;
        for (size_t g = 0; g < 2; ++g) {
          const double expect = double(kN) * kN * v[g] / 2;
          EXPECT_EQ(s2[g][0], 0.0);
          for (size_t s = 1; s < s2[g].size(); ++s)
            EXPECT_NEAR(s2[g][s] / expect, 1.0, 0.12) << "seed " << seed << " group " << g << " shell " << s;
        }
        // The signal is strong: its power at shell 1 is far above the noise's.
        Image l = l_shape();
        for (float& x : l) x *= 30.0f;
        EXPECT_GT(shell_power(l)[1], 100 * double(kN) * kN * v[1]);
        // Without the subtraction (class2d's choice) the L's power counts as noise.
        for (size_t g = 0; g < 2; ++g) EXPECT_GT(est.sigma2(1.0, false)[g][1], 50 * double(kN) * kN * v[g] / 2);
      } else {
        EXPECT_EQ(s2, first) << threads << " threads";
      }
    }
  }
}

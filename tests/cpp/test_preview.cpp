// micrograph_preview (micrograph/preview.hpp): the web page's micrograph view.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "regula/core/error.hpp"
#include "regula/micrograph/preview.hpp"

using namespace regula;

// Binning: ceil(n / bin) pixels a side, each the mean of its block (the last ones partial), rows in the
// micrograph's order, and without clipping or filtering the grey levels a linear map of the means.
TEST(Preview, BinsByBlockMeansWithPartialEdges) {
  Grid<float> mic(10, 7);
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 10; ++x) mic(x, y) = float(x + 100 * y);
  PreviewOptions o;
  o.max_size = 4;
  o.lowpass = 0;
  o.clip = 0;
  o.sigma = 0;
  const Preview p = micrograph_preview(mic, o);
  ASSERT_EQ(p.bin, 3);
  ASSERT_EQ(p.width, 4);
  ASSERT_EQ(p.height, 3);
  auto mean = [&](int i, int j) {
    double s = 0;
    int n = 0;
    for (int y = 3 * j; y < std::min(7, 3 * j + 3); ++y)
      for (int x = 3 * i; x < std::min(10, 3 * i + 3); ++x) s += mic(x, y), ++n;
    return s / n;
  };
  EXPECT_DOUBLE_EQ(p.black, mean(0, 0));   // x 0..2, y 0..2: 101
  EXPECT_DOUBLE_EQ(p.white, mean(3, 2));   // x 9, y 6: 609 (a 1 x 1 block)
  for (int j = 0; j < 3; ++j)
    for (int i = 0; i < 4; ++i) {
      const double g = (mean(i, j) - p.black) / (p.white - p.black) * 255;
      EXPECT_NEAR(p.grey[size_t(j * 4 + i)], g, 0.5 + 1e-9) << i << "," << j;
    }
  EXPECT_LT(p.grey[0], p.grey[size_t(2 * 4)]);  // row 0 is y = 0: darker than the last row
}

TEST(Preview, SmallMicrographIsNotBinned) {
  Grid<float> mic(30, 20, 1, 1.0f);
  mic(3, 4) = 2;
  const Preview p = micrograph_preview(mic, PreviewOptions{});
  EXPECT_EQ(p.bin, 1);
  EXPECT_EQ(p.width, 30);
  EXPECT_EQ(p.height, 20);
  EXPECT_EQ(p.grey.size(), 600u);
}

// The quantiles, not the extremes, set the grey range: a few hot pixels do not grey out the rest.
TEST(Preview, ClipsAtQuantiles) {
  std::mt19937 rng(3);
  std::normal_distribution<float> noise(0, 1);
  Grid<float> mic(200, 200);
  for (float& v : mic) v = noise(rng);
  for (int k = 0; k < 20; ++k) mic(k * 7, k * 9) = 1000;
  PreviewOptions o;
  o.lowpass = 0;
  const Preview p = micrograph_preview(mic, o);
  EXPECT_NEAR(p.black, -2.33, 0.15);  // the 1% and 99% points of N(0, 1)
  EXPECT_NEAR(p.white, 2.33, 0.15);
  const long mid = std::count_if(p.grey.begin(), p.grey.end(), [](uint8_t g) { return g > 64 && g < 192; });
  EXPECT_GT(mid, long(0.5 * 200 * 200));
}

// Ice or carbon over more than `clip` of the micrograph: the robust limits (median -/+ 3 (q75 - q25) / 1.349)
// keep the grey range for the rest.
TEST(Preview, JunkDoesNotTakeTheGreyRange) {
  std::mt19937 rng(4);
  std::normal_distribution<float> noise(0, 1);
  Grid<float> mic(200, 200);
  for (int y = 0; y < 200; ++y)
    for (int x = 0; x < 200; ++x) mic(x, y) = x < 30 ? -20.0f : noise(rng);  // 15% "ice"
  PreviewOptions o;
  o.lowpass = 0;
  const Preview p = micrograph_preview(mic, o);
  EXPECT_GT(p.black, -5);
  EXPECT_LT(p.white, 5);
  EXPECT_EQ(p.grey[0], 0);
  o.sigma = 0;
  EXPECT_DOUBLE_EQ(micrograph_preview(mic, o).black, -20);  // the quantiles alone
}

// The low-pass removes most of white noise (20 Å at 2 Å/px: sigma 1.87 px, variance
// down by 1 / (4 pi sigma^2) = 1/44 over the plane).
TEST(Preview, LowPassSmoothsNoise) {
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0, 1);
  Grid<float> mic(256, 256);
  for (float& v : mic) v = noise(rng);
  PreviewOptions o;
  o.angpix = 2;
  o.lowpass = 0;
  const Preview raw = micrograph_preview(mic, o);
  o.lowpass = 20;
  const Preview smooth = micrograph_preview(mic, o);
  const double ratio = (smooth.white - smooth.black) / (raw.white - raw.black);
  EXPECT_NEAR(ratio, std::sqrt(1 / (4 * M_PI * 1.87 * 1.87)), 0.05);
  o.angpix = 0;  // unknown pixel size: binning only
  EXPECT_DOUBLE_EQ(micrograph_preview(mic, o).white, raw.white);
}

TEST(Preview, RefusesBadOptions) {
  Grid<float> mic(8, 8);
  PreviewOptions o;
  o.max_size = 0;
  EXPECT_THROW(micrograph_preview(mic, o), InputError);
  o = PreviewOptions{};
  o.clip = 0.5;
  EXPECT_THROW(micrograph_preview(mic, o), InputError);
  EXPECT_THROW(micrograph_preview(Grid<float>(4, 4, 2), PreviewOptions{}), InputError);
}

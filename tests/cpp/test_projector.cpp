// Projector: Fourier-slice theorem, adjointness with the back-projector,
// Parseval, shifts, and agreement with relion_project output (tests/data/proj).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>
#include <tuple>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {

struct Blob {
  double x, y, z, sigma, amp;
};

// Sum of Gaussian blobs at offsets (px) from the centre n/2.
Volume blob_volume(int n, const std::vector<Blob>& blobs) {
  Volume v(n, n, n);
  const int c = n / 2;
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        double s = 0;
        for (const Blob& b : blobs) {
          double d2 = (x - c - b.x) * (x - c - b.x) + (y - c - b.y) * (y - c - b.y) + (z - c - b.z) * (z - c - b.z);
          s += b.amp * std::exp(-d2 / (2 * b.sigma * b.sigma));
        }
        v(x, y, z) = float(s);
      }
  return v;
}

Mat3 random_rotation(std::mt19937_64& g) {
  double q[4], nrm = 0;
  for (double& v : q) {
    v = normal01(g);
    nrm += v * v;
  }
  nrm = std::sqrt(nrm);
  for (double& v : q) v /= nrm;
  const double w = q[0], x = q[1], y = q[2], z = q[3];
  return Mat3{{{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
               {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
               {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}}};
}

// Intensity-weighted centroid of an image relative to the centre n/2, over the
// pixels within 4 px of the maximum (so that interpolation ripples far from the
// blob do not bias it).
std::pair<double, double> centroid(const Image& img) {
  int bx = 0, by = 0;
  for (int y = 0; y < img.ny(); ++y)
    for (int x = 0; x < img.nx(); ++x)
      if (img(x, y) > img(bx, by)) {
        bx = x;
        by = y;
      }
  double sx = 0, sy = 0, s = 0;
  for (int y = 0; y < img.ny(); ++y)
    for (int x = 0; x < img.nx(); ++x) {
      if ((x - bx) * (x - bx) + (y - by) * (y - by) > 16) continue;
      double v = std::max(0.0f, img(x, y));
      sx += v * (x - img.nx() / 2);
      sy += v * (y - img.ny() / 2);
      s += v;
    }
  return {sx / s, sy / s};
}

// Minimal float32 MRC reader (1024-byte header + NSYMBT), enough for the
// stored relion_project files; independent of io/mrc.
Grid<float> read_mrc_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  char h[1024];
  f.read(h, 1024);
  int32_t nx, ny, nz, mode, nsymbt;
  std::memcpy(&nx, h, 4);
  std::memcpy(&ny, h + 4, 4);
  std::memcpy(&nz, h + 8, 4);
  std::memcpy(&mode, h + 12, 4);
  std::memcpy(&nsymbt, h + 92, 4);
  EXPECT_EQ(mode, 2);
  f.seekg(1024 + nsymbt);
  Grid<float> g(nx, ny, nz);
  f.read(reinterpret_cast<char*>(g.data()), std::streamsize(g.size() * 4));
  EXPECT_TRUE(f.good()) << path;
  return g;
}

// Rows of a simple STAR loop: numeric columns rot, tilt, psi, then two offsets.
std::vector<std::vector<double>> read_star_rows(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::vector<std::vector<double>> rows;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::vector<double> v;
    double d;
    while (v.size() < 5 && is >> d) v.push_back(d);
    if (v.size() == 5) rows.push_back(v);
  }
  return rows;
}

double correlation(const float* a, const float* b, size_t n) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= double(n);
  mb /= double(n);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

}  // namespace

// Fourier-slice theorem with A = identity: the projection is the sum over z.
// No interpolation happens (lattice points), but the map was divided by
// sinc^2(pi r / 2n); the blobs lie within r <= 4 px where 1/sinc^2 - 1 <= 1.3%
// (n = 32, padded 64), so 2% of the peak bounds the difference.
TEST(Projector, IdentityProjectionIsSumOverZ) {
  const int n = 32;
  Volume v = blob_volume(n, {{2, -1, 3, 1.5, 1.0}, {-3, 2, -1, 2.0, 0.7}, {0, 0, 0, 1.2, 0.5}});
  Projector P(v, 2);
  Image img = P.project_real(identity3());
  double peak = 0, maxdiff = 0;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      double s = 0;
      for (int z = 0; z < n; ++z) s += v(x, y, z);
      peak = std::max(peak, s);
      maxdiff = std::max(maxdiff, std::abs(s - img(x, y)));
    }
  EXPECT_LT(maxdiff, 0.02 * peak);
}

// A blob at p (offset from the centre) projects to (A p)_xy for random A (odd
// and even n). Tolerance 0.1 px: the windowed centroid alone is off by up to
// 0.06 px for a blob between pixels (ShiftPhaseMovesContent, no interpolation),
// the rest is the error of linear interpolation at padding 2; a convention
// error (transpose, sign, origin) moves the blob by pixels.
TEST(Projector, BlobLandsAtRotatedPosition) {
  auto g = make_rng(7);
  for (int n : {32, 33}) {
    const Vec3 p{5, -3, 4};
    Volume v = blob_volume(n, {{p[0], p[1], p[2], 1.5, 1.0}});
    Projector P(v, 2);
    for (int t = 0; t < 20; ++t) {
      Mat3 A = random_rotation(g);
      Vec3 q = matvec(A, p);
      auto [cx, cy] = centroid(P.project_real(A));
      EXPECT_NEAR(cx, q[0], 0.1) << "n=" << n;
      EXPECT_NEAR(cy, q[1], 0.1) << "n=" << n;
    }
  }
}

// Euler angles: rot = 90 is R_z(90) (passive), mapping (6, 0, 0) to (0, -6, 0):
// the projection from euler_to_matrix angles puts the blob there.
TEST(Projector, EulerConventionPositions) {
  const int n = 32;
  const Vec3 p{6, 0, 0};
  Volume v = blob_volume(n, {{p[0], p[1], p[2], 1.5, 1.0}});
  Projector P(v, 2);
  // rot = 90: A = R_z(90) passive maps (6,0,0) to (0,-6,0).
  auto [cx, cy] = centroid(P.project_real(euler_to_matrix(90, 0, 0)));
  EXPECT_NEAR(cx, 0.0, 0.1);
  EXPECT_NEAR(cy, -6.0, 0.1);
}

// Adjointness <P x, y> = <x, P^T y> (real inner product over the stored lattice
// and the non-redundant image coefficients) for random lattice x, image y, A.
TEST(Projector, AdjointOfBackProjector) {
  auto g = make_rng(11);
  for (int dim : {3, 2}) {
    const int n = 16, pad = 2;
    BackProjector bp(n, pad, -1, dim);
    FourierLattice lat;  // the back-projector's radius
    lat.init(dim, bp.ball().R);
    for (auto& c : lat.data) c = cfloat(float(normal01(g)), float(normal01(g)));
    Projector P(n, pad, -1, lat);
    for (int t = 0; t < 4; ++t) {
      Mat3 A = random_rotation(g);
      if (dim == 2) A = euler_to_matrix(0, 0, 360 * uniform01(g));
      Grid<cfloat> y(n / 2 + 1, n);
      for (int iy = 0; iy < n; ++iy)
        for (int x = 0; x <= n / 2; ++x)
          if (x > 0 || fft_freq(iy, n) >= 0) y(x, iy) = cfloat(float(normal01(g)), float(normal01(g)));
      Grid<cfloat> Px = P.project(A);
      double lhs = 0;
      for (size_t i = 0; i < y.size(); ++i) lhs += (std::conj(cdouble(Px[i])) * cdouble(y[i])).real();
      BackProjector b2(n, pad, -1, dim);
      b2.insert(y, Grid<float>(), A);
      double rhs = 0;
      b2.ball().for_each([&](size_t i, int x, int yy, int z) {
        rhs += (std::conj(cdouble(lat.data[lat.index(x, yy, z)])) * cdouble(b2.data_values()[i])).real();
      });
      EXPECT_NEAR(lhs, rhs, 1e-4 * (std::abs(lhs) + 1)) << "dim " << dim;
    }
  }
}

// Parseval for the FFT: sum |f|^2 = (1/N) sum over the full transform |F|^2,
// where interior half-complex columns stand for two coefficients.
TEST(Projector, ParsevalForFFT) {
  auto g = make_rng(3);
  for (int n : {16, 17}) {
    Volume v(n, n, n);
    double e = 0;
    for (auto& x : v) {
      x = float(normal01(g));
      e += double(x) * x;
    }
    Grid<cfloat> F = fourier_centred(v);
    double ef = 0;
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x <= n / 2; ++x) {
          const double m = (x == 0 || (n % 2 == 0 && x == n / 2)) ? 1 : 2;
          ef += m * std::norm(cdouble(F(x, y, z)));
        }
    EXPECT_NEAR(ef / (double(n) * n * n), e, 1e-4 * e);
  }
}

// shift_phase moves real-space content by (+dx, +dy) pixels (exact up to the
// windowed-centroid bias of a blob between pixels, < 0.08 px).
TEST(Projector, ShiftPhaseMovesContent) {
  const int n = 33;
  Volume v = blob_volume(n, {{0, 0, 0, 1.5, 1.0}});
  Projector P(v, 2);
  auto [cx, cy] = centroid(P.project_real(identity3(), 3.0, -2.5));
  EXPECT_NEAR(cx, 3.0, 0.08);
  EXPECT_NEAR(cy, -2.5, 0.08);
}

// 2D reference rotation: a blob at p lands at A2 p (A2 the in-plane block of euler(0,0,psi)).
TEST(Projector, Projector2DRotatesReference) {
  const int n = 32;
  Image img(n, n);
  const double px = 7, py = 2;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      double d2 = (x - n / 2 - px) * (x - n / 2 - px) + (y - n / 2 - py) * (y - n / 2 - py);
      img(x, y) = float(std::exp(-d2 / (2 * 1.5 * 1.5)));
    }
  Projector2D P(img, 2);
  for (double psi : {0.0, 30.0, 90.0, 200.0}) {
    Grid<cfloat> F;
    P.project_psi(psi, F);
    Image r = from_fourier_centred(F, n);
    Mat3 A = euler_to_matrix(0, 0, psi);
    auto [cx, cy] = centroid(r);
    EXPECT_NEAR(cx, A[0][0] * px + A[0][1] * py, 0.1) << psi;
    EXPECT_NEAR(cy, A[1][0] * px + A[1][1] * py, 0.1) << psi;
  }
}

// Fourier-cropped projection: n_out < n gives the same low frequencies.
TEST(Projector, CroppedProjectionMatchesLowFrequencies) {
  const int n = 32;
  Volume v = blob_volume(n, {{2, -1, 3, 2.0, 1.0}});
  Projector P(v, 2);
  auto g = make_rng(5);
  Mat3 A = random_rotation(g);
  Grid<cfloat> full = P.project(A), small = P.project(A, 16);
  for (int iy = 0; iy < 16; ++iy) {
    int y = fft_freq(iy, 16);
    for (int x = 0; x <= 8; ++x) {
      if (x * x + y * y > 64) continue;
      EXPECT_LT(std::abs(small(x, iy) - full(x, fft_index(y, n))), 1e-6 + 1e-5 * std::abs(full(x, fft_index(y, n))));
    }
  }
}

// relion_project ground truth. Conventions pinned here (found by these files):
//  * Euler angles as sampling/euler.hpp, map origin at n/2, scale = line integral in pixels;
//  * RELION 3.1 origin offsets: the image content is the projection moved by
//    (-OriginX, -OriginY) pixels (the particle centre is at box centre - origin);
//  * odd boxes: relion_project writes 2D images whose origin is at n/2 + 1 (its
//    2D CenterFFT for odd sizes), while the map origin is at n/2 (it pads to an
//    even box), so its odd-box images are ours moved by (+1, +1) pixel.
// Each image: correlation >= 0.99 and the same scale within 2%.
void compare_with_relion(const std::string& map_file, const std::string& stem, bool odd_quirk) {
  const std::string dir = std::string(REGULA_TEST_DATA) + "/proj/";
  Volume map = read_mrc_f32(dir + map_file);
  Projector P(map, 2);
  Grid<float> ref = read_mrc_f32(dir + stem + ".mrcs");
  auto rows = read_star_rows(dir + stem + ".star");
  ASSERT_EQ(int(rows.size()), ref.nz()) << stem;
  const double q = odd_quirk ? 1.0 : 0.0;
  for (int i = 0; i < ref.nz(); ++i) {
    const auto& r = rows[size_t(i)];
    Image img = P.project_real(euler_to_matrix(r[0], r[1], r[2]), -r[3] + q, -r[4] + q);
    const float* b = ref.section(i);
    EXPECT_GE(correlation(img.data(), b, img.size()), 0.99) << stem << " image " << i;
    double na = 0, nb = 0;
    for (size_t k = 0; k < img.size(); ++k) {
      na += double(img[k]) * img[k];
      nb += double(b[k]) * b[k];
    }
    EXPECT_NEAR(std::sqrt(na / nb), 1.0, 0.02) << stem << " image " << i;
  }
}

TEST(Projector, MatchesRelionProjectEvenBox) {
  compare_with_relion("clean70S_crop48.mrc", "rln_proj_48", false);
}

TEST(Projector, MatchesRelionProjectOddBox) {
  compare_with_relion("clean70SRibosome_vol_65p.mrc", "rln_proj_65", true);
  compare_with_relion("clean70SRibosome_vol_65p.mrc", "rln_proj_65_shifted", true);
}

TEST(FourierLattice, GradientIsTheInterpolantsDerivative) {
  // interpolate_gradient returns interpolate's value and, inside a cell, its derivative (central
  // differences of the trilinear interpolant are exact there up to float rounding), also on the
  // Hermitian-mirrored side (px < 0).
  FourierLattice lat;
  lat.init(3, 8);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& v : lat.data) v = cfloat(nd(rng), nd(rng));
  for (const auto& p : std::vector<std::array<double, 3>>{{2.3, -1.6, 0.4}, {-3.2, 2.7, -1.3}, {0.6, 0.2, 3.45}}) {
    cfloat g[3];
    const cfloat v = lat.interpolate_gradient(p[0], p[1], p[2], g);
    EXPECT_NEAR(std::abs(v - lat.interpolate(p[0], p[1], p[2])), 0.0, 1e-5);
    const double h = 0.01;
    for (int j = 0; j < 3; ++j) {
      std::array<double, 3> a = p, b = p;
      a[size_t(j)] += h;
      b[size_t(j)] -= h;
      const cfloat fd = (lat.interpolate(a[0], a[1], a[2]) - lat.interpolate(b[0], b[1], b[2])) / float(2 * h);
      EXPECT_NEAR(std::abs(fd - g[j]), 0.0, 2e-3) << j;
    }
  }
}

// FourierResampler through a general matrix M (anisotropic magnification): the DFT at M k, written
// out in double at every pixel (independent, O(n^2) per pixel), to 1e-6 of the largest coefficient
// (measured 1.1e-7: the kernel's error is below the float sums'); zero where round(|M k|) > n/2; M = s I gives
// the separable path's bytes. Images: Gaussian noise (all frequencies alike) at two seeds and sizes.
TEST(FourierResampled, AnisotropicMatrixIsTheDftThere) {
  for (const auto& [n, N, seed] : {std::tuple{20, 20, 3}, std::tuple{24, 20, 4}}) {
    std::mt19937_64 rng{uint64_t(seed)};
    std::normal_distribution<double> nd;
    Grid<float> img(n, n);
    for (float& v : img) v = float(nd(rng));
    const double s = double(n) / N;
    const std::array<std::array<double, 2>, 2> M{{{s * 1.02, s * 0.013}, {s * -0.008, s * 0.985}}};
    Grid<cfloat> R;
    FourierResampler(n, N, M).transform(img, R);
    ASSERT_EQ(R.nx(), N / 2 + 1);
    ASSERT_EQ(R.ny(), N);
    double scale = 0;
    std::vector<std::complex<double>> want(R.size());
    for (int iy = 0; iy < N; ++iy)
      for (int kx = 0; kx <= N / 2; ++kx) {
        const double qy = fft_freq(iy, N);
        const double fx = M[0][0] * kx + M[0][1] * qy, fy = M[1][0] * kx + M[1][1] * qy;
        std::complex<double> w = 0;
        if (std::lround(std::hypot(fx, fy)) <= n / 2)
          for (int y = 0; y < n; ++y)
            for (int x = 0; x < n; ++x)
              w += double(img(x, y)) * std::polar(1.0, -2.0 * kPi * (fx * (x - n / 2) + fy * (y - n / 2)) / n);
        want[size_t(iy) * size_t(N / 2 + 1) + size_t(kx)] = w;
        scale = std::max(scale, std::abs(w));
      }
    for (size_t k = 0; k < R.size(); ++k)
      EXPECT_LT(std::abs(std::complex<double>(R[k]) - want[k]), 1e-6 * scale) << n << " " << k;
    Grid<cfloat> iso, sep;
    FourierResampler(n, N, std::array<std::array<double, 2>, 2>{{{s, 0}, {0, s}}}).transform(img, iso);
    FourierResampler(n, N, s).transform(img, sep);
    for (size_t k = 0; k < iso.size(); ++k) ASSERT_EQ(iso[k], sep[k]);
  }
}

// fourier_centred_resampled: at s = 1 and N = n the centred FFT (to float round-off); at other s the
// DFT sum_x img(x) exp(-2 pi i s k.(x - n/2) / n) written out in double at every pixel (an
// independent, O(n^2) per pixel evaluation); zero beyond the image's Nyquist in both cases.
TEST(FourierResampled, IsTheDftAtScaledFrequencies) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> nd;
  const int n = 20;
  Grid<float> img(n, n);
  for (float& v : img) v = float(nd(rng));
  const Grid<cfloat> F = fourier_centred(img);
  const Grid<cfloat> R1 = fourier_centred_resampled(img, n, 1.0);
  double worst = 0, scale = 0;
  for (int iy = 0; iy < n; ++iy)
    for (int kx = 0; kx <= n / 2; ++kx) {
      scale = std::max(scale, double(std::abs(F(kx, iy))));
      const bool inside = std::lround(std::hypot(double(kx), double(fft_freq(iy, n)))) <= n / 2;
      worst = std::max(worst, double(std::abs((inside ? F(kx, iy) : cfloat(0, 0)) - R1(kx, iy))));
    }
  EXPECT_LT(worst, 1e-5 * scale);
  for (const auto& [N, s] : {std::pair{16, 1.3}, std::pair{24, 0.8}, std::pair{20, 0.95}}) {
    const Grid<cfloat> R = fourier_centred_resampled(img, N, s);
    ASSERT_EQ(R.nx(), N / 2 + 1);
    ASSERT_EQ(R.ny(), N);
    for (int iy = 0; iy < N; ++iy)
      for (int kx = 0; kx <= N / 2; ++kx) {
        const double fx = s * kx, fy = s * fft_freq(iy, N);
        std::complex<double> want = 0;
        if (std::lround(std::hypot(fx, fy)) <= n / 2) {
          for (int y = 0; y < n; ++y)
            for (int x = 0; x < n; ++x)
              want += double(img(x, y)) *
                      std::polar(1.0, -2.0 * kPi * (fx * (x - n / 2) + fy * (y - n / 2)) / n);
        }
        EXPECT_LT(std::abs(std::complex<double>(R(kx, iy)) - want), 1e-4 * scale) << N << " " << s << " " << kx << " " << iy;
      }
  }
}

#include <cblas.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/log.hpp"
#include "regula/core/nelder_mead.hpp"
#include "regula/core/stats.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"

using namespace regula;

TEST(ThreadPool, VisitsEveryIndexOnce) {
  for (int nt : {1, 2, 4}) {
    ThreadPool pool(nt);
    std::vector<std::atomic<int>> hits(1000);
    pool.parallel_for(0, hits.size(), [&](size_t i, int t) {
      ASSERT_LT(t, nt);
      hits[i]++;
    }, 7);
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
}

TEST(ThreadPool, PropagatesExceptions) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(0, 100, [](size_t i, int) {
    if (i == 37) throw Error("boom");
  }), Error);
  // the pool is still usable
  std::atomic<int> n = 0;
  pool.parallel_for(0, 10, [&](size_t, int) { n++; });
  EXPECT_EQ(n.load(), 10);
}

// The pool's threads are the library's parallelism: OpenBLAS must not start its own inside them (a
// job that reached a BLAS product before any set_blas_single_threaded() ran 2.5x slower on 2 cores).
TEST(ThreadPool, MakesBlasSingleThreaded) {
  ThreadPool pool(2);
  EXPECT_EQ(openblas_get_num_threads(), 1);
}

TEST(AtomicFile, NoPartialFileOnException) {
  auto dir = std::filesystem::temp_directory_path() / "regula_test_atomic";
  std::filesystem::create_directories(dir);
  auto path = (dir / "out.txt").string();
  std::filesystem::remove(path);
  try {
    AtomicFile f(path);
    f.write("partial");
    throw Error("fail");
  } catch (const Error&) {
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  write_file_atomic(path, "whole");
  EXPECT_EQ(read_file(path), "whole");
  std::filesystem::remove_all(dir);
}

TEST(ReadFile, MissingFileNamesThePath) {
  try {
    read_file("/nonexistent/regula.star");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/regula.star"), std::string::npos);
  }
}

// FFT against a direct DFT (double precision) on random data, odd and even sizes.
// Against a brute-force definition: the smallest k >= m (even if asked) whose prime factors are all
// in the allowed set.
TEST(FFT, FriendlySizes) {
  auto smooth = [](int k, int largest) {
    for (int p = 2; p <= k; ++p)
      while (k % p == 0) {
        if (p > largest) return false;
        k /= p;
      }
    return true;
  };
  for (int largest : {5, 7})
    for (bool even : {false, true})
      for (int m = -3; m <= 600; ++m) {
        int k = std::max(m, even ? 2 : 1);
        while ((even && k % 2) || !smooth(k, largest)) ++k;
        ASSERT_EQ(regula::fft_friendly_size(m, even, largest), k) << m << " " << even << " " << largest;
      }
  EXPECT_EQ(regula::fft_friendly_size(97), 100);
  EXPECT_EQ(regula::fft_friendly_size(99, true), 100);
  EXPECT_EQ(regula::fft_friendly_size(13, false, 7), 14);
}

TEST(FFT, MatchesDirectDFT2D) {
  for (int n : {6, 7}) {
    Grid<float> img(n, n);
    auto g = make_rng(3, n);
    for (auto& v : img) v = float(normal01(g));
    auto F = fft_forward(img);
    ASSERT_EQ(F.nx(), n / 2 + 1);
    for (int ky = 0; ky < n; ++ky)
      for (int kx = 0; kx <= n / 2; ++kx) {
        std::complex<double> s = 0;
        for (int y = 0; y < n; ++y)
          for (int x = 0; x < n; ++x)
            s += double(img(x, y)) * std::polar(1.0, -2 * M_PI * (double(kx * x) + double(ky * y)) / n);
        EXPECT_NEAR(F(kx, ky).real(), s.real(), 1e-4);
        EXPECT_NEAR(F(kx, ky).imag(), s.imag(), 1e-4);
      }
    auto back = fft_inverse(F, n);
    for (size_t i = 0; i < img.size(); ++i) EXPECT_NEAR(back[i], img[i], 1e-5);
  }
}

// The row-and-column 2D transforms (in place, and out of place from rows nx apart, aligned or not;
// forward and inverse) against fft_forward's (FFTW's 2D plan; float rounding of sums of n^2 unit-variance terms), sizes
// whose in-place plans differ (96 buffers its rows, 128 does not); the out-of-place input kept.
TEST(FFT, RowColumn2DMatchesFftForward) {
  for (int n : {12, 96, 128}) {
    Grid<float> img(n, n);
    auto g = make_rng(5, n);
    for (auto& v : img) v = float(normal01(g));
    const Grid<float> kept = img;
    const Grid<cfloat> F = fft_forward(img);
    const int nh = n / 2 + 1;
    AlignedArray<cfloat> a(size_t(nh) * size_t(n));
    float* r = reinterpret_cast<float*>(a.data());
    for (int y = 0; y < n; ++y) std::copy_n(&img(0, y), n, r + size_t(y) * size_t(2 * nh));
    fft2_forward_inplace(r, n, n);
    AlignedArray<cfloat> b(size_t(nh) * size_t(n)), c(size_t(nh) * size_t(n) + 1);
    fft2_forward(img.data(), n, n, b.data());
    std::vector<float> shifted(img.size() + 1);
    std::copy(img.begin(), img.end(), shifted.begin() + 1);  // 4 bytes off: through the aligned copy
    fft2_forward(shifted.data() + 1, n, n, c.data() + 1);
    const double tol = 2e-5 * n;  // |F| about n; float FFTs of n^2 terms differ by ~1e-7 n log n
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < nh; ++x) {
        const size_t i = size_t(y) * size_t(nh) + size_t(x);
        EXPECT_LT(std::abs(a[i] - F(x, y)), tol) << n << " " << x << " " << y;
        EXPECT_LT(std::abs(b[i] - F(x, y)), tol) << n << " " << x << " " << y;
        EXPECT_EQ(c[i + 1], b[i]);
      }
    for (size_t i = 0; i < img.size(); ++i) ASSERT_EQ(img[i], kept[i]);
    // Inverses (unnormalised) of both give the image back times n^2.
    AlignedArray<float> back(size_t(n) * size_t(n));
    std::vector<float> back_off(img.size() + 1);  // unaligned both ways: through the aligned copy
    fft2_inverse(c.data() + 1, n, n, back_off.data() + 1);
    fft2_inverse(b.data(), n, n, back.data());
    for (size_t i = 0; i < img.size(); ++i) ASSERT_EQ(back_off[i + 1], back[i]);
    fft2_inverse_inplace(a.data(), n, n);
    const float* r2 = reinterpret_cast<const float*>(a.data());
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        EXPECT_NEAR(back[size_t(y) * size_t(n) + size_t(x)] / float(n * n), img(x, y), 1e-5) << n;
        EXPECT_NEAR(r2[size_t(y) * size_t(2 * nh) + size_t(x)] / float(n * n), img(x, y), 1e-5) << n;
      }
  }
}

// BigVector: large blocks 2 MB-aligned (huge pages where the kernel gives them), small ones as
// usual; copies, growth and release behave as std::vector's.
TEST(BigVector, LargeBlocksAreHugePageAlignedAndBehaveAsVectors) {
  BigVector<float> big(size_t(3) << 20, 1.5f);  // 12 MB
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % (size_t(2) << 20), 0u);
  BigVector<float> copy = big;
  EXPECT_EQ(copy, big);
  copy.resize(copy.size() * 2, -1.0f);
  EXPECT_EQ(copy[big.size() - 1], 1.5f);
  EXPECT_EQ(copy.back(), -1.0f);
  BigVector<double> small(10, 2.0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 16, 0u);
  small.push_back(3.0);
  EXPECT_EQ(small.size(), 11u);
  BigVector<float>().swap(big);
  EXPECT_TRUE(big.empty());
  Grid<cfloat> g(256, 256, 16);  // 8 MB: on the large path
  EXPECT_EQ(reinterpret_cast<uintptr_t>(g.data()) % (size_t(2) << 20), 0u);
  EXPECT_EQ(g(255, 255, 15), cfloat(0, 0));
}

// The in-place 3D transforms (planes, then z columns, over a thread pool) against a direct DFT
// (small odd and even, non-cubic shapes; tolerance: float sums of ~10^3 unit-variance terms), their
// inverse giving the input back, and the same bits for 1 and 3 threads.
TEST(FFT, InPlace3DMatchesDirectDFTOnAnyThreadCount) {
  // (4, 5, 6) and (9, 7, 5): planes of an odd number of complex values (every other plane 8 bytes off
  // the 16-byte alignment: the rows' unaligned plans).
  for (const std::array<int, 3> shape : {std::array<int, 3>{8, 6, 10}, std::array<int, 3>{7, 9, 5}, std::array<int, 3>{12, 12, 12},
                                         std::array<int, 3>{4, 5, 6}, std::array<int, 3>{9, 7, 5}}) {
    const int nx = shape[0], ny = shape[1], nz = shape[2];
    Grid<float> vol(nx, ny, nz);
    auto g = make_rng(5, nx);
    for (auto& v : vol) v = float(normal01(g));
    Grid<cfloat> F1(nx / 2 + 1, ny, nz), F3(nx / 2 + 1, ny, nz);
    for (int z = 0; z < nz; ++z)
      for (int y = 0; y < ny; ++y)
        for (int x = 0; x < nx; ++x) real_at(F1, x, y, z) = real_at(F3, x, y, z) = vol(x, y, z);
    fft_forward_inplace(F1, nx, 1);
    fft_forward_inplace(F3, nx, 3);
    EXPECT_EQ(0, std::memcmp(F1.data(), F3.data(), F1.size() * sizeof(cfloat))) << nx << "x" << ny << "x" << nz;
    double worst = 0;
    for (int kz = 0; kz < nz; ++kz)
      for (int ky = 0; ky < ny; ++ky)
        for (int kx = 0; kx <= nx / 2; ++kx) {
          std::complex<double> s = 0;
          for (int z = 0; z < nz; ++z)
            for (int y = 0; y < ny; ++y)
              for (int x = 0; x < nx; ++x)
                s += double(vol(x, y, z)) *
                     std::polar(1.0, -2 * M_PI * (double(kx * x) / nx + double(ky * y) / ny + double(kz * z) / nz));
          worst = std::max(worst, std::abs(std::complex<double>(F1(kx, ky, kz)) - s));
        }
    EXPECT_LT(worst, 1e-4) << nx << "x" << ny << "x" << nz;
    fft_inverse_inplace(F1, nx, 1);
    fft_inverse_inplace(F3, nx, 3);
    EXPECT_EQ(0, std::memcmp(F1.data(), F3.data(), F1.size() * sizeof(cfloat)));
    for (int z = 0; z < nz; ++z)
      for (int y = 0; y < ny; ++y)
        for (int x = 0; x < nx; ++x) EXPECT_NEAR(real_at(F1, x, y, z), vol(x, y, z), 1e-5);
  }
}

// fft_forward_cropped: the coefficients of the full transform at the kept frequencies (0 <= kx <= m/2,
// ky = fft_freq(iy, m), the +m/2 row from the old +m/2 frequency), two images at once, threaded, and
// m == n. Tolerance: float transforms of unit-variance data of 48^2 pixels, |F| ~ 50, rounding ~1e-5
// relative.
TEST(FFT, CroppedTransformIsTheFullOneWindowed) {
  const int n = 48;
  std::vector<Grid<float>> imgs(2, Grid<float>(n, n));
  auto g = make_rng(5, 0);
  for (auto& im : imgs)
    for (auto& v : im) v = float(normal01(g));
  for (int m : {16, 30, 48})
    for (int threads : {1, 2}) {
      auto C = fft_forward_cropped(n, m, 2, [&](int y, float* const* out) {
        for (int c = 0; c < 2; ++c) std::copy(&imgs[size_t(c)](0, y), &imgs[size_t(c)](0, y) + n, out[c]);
      }, threads);
      ASSERT_EQ(C.size(), 2u);
      for (int c = 0; c < 2; ++c) {
        const auto F = fft_forward(imgs[size_t(c)]);
        ASSERT_EQ(C[size_t(c)].nx(), m / 2 + 1);
        ASSERT_EQ(C[size_t(c)].ny(), m);
        for (int iy = 0; iy < m; ++iy)
          for (int kx = 0; kx <= m / 2; ++kx) {
            const auto want = F(kx, fft_index(fft_freq(iy, m), n));
            EXPECT_NEAR(std::abs(C[size_t(c)](kx, iy) - want), 0.0, 1e-3) << m << " " << kx << " " << iy;
          }
      }
    }
  EXPECT_THROW(fft_forward_cropped(n, 50, 1, [](int, float* const*) {}), std::exception);
}

// A delta at the centre n/2 has a flat real transform after centre_origin,
// for even and odd sizes, in 2D and 3D; undo brings it back.
TEST(FFT, CentreOriginOfCentredDelta) {
  for (int n : {8, 9}) {
    for (int nz : {1, n}) {
      Grid<float> g(n, n, nz);
      g(n / 2, n / 2, nz > 1 ? n / 2 : 0) = 1;
      auto F = fft_forward(g, 2);
      centre_origin(F, n);
      for (auto& v : F) {
        EXPECT_NEAR(v.real(), 1.0, 1e-5);
        EXPECT_NEAR(v.imag(), 0.0, 1e-5);
      }
      centre_origin(F, n, true);
      auto back = fft_inverse(F, n, 2);
      for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(back[i], g[i], 1e-5);
    }
  }
}

// Library log lines go to stderr even in a program that never calls set_verbosity() (this test
// program; spdlog's own default logger writes to stdout).
TEST(Log, LinesGoToStderrWithoutSetVerbosity) {
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  spdlog::info("log line of Log.LinesGoToStderrWithoutSetVerbosity");
  spdlog::default_logger()->flush();
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "");
  EXPECT_NE(err.find("info] log line of Log.LinesGoToStderrWithoutSetVerbosity"), std::string::npos) << err;
}

// The command line: log lines on stderr, nothing on stdout, also for a job of a project (run.out).
TEST(Log, CommandLineLogsToStderrOnly) {
  const std::string bin = std::getenv("REGULA_BINARY") ? std::getenv("REGULA_BINARY") : REGULA_BINARY;
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "regula binary not built: " << bin;
  const auto dir = std::filesystem::temp_directory_path() / ("regula_log_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream f(p);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  };
  const std::string map = std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc";
  for (const std::string& prefix : std::vector<std::string>{"", "--project " + (dir / "project").string() + " "}) {
    const std::string cmd = "cd '" + dir.string() + "' && '" + bin + "' " + prefix + "simulate --i " + map +
                            " --o sim --n 3 --box 24 --angpix 6 > out.txt 2> err.txt";
    const int rc = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd << "\n" << slurp(dir / "err.txt");
    EXPECT_EQ(slurp(dir / "out.txt"), "") << cmd;
    EXPECT_NE(slurp(dir / "err.txt").find("info] simulate: 3 particles"), std::string::npos) << cmd;
  }
  std::filesystem::remove_all(dir);
}

// set_callback returns the callback it replaces; ScopedProgressCallback restores it, for nested
// and consecutive guards, and a callback may install its own while it handles an event.
TEST(Progress, ScopedCallbackRestoresThePreviousOne) {
  ProgressSink::set_quiet(true);
  ASSERT_FALSE(ProgressSink::callback());
  std::vector<std::string> seen;
  auto recorder = [&seen](const std::string& who) {
    return [&seen, who](const ProgressEvent& e) {
      if (e.done == e.total) seen.push_back(who + ":" + e.task);  // the final event of each Progress
    };
  };
  auto run = [](const std::string& task) { Progress p(task, 1); };
  {
    ScopedProgressCallback outer(recorder("outer"));
    run("a");
    {
      ScopedProgressCallback inner(recorder("inner"));
      run("b");
    }
    run("c");
    {
      ScopedProgressCallback next(recorder("next"));
      run("d");
    }
    run("e");
  }
  EXPECT_FALSE(ProgressSink::callback());
  run("f");
  EXPECT_EQ(seen, (std::vector<std::string>{"outer:a", "inner:b", "outer:c", "next:d", "outer:e"}));

  seen.clear();
  EXPECT_FALSE(ProgressSink::set_callback(recorder("first")));
  ProgressCallback previous = ProgressSink::set_callback(recorder("second"));
  ASSERT_TRUE(previous);
  run("g");
  EXPECT_TRUE(ProgressSink::set_callback(std::move(previous)));  // back to "first"
  run("h");
  ProgressCallback current = ProgressSink::callback();
  ASSERT_TRUE(current);
  current(ProgressEvent{"i", 1, 1, 0, 0});
  ProgressSink::set_callback(nullptr);
  EXPECT_EQ(seen, (std::vector<std::string>{"second:g", "first:h", "first:i"}));

  // A job run from inside another job's callback: its guard, its events, then the outer's again.
  seen.clear();
  {
    ScopedProgressCallback outer([&](const ProgressEvent& e) {
      if (e.done == e.total) seen.push_back("outer:" + e.task);
      if (e.task == "outer job" && e.done == e.total) {
        ScopedProgressCallback inner(recorder("inner"));
        run("inner job");
      }
    });
    run("outer job");
    run("after");
  }
  EXPECT_FALSE(ProgressSink::callback());
  EXPECT_EQ(seen, (std::vector<std::string>{"outer:outer job", "inner:inner job", "outer:after"}));
}

TEST(Stats, MedianAndRobustSpread) {
  EXPECT_EQ(regula::median({}), 0.0);
  EXPECT_EQ(regula::median({3, 1, 2}), 2.0);
  EXPECT_EQ(regula::median({4, 1, 3, 2}), 2.5);  // even size: the mean of the middle two
  // 1, 2, 3, 4, 100: median 3, absolute deviations 2, 1, 0, 1, 97 -> MAD 1.
  const auto [m, d] = regula::median_spread({100, 2, 4, 1, 3});
  EXPECT_EQ(m, 3.0);
  EXPECT_DOUBLE_EQ(d, 1.4826);
  // Normal data: the robust spread estimates the standard deviation (2.0 here; its standard error
  // from 20,000 draws is about 1.17 x 2 / sqrt(20000) = 0.017, so 0.1 is six of them).
  std::mt19937 rng(7);
  std::normal_distribution<double> g(5.0, 2.0);
  std::vector<double> v(20000);
  for (double& x : v) x = g(rng);
  const auto [m2, d2] = regula::median_spread(v);
  EXPECT_NEAR(m2, 5.0, 0.05);
  EXPECT_NEAR(d2, 2.0, 0.1);
}

// Nelder-Mead: the Rosenbrock valley's maximum of -f at (1, 1) from the classic start (-1.2, 1), and
// tilted quadratics with their maxima at random places (three seeds): the tolerance on x bounds the
// error by the simplex size at the stop; the value and evaluation budgets stop it where they say.
TEST(NelderMead, FindsKnownMaxima) {
  auto rosen = [](const std::vector<double>& x) { return -(100 * std::pow(x[1] - x[0] * x[0], 2) + std::pow(1 - x[0], 2)); };
  NelderMeadOptions o;
  o.step = {0.5};
  o.x_tol = 1e-9;
  o.max_iterations = 10000;
  int reports = 0;
  o.report = [&](int it, const std::vector<double>&, double) { EXPECT_EQ(it, ++reports); };
  const NelderMeadResult r = nelder_mead_maximise(rosen, {-1.2, 1.0}, o);
  EXPECT_NEAR(r.x[0], 1.0, 1e-5);
  EXPECT_NEAR(r.x[1], 1.0, 1e-5);
  EXPECT_NEAR(r.value, 0.0, 1e-9);
  EXPECT_EQ(reports, r.iterations);
  EXPECT_LT(r.iterations, o.max_iterations);
  for (unsigned seed : {1u, 2u, 3u}) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-5, 5);
    const std::vector<double> c{u(rng), u(rng), u(rng)};
    auto quad = [&](const std::vector<double>& x) {
      const double a = x[0] - c[0], b = x[1] - c[1], d = x[2] - c[2];
      return 7 - (a * a + 2 * b * b + 3 * d * d + a * b + 0.5 * b * d);
    };
    NelderMeadOptions q;
    q.step = {1.0, 2.0, 0.5};
    q.x_tol = 1e-7;
    const NelderMeadResult m = nelder_mead_maximise(quad, {0, 0, 0}, q);
    for (int d = 0; d < 3; ++d) EXPECT_NEAR(m.x[size_t(d)], c[size_t(d)], 1e-5) << "seed " << seed;
    EXPECT_NEAR(m.value, 7.0, 1e-10);
    NelderMeadOptions fv = q;
    fv.x_tol = 0;
    fv.f_tol = 1e-3;
    const NelderMeadResult coarse = nelder_mead_maximise(quad, {0, 0, 0}, fv);
    EXPECT_LT(coarse.evaluations, m.evaluations);
    EXPECT_GT(coarse.value, 7.0 - 0.1);
    NelderMeadOptions budget = q;
    budget.max_evaluations = 20;
    const NelderMeadResult b = nelder_mead_maximise(quad, {0, 0, 0}, budget);
    EXPECT_GE(b.evaluations, 20);
    EXPECT_LE(b.evaluations, 20 + 4);  // the iteration that crosses the budget ends (a reflection, a contraction, a shrink of n)
  }
  EXPECT_THROW(nelder_mead_maximise(rosen, {0, 0}, NelderMeadOptions{}), std::logic_error);
}

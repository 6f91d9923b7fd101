// Imaging kernels: FFTs, central-slice projection and back-projection.
#include <benchmark/benchmark.h>

#include <cmath>

#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

using namespace regula;

namespace {

Grid<float> random_grid(int n, int nz) {
  Grid<float> g(n, n, nz);
  auto r = make_rng(1);
  for (auto& v : g) v = float(normal01(r));
  return g;
}

void BM_FFT2D(benchmark::State& st) {
  const int n = int(st.range(0));
  Grid<float> g = random_grid(n, 1);
  fft_forward(g);  // plan
  for (auto _ : st) benchmark::DoNotOptimize(fft_forward(g));
}
BENCHMARK(BM_FFT2D)->Arg(96)->Arg(192);

// A movie frame's transform in place (fft2_forward_inplace, one thread), forward and back.
void BM_FFT2DInPlace(benchmark::State& st) {
  const int n = int(st.range(0));
  AlignedArray<float> a(size_t(n + 2) * size_t(n));
  auto r = make_rng(3);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(normal01(r));
  for (auto _ : st) {
    fft2_forward_inplace(a.data(), n, n);
    fft2_inverse_inplace(reinterpret_cast<cfloat*>(a.data()), n, n);
  }
}
BENCHMARK(BM_FFT2DInPlace)->Arg(620)->Arg(2048)->Arg(4096)->Unit(benchmark::kMillisecond);

void BM_FFT3D(benchmark::State& st) {
  const int n = int(st.range(0));
  Grid<float> g = random_grid(n, n);
  fft_forward(g);
  for (auto _ : st) benchmark::DoNotOptimize(fft_forward(g));
}
BENCHMARK(BM_FFT3D)->Arg(96)->Arg(192)->Unit(benchmark::kMillisecond);

// The reconstruction's transforms: a padded grid forward and back in place (planes, then z columns),
// with 2 threads.
void BM_FFT3DInPlace(benchmark::State& st) {
  const int n = int(st.range(0));
  Grid<cfloat> g(n / 2 + 1, n, n);
  auto r = make_rng(2);
  for (auto& v : g) v = cfloat(float(normal01(r)), 0.0f);
  for (auto _ : st) {
    fft_forward_inplace(g, n, 2);
    fft_inverse_inplace(g, n, 2);
  }
}
BENCHMARK(BM_FFT3DInPlace)->Arg(192)->Arg(384)->UseRealTime()->Unit(benchmark::kMillisecond);

// One central slice at n = 96, padding 2 (per image).
void BM_Project(benchmark::State& st) {
  const int n = int(st.range(0));
  Projector P(random_grid(n, n), 2);
  Grid<cfloat> out;
  double a = 0;
  for (auto _ : st) {
    P.project(euler_to_matrix(a, 37.0 + a, 11.0), out);
    a += 1.7;
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Project)->Arg(96);

// One insertion at n = 96, padding 2 (per image).
void BM_BackProject(benchmark::State& st) {
  const int n = int(st.range(0));
  Grid<cfloat> img = fft_forward(random_grid(n, 1));
  Grid<float> w(img.nx(), img.ny(), 1, 1.0f);
  BackProjector bp(n, 2);
  double a = 0;
  for (auto _ : st) {
    bp.insert(img, w, euler_to_matrix(a, 37.0 + a, 11.0));
    a += 1.7;
  }
}
BENCHMARK(BM_BackProject)->Arg(96);

// The image a 3D job back-projects (apply_reach_mask, per particle and iteration): 300 kV, 1.5 µm
// underfocus, Cs 2.7 mm, 1 Å/px, particle radius 0.4 n, all shells (the final iteration).
void BM_ReachMask(benchmark::State& st) {
  const int n = int(st.range(0));
  const Grid<float> img = random_grid(n, 1);
  const CtfReach reach{0.019687, 15000, 14000, 2.7e7, 1.0, 1.0};
  Grid<float> g;
  for (auto _ : st) {
    g = img;
    benchmark::DoNotOptimize(apply_reach_mask(g, 0.4 * n, 5, MaskCentre{1.5, -2.0}, reach, n / 2));
  }
}
BENCHMARK(BM_ReachMask)->Arg(96)->Arg(192)->Arg(320)->Unit(benchmark::kMillisecond);


// One particle's back-projection in a refinement's local search at n = 192, padding 2: J slices
// (Arg 1) at orientations within 0.5 degrees of each other, all pixels to Nyquist, into the exact
// (integer, shared) sums of the 3D jobs, by Threads(2) threads at once (each its own particles).
void BM_InsertSlicesExact(benchmark::State& st) {
  const int n = 192, J = int(st.range(0));
  static BackProjector* bp = nullptr;
  if (st.thread_index() == 0) {
    bp = new BackProjector(n, 2);
    bp->start_exact(1e6, 1e6);
  }
  std::vector<float> kx, ky;
  for (int y = -n / 2; y <= n / 2; ++y)
    for (int x = y <= 0 ? 1 : 0; x <= n / 2; ++x)
      if (x * x + y * y <= n * n / 4) kx.push_back(float(x)), ky.push_back(float(y));
  const size_t m = kx.size();
  auto r = make_rng(uint64_t(7 + st.thread_index()));
  std::vector<float> d(size_t(J) * 2 * m), w(size_t(J) * m);
  for (auto& v : d) v = float(normal01(r));
  for (auto& v : w) v = 1.0f + float(std::abs(normal01(r)));
  double a = 17.0 * st.thread_index();
  for (auto _ : st) {
    std::vector<Mat3> A(static_cast<size_t>(J));
    for (int j = 0; j < J; ++j) A[size_t(j)] = euler_to_matrix(a + 0.1 * (j % 5), 37.0 + 0.1 * (j / 5), 11.0 + 0.05 * j);
    bp->insert_slices(kx, ky, d.data(), w.data(), A);
    a += 7.3;
  }
  st.SetItemsProcessed(int64_t(st.iterations()) * J);
  if (st.thread_index() == 0) {
    delete bp;
    bp = nullptr;
  }
}
BENCHMARK(BM_InsertSlicesExact)->Arg(1)->Arg(4)->Arg(16)->Arg(64)->Threads(1)->Threads(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// A refinement's M-step at n = 192, padding 2: the back-projector of 400 slices (every pixel to
// Nyquist), symmetrised under O (Arg 0) or reconstructed with a Wiener term and 10 gridding
// iterations up to shell Arg (RELION's refine defaults), with 2 threads.
BackProjector filled_backprojector(int n) {
  BackProjector bp(n, 2);
  Grid<cfloat> img = fft_forward(random_grid(n, 1));
  Grid<float> w(img.nx(), img.ny(), 1, 1.0f);
  for (int j = 0; j < 400; ++j) bp.insert(img, w, euler_to_matrix(13.7 * j, 180.0 * ((j * 0.618) - std::floor(j * 0.618)), 7.1 * j));
  return bp;
}

void BM_SymmetriseO(benchmark::State& st) {
  static const BackProjector filled = filled_backprojector(192);
  const SymmetryGroup O = SymmetryGroup::parse("O");
  for (auto _ : st) {
    st.PauseTiming();
    BackProjector bp = filled;
    st.ResumeTiming();
    bp.symmetrise(O.operators(), 2);
    benchmark::DoNotOptimize(bp.r_max());
  }
}
BENCHMARK(BM_SymmetriseO)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_Reconstruct(benchmark::State& st) {
  static BackProjector filled = [] {
    BackProjector bp = filled_backprojector(192);
    bp.make_hermitian();
    return bp;
  }();
  ReconstructOptions ro;
  ro.max_frequency = int(st.range(0));
  ro.tau2.assign(97, 1e3);
  ro.nthreads = 2;
  for (auto _ : st) benchmark::DoNotOptimize(filled.reconstruct(ro));
}
BENCHMARK(BM_Reconstruct)->Arg(83)->Arg(96)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

// Imaging kernels: FFTs, central-slice projection and back-projection.
#include <benchmark/benchmark.h>

#include <cmath>

#include "regula/core/fft.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

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

void BM_FFT3D(benchmark::State& st) {
  const int n = int(st.range(0));
  Grid<float> g = random_grid(n, n);
  fft_forward(g);
  for (auto _ : st) benchmark::DoNotOptimize(fft_forward(g));
}
BENCHMARK(BM_FFT3D)->Arg(96)->Arg(192)->Unit(benchmark::kMillisecond);

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

}  // namespace

BENCHMARK_MAIN();

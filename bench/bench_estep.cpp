// Coarse E-step kernels at realistic sizes, against the machine's SGEMM rate.
//   bench_estep --benchmark_counters_tabular=true
// Sizes: N = 256 particles, T = 25 translations, J = 600 orientations, M = 2000 Fourier pixels.
// Counter "FLOPS" is the useful flop rate (4*N*T*M*J for scores, as in docs/estep.md);
// BM_Sgemm1024 is a plain 1024^3 SGEMM per thread (one OpenBLAS thread each), the reference.
#include <benchmark/benchmark.h>

#include <cblas.h>

#include <complex>
#include <vector>

#include "regula/core/parallel.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/posteriors.hpp"
#include "regula/estep/scores.hpp"
#include "regula/estep/weighted_sums.hpp"

using namespace regula;
using namespace regula::estep;

namespace {

constexpr size_t kN = 256, kT = 25, kJ = 600, kM = 2000;

struct Data {
  std::vector<cfloat> x, phase, p;
  std::vector<float> ctf, inv_sigma2;
  Data() {
    auto g = make_rng(5, 0);
    auto c = [&] { return cfloat(float(normal01(g)), float(normal01(g))); };
    x.resize(kN * kM);
    for (auto& v : x) v = c();
    p.resize(kJ * kM);
    for (auto& v : p) v = c();
    phase.resize(kT * kM);
    for (auto& v : phase) v = std::polar(1.0f, float(6.283185307 * uniform01(g)));
    ctf.resize(kN * kM);
    for (auto& v : ctf) v = float(2 * uniform01(g) - 1);
    inv_sigma2.resize(kM);
    for (auto& v : inv_sigma2) v = float(0.5 + uniform01(g));  // 1/sigma2 of normalised images
  }
  ParticleBatch batch() const {
    ParticleBatch b;
    b.n = kN;
    b.m = kM;
    b.x = x;
    b.ctf = ctf;
    b.inv_sigma2 = inv_sigma2;
    return b;
  }
  TranslationPhases shifts() const { return TranslationPhases{kT, kM, phase}; }
  ReferenceSlices refs() const { return ReferenceSlices{kJ, kM, p}; }
};

const Data& data() {
  static const Data d;
  return d;
}

void flops_counter(benchmark::State& state, double flops_per_iteration) {
  state.counters["FLOPS"] =
      benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_Sgemm1024(benchmark::State& state) {
  set_blas_single_threaded();
  const int threads = int(state.range(0));
  const size_t n = 1024;
  std::vector<std::vector<float>> a(size_t(threads), std::vector<float>(n * n, 1.0f)), b = a, c = a;
  ThreadPool pool(threads);
  for (auto _ : state) {
    // 4 products per thread, handed out dynamically (each thread multiplies its own matrices).
    pool.parallel_for(0, size_t(4 * threads), [&](size_t, int t) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.0f, a[size_t(t)].data(),
                  int(n), b[size_t(t)].data(), int(n), 0.0f, c[size_t(t)].data(), int(n));
    });
    benchmark::DoNotOptimize(c[0].data());
  }
  flops_counter(state, 2.0 * double(n) * n * n * 4 * threads);
}

void BM_Scores(benchmark::State& state) {
  const Data& d = data();
  ThreadPool pool(int(state.range(0)));
  Scores s;
  for (auto _ : state) {
    compute_scores(d.batch(), d.shifts(), d.refs(), s, pool);
    benchmark::DoNotOptimize(s.value.data());
  }
  flops_counter(state, 4.0 * kN * kT * kM * kJ);
}

void BM_Posteriors(benchmark::State& state) {
  const Data& d = data();
  ThreadPool pool(int(state.range(0)));
  Scores s;
  compute_scores(d.batch(), d.shifts(), d.refs(), s, pool);
  Posteriors post;
  for (auto _ : state) {
    compute_posteriors(s, LogPriors{}, {}, post, pool);
    benchmark::DoNotOptimize(post.weight.data());
  }
  double sig = 0;
  for (auto& p : post.particle) sig += double(p.n_significant);
  state.counters["mean_significant"] = sig / kN;
}

// Dense M-step sums from real posteriors.
void BM_ReferenceSums(benchmark::State& state) {
  const Data& d = data();
  ThreadPool pool(int(state.range(0)));
  Scores s;
  compute_scores(d.batch(), d.shifts(), d.refs(), s, pool);
  Posteriors post;
  compute_posteriors(s, LogPriors{}, {}, post, pool);
  ReferenceSums acc;
  acc.reset(kJ, kM);
  for (auto _ : state) {
    accumulate_reference_sums(d.batch(), d.shifts(), kJ, post.weight, acc, pool);
    benchmark::DoNotOptimize(acc.data.data());
  }
  flops_counter(state, reference_sums_flops(kN, kT, kJ, kM));
}

void BM_ParticleSums(benchmark::State& state) {
  const Data& d = data();
  ThreadPool pool(int(state.range(0)));
  Scores s;
  compute_scores(d.batch(), d.shifts(), d.refs(), s, pool);
  Posteriors post;
  compute_posteriors(s, LogPriors{}, {}, post, pool);
  ParticleSums ps;
  for (auto _ : state) {
    compute_particle_sums(d.batch(), d.shifts(), d.refs(), post.weight, ps, pool);
    benchmark::DoNotOptimize(ps.diff2.data());
  }
  flops_counter(state, particle_sums_flops(kN, kT, kJ, kM));
}

}  // namespace

BENCHMARK(BM_Sgemm1024)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Scores)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_Posteriors)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReferenceSums)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_ParticleSums)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);

BENCHMARK_MAIN();

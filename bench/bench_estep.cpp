// Coarse E-step kernels at realistic sizes, against the machine's SGEMM rate.
//   bench_estep --benchmark_counters_tabular=true
// Sizes: N = 256 particles, T = 25 translations, J = 600 orientations, M = 2000 Fourier pixels.
// Counter "FLOPS" is the useful flop rate (4*N*T*M*J for scores, as in docs/estep.md);
// BM_Sgemm1024 is a plain 1024^3 SGEMM per thread (one OpenBLAS thread each), the reference.
// The finer pass (BM_FinePass*): each particle's S significant coarse poses (random, distinct)
// expanded to their 8 children (2 angles x 4 translations, oversampling order 1) over 2J fine
// references and 4T fine translations; S = 2 is a late iteration, S = 200 an early one.
#include <benchmark/benchmark.h>

#include <cblas.h>

#include <complex>
#include <vector>

#include "regula/core/blas.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/random.hpp"
#include "regula/estep/posteriors.hpp"
#include "regula/estep/scores.hpp"
#include "regula/estep/sparse_scores.hpp"
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

// Fine references and translations (2J and 4T), and the children of S random coarse poses.
struct FineData {
  std::vector<cfloat> phase, p;
  PoseList poses;
  explicit FineData(size_t S) {
    auto g = make_rng(6, S);
    p.resize(2 * kJ * kM);
    for (auto& v : p) v = cfloat(float(normal01(g)), float(normal01(g)));
    phase.resize(4 * kT * kM);
    for (auto& v : phase) v = std::polar(1.0f, float(6.283185307 * uniform01(g)));
    SparseWeights coarse;
    coarse.n = kN;
    coarse.t = kT;
    coarse.j = kJ;
    coarse.offset.push_back(0);
    std::vector<char> used(kT * kJ);
    for (size_t i = 0; i < kN; ++i) {
      std::fill(used.begin(), used.end(), 0);
      for (size_t c = 0; c < S;) {
        const size_t q = std::min(kT * kJ - 1, size_t(uniform01(g) * double(kT * kJ)));
        if (used[q]) continue;
        used[q] = 1;
        coarse.entry.push_back({uint32_t(q / kJ), uint32_t(q % kJ), 1.0f});
        ++c;
      }
      coarse.offset.push_back(coarse.entry.size());
    }
    poses = oversampled_poses(coarse, 4, 2);
  }
  TranslationPhases shifts() const { return TranslationPhases{4 * kT, kM, phase}; }
  ReferenceSlices refs() const { return ReferenceSlices{2 * kJ, kM, p}; }
};

void BM_FinePassScores(benchmark::State& state) {
  const Data& d = data();
  const FineData f(size_t(state.range(1)));
  ThreadPool pool(int(state.range(0)));
  std::vector<float> sc;
  double flops = 0;
  for (auto _ : state) {
    flops = compute_pose_scores(d.batch(), f.shifts(), f.refs(), f.poses, sc, pool);
    benchmark::DoNotOptimize(sc.data());
  }
  flops_counter(state, flops);
  state.counters["fine_poses_per_particle"] = double(f.poses.pose.size()) / kN;
}

// Sparse M-step sums over the fine posteriors (all candidates' weights, as the M-step takes the
// significant ones; with random data nearly all of them are needed).
void BM_FinePassSums(benchmark::State& state) {
  const Data& d = data();
  const FineData f(size_t(state.range(1)));
  ThreadPool pool(int(state.range(0)));
  std::vector<float> sc;
  compute_pose_scores(d.batch(), f.shifts(), f.refs(), f.poses, sc, pool);
  for (auto& v : sc) v *= 1e-4f;  // soften the posteriors so that many poses carry weight
  PosePosteriors post;
  compute_pose_posteriors(f.poses, sc, LogPriors{}, {}, post, pool);
  ReferenceSums acc;
  acc.reset(2 * kJ, kM);
  ParticleSums ps;
  for (auto _ : state) {
    accumulate_reference_sums(d.batch(), f.shifts(), post.weights, acc, pool);
    compute_particle_sums(d.batch(), f.shifts(), f.refs(), post.weights, ps, pool);
    benchmark::DoNotOptimize(acc.data.data());
    benchmark::DoNotOptimize(ps.diff2.data());
  }
  // The per-particle products both kernels do (4 m T_i J_i each, plus 2 m J_i).
  double flops = 0;
  std::vector<char> t_seen(4 * kT), j_seen(2 * kJ);
  for (size_t i = 0; i < kN; ++i) {
    std::fill(t_seen.begin(), t_seen.end(), 0);
    std::fill(j_seen.begin(), j_seen.end(), 0);
    double nt = 0, nj = 0;
    for (size_t q = f.poses.offset[i]; q < f.poses.offset[i + 1]; ++q) {
      if (!t_seen[f.poses.pose[q].t]++) nt += 1;
      if (!j_seen[f.poses.pose[q].j]++) nj += 1;
    }
    flops += 2 * (4.0 * kM * nt * nj + 2.0 * kM * nj);
  }
  flops_counter(state, flops);
}

}  // namespace

BENCHMARK(BM_FinePassScores)->ArgsProduct({{1, 2}, {2, 200}})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FinePassSums)->ArgsProduct({{1, 2}, {2, 200}})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Sgemm1024)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Scores)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_Posteriors)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReferenceSums)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK(BM_ParticleSums)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);

BENCHMARK_MAIN();

// Reading a 1,000,000-row RELION 3.1 particle STAR file (25 columns, ~290 MB).
// Target: ParticleTable::read under 2 s on the 2-core development machine.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include "regula/core/atomic_file.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace {

constexpr size_t kRows = 1000000;

// Generated once per process in the temp directory, removed at exit.
const std::string& big_star() {
  static std::string path = [] {
    std::string p = (std::filesystem::temp_directory_path() /
                     ("regula_bench_star_" + std::to_string(::getpid()) + ".star"))
                        .string();
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> u(0, 1);
    std::string s;
    s.reserve(kRows * 300 + 4096);
    s += "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
         "_rlnMtfFileName #3\n_rlnMicrographOriginalPixelSize #4\n_rlnVoltage #5\n"
         "_rlnSphericalAberration #6\n_rlnAmplitudeContrast #7\n_rlnImagePixelSize #8\n"
         "_rlnImageSize #9\n_rlnImageDimensionality #10\n"
         "opticsGroup1 1 mtf_k2_300kV.star 0.885000 300.000000 2.700000 0.100000 1.770000 256 2\n"
         "opticsGroup2 2 mtf_k2_300kV.star 0.885000 300.000000 2.700000 0.100000 1.770000 256 2\n\n"
         "\n# version 30001\n\ndata_particles\n\nloop_\n";
    const char* labels[] = {"rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit",
                            "rlnClassNumber", "rlnAnglePsi", "rlnImageName", "rlnMicrographName",
                            "rlnOpticsGroup", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit",
                            "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
                            "rlnCtfScalefactor", "rlnPhaseShift", "rlnAngleRot", "rlnAngleTilt",
                            "rlnOriginXAngst", "rlnOriginYAngst", "rlnNormCorrection",
                            "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
                            "rlnNrOfSignificantSamples", "rlnRandomSubset"};
    int n = 0;
    for (const char* l : labels) s += fmt::format("_{} #{}\n", l, ++n);
    for (size_t r = 0; r < kRows; ++r) {
      size_t mic = r / 500;
      double du = 10000 + 20000 * u(rng);
      fmt::format_to(std::back_inserter(s),
                     "{:12.6f} {:12.6f} {:12.6f} {:12d} {:12.6f} {:06d}@Extract/job012/Movies/mic_{:05d}.mrcs "
                     "MotionCorr/job002/Movies/mic_{:05d}.mrc {:12d} {:12.6f} {:12.6f} {:12.6f} {:12.6f} "
                     "{:12.6f} {:12.6f} {:12.6f} {:12.6f} {:12.6f} {:12.6f} {:12.6f} {:12.6f} {:12.6f} "
                     "{:12.6e} {:12.6f} {:12d} {:12d}\n",
                     4000 * u(rng), 4000 * u(rng), u(rng), 1 + int(r % 50), 360 * u(rng) - 180,
                     r % 500 + 1, mic, mic, 1 + int(r % 2), 3 + 5 * u(rng), 0.1 * u(rng), du,
                     du - 500 * u(rng), 180 * u(rng), 0.0, 1.0, 0.0, 360 * u(rng) - 180,
                     180 * u(rng), 10 * u(rng) - 5, 10 * u(rng) - 5, 0.7 + 0.1 * u(rng),
                     1.4e5 + 1000 * u(rng), u(rng), 1 + int(r % 100), 1 + int(r % 2));
    }
    regula::write_file_atomic(p, s);
    std::atexit([] { std::remove(big_star().c_str()); });
    return p;
  }();
  return path;
}

void BM_StarRead(benchmark::State& state) {
  const std::string& path = big_star();
  for (auto _ : state) {
    auto doc = regula::star::read(path);
    benchmark::DoNotOptimize(doc.blocks.back().rows());
  }
  state.counters["rows"] = double(kRows);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(std::filesystem::file_size(path)));
}

void BM_ParticleTableRead(benchmark::State& state) {
  const std::string& path = big_star();
  for (auto _ : state) {
    auto t = regula::ParticleTable::read(path);
    benchmark::DoNotOptimize(t.rot.data());
  }
  state.counters["rows"] = double(kRows);
}

void BM_StarWrite(benchmark::State& state) {
  const std::string& path = big_star();
  auto doc = regula::star::read(path);
  std::string out = path + ".out.star";
  for (auto _ : state) regula::star::write(out, doc);
  std::remove(out.c_str());
}

}  // namespace

BENCHMARK(BM_StarRead)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_ParticleTableRead)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_StarWrite)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_MAIN();

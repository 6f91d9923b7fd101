// Fuzz target: the MRC reader (header, whole read, lazy stack reads, describe).
// Any outcome other than success or regula::InputError aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"

size_t g_fuzz_rejected = 0;
size_t g_fuzz_accepted = 0;

std::vector<std::string> fuzz_seed_extensions() { return {".mrc", ".mrcs", ".map", ".ccp4", ".st"}; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      (std::filesystem::temp_directory_path() / ("regula_fuzz_mrc_" + std::to_string(::getpid()) + ".mrc")).string();
  static const bool quiet = [] { spdlog::set_level(spdlog::level::err); return true; }();
  (void)quiet;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    regula::mrc::Header h = regula::mrc::read_header(path);
    // Stay small: the reader checks sizes against the file, which is small.
    regula::Grid<float> all = regula::mrc::read(path);
    regula::mrc::StackReader r(path);
    if (r.count() > 0) {
      r.read(0);
      r.read(r.count() - 1);
    }
    try {
      r.read(r.count());  // past the end: must be an InputError
      std::abort();
    } catch (const regula::InputError&) {
    }
    regula::mrc::describe(path);
    (void)h;
    (void)all;
    ++g_fuzz_accepted;
  } catch (const regula::InputError&) {
    ++g_fuzz_rejected;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_mrc: unexpected exception: %s\n", e.what());
    std::abort();
  }
  std::remove(path.c_str());
  return 0;
}

// What every fuzz target does around its reader: logging quiet, the input as a temporary file when
// the reader takes a path, and the outcome: a clean return counts as accepted, regula::InputError
// as rejected (both counted for the driver's summary), anything else aborts with the target's name.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include <spdlog/spdlog.h>
#include <unistd.h>

#include "regula/core/error.hpp"

// Defined by each target (the driver prints them).
extern size_t g_fuzz_rejected;
extern size_t g_fuzz_accepted;

namespace fuzz {

inline void quiet() {
  static const bool done = [] {
    spdlog::set_level(spdlog::level::err);
    return true;
  }();
  (void)done;
}

// The bytes as a file of this process in the temporary directory, named stem + pid + ext.
inline std::string temp_file(const std::string& stem, const std::string& ext, const uint8_t* data, size_t size) {
  const std::string path =
      (std::filesystem::temp_directory_path() / (stem + std::to_string(::getpid()) + ext)).string();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Runs body() and counts its outcome; any exception but regula::InputError aborts.
template <class F>
void run(const char* target, F&& body) {
  try {
    body();
    ++g_fuzz_accepted;
  } catch (const regula::InputError&) {
    ++g_fuzz_rejected;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: unexpected exception: %s\n", target, e.what());
    std::abort();
  }
}

// body() must throw regula::InputError (a read past the end, say); anything else aborts.
template <class F>
void expect_input_error(const char* target, const char* what, F&& body) {
  try {
    body();
  } catch (const regula::InputError&) {
    return;
  }
  std::fprintf(stderr, "%s: %s was not refused\n", target, what);
  std::abort();
}

}  // namespace fuzz

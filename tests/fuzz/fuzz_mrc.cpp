// Fuzz target: the MRC reader (header, whole read, lazy stack reads, describe).
// Any outcome other than success or regula::InputError aborts.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "regula/io/mrc.hpp"
#include "target.hpp"

size_t g_fuzz_rejected = 0;
size_t g_fuzz_accepted = 0;

std::vector<std::string> fuzz_seed_extensions() { return {".mrc", ".mrcs", ".map", ".ccp4", ".st"}; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::quiet();
  const std::string path = fuzz::temp_file("regula_fuzz_mrc_", ".mrc", data, size);
  fuzz::run("fuzz_mrc", [&] {
    (void)regula::mrc::read_header(path);
    // Stay small: the reader checks sizes against the file, which is small.
    (void)regula::mrc::read(path);
    regula::mrc::StackReader r(path);
    if (r.count() > 0) {
      r.read(0);
      r.read(r.count() - 1);
    }
    fuzz::expect_input_error("fuzz_mrc", "an image past the end", [&] { r.read(r.count()); });
    regula::mrc::describe(path);
  });
  std::remove(path.c_str());
  return 0;
}

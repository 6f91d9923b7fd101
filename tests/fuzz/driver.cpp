// Seeded corruption driver shared by the fuzz targets (run by ctest in CI, also
// under the sanitizers). Usage: fuzz_x --seed S --iterations N DIR
// Loads every file below DIR whose extension the target lists, then, for N
// iterations, mutates a randomly chosen seed file (bit flips, byte overwrites
// with boundary values, 32-bit overwrites in the first 1024 bytes, truncation,
// chunk duplication and insertion) and hands the bytes to the target's
// LLVMFuzzerTestOneInput. Targets abort() on anything but a clean rejection, so a
// crash, a sanitizer report or an unexpected exception fails the test. The
// same targets link with -fsanitize=fuzzer for coverage-guided fuzzing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
std::vector<std::string> fuzz_seed_extensions();
// Counts maintained by the targets: inputs rejected with InputError / accepted.
extern size_t g_fuzz_rejected;
extern size_t g_fuzz_accepted;

namespace {

using Bytes = std::vector<uint8_t>;

void mutate(Bytes& b, std::mt19937_64& g) {
  auto pick = [&](size_t n) { return n ? size_t(g() % n) : 0; };
  int rounds = 1 + int(g() % 4);
  for (int r = 0; r < rounds; ++r) {
    switch (g() % 7) {
      case 0:  // bit flip
        if (!b.empty()) b[pick(b.size())] ^= uint8_t(1u << (g() % 8));
        break;
      case 1: {  // interesting byte
        static const uint8_t vals[] = {0, 0xff, 0x7f, 0x80, 0x01, '\n', ' ', '"', '\'', '#', '_', '@'};
        if (!b.empty()) b[pick(b.size())] = vals[g() % sizeof vals];
        break;
      }
      case 2: {  // interesting 32-bit value at a header word
        static const int32_t vals[] = {-1,    0,       1,       2,       3,          4,          6,
                                       12,    101,     1024,    65536,   1 << 20,    1 << 24,    1 << 30,
                                       -1024, 0x7fffffff, int32_t(0x80000000), 0x44440000, 0x11110000, 0x7fffff00};
        size_t limit = std::min<size_t>(b.size(), 1024);
        if (limit >= 4) {
          size_t off = (pick(limit / 4)) * 4;
          int32_t v = vals[g() % (sizeof vals / sizeof vals[0])];
          std::memcpy(b.data() + off, &v, 4);
        }
        break;
      }
      case 3:  // truncate
        if (!b.empty()) b.resize(pick(b.size()));
        break;
      case 4: {  // duplicate a chunk
        if (b.empty()) break;
        size_t a = pick(b.size()), n = 1 + pick(std::min<size_t>(64, b.size() - a));
        Bytes chunk(b.begin() + long(a), b.begin() + long(a + n));
        b.insert(b.begin() + long(pick(b.size())), chunk.begin(), chunk.end());
        break;
      }
      case 5: {  // insert random bytes
        size_t n = 1 + pick(16);
        Bytes chunk(n);
        for (auto& c : chunk) c = uint8_t(g());
        b.insert(b.begin() + long(pick(b.size() + 1)), chunk.begin(), chunk.end());
        break;
      }
      case 6:  // erase a range
        if (!b.empty()) {
          size_t a = pick(b.size()), n = 1 + pick(std::min<size_t>(32, b.size() - a));
          b.erase(b.begin() + long(a), b.begin() + long(a + n));
        }
        break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 1;
  long iterations = 1000;
  std::string dir;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--iterations" && i + 1 < argc) iterations = std::strtol(argv[++i], nullptr, 10);
    else dir = a;
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: %s --seed S --iterations N DIR\n", argv[0]);
    return 2;
  }
  auto exts = fuzz_seed_extensions();
  std::vector<Bytes> seeds;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::string ext = e.path().extension().string();
    bool want = false;
    for (auto& x : exts) want |= (ext == x);
    if (!want || e.file_size() > (4u << 20)) continue;
    std::ifstream in(e.path(), std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (seeds.empty()) {
    std::fprintf(stderr, "%s: no seed files in %s\n", argv[0], dir.c_str());
    return 2;
  }
  std::mt19937_64 g(seed);
  // Every seed unchanged first, then mutants.
  for (auto& s : seeds) LLVMFuzzerTestOneInput(s.data(), s.size());
  for (long it = 0; it < iterations; ++it) {
    Bytes b = seeds[g() % seeds.size()];
    mutate(b, g);
    LLVMFuzzerTestOneInput(b.data(), b.size());
  }
  const std::string name = std::filesystem::path(argv[0]).filename().string();
  std::printf("%s: %zu inputs (%zu seeds, %ld mutants), %zu rejected with InputError, %zu accepted\n", name.c_str(),
              seeds.size() + size_t(iterations), seeds.size(), iterations, g_fuzz_rejected, g_fuzz_accepted);
  return 0;
}

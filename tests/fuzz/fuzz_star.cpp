// Fuzz target: the STAR parser, the particle-table view over it, and describe().
// Any outcome other than success or regula::InputError aborts.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"
#include "target.hpp"

size_t g_fuzz_rejected = 0;
size_t g_fuzz_accepted = 0;

std::vector<std::string> fuzz_seed_extensions() { return {".star"}; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::quiet();
  std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::run("fuzz_star", [&] {
    regula::star::Document doc = regula::star::parse(text, "fuzz.star");
    std::string s = regula::star::to_string(doc);
    regula::star::describe(doc);
    // What we write must read back.
    regula::star::Document again = regula::star::parse(s, "fuzz-rewritten.star");
    if (again.blocks.size() != doc.blocks.size()) {
      std::fprintf(stderr, "fuzz_star: %zu blocks written, %zu read back\n", doc.blocks.size(), again.blocks.size());
      std::abort();
    }
    try {  // a table the particle view refuses is still a clean outcome
      regula::ParticleTable t = regula::ParticleTable::from_document(std::move(doc));
      for (size_t i = 0; i < t.size() && i < 4; ++i) (void)t.particle(i);
      t.sync();
    } catch (const regula::InputError&) {
    }
  });
  return 0;
}

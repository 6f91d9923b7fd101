// Fuzz target: the movie reader (io/movie.hpp) on TIFF movies (libtiff under our reader: 8/16-bit
// integers and floats, compressed or not) and MRC movies (the bytes starting with TIFF's magic go to a
// .tif file, the others to a .mrc): frame count, size, pixel size, the first and last frames, a frame
// past the end. Any outcome other than success or regula::InputError aborts. Frames of more than 2^22
// pixels are not read (the seeds are 64 x 64; a mutated header can claim any size, and the reader reads
// what it claims within the file).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "regula/io/movie.hpp"
#include "target.hpp"

size_t g_fuzz_rejected = 0;
size_t g_fuzz_accepted = 0;

std::vector<std::string> fuzz_seed_extensions() { return {".tif", ".tiff"}; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::quiet();
  const bool tiff = size >= 4 && (std::memcmp(data, "II*\0", 4) == 0 || std::memcmp(data, "MM\0*", 4) == 0);
  const std::string path = fuzz::temp_file("regula_fuzz_movie_", tiff ? ".tif" : ".mrc", data, size);
  fuzz::run("fuzz_movie", [&] {
    regula::MovieReader r(path);
    const int n = r.frames();
    (void)r.pixel_size();
    if (n < 1 || r.nx() < 1 || r.ny() < 1) {
      std::fprintf(stderr, "fuzz_movie: %s opened with %d frames of %d x %d\n", path.c_str(), n, r.nx(), r.ny());
      std::abort();
    }
    if (size_t(r.nx()) * size_t(r.ny()) <= (size_t(1) << 22)) {
      std::vector<float> frame(size_t(r.nx()) * size_t(r.ny()));
      r.read_into(0, frame.data());
      r.read_into(n - 1, frame.data());
      fuzz::expect_input_error("fuzz_movie", "a frame past the end", [&] { r.read_into(n, frame.data()); });
    }
  });
  std::remove(path.c_str());
  return 0;
}

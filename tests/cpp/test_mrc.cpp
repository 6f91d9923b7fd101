// MRC2014 reader/writer: round trips, lazy stack reads, hand-built files of every
// read mode with known values, byte order, axis order and every kind of bad input.
// The independent reference for the values is the file layout itself (built byte
// by byte here) and, in tests/python/test_mrc_mrcfile.py, mrcfile + numpy.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"

namespace fs = std::filesystem;
using regula::Grid;
using regula::InputError;
namespace mrc = regula::mrc;

namespace {

using Bytes = std::vector<unsigned char>;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("regula_test_mrc_" + std::to_string(::getpid()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

uint32_t word_le(const Bytes& b, size_t w) {
  return uint32_t(b[4 * w]) | uint32_t(b[4 * w + 1]) << 8 | uint32_t(b[4 * w + 2]) << 16 | uint32_t(b[4 * w + 3]) << 24;
}
int32_t int_le(const Bytes& b, size_t w) { return int32_t(word_le(b, w)); }
float float_le(const Bytes& b, size_t w) {
  uint32_t v = word_le(b, w);
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
void set_word_le(Bytes& b, size_t w, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[4 * w + size_t(i)] = (unsigned char)(v >> (8 * i));
}
void set_int(Bytes& b, size_t w, int32_t v) { set_word_le(b, w, uint32_t(v)); }
void set_float(Bytes& b, size_t w, float f) {
  uint32_t v;
  std::memcpy(&v, &f, 4);
  set_word_le(b, w, v);
}

// A little-endian MRC2014 header with the given sizes and mode; cell = n (1 Å pixels).
Bytes make_header(int nx, int ny, int nz, int mode) {
  Bytes h(1024, 0);
  set_int(h, 0, nx);
  set_int(h, 1, ny);
  set_int(h, 2, nz);
  set_int(h, 3, mode);
  set_int(h, 7, nx);
  set_int(h, 8, ny);
  set_int(h, 9, nz);
  set_float(h, 10, float(nx));
  set_float(h, 11, float(ny));
  set_float(h, 12, float(nz));
  for (size_t w = 13; w < 16; ++w) set_float(h, w, 90.f);
  set_int(h, 16, 1);
  set_int(h, 17, 2);
  set_int(h, 18, 3);
  set_int(h, 27, 20140);
  std::memcpy(h.data() + 208, "MAP ", 4);
  h[212] = 0x44;
  h[213] = 0x44;
  return h;
}

Grid<float> random_grid(int nx, int ny, int nz, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.5f, 2.0f);
  Grid<float> a(nx, ny, nz);
  for (auto& v : a) v = d(g);
  return a;
}

bool bit_equal(const Grid<float>& a, const Grid<float>& b) {
  return a.same_shape(b) && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Expect an InputError whose message contains every fragment.
template <class F>
void expect_input_error(F&& f, std::vector<std::string> fragments) {
  try {
    f();
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& frag : fragments) EXPECT_NE(msg.find(frag), std::string::npos) << "'" << frag << "' not in: " << msg;
  }
}

std::string data_file(const std::string& name) { return std::string(REGULA_TEST_DATA) + "/" + name; }

// Reference statistics in double, two passes (population standard deviation).
mrc::Stats reference_stats(const Grid<float>& a) {
  double lo = a[0], hi = a[0], s = 0;
  for (float v : a) {
    lo = std::min<double>(lo, v);
    hi = std::max<double>(hi, v);
    s += v;
  }
  double mean = s / double(a.size()), ss = 0;
  for (float v : a) ss += (v - mean) * (v - mean);
  return {lo, hi, mean, std::sqrt(ss / double(a.size()))};
}

void check_written_header(const Bytes& b, int nx, int ny, int nz, int mode, int ispg, int mz, float angpix,
                          const Grid<float>& stored) {
  EXPECT_EQ(int_le(b, 0), nx);
  EXPECT_EQ(int_le(b, 1), ny);
  EXPECT_EQ(int_le(b, 2), nz);
  EXPECT_EQ(int_le(b, 3), mode);
  EXPECT_EQ(int_le(b, 7), nx);
  EXPECT_EQ(int_le(b, 8), ny);
  EXPECT_EQ(int_le(b, 9), mz);
  EXPECT_FLOAT_EQ(float_le(b, 10), angpix * float(nx));
  EXPECT_FLOAT_EQ(float_le(b, 12), angpix * float(mz));
  EXPECT_EQ(int_le(b, 16), 1);
  EXPECT_EQ(int_le(b, 17), 2);
  EXPECT_EQ(int_le(b, 18), 3);
  EXPECT_EQ(int_le(b, 22), ispg);
  EXPECT_EQ(int_le(b, 23), 0);
  EXPECT_EQ(int_le(b, 27), 20140);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()) + 208, 4), "MAP ");
  EXPECT_EQ(b[212], 0x44);
  EXPECT_EQ(b[213], 0x44);
  EXPECT_EQ(b[214], 0);
  EXPECT_EQ(b[215], 0);
  const mrc::Stats ref = reference_stats(stored);
  EXPECT_EQ(float_le(b, 19), float(ref.min));  // exact: min and max are data values
  EXPECT_EQ(float_le(b, 20), float(ref.max));
  EXPECT_NEAR(float_le(b, 21), ref.mean, 1e-6 * (std::abs(ref.mean) + ref.rms));
  EXPECT_NEAR(float_le(b, 54), ref.rms, 1e-6 * ref.rms);
  EXPECT_EQ(b.size(), 1024 + size_t(nx) * ny * nz * (mode == 2 ? 4 : 2));
}

int run(const std::string& cmd) {
  int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

// ------------------------------------------------------------------ round trips

TEST(Mrc, Float32VolumeRoundTripIsBitExactWithCorrectHeader) {
  TempDir t;
  Grid<float> v = random_grid(7, 5, 6, 1);
  mrc::WriteOptions o;
  o.pixel_size = 1.25;
  o.origin = {1.5f, -2.f, 3.f};
  mrc::write(t.file("v.mrc"), v, o);
  mrc::Header h;
  Grid<float> back = mrc::read(t.file("v.mrc"), &h);
  EXPECT_TRUE(bit_equal(v, back));
  EXPECT_DOUBLE_EQ(h.pixel_size(), double(float(1.25 * 7)) / 7);
  EXPECT_TRUE(h.is_volume());
  EXPECT_FALSE(h.is_stack());
  EXPECT_EQ(h.origin[1], -2.f);
  check_written_header(read_bytes(t.file("v.mrc")), 7, 5, 6, 2, 1, 6, 1.25f, v);
}

TEST(Mrc, Float32ImageAndStackRoundTrip) {
  TempDir t;
  Grid<float> img = random_grid(9, 4, 1, 2);
  mrc::write(t.file("i.mrc"), img, {});
  EXPECT_TRUE(bit_equal(img, mrc::read(t.file("i.mrc"))));
  check_written_header(read_bytes(t.file("i.mrc")), 9, 4, 1, 2, 0, 1, 1.0f, img);

  Grid<float> st = random_grid(6, 8, 5, 3);
  mrc::WriteOptions o;
  o.pixel_size = 2.5;
  o.is_stack = true;
  {
    mrc::StackWriter w(t.file("s.mrcs"), 6, 8, o);
    for (int i = 0; i < 5; ++i) {
      Grid<float> im(6, 8);
      std::copy(st.section(i), st.section(i) + 48, im.data());
      w.append(im);
    }
    EXPECT_FALSE(fs::exists(t.file("s.mrcs")));  // nothing visible before commit
    w.commit();
  }
  EXPECT_TRUE(bit_equal(st, mrc::read(t.file("s.mrcs"))));
  check_written_header(read_bytes(t.file("s.mrcs")), 6, 8, 5, 2, 0, 1, 2.5f, st);
  EXPECT_TRUE(mrc::read_header(t.file("s.mrcs")).is_stack());
  // The same data through write(is_stack) gives the same bytes.
  mrc::write(t.file("s2.mrcs"), st, o);
  EXPECT_EQ(read_bytes(t.file("s.mrcs")), read_bytes(t.file("s2.mrcs")));
}

TEST(Mrc, Float16RoundTripAndRounding) {
  TempDir t;
  // Values exactly representable in float16 come back exactly.
  Grid<float> a(4, 3, 2);
  const float exact[] = {0.f,   -0.f,     1.f,       -2.5f,          65504.f,
                         -65504.f, std::ldexp(1.f, -14), std::ldexp(1.f, -24), 1025.f, 3.140625f,
                         -0.0009765625f, std::ldexp(1023.f, -24) /* largest subnormal */};
  for (size_t i = 0; i < a.size(); ++i) a[i] = exact[i % 12];
  mrc::WriteOptions o;
  o.mode = mrc::Mode::Float16;
  mrc::write(t.file("h.mrc"), a, o);
  EXPECT_TRUE(bit_equal(a, mrc::read(t.file("h.mrc"))));
  check_written_header(read_bytes(t.file("h.mrc")), 4, 3, 2, 12, 1, 2, 1.0f, a);

  // Rounding to nearest, ties to even, overflow to infinity (IEEE 754 binary16).
  Grid<float> b(6, 1, 1);
  b[0] = 1.f / 3.f;            // -> 0x3555 = 0.333251953125
  b[1] = 1.f + 1.f / 2048.f;   // tie -> 1.0 (even)
  b[2] = 1.f + 3.f / 2048.f;   // tie -> 1 + 2/1024 (even)
  b[3] = 65520.f;              // tie between 65504 and 2^16 -> infinity
  b[4] = 2.9802322e-08f;       // 2^-25, tie -> 0
  b[5] = 3.0e-08f;             // just above 2^-25 -> 2^-24
  mrc::write(t.file("r.mrc"), b, o);
  Grid<float> r = mrc::read(t.file("r.mrc"));
  EXPECT_EQ(r[0], 0.333251953125f);
  EXPECT_EQ(r[1], 1.f);
  EXPECT_EQ(r[2], 1.f + 2.f / 1024.f);
  EXPECT_TRUE(std::isinf(r[3]) && r[3] > 0);
  EXPECT_EQ(r[4], 0.f);
  EXPECT_EQ(r[5], 5.9604645e-08f);
}

TEST(Mrc, ComputeStatsIsAccurateForLargeOffsets) {
  // 3e5 + small deviations: a one-pass sum of squares in float would lose them.
  Grid<float> a(1000, 1, 1);
  for (int i = 0; i < 1000; ++i) a[size_t(i)] = 300000.f + float(i % 10) - 4.5f;
  mrc::Stats s = mrc::compute_stats(a.data(), a.size());
  EXPECT_DOUBLE_EQ(s.mean, 300000.0);
  EXPECT_NEAR(s.rms, std::sqrt(8.25), 1e-9);  // sd of 0..9
  EXPECT_EQ(s.min, 299995.5);
  EXPECT_EQ(s.max, 300004.5);
}

// ------------------------------------------------------------------ lazy stack reads

TEST(Mrc, StackReaderReadsImageNOfTheFixture) {
  mrc::StackReader r(data_file("stack_float32.mrcs"));
  ASSERT_EQ(r.count(), 4);
  ASSERT_EQ(r.nx(), 16);
  ASSERT_EQ(r.ny(), 16);
  EXPECT_NEAR(r.header().pixel_size(), 1.5, 1e-6);
  Grid<float> all = mrc::read(data_file("stack_float32.mrcs"));
  for (int i : {2, 0, 3}) {
    Grid<float> im = r.read(i);
    EXPECT_EQ(std::memcmp(im.data(), all.section(i), 256 * sizeof(float)), 0);
    // make_fixtures.py: i*1000 + y*16 + x + N(0, 0.25) noise: 8 sigma.
    for (int y = 0; y < 16; ++y)
      for (int x = 0; x < 16; ++x) EXPECT_NEAR(im(x, y), i * 1000 + y * 16 + x, 2.0);
  }
  expect_input_error([&] { r.read(4); }, {"stack_float32.mrcs", "image 5", "has 4 images"});
  expect_input_error([&] { r.read(-1); }, {"stack_float32.mrcs", "image 0", "has 4 images"});
}

TEST(Mrc, StackReaderSeeksInAHugeStackWithoutLoadingIt) {
  // 200000 images of 32x32 float32 = 819 MB, as a sparse file: only image 123456 is written.
  TempDir t;
  const int n = 32, nz = 200000, index = 123456;
  Bytes h = make_header(n, n, nz, 2);
  set_int(h, 9, 1);
  write_bytes(t.file("big.mrcs"), h);
  std::vector<float> img(size_t(n) * n);
  for (size_t i = 0; i < img.size(); ++i) img[i] = float(i) * 0.5f - 7.f;
  {
    FILE* f = std::fopen(t.file("big.mrcs").c_str(), "r+b");
    ASSERT_TRUE(f);
    const uint64_t section = uint64_t(n) * n * 4;
    ASSERT_EQ(fseeko(f, off_t(1024 + section * index), SEEK_SET), 0);
    std::fwrite(img.data(), 4, img.size(), f);
    ASSERT_EQ(ftruncate(fileno(f), off_t(1024 + section * nz)), 0);
    std::fclose(f);
  }
  mrc::StackReader r(t.file("big.mrcs"));
  EXPECT_EQ(r.count(), nz);
  EXPECT_TRUE(r.header().is_stack());
  Grid<float> got = r.read(index);
  EXPECT_EQ(std::memcmp(got.data(), img.data(), img.size() * 4), 0);
  Grid<float> zero = r.read(index + 1);
  for (float v : zero) EXPECT_EQ(v, 0.f);
}

// ------------------------------------------------------------------ hand-built modes

TEST(Mrc, Mode0Int8IsSigned) {
  TempDir t;
  Bytes b = make_header(4, 1, 1, 0);
  for (unsigned char c : {0x00, 0x7f, 0x80, 0xff}) b.push_back(c);
  write_bytes(t.file("m0.mrc"), b);
  Grid<float> g = mrc::read(t.file("m0.mrc"));
  EXPECT_EQ(g[0], 0.f);
  EXPECT_EQ(g[1], 127.f);
  EXPECT_EQ(g[2], -128.f);
  EXPECT_EQ(g[3], -1.f);
  // The real file from the CZI data portal: a 4x4x4 ramp -128..127 (mrcfile reads the same).
  Grid<float> c = mrc::read(data_file("mrc/czi_signed_ints.mrc"));
  ASSERT_EQ(c.size(), 64u);
  EXPECT_EQ(*std::min_element(c.begin(), c.end()), -128.f);
  EXPECT_EQ(*std::max_element(c.begin(), c.end()), 127.f);
}

TEST(Mrc, Mode1Int16AndMode6UInt16) {
  TempDir t;
  Bytes b1 = make_header(3, 1, 1, 1);
  for (unsigned char c : {0x01, 0x00, 0xff, 0xff, 0x00, 0x80}) b1.push_back(c);  // 1, -1, -32768
  write_bytes(t.file("m1.mrc"), b1);
  Grid<float> g1 = mrc::read(t.file("m1.mrc"));
  EXPECT_EQ(g1[0], 1.f);
  EXPECT_EQ(g1[1], -1.f);
  EXPECT_EQ(g1[2], -32768.f);
  Bytes b6 = make_header(3, 1, 1, 6);
  for (unsigned char c : {0x01, 0x00, 0xff, 0xff, 0x00, 0x80}) b6.push_back(c);  // 1, 65535, 32768
  write_bytes(t.file("m6.mrc"), b6);
  Grid<float> g6 = mrc::read(t.file("m6.mrc"));
  EXPECT_EQ(g6[0], 1.f);
  EXPECT_EQ(g6[1], 65535.f);
  EXPECT_EQ(g6[2], 32768.f);
}

TEST(Mrc, Mode12Float16ByHand) {
  TempDir t;
  Bytes b = make_header(4, 1, 1, 12);
  // 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24 (subnormal), 0x7bff = 65504
  for (unsigned char c : {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b}) b.push_back(c);
  write_bytes(t.file("m12.mrc"), b);
  Grid<float> g = mrc::read(t.file("m12.mrc"));
  EXPECT_EQ(g[0], 1.f);
  EXPECT_EQ(g[1], -2.f);
  EXPECT_EQ(g[2], std::ldexp(1.f, -24));
  EXPECT_EQ(g[3], 65504.f);
}

TEST(Mrc, Mode101FourBitLowNibbleFirstRowsPaddedToBytes) {
  TempDir t;
  const int nx = 5, ny = 3, nz = 2;  // odd nx: 3 bytes per row, the last high nibble unused
  Bytes b = make_header(nx, ny, nz, 101);
  std::vector<int> expect;
  for (int s = 0; s < nz; ++s)
    for (int y = 0; y < ny; ++y) {
      int v[6];
      for (int x = 0; x < 6; ++x) v[x] = (s * 7 + y * 5 + x * 3) % 16;
      for (int x = 0; x < 6; x += 2) b.push_back((unsigned char)(v[x] | (v[x + 1] << 4)));
      for (int x = 0; x < nx; ++x) expect.push_back(v[x]);
    }
  write_bytes(t.file("m101.mrc"), b);
  Grid<float> g = mrc::read(t.file("m101.mrc"));
  ASSERT_EQ(g.nx(), nx);
  ASSERT_EQ(g.ny(), ny);
  ASSERT_EQ(g.nz(), nz);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i], float(expect[i])) << i;
  mrc::StackReader r(t.file("m101.mrc"));
  Grid<float> s1 = r.read(1);
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(s1[i], float(expect[15 + i]));
  // One byte short: rejected before reading.
  b.pop_back();
  write_bytes(t.file("m101short.mrc"), b);
  expect_input_error([&] { mrc::read(t.file("m101short.mrc")); }, {"m101short.mrc", "5x3x2", "1041 bytes"});
}

// ------------------------------------------------------------------ byte order and axes

// Swap every 32-bit header word except the "MAP " stamp, machine stamp and labels, and
// every data element of `elem` bytes.
Bytes to_big_endian(const Bytes& le, size_t elem, bool stamp) {
  Bytes b = le;
  for (size_t w = 0; w < 256; ++w) {
    if (w == 52 || w == 53 || (w >= 56)) continue;
    std::swap(b[4 * w], b[4 * w + 3]);
    std::swap(b[4 * w + 1], b[4 * w + 2]);
  }
  for (size_t i = 1024; i + elem <= b.size(); i += elem) std::reverse(b.begin() + long(i), b.begin() + long(i + elem));
  b[212] = stamp ? 0x11 : 0;
  b[213] = stamp ? 0x11 : 0;
  return b;
}

TEST(Mrc, BigEndianFilesReadCorrectlyWithOrWithoutMachineStamp) {
  TempDir t;
  Grid<float> v = random_grid(6, 4, 3, 7);
  mrc::WriteOptions o;
  o.pixel_size = 3.5;
  mrc::write(t.file("le.mrc"), v, o);
  Bytes le = read_bytes(t.file("le.mrc"));
  for (bool stamp : {true, false}) {
    write_bytes(t.file("be.mrc"), to_big_endian(le, 4, stamp));
    mrc::Header h;
    Grid<float> back = mrc::read(t.file("be.mrc"), &h);
    EXPECT_TRUE(h.big_endian);
    EXPECT_TRUE(bit_equal(v, back));
    EXPECT_NEAR(h.pixel_size(), 3.5, 1e-6);
    EXPECT_EQ(h.nversion, 20140);
    EXPECT_NE(mrc::describe(t.file("be.mrc")).find("big-endian"), std::string::npos);
  }
  // Little-endian with a zero stamp is still little-endian.
  le[212] = le[213] = 0;
  write_bytes(t.file("le0.mrc"), le);
  mrc::Header h0;
  EXPECT_TRUE(bit_equal(v, mrc::read(t.file("le0.mrc"), &h0)));
  EXPECT_FALSE(h0.big_endian);
  // Big-endian int16.
  Bytes b1 = make_header(2, 1, 1, 1);
  for (unsigned char c : {0x01, 0x02, 0xff, 0xfe}) b1.push_back(c);  // LE: 0x0201, 0xfeff
  write_bytes(t.file("be1.mrc"), to_big_endian(b1, 2, true));
  Grid<float> g = mrc::read(t.file("be1.mrc"));
  EXPECT_EQ(g[0], 513.f);
  EXPECT_EQ(g[1], -257.f);
}

TEST(Mrc, AxisOrderIsPermutedToXYZ) {
  // MAPC, MAPR, MAPS = 3, 1, 2: columns run along z, rows along x, sections along y.
  TempDir t;
  const int nc = 4, nr = 3, ns = 2;  // so X = 3, Y = 2, Z = 4
  Bytes b = make_header(nc, nr, ns, 2);
  set_int(b, 16, 3);
  set_int(b, 17, 1);
  set_int(b, 18, 2);
  for (int s = 0; s < ns; ++s)
    for (int r = 0; r < nr; ++r)
      for (int c = 0; c < nc; ++c) {
        float v = float(100 * c + 10 * r + s);  // value encodes (z = c, x = r, y = s)
        unsigned char w[4];
        std::memcpy(w, &v, 4);
        b.insert(b.end(), w, w + 4);
      }
  write_bytes(t.file("p.mrc"), b);
  mrc::Header h;
  Grid<float> g = mrc::read(t.file("p.mrc"), &h);
  ASSERT_EQ(g.nx(), 3);
  ASSERT_EQ(g.ny(), 2);
  ASSERT_EQ(g.nz(), 4);
  EXPECT_EQ(h.size_x(), 3);
  EXPECT_EQ(h.size_y(), 2);
  EXPECT_EQ(h.size_z(), 4);
  for (int z = 0; z < 4; ++z)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x) EXPECT_EQ(g(x, y, z), float(100 * z + 10 * x + y));
  // StackReader gives the same z-sections (this file is read whole: MAPS != 3).
  mrc::StackReader r(t.file("p.mrc"));
  ASSERT_EQ(r.count(), 4);
  for (int z = 0; z < 4; ++z) EXPECT_EQ(std::memcmp(r.read(z).data(), g.section(z), 6 * sizeof(float)), 0);
}

TEST(Mrc, SwappedRowsAndColumnsReadLazilyWithExtendedHeader) {
  // gemmi's 5i55_tiny.ccp4: 8x6x10 stored, MAPC/MAPR/MAPS = 2,1,3, 160-byte symmetry records.
  mrc::Header h;
  Grid<float> g = mrc::read(data_file("mrc/gemmi_5i55_tiny.ccp4"), &h);
  EXPECT_EQ(h.nsymbt, 160);
  ASSERT_EQ(g.nx(), 6);
  ASSERT_EQ(g.ny(), 8);
  ASSERT_EQ(g.nz(), 10);
  // Independent reading of the raw bytes: element (c, r, s) at 1024 + 160 + 4*((s*6 + r)*8 + c).
  Bytes raw = read_bytes(data_file("mrc/gemmi_5i55_tiny.ccp4"));
  for (int s = 0; s < 10; ++s)
    for (int r = 0; r < 6; ++r)
      for (int c = 0; c < 8; ++c) {
        float v;
        std::memcpy(&v, raw.data() + 1184 + 4 * ((s * 6 + r) * 8 + c), 4);
        EXPECT_EQ(g(r, c, s), v);  // column -> y, row -> x
      }
  mrc::StackReader sr(data_file("mrc/gemmi_5i55_tiny.ccp4"));
  for (int z = 0; z < 10; ++z) EXPECT_EQ(std::memcmp(sr.read(z).data(), g.section(z), 48 * sizeof(float)), 0);
}

TEST(Mrc, InvalidAxisOrderIsReadInFileOrderLikeMrcfile) {
  // MAPC/MAPR/MAPS = 10,11,12: mrcfile (permissive) reads the data in file order and
  // validate() reports "Invalid axis mapping"; Regula reads as 1,2,3 and says so in describe().
  mrc::Header h;
  Grid<float> g = mrc::read(data_file("mrc/imp_invalid_axes.mrc"), &h);
  EXPECT_EQ(g.nx(), 8);
  EXPECT_EQ(g.ny(), 10);
  EXPECT_EQ(g.nz(), 8);
  EXPECT_EQ(h.file_axes[0], 10);
  EXPECT_EQ(h.mapc, 1);
  std::string d = mrc::describe(data_file("mrc/imp_invalid_axes.mrc"));
  EXPECT_NE(d.find("10,11,12"), std::string::npos) << d;
  EXPECT_NE(d.find("invalid"), std::string::npos) << d;
}

// ------------------------------------------------------------------ bad input

TEST(Mrc, BadInputsGiveOneLineMessagesNamingFileAndPlace) {
  TempDir t;
  expect_input_error([&] { mrc::read(t.file("missing.mrc")); }, {"missing.mrc", "not found"});
  write_bytes(t.file("empty.mrc"), {});
  expect_input_error([&] { mrc::read_header(t.file("empty.mrc")); }, {"empty.mrc", "empty"});
  write_bytes(t.file("short.mrc"), Bytes(500, 0));
  expect_input_error([&] { mrc::read_header(t.file("short.mrc")); }, {"short.mrc", "500 bytes", "1024"});
  expect_input_error([&] { mrc::read_header(t.path().string()); }, {"directory"});

  // Truncated: header 128x128x11029 float32 but one section present (like drgnai's file).
  Bytes tr = make_header(128, 128, 11029, 2);
  tr.resize(1024 + 128 * 128 * 4, 0);
  write_bytes(t.file("trunc.mrcs"), tr);
  for (auto f : {+[](const std::string& p) { mrc::read(p); }, +[](const std::string& p) { mrc::StackReader r(p); },
                 +[](const std::string& p) { mrc::describe(p); }})
    expect_input_error([&] { f(t.file("trunc.mrcs")); },
                       {"trunc.mrcs", "128x128x11029", "722796544 bytes", "byte offset 1024", "66560 bytes",
                        "1 whole sections"});
  // IMOD's header-only file: 512x512x1 mode 1 with a 1024-byte extended header, no data.
  expect_input_error([&] { mrc::read(data_file("mrc/imod_headerTest.st")); },
                     {"imod_headerTest.st", "512x512x1", "byte offset 2048", "2048 bytes"});

  Bytes m5 = make_header(2, 2, 1, 5);
  m5.resize(1024 + 16);
  write_bytes(t.file("mode5.mrc"), m5);
  expect_input_error([&] { mrc::read(t.file("mode5.mrc")); }, {"mode5.mrc", "unknown mode 5", "byte 12"});
  set_int(m5, 3, 4);
  write_bytes(t.file("mode4.mrc"), m5);
  expect_input_error([&] { mrc::read(t.file("mode4.mrc")); }, {"mode4.mrc", "complex", "byte 12"});

  for (int bad : {0, -5}) {
    Bytes b = make_header(4, 4, 1, 2);
    set_int(b, 1, bad);
    b.resize(1024 + 64);
    write_bytes(t.file("size.mrc"), b);
    expect_input_error([&] { mrc::read_header(t.file("size.mrc")); },
                       {"size.mrc", "bytes 0-11", std::to_string(bad), "positive"});
  }
  // Huge sizes whose product overflows 64 bits must not allocate.
  Bytes huge = make_header(0x7fffffff, 0x7fffffff, 0x7fffffff, 2);
  huge.resize(1024 + 64);
  write_bytes(t.file("huge.mrc"), huge);
  expect_input_error([&] { mrc::read(t.file("huge.mrc")); }, {"huge.mrc", "more than 2^64", "1088 bytes"});

  Bytes ext = make_header(2, 2, 1, 2);
  set_int(ext, 23, 1 << 20);
  ext.resize(1024 + 16);
  write_bytes(t.file("ext.mrc"), ext);
  expect_input_error([&] { mrc::read(t.file("ext.mrc")); }, {"ext.mrc", "NSYMBT", "1049600", "1040 bytes"});
  set_int(ext, 23, -4);
  write_bytes(t.file("ext.mrc"), ext);
  expect_input_error([&] { mrc::read(t.file("ext.mrc")); }, {"ext.mrc", "NSYMBT = -4", "byte 92"});

  Bytes gz(2000, 0);
  gz[0] = 0x1f;
  gz[1] = 0x8b;
  write_bytes(t.file("x.mrc.gz"), gz);
  expect_input_error([&] { mrc::read(t.file("x.mrc.gz")); }, {"x.mrc.gz", "gzip"});

  mrc::WriteOptions o;
  o.mode = mrc::Mode::Packed4Bit;
  expect_input_error([&] { mrc::write(t.file("w.mrc"), Grid<float>(2, 2), o); }, {"w.mrc", "2 (float32)", "12", "101"});
  EXPECT_FALSE(fs::exists(t.file("w.mrc")));
}

// Integer modes (movies of counts): values round to the nearest integer and clamp to the mode's
// range; the header statistics describe the values as stored.
TEST(Mrc, WritesIntegerModes) {
  TempDir t;
  Grid<float> g(4, 2, 3);
  const float vals[] = {-300.f, -128.4f, -1.6f, 0.f, 0.49f, 1.5f, 126.6f, 300.f, 40000.f, 70000.f, 2.f, 3.f};
  for (size_t i = 0; i < 12; ++i) g[i] = vals[i];
  for (auto [mode, lo, hi] : {std::tuple{mrc::Mode::Int8, -128.f, 127.f}, std::tuple{mrc::Mode::Int16, -32768.f, 32767.f},
                              std::tuple{mrc::Mode::UInt16, 0.f, 65535.f}}) {
    mrc::WriteOptions o;
    o.mode = mode;
    o.is_stack = true;
    const std::string f = t.file(fmt::format("m{}.mrcs", int(mode)));
    mrc::write(f, g, o);
    mrc::Header h;
    Grid<float> r = mrc::read(f, &h);
    EXPECT_EQ(h.mode, int(mode));
    float mx = -1e9f;
    for (size_t i = 0; i < 12; ++i) {
      const float want = std::clamp(std::nearbyint(vals[i]), lo, hi);
      EXPECT_EQ(r[i], want) << "mode " << int(mode) << " value " << vals[i];
      mx = std::max(mx, want);
    }
    EXPECT_EQ(h.dmax, mx);
  }
}

TEST(Mrc, DescribeSummarisesAStack) {
  std::string d = mrc::describe(data_file("stack_float32.mrcs"));
  EXPECT_NE(d.find("16 x 16 x 4 (x, y, z): a stack of 4 images"), std::string::npos) << d;
  EXPECT_NE(d.find("2 (float32)"), std::string::npos) << d;
  EXPECT_NE(d.find("1.5000 Å"), std::string::npos) << d;
  EXPECT_NE(d.find("little-endian"), std::string::npos) << d;
  // Data statistics streamed from the file equal those of the whole array.
  Grid<float> all = mrc::read(data_file("stack_float32.mrcs"));
  mrc::Stats s = reference_stats(all);
  EXPECT_NE(d.find(fmt::format("data stats      min {:.6g} max {:.6g}", s.min, s.max)), std::string::npos) << d;
}

// ------------------------------------------------------------------ regula convert

TEST(MrcConvert, ConvertsAndFailsCleanly) {
  TempDir t;
  const std::string bin = REGULA_BINARY;
  if (!fs::exists(bin)) GTEST_SKIP() << "regula binary not built: " << bin;
  // A good stack: mode 12 output, pixel size overridden, stays a stack.
  ASSERT_EQ(run(bin + " convert --i " + data_file("stack_float32.mrcs") + " --o " + t.file("c.mrcs") +
                " --mode 12 --angpix 2.0"),
            0);
  mrc::Header h;
  Grid<float> c = mrc::read(t.file("c.mrcs"), &h);
  EXPECT_EQ(h.mode, 12);
  EXPECT_TRUE(h.is_stack());
  EXPECT_NEAR(h.pixel_size(), 2.0, 1e-6);
  Grid<float> ref = mrc::read(data_file("stack_float32.mrcs"));
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(c[i], ref[i], std::abs(ref[i]) / 1024.f);  // half ulp 2^-11
  // Permuted input becomes x, y, z.
  ASSERT_EQ(run(bin + " convert --i " + data_file("mrc/gemmi_5i55_tiny.ccp4") + " --o " + t.file("g.mrc")), 0);
  mrc::Header hg;
  EXPECT_TRUE(bit_equal(mrc::read(t.file("g.mrc"), &hg), mrc::read(data_file("mrc/gemmi_5i55_tiny.ccp4"))));
  EXPECT_EQ(hg.mapc, 1);
  EXPECT_EQ(hg.ispg, 1);

  // Bad inputs: exit status 1, no output and no temporary file left behind.
  for (const std::string& in : {data_file("mrc/imod_headerTest.st"), t.file("missing.mrc")}) {
    EXPECT_EQ(run(bin + " convert --i " + in + " --o " + t.file("bad.mrc")), 1) << in;
    EXPECT_FALSE(fs::exists(t.file("bad.mrc")));
  }
  EXPECT_EQ(run(bin + " convert --i " + data_file("stack_float32.mrcs") + " --o " + t.file("bad.mrc") + " --mode 6"),
            1);
  EXPECT_FALSE(fs::exists(t.file("bad.mrc")));
  size_t n = 0;
  for (auto& e : fs::directory_iterator(t.path())) n += e.path().filename().string().find(".tmp") != std::string::npos;
  EXPECT_EQ(n, 0u);
}

// MRC2014 reader and writer. See mrc.hpp for the conventions.
#include "regula/io/mrc.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <limits>
#include <memory>
#include <spdlog/spdlog.h>
#include <vector>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"

namespace regula::mrc {
namespace {

constexpr size_t kHeaderBytes = 1024;
// Sections are read in chunks of about this many bytes (at least one section).
constexpr size_t kChunkBytes = size_t(8) << 20;

bool mode_supported(int mode) {
  return mode == 0 || mode == 1 || mode == 2 || mode == 6 || mode == 12 || mode == 101;
}

uint32_t bswap32(uint32_t v) {
  return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}
uint16_t bswap16(uint16_t v) { return uint16_t((v >> 8) | (v << 8)); }

int32_t get_i32(const unsigned char* h, size_t word, bool swap) {
  uint32_t v;
  std::memcpy(&v, h + 4 * word, 4);
  if (swap) v = bswap32(v);
  return int32_t(v);
}
float get_f32(const unsigned char* h, size_t word, bool swap) {
  uint32_t v;
  std::memcpy(&v, h + 4 * word, 4);
  if (swap) v = bswap32(v);
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
// The writer always writes little-endian.
void put_u32le(unsigned char* h, size_t word, uint32_t v) {
  for (int i = 0; i < 4; ++i) h[4 * word + size_t(i)] = (unsigned char)((v >> (8 * i)) & 0xffu);
}
void put_i32(unsigned char* h, size_t word, int32_t v) { put_u32le(h, word, uint32_t(v)); }
void put_f32(unsigned char* h, size_t word, float v) { put_u32le(h, word, std::bit_cast<uint32_t>(v)); }

float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      bits = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, overflow to infinity, NaN kept.
uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (absx < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (absx < 0x33000000u) return uint16_t(sign);  // < 2^-25 rounds to 0
    uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    int shift = 113 - int(absx >> 23) + 13;  // 126 - e + ... gives the subnormal shift
    uint32_t half_mant = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1u))) ++half_mant;
    return uint16_t(sign | half_mant);
  }
  uint32_t h = ((absx >> 23) - 112) << 10 | ((absx >> 13) & 0x3ffu);
  uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

struct FileCloser {
  void operator()(FILE* f) const {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

FilePtr open_for_read(const std::string& path, uint64_t& size) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) input_error("{}: file not found", path);
  if (std::filesystem::is_directory(path, ec)) input_error("{}: is a directory, expected an MRC file", path);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) input_error("{}: cannot open: {}", path, std::strerror(errno));
  FilePtr fp(f);
  if (fseeko(f, 0, SEEK_END) != 0) input_error("{}: cannot seek to the end of the file", path);
  off_t end = ftello(f);
  if (end < 0) input_error("{}: cannot determine the file size", path);
  size = uint64_t(end);
  std::rewind(f);
  return fp;
}

void read_at(FILE* f, const std::string& path, uint64_t offset, void* out, size_t n) {
  if (offset > uint64_t(std::numeric_limits<off_t>::max()) || fseeko(f, off_t(offset), SEEK_SET) != 0)
    input_error("{}: cannot seek to byte offset {}", path, offset);
  if (n && std::fread(out, 1, n, f) != n)
    input_error("{}: could not read {} bytes at byte offset {} (file truncated or changed while reading?)", path, n,
                offset);
}

// Plausibility of the header read with a given byte order.
bool plausible(const unsigned char* raw, bool swap) {
  int nx = get_i32(raw, 0, swap), ny = get_i32(raw, 1, swap), nz = get_i32(raw, 2, swap);
  int mode = get_i32(raw, 3, swap);
  return nx > 0 && ny > 0 && nz > 0 && nx < (1 << 24) && ny < (1 << 24) && nz < (1 << 28) &&
         (mode_supported(mode) || mode == 3 || mode == 4);
}

// Byte order from the machine stamp (byte 212): 0x44 little-endian, 0x11 big-endian;
// when the stamp is missing or odd (0 0 0 0, 0 0 0x44 0x44 ...), whichever order
// makes NX, NY, NZ and MODE plausible. Returns true for big-endian.
bool detect_big_endian(const unsigned char* raw) {
  const unsigned char stamp = raw[212];
  const bool native_big = std::endian::native == std::endian::big;
  const bool le_ok = plausible(raw, native_big), be_ok = plausible(raw, !native_big);
  if (stamp == 0x44 && le_ok) return false;
  if (stamp == 0x11 && be_ok) return true;
  if (le_ok) return false;
  if (be_ok) return true;
  return stamp == 0x11;  // nothing plausible: diagnosed by the caller
}

Header parse_header(const unsigned char* raw, const std::string& path) {
  Header h;
  h.big_endian = detect_big_endian(raw);
  const bool swap = h.big_endian != (std::endian::native == std::endian::big);
  h.nx = get_i32(raw, 0, swap);
  h.ny = get_i32(raw, 1, swap);
  h.nz = get_i32(raw, 2, swap);
  h.mode = get_i32(raw, 3, swap);
  h.nxstart = get_i32(raw, 4, swap);
  h.nystart = get_i32(raw, 5, swap);
  h.nzstart = get_i32(raw, 6, swap);
  h.mx = get_i32(raw, 7, swap);
  h.my = get_i32(raw, 8, swap);
  h.mz = get_i32(raw, 9, swap);
  for (size_t i = 0; i < 3; ++i) h.cell[i] = get_f32(raw, 10 + i, swap);
  for (size_t i = 0; i < 3; ++i) h.cell_angles[i] = get_f32(raw, 13 + i, swap);
  for (size_t i = 0; i < 3; ++i) h.file_axes[i] = get_i32(raw, 16 + i, swap);
  h.dmin = get_f32(raw, 19, swap);
  h.dmax = get_f32(raw, 20, swap);
  h.dmean = get_f32(raw, 21, swap);
  h.ispg = get_i32(raw, 22, swap);
  h.nsymbt = get_i32(raw, 23, swap);
  std::memcpy(h.exttyp.data(), raw + 104, 4);
  h.nversion = get_i32(raw, 27, swap);
  for (size_t i = 0; i < 3; ++i) h.origin[i] = get_f32(raw, 49 + i, swap);
  h.has_map_stamp = std::memcmp(raw + 208, "MAP", 3) == 0;
  std::memcpy(h.machine_stamp.data(), raw + 212, 4);
  h.rms = get_f32(raw, 54, swap);
  h.nlabl = get_i32(raw, 55, swap);
  for (size_t i = 0; i < 10; ++i) {
    const char* l = reinterpret_cast<const char*>(raw + 224 + 80 * i);
    size_t len = 0;
    while (len < 80 && l[len] != 0) ++len;
    std::string s(l, len);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) s.pop_back();
    h.labels[i] = s;
  }

  if (h.nx <= 0 || h.ny <= 0 || h.nz <= 0)
    input_error("{}: header bytes 0-11 give dimensions NX, NY, NZ = {}, {}, {} (in either byte order); expected "
                "positive sizes (not an MRC file?)",
                path, h.nx, h.ny, h.nz);
  if (h.mode == 3 || h.mode == 4)
    input_error("{}: mode {} (header byte 12) is a complex mode; only real modes 0, 1, 2, 6, 12 and 101 are supported",
                path, mode_name(h.mode));
  if (!mode_supported(h.mode))
    input_error("{}: unknown mode {} (header byte 12); expected 0, 1, 2, 6, 12 or 101", path, h.mode);
  if (h.nsymbt < 0)
    input_error("{}: negative extended header size NSYMBT = {} (header byte 92); expected 0 or more", path, h.nsymbt);
  const int* a = h.file_axes.data();
  const bool perm = std::is_permutation(a, a + 3, std::array<int, 3>{1, 2, 3}.begin());
  if (perm) {
    h.mapc = a[0];
    h.mapr = a[1];
    h.maps = a[2];
  } else {
    // mrcfile (permissive) reads such files in file order and flags the header as
    // invalid; so do we, with a warning.
    spdlog::warn("{}: MAPC/MAPR/MAPS (header bytes 64-75) = {},{},{} is not a permutation of 1,2,3; reading the data "
                 "as 1,2,3 (columns x, rows y, sections z)",
                 path, a[0], a[1], a[2]);
  }
  return h;
}

uint64_t row_bytes(const Header& h) {
  switch (h.mode) {
    case 0: return uint64_t(h.nx);
    case 1: case 6: case 12: return 2 * uint64_t(h.nx);
    case 2: return 4 * uint64_t(h.nx);
    case 101: return (uint64_t(h.nx) + 1) / 2;  // two pixels per byte, rows padded to a byte
    default: return 0;
  }
}

size_t section_bytes(const Header& h) { return size_t(row_bytes(h) * uint64_t(h.ny)); }

// Sizes in the header against the file length, without overflow, before anything
// is allocated from them.
void check_length(const Header& h, uint64_t file_size, const std::string& path) {
  const uint64_t off = h.data_offset();
  if (off > file_size)
    input_error("{}: extended header of {} bytes (NSYMBT, header byte 92) ends at byte offset {} but the file has "
                "only {} bytes",
                path, h.nsymbt, off, file_size);
  const uint64_t avail = file_size - off;
  uint64_t sb = 0, need = 0;
  bool overflow = __builtin_mul_overflow(row_bytes(h), uint64_t(h.ny), &sb);
  overflow = overflow || __builtin_mul_overflow(sb, uint64_t(h.nz), &need);
  if (overflow || need > avail) {
    const std::string need_s = overflow ? std::string("more than 2^64") : std::to_string(need);
    const uint64_t whole = (!overflow && sb) ? avail / sb : 0;
    input_error("{}: header says {}x{}x{} mode {} ({} bytes of data from byte offset {}) but the file has {} bytes "
                "(only {} whole sections; truncated file or corrupt header)",
                path, h.nx, h.ny, h.nz, mode_name(h.mode), need_s, off, file_size, whole);
  }
  if (need < avail)
    spdlog::debug("{}: {} bytes after the data ignored", path, avail - need);
}

Header read_checked_header(FILE* f, const std::string& path, uint64_t size) {
  if (size == 0) input_error("{}: empty file; expected an MRC header of 1024 bytes", path);
  if (size >= 3) {
    unsigned char magic[3];
    read_at(f, path, 0, magic, 3);
    if (magic[0] == 0x1f && magic[1] == 0x8b) input_error("{}: gzip-compressed file; decompress it first", path);
    if (magic[0] == 'B' && magic[1] == 'Z' && magic[2] == 'h')
      input_error("{}: bzip2-compressed file; decompress it first", path);
  }
  if (size < kHeaderBytes)
    input_error("{}: file of {} bytes is too short for the 1024-byte MRC header", path, size);
  unsigned char raw[kHeaderBytes];
  read_at(f, path, 0, raw, kHeaderBytes);
  Header h = parse_header(raw, path);
  check_length(h, size, path);
  return h;
}

// Convert `count` sections in the file's layout to floats (count*nx*ny values).
// File rows (nx values each, `rows` of them) to floats, row r at out + r * stride.
void convert_rows(const Header& h, const unsigned char* in, size_t rows, float* out, size_t stride) {
  const size_t nx = size_t(h.nx);
  const bool swap = h.big_endian != (std::endian::native == std::endian::big);
  auto u16 = [&](const unsigned char* p, size_t i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    return v;
  };
  for (size_t r = 0; r < rows; ++r) {
    float* o = out + r * stride;
    switch (h.mode) {
      case 0: {
        const unsigned char* p = in + r * nx;
        for (size_t i = 0; i < nx; ++i) o[i] = float(int8_t(p[i]));
        break;
      }
      case 1:
      case 6:
      case 12: {
        const unsigned char* p = in + 2 * r * nx;
        if (h.mode == 6 && !swap)
          for (size_t i = 0; i < nx; ++i) o[i] = float(u16(p, i));
        else if (h.mode == 1 && !swap)
          for (size_t i = 0; i < nx; ++i) o[i] = float(int16_t(u16(p, i)));
        else
          for (size_t i = 0; i < nx; ++i) {
            const uint16_t v = swap ? bswap16(u16(p, i)) : u16(p, i);
            o[i] = h.mode == 6 ? float(v) : h.mode == 1 ? float(int16_t(v)) : half_to_float(v);
          }
        break;
      }
      case 2: {
        const unsigned char* p = in + 4 * r * nx;
        if (!swap) {
          std::memcpy(o, p, 4 * nx);
        } else {
          for (size_t i = 0; i < nx; ++i) {
            uint32_t v;
            std::memcpy(&v, p + 4 * i, 4);
            o[i] = std::bit_cast<float>(bswap32(v));
          }
        }
        break;
      }
      case 101: {
        const unsigned char* p = in + r * ((nx + 1) / 2);
        for (size_t x = 0; x < nx; ++x) {
          const unsigned char b = p[x / 2];
          o[x] = float((x & 1) ? (b >> 4) : (b & 0x0f));
        }
        break;
      }
      default: break;
    }
  }
}

void convert_sections(const Header& h, const unsigned char* in, size_t count, float* out) {
  convert_rows(h, in, size_t(h.ny) * count, out, size_t(h.nx));
}

// A byte buffer that is not zero-filled when it grows (it is always read into before use).
class RawBuffer {
 public:
  void resize(size_t n) {
    if (n > cap_) {
      p_.reset(new unsigned char[n]);
      cap_ = n;
    }
  }
  unsigned char* data() { return p_.get(); }

 private:
  std::unique_ptr<unsigned char[]> p_;
  size_t cap_ = 0;
};

// Read sections [first, first + count) in chunks of about kChunkBytes and hand each
// chunk to fn(first_section, n_sections, floats).
template <class Fn>
void stream_sections(FILE* f, const std::string& path, const Header& h, int first, int count, Fn&& fn) {
  const size_t sb = section_bytes(h);
  const size_t ns = size_t(h.nx) * size_t(h.ny);
  const size_t per_chunk = std::max<size_t>(1, kChunkBytes / std::max<size_t>(sb, 1));
  RawBuffer buf;
  std::vector<float> vals;
  for (int s = first; s < first + count;) {
    const size_t k = std::min<size_t>(per_chunk, size_t(first + count - s));
    buf.resize(k * sb);
    vals.resize(k * ns);
    read_at(f, path, h.data_offset() + uint64_t(sb) * uint64_t(s), buf.data(), k * sb);
    convert_sections(h, buf.data(), k, vals.data());
    fn(s, k, vals.data());
    s += int(k);
  }
}

// Output sizes and strides: file element (c, r, s) goes to
// c*stride[0] + r*stride[1] + s*stride[2] of the x-fastest grid.
struct Permutation {
  int dims[3];       // output sizes x, y, z
  size_t stride[3];  // output strides for file axes c, r, s
};

Permutation permutation(const Header& h) {
  Permutation p{};
  const int file_n[3] = {h.nx, h.ny, h.nz};
  const int axis[3] = {h.mapc - 1, h.mapr - 1, h.maps - 1};  // output axis of file axis c, r, s
  for (int i = 0; i < 3; ++i) p.dims[axis[i]] = file_n[i];
  const size_t out_stride[3] = {1, size_t(p.dims[0]), size_t(p.dims[0]) * size_t(p.dims[1])};
  for (int i = 0; i < 3; ++i) p.stride[i] = out_stride[axis[i]];
  return p;
}

bool identity_axes(const Header& h) { return h.mapc == 1 && h.mapr == 2 && h.maps == 3; }

// Mean and sum of squared deviations per block (two passes), merged across blocks
// (Chan et al.), so the rms is accurate even when |mean| >> rms.
struct StatsAccumulator {
  double min = std::numeric_limits<double>::infinity(), max = -std::numeric_limits<double>::infinity();
  double mean = 0, m2 = 0;
  size_t n = 0;
  void add(const float* d, size_t count) {
    double s = 0, lo = min, hi = max;
    size_t k = 0;
    for (size_t i = 0; i < count; ++i) {
      const double v = d[i];
      if (std::isnan(v)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      s += v;
      ++k;
    }
    if (k == 0) return;
    min = lo;
    max = hi;
    const double bmean = s / double(k);
    double bm2 = 0;
    for (size_t i = 0; i < count; ++i) {
      const double v = d[i];
      if (std::isnan(v)) continue;
      bm2 += (v - bmean) * (v - bmean);
    }
    const double delta = bmean - mean;
    const double nn = double(n + k);
    mean += delta * double(k) / nn;
    m2 += bm2 + delta * delta * double(n) * double(k) / nn;
    n += k;
  }
  Stats stats() const {
    Stats st;
    if (n == 0) return st;
    st.min = min;
    st.max = max;
    st.mean = mean;
    st.rms = std::sqrt(std::max(0.0, m2 / double(n)));
    return st;
  }
};

void fill_header(unsigned char* raw, int nx, int ny, int nz, const WriteOptions& opt, const Stats& st) {
  std::memset(raw, 0, kHeaderBytes);
  const bool stack = opt.is_stack || nz == 1;
  const int mz = stack ? 1 : nz;
  const double px = std::isfinite(opt.pixel_size) && opt.pixel_size > 0 ? opt.pixel_size : 0.0;
  put_i32(raw, 0, nx);
  put_i32(raw, 1, ny);
  put_i32(raw, 2, nz);
  put_i32(raw, 3, int(opt.mode));
  put_i32(raw, 7, nx);
  put_i32(raw, 8, ny);
  put_i32(raw, 9, mz);
  put_f32(raw, 10, float(px * nx));
  put_f32(raw, 11, float(px * ny));
  put_f32(raw, 12, float(px * mz));
  for (size_t i = 13; i < 16; ++i) put_f32(raw, i, 90.f);
  put_i32(raw, 16, 1);
  put_i32(raw, 17, 2);
  put_i32(raw, 18, 3);
  put_f32(raw, 19, float(st.min));
  put_f32(raw, 20, float(st.max));
  put_f32(raw, 21, float(st.mean));
  put_i32(raw, 22, stack ? 0 : 1);
  put_i32(raw, 23, 0);
  put_i32(raw, 27, 20140);
  for (size_t i = 0; i < 3; ++i) put_f32(raw, 49 + i, opt.origin[i]);
  std::memcpy(raw + 208, "MAP ", 4);
  raw[212] = 0x44;
  raw[213] = 0x44;
  put_f32(raw, 54, float(st.rms));
  std::string label = opt.label.substr(0, 80);
  for (auto& c : label)
    if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) c = ' ';
  while (!label.empty() && label.back() == ' ') label.pop_back();
  put_i32(raw, 55, label.empty() ? 0 : 1);
  if (!label.empty()) {
    std::memcpy(raw + 224, label.data(), label.size());
    for (size_t i = label.size(); i < 80; ++i) raw[224 + i] = ' ';
  }
}

// Encode floats in the output mode; `rounded` receives the values as stored (for
// float16 the rounded values) so that the header statistics describe the file.
// Returns the number of finite values that overflowed to infinity.
size_t encode(const float* data, size_t n, Mode mode, std::vector<unsigned char>& out, std::vector<float>& rounded) {
  size_t overflow = 0;
  if (mode == Mode::Float32) {
    out.resize(4 * n);
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(out.data(), data, 4 * n);
    } else {
      for (size_t i = 0; i < n; ++i) {
        const uint32_t v = bswap32(std::bit_cast<uint32_t>(data[i]));
        std::memcpy(out.data() + 4 * i, &v, 4);
      }
    }
    rounded.assign(data, data + n);
  } else if (mode == Mode::Int8 || mode == Mode::Int16 || mode == Mode::UInt16) {
    // Integer modes: rounded to the nearest integer and clamped to the mode's range (a clamped
    // value counts as an overflow); NaN is written as 0.
    const double lo = mode == Mode::Int8 ? -128.0 : mode == Mode::Int16 ? -32768.0 : 0.0;
    const double hi = mode == Mode::Int8 ? 127.0 : mode == Mode::Int16 ? 32767.0 : 65535.0;
    const size_t w = mode == Mode::Int8 ? 1 : 2;
    out.resize(w * n);
    rounded.resize(n);
    for (size_t i = 0; i < n; ++i) {
      double v = std::isnan(data[i]) ? 0.0 : std::nearbyint(double(data[i]));
      if (v < lo || v > hi) {
        v = std::clamp(v, lo, hi);
        ++overflow;
      }
      rounded[i] = float(v);
      if (w == 1) {
        out[i] = (unsigned char)int8_t(v);
      } else {
        const uint16_t u = mode == Mode::UInt16 ? uint16_t(v) : uint16_t(int16_t(v));
        out[2 * i] = (unsigned char)(u & 0xffu);
        out[2 * i + 1] = (unsigned char)(u >> 8);
      }
    }
  } else {
    out.resize(2 * n);
    rounded.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t hv = float_to_half(data[i]);
      out[2 * i] = (unsigned char)(hv & 0xffu);
      out[2 * i + 1] = (unsigned char)(hv >> 8);
      rounded[i] = half_to_float(hv);
      if (std::isinf(rounded[i]) && std::isfinite(data[i])) ++overflow;
    }
  }
  return overflow;
}

void check_write_options(const WriteOptions& opt, const std::string& path) {
  if (opt.mode == Mode::Packed4Bit || !mode_supported(int(opt.mode)))
    input_error("{}: can only write modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16) or 12 (float16), not mode {}",
                path, int(opt.mode));
}

void warn_overflow(const std::string& path, size_t n, Mode mode) {
  if (!n) return;
  if (mode == Mode::Float16)
    spdlog::warn("{}: {} values beyond the float16 range (+-65504) were written as infinity", path, n);
  else
    spdlog::warn("{}: {} values outside the range of mode {} were clamped", path, n, mode_name(int(mode)));
}

}  // namespace

std::string mode_name(int mode) {
  switch (mode) {
    case 0: return "0 (int8)";
    case 1: return "1 (int16)";
    case 2: return "2 (float32)";
    case 3: return "3 (complex int16)";
    case 4: return "4 (complex float32)";
    case 6: return "6 (uint16)";
    case 12: return "12 (float16)";
    case 101: return "101 (4-bit)";
    default: return fmt::format("{} (unknown)", mode);
  }
}

// ---------------------------------------------------------------- Header

int Header::size_x() const { return mapc == 1 ? nx : mapr == 1 ? ny : nz; }
int Header::size_y() const { return mapc == 2 ? nx : mapr == 2 ? ny : nz; }
int Header::size_z() const { return mapc == 3 ? nx : mapr == 3 ? ny : nz; }

std::array<double, 3> Header::voxel_size() const {
  std::array<double, 3> v{0, 0, 0};
  const int m[3] = {mx, my, mz};
  for (size_t i = 0; i < 3; ++i)
    if (m[i] > 0 && std::isfinite(cell[i]) && cell[i] > 0) v[i] = double(cell[i]) / double(m[i]);
  return v;
}
double Header::pixel_size() const { return voxel_size()[0]; }
bool Header::is_stack() const { return ispg == 0 && nz > 1 && mz != nz; }
bool Header::is_volume() const { return nz > 1 && !is_stack(); }
size_t Header::bytes_per_section() const { return section_bytes(*this); }

// ---------------------------------------------------------------- reading

Header read_header(const std::string& path) {
  uint64_t size = 0;
  FilePtr f = open_for_read(path, size);
  return read_checked_header(f.get(), path, size);
}

Grid<float> read(const std::string& path, Header* header) {
  uint64_t size = 0;
  FilePtr f = open_for_read(path, size);
  const Header h = read_checked_header(f.get(), path, size);
  const Permutation p = permutation(h);
  Grid<float> out(p.dims[0], p.dims[1], p.dims[2]);
  const size_t ns = size_t(h.nx) * size_t(h.ny);
  const bool ident = identity_axes(h);
  stream_sections(f.get(), path, h, 0, h.nz, [&](int first, size_t k, const float* v) {
    if (ident) {
      std::copy(v, v + k * ns, out.data() + size_t(first) * ns);
      return;
    }
    for (size_t j = 0; j < k; ++j) {
      const size_t s = size_t(first) + j;
      const float* sec = v + j * ns;
      for (size_t r = 0; r < size_t(h.ny); ++r)
        for (size_t c = 0; c < size_t(h.nx); ++c)
          out[c * p.stride[0] + r * p.stride[1] + s * p.stride[2]] = sec[r * size_t(h.nx) + c];
    }
  });
  if (header) *header = h;
  return out;
}

// ---------------------------------------------------------------- StackReader

struct StackReader::Impl {
  std::string path;
  Header h;
  FilePtr f;
  RawBuffer buf;
  std::vector<float> sec;  // a file section, when rows and columns are swapped
  Grid<float> whole;       // only for files whose sections are not z-slices (MAPS != 3)
};

StackReader::StackReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  uint64_t size = 0;
  impl_->f = open_for_read(path, size);
  impl_->h = read_checked_header(impl_->f.get(), path, size);
  if (impl_->h.maps != 3) {
    impl_->whole = mrc::read(path);
    impl_->f.reset();
  }
}
StackReader::~StackReader() = default;
StackReader::StackReader(StackReader&&) noexcept = default;
StackReader& StackReader::operator=(StackReader&&) noexcept = default;

int StackReader::count() const { return impl_->h.size_z(); }
int StackReader::nx() const { return impl_->h.size_x(); }
int StackReader::ny() const { return impl_->h.size_y(); }
const Header& StackReader::header() const { return impl_->h; }
const std::string& StackReader::path() const { return impl_->path; }

void StackReader::read_into(int index, float* out) { read_into(index, out, size_t(nx())); }

void StackReader::read_into(int index, float* out, size_t row_stride) {
  if (index < 0 || index >= count())
    input_error("{}: image {} (1-based) requested but the stack has {} images", impl_->path, int64_t(index) + 1,
                count());
  const size_t ns = size_t(nx()) * size_t(ny());
  if (!impl_->whole.empty()) {
    for (int y = 0; y < ny(); ++y)
      std::memcpy(out + size_t(y) * row_stride, impl_->whole.section(index) + size_t(y) * size_t(nx()),
                  size_t(nx()) * sizeof(float));
    return;
  }
  const Header& h = impl_->h;
  const size_t sb = section_bytes(h);
  if (h.mapc == 1) {
    // In chunks of rows through a buffer of about 1 MB (kept in cache, and no large buffer to fault in
    // for every micrograph).
    const size_t rb = size_t(row_bytes(h)), rows = std::max<size_t>(1, (size_t(1) << 20) / std::max<size_t>(rb, 1));
    impl_->buf.resize(std::min(size_t(h.ny), rows) * rb);
    for (size_t r0 = 0; r0 < size_t(h.ny); r0 += rows) {
      const size_t k = std::min(rows, size_t(h.ny) - r0);
      read_at(impl_->f.get(), impl_->path, h.data_offset() + uint64_t(sb) * uint64_t(index) + uint64_t(r0 * rb),
              impl_->buf.data(), k * rb);
      convert_rows(h, impl_->buf.data(), k, out + r0 * row_stride, row_stride);
    }
    return;
  }
  impl_->buf.resize(sb);
  read_at(impl_->f.get(), impl_->path, h.data_offset() + uint64_t(sb) * uint64_t(index), impl_->buf.data(), sb);
  // MAPC = 2, MAPR = 1: file columns run along y; transpose.
  impl_->sec.resize(ns);
  convert_sections(h, impl_->buf.data(), 1, impl_->sec.data());
  for (size_t r = 0; r < size_t(h.ny); ++r)
    for (size_t c = 0; c < size_t(h.nx); ++c) out[c * row_stride + r] = impl_->sec[r * size_t(h.nx) + c];
}

Grid<float> StackReader::read(int index) {
  if (index < 0 || index >= count())
    input_error("{}: image {} (1-based) requested but the stack has {} images", impl_->path, int64_t(index) + 1,
                count());
  Grid<float> img(nx(), ny());
  read_into(index, img.data());
  return img;
}

// ---------------------------------------------------------------- writing

Stats compute_stats(const float* data, size_t n) {
  StatsAccumulator acc;
  acc.add(data, n);
  return acc.stats();
}

void write(const std::string& path, const Grid<float>& data, const WriteOptions& opt) {
  check_write_options(opt, path);
  if (data.empty()) input_error("{}: refusing to write an empty image", path);
  // Float32 on a little-endian machine: the values as they are, written from where they are (no copy:
  // a micrograph is 16-64 MB); other modes through encode().
  const bool as_is = opt.mode == Mode::Float32 && std::endian::native == std::endian::little;
  std::vector<unsigned char> bytes;
  std::vector<float> rounded;
  if (!as_is) warn_overflow(path, encode(data.data(), data.size(), opt.mode, bytes, rounded), opt.mode);
  const Stats st = as_is ? compute_stats(data.data(), data.size()) : compute_stats(rounded.data(), rounded.size());
  unsigned char raw[kHeaderBytes];
  fill_header(raw, data.nx(), data.ny(), data.nz(), opt, st);
  AtomicFile f(path);
  f.write(raw, kHeaderBytes);
  if (as_is)
    f.write(data.data(), 4 * data.size());
  else
    f.write(bytes.data(), bytes.size());
  f.commit();
}

struct StackWriter::Impl {
  std::unique_ptr<AtomicFile> file;
  int nx = 0, ny = 0, count = 0;
  size_t overflow = 0;
  WriteOptions opt;
  StatsAccumulator acc;
  std::vector<unsigned char> bytes;
  std::vector<float> rounded;
};

StackWriter::StackWriter(const std::string& path, int nx, int ny, const WriteOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  check_write_options(opt, path);
  if (nx <= 0 || ny <= 0) input_error("{}: image size must be positive, got {}x{}", path, nx, ny);
  impl_->nx = nx;
  impl_->ny = ny;
  impl_->opt = opt;
  impl_->opt.is_stack = true;
  impl_->file = std::make_unique<AtomicFile>(path);
  unsigned char raw[kHeaderBytes] = {};
  impl_->file->write(raw, kHeaderBytes);  // placeholder, rewritten by commit()
}
StackWriter::~StackWriter() = default;

void StackWriter::append(const Grid<float>& image) {
  if (image.nx() != impl_->nx || image.ny() != impl_->ny || image.nz() != 1)
    input_error("{}: image {} is {}x{}x{}, expected {}x{}", impl_->file->path(), impl_->count + 1, image.nx(),
                image.ny(), image.nz(), impl_->nx, impl_->ny);
  append(image.data());
}

void StackWriter::append(const float* image) {
  if (impl_->count == std::numeric_limits<int>::max())
    input_error("{}: more than {} images in one stack", impl_->file->path(), impl_->count);
  const size_t n = size_t(impl_->nx) * size_t(impl_->ny);
  impl_->overflow += encode(image, n, impl_->opt.mode, impl_->bytes, impl_->rounded);
  impl_->acc.add(impl_->rounded.data(), n);
  impl_->file->write(impl_->bytes.data(), impl_->bytes.size());
  ++impl_->count;
}

int StackWriter::count() const { return impl_->count; }

void StackWriter::commit() {
  if (impl_->count == 0) input_error("{}: no images to write", impl_->file->path());
  unsigned char raw[kHeaderBytes];
  fill_header(raw, impl_->nx, impl_->ny, impl_->count, impl_->opt, impl_->acc.stats());
  FILE* f = impl_->file->handle();
  if (std::fflush(f) != 0 || std::fseek(f, 0, SEEK_SET) != 0 || std::fwrite(raw, 1, kHeaderBytes, f) != kHeaderBytes)
    runtime_error("{}: could not write the header", impl_->file->path());
  warn_overflow(impl_->file->path(), impl_->overflow, impl_->opt.mode);
  impl_->file->commit();
}

// ---------------------------------------------------------------- describe

namespace {

std::string printable(const char* s, size_t n) {
  std::string out(s, n);
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) c = '.';
  return out;
}

std::string stamp_hex(const std::array<unsigned char, 4>& s) {
  return fmt::format("{:02x} {:02x} {:02x} {:02x}", s[0], s[1], s[2], s[3]);
}

}  // namespace

std::string describe(const std::string& path) {
  uint64_t size = 0;
  FilePtr f = open_for_read(path, size);
  const Header h = read_checked_header(f.get(), path, size);
  StatsAccumulator acc;
  stream_sections(f.get(), path, h, 0, h.nz,
                  [&](int, size_t k, const float* v) { acc.add(v, k * size_t(h.nx) * size_t(h.ny)); });
  const Stats st = acc.stats();
  const bool stack = h.is_stack() || (h.nz > 1 && path.size() > 5 && path.ends_with(".mrcs"));
  std::string kind = h.nz == 1 ? "an image" : stack ? fmt::format("a stack of {} images", h.size_z()) : "a volume";
  std::string out = fmt::format("{}\n", path);
  out += fmt::format("  size            {} x {} x {} (x, y, z): {}\n", h.size_x(), h.size_y(), h.size_z(), kind);
  out += fmt::format("  mode            {}\n", mode_name(h.mode));
  const auto vs = h.voxel_size();
  if (vs[0] > 0)
    out += fmt::format("  pixel size      {:.4f} Å (voxel {:.4f} {:.4f} {:.4f} Å)\n", vs[0], vs[0], vs[1], vs[2]);
  else
    out += "  pixel size      unset (cell or MX not positive)\n";
  out += fmt::format("  cell            {:.3f} {:.3f} {:.3f} Å, angles {:.2f} {:.2f} {:.2f}°, sampling MX MY MZ {} {} {}\n",
                     h.cell[0], h.cell[1], h.cell[2], h.cell_angles[0], h.cell_angles[1], h.cell_angles[2], h.mx, h.my,
                     h.mz);
  out += fmt::format("  stored          {} x {} x {} (columns, rows, sections)\n", h.nx, h.ny, h.nz);
  const bool axes_ok = h.file_axes[0] == h.mapc && h.file_axes[1] == h.mapr && h.file_axes[2] == h.maps;
  out += fmt::format("  axis order      {},{},{} (MAPC, MAPR, MAPS){}\n", h.file_axes[0], h.file_axes[1],
                     h.file_axes[2], axes_ok ? "" : ": invalid, read as 1,2,3");
  out += fmt::format("  origin          {} {} {} Å; start {} {} {}\n", h.origin[0], h.origin[1], h.origin[2],
                     h.nxstart, h.nystart, h.nzstart);
  out += fmt::format("  space group     {}\n", h.ispg);
  out += fmt::format("  extended header {} bytes{}\n", h.nsymbt,
                     h.nsymbt ? " (type " + printable(h.exttyp.data(), 4) + ")" : "");
  out += fmt::format("  byte order      {} (machine stamp {}){}\n", h.big_endian ? "big-endian" : "little-endian",
                     stamp_hex(h.machine_stamp), h.has_map_stamp ? "" : "; no \"MAP \" stamp");
  out += fmt::format("  version         {}\n", h.nversion);
  out += fmt::format("  header stats    min {:.6g} max {:.6g} mean {:.6g} rms {:.6g}\n", h.dmin, h.dmax, h.dmean, h.rms);
  out += fmt::format("  data stats      min {:.6g} max {:.6g} mean {:.6g} rms {:.6g}\n", st.min, st.max, st.mean,
                     st.rms);
  for (size_t i = 0; i < 10; ++i)
    if (!h.labels[i].empty()) out += fmt::format("  label {}         {}\n", i, printable(h.labels[i].data(), h.labels[i].size()));
  return out;
}

}  // namespace regula::mrc

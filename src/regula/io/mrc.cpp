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
#include <spdlog/spdlog.h>
#include <vector>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"

namespace regula::mrc {
namespace {

constexpr size_t kHeaderBytes = 1024;

const char* mode_name(int mode) {
  switch (mode) {
    case 0: return "0 (int8)";
    case 1: return "1 (int16)";
    case 2: return "2 (float32)";
    case 3: return "3 (complex int16)";
    case 4: return "4 (complex float32)";
    case 6: return "6 (uint16)";
    case 12: return "12 (float16)";
    case 101: return "101 (4-bit)";
    default: return "unknown";
  }
}

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
void put_i32(unsigned char* h, size_t word, int32_t v) { std::memcpy(h + 4 * word, &v, 4); }
void put_f32(unsigned char* h, size_t word, float v) { std::memcpy(h + 4 * word, &v, 4); }

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
  if (std::fseek(f, 0, SEEK_END) != 0) input_error("{}: cannot seek", path);
  long end = std::ftell(f);
  if (end < 0) input_error("{}: cannot determine the file size", path);
  size = uint64_t(end);
  std::rewind(f);
  return fp;
}

void read_at(FILE* f, const std::string& path, uint64_t offset, void* out, size_t n) {
  if (fseeko(f, off_t(offset), SEEK_SET) != 0) input_error("{}: cannot seek to byte {}", path, offset);
  if (n && std::fread(out, 1, n, f) != n)
    input_error("{}: could not read {} bytes at byte offset {} (file truncated?)", path, n, offset);
}

// Plausibility of the header read with a given byte order.
bool plausible(const unsigned char* raw, bool swap) {
  int nx = get_i32(raw, 0, swap), ny = get_i32(raw, 1, swap), nz = get_i32(raw, 2, swap);
  int mode = get_i32(raw, 3, swap);
  return nx > 0 && ny > 0 && nz > 0 && nx < (1 << 24) && ny < (1 << 24) && nz < (1 << 28) &&
         (mode_supported(mode) || mode == 3 || mode == 4);
}

Header parse_header(const unsigned char* raw, const std::string& path) {
  Header h;
  // Byte order from the machine stamp (byte 212): 0x44 little, 0x11 big; when it
  // is missing or odd, whichever order gives a plausible header.
  unsigned char stamp = raw[212];
  bool swap;
  if (stamp == 0x44 && plausible(raw, false)) swap = false;
  else if (stamp == 0x11 && plausible(raw, true)) swap = true;
  else if (plausible(raw, false)) swap = false;
  else if (plausible(raw, true)) swap = true;
  else swap = false;  // diagnosed below
  h.big_endian = swap != (std::endian::native == std::endian::big);
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
  for (int i = 0; i < 3; ++i) h.cell[size_t(i)] = get_f32(raw, size_t(10 + i), swap);
  for (int i = 0; i < 3; ++i) h.cell_angles[size_t(i)] = get_f32(raw, size_t(13 + i), swap);
  h.mapc = get_i32(raw, 16, swap);
  h.mapr = get_i32(raw, 17, swap);
  h.maps = get_i32(raw, 18, swap);
  h.dmin = get_f32(raw, 19, swap);
  h.dmax = get_f32(raw, 20, swap);
  h.dmean = get_f32(raw, 21, swap);
  h.ispg = get_i32(raw, 22, swap);
  h.nsymbt = get_i32(raw, 23, swap);
  std::memcpy(h.exttyp.data(), raw + 104, 4);
  h.nversion = get_i32(raw, 27, swap);
  for (int i = 0; i < 3; ++i) h.origin[size_t(i)] = get_f32(raw, size_t(49 + i), swap);
  h.has_map_stamp = std::memcmp(raw + 208, "MAP", 3) == 0;
  h.rms = get_f32(raw, 54, swap);
  h.nlabl = get_i32(raw, 55, swap);
  for (int i = 0; i < 10; ++i) {
    const char* l = reinterpret_cast<const char*>(raw + 224 + 80 * i);
    size_t len = 0;
    while (len < 80 && l[len] != 0) ++len;
    std::string s(l, len);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) s.pop_back();
    h.labels[size_t(i)] = s;
  }

  if (h.nx <= 0 || h.ny <= 0 || h.nz <= 0)
    input_error("{}: header at byte 0 gives dimensions {}x{}x{}; expected positive sizes (not an MRC file?)", path,
                h.nx, h.ny, h.nz);
  if (h.mode == 3 || h.mode == 4)
    input_error("{}: mode {} (header byte 12) is a complex mode; only real modes 0, 1, 2, 6, 12 and 101 are supported",
                path, mode_name(h.mode));
  if (!mode_supported(h.mode))
    input_error("{}: unknown mode {} (header byte 12); expected 0, 1, 2, 6, 12 or 101", path, h.mode);
  if (h.nsymbt < 0)
    input_error("{}: negative extended header size NSYMBT = {} (header byte 92)", path, h.nsymbt);
  int axes[3] = {h.mapc, h.mapr, h.maps};
  bool perm = true;
  for (int a = 1; a <= 3; ++a)
    if (std::count(axes, axes + 3, a) != 1) perm = false;
  if (!perm) {
    // Like mrcfile in permissive mode: read the data in file order.
    spdlog::warn("{}: MAPC/MAPR/MAPS = {},{},{} is not a permutation of 1,2,3; reading as 1,2,3", path, h.mapc,
                 h.mapr, h.maps);
    h.mapc = 1;
    h.mapr = 2;
    h.maps = 3;
  }
  return h;
}

size_t section_bytes(const Header& h) {
  size_t row;
  switch (h.mode) {
    case 0: row = size_t(h.nx); break;
    case 1: case 6: case 12: row = 2 * size_t(h.nx); break;
    case 2: row = 4 * size_t(h.nx); break;
    case 101: row = (size_t(h.nx) + 1) / 2; break;  // two pixels per byte, rows padded to a byte
    default: row = 0;
  }
  return row * size_t(h.ny);
}

// Convert one section in the file's layout to floats (nx*ny values).
void convert_section(const Header& h, const unsigned char* in, float* out) {
  const size_t n = size_t(h.nx) * size_t(h.ny);
  const bool swap = h.big_endian != (std::endian::native == std::endian::big);
  switch (h.mode) {
    case 0:
      for (size_t i = 0; i < n; ++i) out[i] = float(int8_t(in[i]));
      break;
    case 1:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, in + 2 * i, 2);
        if (swap) v = bswap16(v);
        out[i] = float(int16_t(v));
      }
      break;
    case 6:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, in + 2 * i, 2);
        if (swap) v = bswap16(v);
        out[i] = float(v);
      }
      break;
    case 12:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, in + 2 * i, 2);
        if (swap) v = bswap16(v);
        out[i] = half_to_float(v);
      }
      break;
    case 2:
      for (size_t i = 0; i < n; ++i) {
        uint32_t v;
        std::memcpy(&v, in + 4 * i, 4);
        if (swap) v = bswap32(v);
        std::memcpy(out + i, &v, 4);
      }
      break;
    case 101: {
      const size_t rowb = (size_t(h.nx) + 1) / 2;
      for (int y = 0; y < h.ny; ++y)
        for (int x = 0; x < h.nx; ++x) {
          unsigned char b = in[size_t(y) * rowb + size_t(x) / 2];
          out[size_t(y) * size_t(h.nx) + size_t(x)] = float((x & 1) ? (b >> 4) : (b & 0x0f));
        }
      break;
    }
    default: break;
  }
}

void check_length(const Header& h, uint64_t file_size, const std::string& path) {
  const uint64_t need = uint64_t(section_bytes(h)) * uint64_t(h.nz);
  const uint64_t off = h.data_offset();
  if (off > file_size)
    input_error("{}: extended header of {} bytes (NSYMBT) ends at byte {} but the file has {} bytes", path, h.nsymbt,
                off, file_size);
  if (file_size - off < need)
    input_error("{}: header says {}x{}x{} mode {} ({} bytes of data from byte offset {}) but the file has {} bytes "
                "(truncated at section {})",
                path, h.nx, h.ny, h.nz, mode_name(h.mode), need, off, file_size,
                section_bytes(h) ? (file_size - off) / section_bytes(h) : 0);
}

Header read_checked_header(FILE* f, const std::string& path, uint64_t size) {
  if (size == 0) input_error("{}: empty file; expected an MRC header of 1024 bytes", path);
  unsigned char raw[kHeaderBytes];
  if (size >= 3) {
    unsigned char magic[3];
    read_at(f, path, 0, magic, 3);
    if (magic[0] == 0x1f && magic[1] == 0x8b) input_error("{}: gzip-compressed file; decompress it first", path);
    if (magic[0] == 'B' && magic[1] == 'Z' && magic[2] == 'h')
      input_error("{}: bzip2-compressed file; decompress it first", path);
  }
  if (size < kHeaderBytes)
    input_error("{}: {} bytes, too short for the 1024-byte MRC header", path, size);
  read_at(f, path, 0, raw, kHeaderBytes);
  Header h = parse_header(raw, path);
  check_length(h, size, path);
  return h;
}

// Destination index of file element (c, r, s) after permuting to x, y, z.
struct Permutation {
  int dims[3];        // output sizes x, y, z
  size_t stride[3];   // output strides for file axes c, r, s
};

Permutation permutation(const Header& h) {
  Permutation p{};
  int file_n[3] = {h.nx, h.ny, h.nz};
  int axis[3] = {h.mapc - 1, h.mapr - 1, h.maps - 1};  // output axis of file axis c, r, s
  for (int i = 0; i < 3; ++i) p.dims[axis[i]] = file_n[i];
  size_t out_stride[3] = {1, size_t(p.dims[0]), size_t(p.dims[0]) * size_t(p.dims[1])};
  for (int i = 0; i < 3; ++i) p.stride[i] = out_stride[axis[i]];
  return p;
}

bool identity_axes(const Header& h) { return h.mapc == 1 && h.mapr == 2 && h.maps == 3; }

void fill_header(unsigned char* raw, int nx, int ny, int nz, const WriteOptions& opt, const Stats& st) {
  std::memset(raw, 0, kHeaderBytes);
  put_i32(raw, 0, nx);
  put_i32(raw, 1, ny);
  put_i32(raw, 2, nz);
  put_i32(raw, 3, int(opt.mode));
  const int mz = opt.is_stack ? 1 : nz;
  put_i32(raw, 7, nx);
  put_i32(raw, 8, ny);
  put_i32(raw, 9, mz);
  put_f32(raw, 10, float(opt.pixel_size * nx));
  put_f32(raw, 11, float(opt.pixel_size * ny));
  put_f32(raw, 12, float(opt.pixel_size * mz));
  put_f32(raw, 13, 90.f);
  put_f32(raw, 14, 90.f);
  put_f32(raw, 15, 90.f);
  put_i32(raw, 16, 1);
  put_i32(raw, 17, 2);
  put_i32(raw, 18, 3);
  put_f32(raw, 19, float(st.min));
  put_f32(raw, 20, float(st.max));
  put_f32(raw, 21, float(st.mean));
  put_i32(raw, 22, (opt.is_stack || nz == 1) ? 0 : 1);
  put_i32(raw, 23, 0);
  put_i32(raw, 27, 20140);
  for (int i = 0; i < 3; ++i) put_f32(raw, size_t(49 + i), opt.origin[size_t(i)]);
  std::memcpy(raw + 208, "MAP ", 4);
  raw[212] = 0x44;
  raw[213] = 0x44;
  put_f32(raw, 54, float(st.rms));
  put_i32(raw, 55, 1);
  std::string label = opt.label.substr(0, 80);
  std::memcpy(raw + 224, label.data(), label.size());
  for (size_t i = label.size(); i < 80; ++i) raw[224 + i] = ' ';
}

struct StatsAccumulator {
  double min = std::numeric_limits<double>::infinity(), max = -std::numeric_limits<double>::infinity();
  double sum = 0, sum2 = 0;
  size_t n = 0;
  void add(const float* d, size_t count) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < count; ++i) {
      double v = d[i];
      if (std::isnan(v)) continue;
      min = std::min(min, v);
      max = std::max(max, v);
      s += v;
      s2 += v * v;
    }
    sum += s;
    sum2 += s2;
    n += count;
  }
  Stats stats() const {
    Stats st;
    if (n == 0) return st;
    st.min = min;
    st.max = max;
    st.mean = sum / double(n);
    st.rms = std::sqrt(std::max(0.0, sum2 / double(n) - st.mean * st.mean));
    return st;
  }
};

// Encode floats in the output mode; for float16 `data` is rounded in `rounded`
// so that the statistics describe what is stored.
void encode(const float* data, size_t n, Mode mode, std::vector<unsigned char>& out, std::vector<float>& rounded) {
  if (mode == Mode::Float32) {
    out.resize(4 * n);
    std::memcpy(out.data(), data, 4 * n);
    rounded.assign(data, data + n);
  } else {
    out.resize(2 * n);
    rounded.resize(n);
    for (size_t i = 0; i < n; ++i) {
      uint16_t h = float_to_half(data[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
      rounded[i] = half_to_float(h);
    }
  }
}

void check_write_options(const WriteOptions& opt, const std::string& path) {
  if (opt.mode != Mode::Float32 && opt.mode != Mode::Float16)
    input_error("{}: can only write mode 2 (float32) or 12 (float16), not mode {}", path, int(opt.mode));
}

}  // namespace

int Header::size_x() const {
  int n[3] = {nx, ny, nz};
  int axes[3] = {mapc, mapr, maps};
  for (int i = 0; i < 3; ++i)
    if (axes[i] == 1) return n[i];
  return nx;
}
int Header::size_y() const {
  int n[3] = {nx, ny, nz};
  int axes[3] = {mapc, mapr, maps};
  for (int i = 0; i < 3; ++i)
    if (axes[i] == 2) return n[i];
  return ny;
}
int Header::size_z() const {
  int n[3] = {nx, ny, nz};
  int axes[3] = {mapc, mapr, maps};
  for (int i = 0; i < 3; ++i)
    if (axes[i] == 3) return n[i];
  return nz;
}
double Header::pixel_size() const {
  // Sampling along x: cell length / MX (the number of intervals along x).
  int m = 0;
  float c = 0;
  int axes[3] = {mapc, mapr, maps};
  int ms[3] = {mx, my, mz};
  (void)axes;
  m = ms[0];
  c = cell[0];
  if (m <= 0 || !(c > 0) || !std::isfinite(c)) return 0;
  return double(c) / double(m);
}
size_t Header::bytes_per_section() const { return section_bytes(*this); }

Header read_header(const std::string& path) {
  uint64_t size = 0;
  FilePtr f = open_for_read(path, size);
  return read_checked_header(f.get(), path, size);
}

Grid<float> read(const std::string& path, Header* header) {
  uint64_t size = 0;
  FilePtr f = open_for_read(path, size);
  Header h = read_checked_header(f.get(), path, size);
  const size_t sb = section_bytes(h);
  const size_t ns = size_t(h.nx) * size_t(h.ny);
  Permutation p = permutation(h);
  Grid<float> out(p.dims[0], p.dims[1], p.dims[2]);
  std::vector<unsigned char> buf(sb);
  std::vector<float> sec(ns);
  const bool ident = identity_axes(h);
  for (int s = 0; s < h.nz; ++s) {
    read_at(f.get(), path, h.data_offset() + uint64_t(sb) * uint64_t(s), buf.data(), sb);
    float* dst = ident ? out.section(s) : sec.data();
    convert_section(h, buf.data(), dst);
    if (!ident) {
      for (int r = 0; r < h.ny; ++r)
        for (int c = 0; c < h.nx; ++c)
          out[size_t(c) * p.stride[0] + size_t(r) * p.stride[1] + size_t(s) * p.stride[2]] =
              sec[size_t(r) * size_t(h.nx) + size_t(c)];
    }
  }
  if (header) *header = h;
  return out;
}

// ---------------------------------------------------------------- StackReader

struct StackReader::Impl {
  std::string path;
  Header h;
  FilePtr f;
  std::vector<unsigned char> buf;
  Grid<float> whole;  // only for files with permuted axes
};

StackReader::StackReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  uint64_t size = 0;
  impl_->f = open_for_read(path, size);
  impl_->h = read_checked_header(impl_->f.get(), path, size);
  if (!identity_axes(impl_->h)) {
    impl_->whole = mrc::read(path);
    impl_->f.reset();
  }
}
StackReader::~StackReader() = default;
StackReader::StackReader(StackReader&&) noexcept = default;
StackReader& StackReader::operator=(StackReader&&) noexcept = default;

int StackReader::count() const { return impl_->whole.empty() ? impl_->h.nz : impl_->whole.nz(); }
int StackReader::nx() const { return impl_->whole.empty() ? impl_->h.nx : impl_->whole.nx(); }
int StackReader::ny() const { return impl_->whole.empty() ? impl_->h.ny : impl_->whole.ny(); }
const Header& StackReader::header() const { return impl_->h; }
const std::string& StackReader::path() const { return impl_->path; }

void StackReader::read_into(int index, float* out) {
  if (index < 0 || index >= count())
    input_error("{}: image {} requested but the stack has {} images", impl_->path, index + 1, count());
  const size_t ns = size_t(nx()) * size_t(ny());
  if (!impl_->whole.empty()) {
    std::memcpy(out, impl_->whole.section(index), ns * sizeof(float));
    return;
  }
  const Header& h = impl_->h;
  const size_t sb = section_bytes(h);
  impl_->buf.resize(sb);
  read_at(impl_->f.get(), impl_->path, h.data_offset() + uint64_t(sb) * uint64_t(index), impl_->buf.data(), sb);
  convert_section(h, impl_->buf.data(), out);
}

Grid<float> StackReader::read(int index) {
  if (index < 0 || index >= count())
    input_error("{}: image {} requested but the stack has {} images", impl_->path, index + 1, count());
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
  std::vector<unsigned char> bytes;
  std::vector<float> rounded;
  encode(data.data(), data.size(), opt.mode, bytes, rounded);
  Stats st = compute_stats(rounded.data(), rounded.size());
  unsigned char raw[kHeaderBytes];
  fill_header(raw, data.nx(), data.ny(), data.nz(), opt, st);
  AtomicFile f(path);
  f.write(raw, kHeaderBytes);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

struct StackWriter::Impl {
  std::unique_ptr<AtomicFile> file;
  int nx = 0, ny = 0, count = 0;
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
  const size_t n = size_t(impl_->nx) * size_t(impl_->ny);
  encode(image, n, impl_->opt.mode, impl_->bytes, impl_->rounded);
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
  impl_->file->commit();
}

// ---------------------------------------------------------------- describe

std::string describe(const std::string& path) {
  uint64_t size = 0;
  FilePtr f = open_for_read(path, size);
  Header h = read_checked_header(f.get(), path, size);
  const size_t sb = section_bytes(h);
  const size_t ns = size_t(h.nx) * size_t(h.ny);
  std::vector<unsigned char> buf(sb);
  std::vector<float> sec(ns);
  StatsAccumulator acc;
  for (int s = 0; s < h.nz; ++s) {
    read_at(f.get(), path, h.data_offset() + uint64_t(sb) * uint64_t(s), buf.data(), sb);
    convert_section(h, buf.data(), sec.data());
    acc.add(sec.data(), ns);
  }
  Stats st = acc.stats();
  const bool stack = h.ispg == 0 && h.nz > 1;
  std::string ext(h.exttyp.begin(), h.exttyp.end());
  for (auto& c : ext)
    if (c < 32 || c > 126) c = '.';
  std::string out = fmt::format("{}\n", path);
  out += fmt::format("  size            {} x {} x {} (x, y, z){}\n", h.size_x(), h.size_y(), h.size_z(),
                     stack ? fmt::format(": a stack of {} images", h.nz) : (h.nz == 1 ? ": an image" : ": a volume"));
  out += fmt::format("  mode            {}\n", mode_name(h.mode));
  double px = h.pixel_size();
  out += px > 0 ? fmt::format("  pixel size      {:.4f} Å\n", px) : std::string("  pixel size      unset (cell 0)\n");
  out += fmt::format("  cell            {:.3f} {:.3f} {:.3f} Å, sampling {} {} {}\n", h.cell[0], h.cell[1], h.cell[2], h.mx,
                     h.my, h.mz);
  out += fmt::format("  axis order      {},{},{} (MAPC, MAPR, MAPS)\n", h.mapc, h.mapr, h.maps);
  out += fmt::format("  origin          {} {} {} Å; start {} {} {}\n", h.origin[0], h.origin[1], h.origin[2], h.nxstart,
                     h.nystart, h.nzstart);
  out += fmt::format("  space group     {}\n", h.ispg);
  out += fmt::format("  extended header {} bytes{}\n", h.nsymbt, h.nsymbt ? " (type " + ext + ")" : "");
  out += fmt::format("  byte order      {}{}\n", h.big_endian ? "big-endian" : "little-endian",
                     h.has_map_stamp ? "" : "; no \"MAP \" stamp");
  out += fmt::format("  header stats    min {:.6g} max {:.6g} mean {:.6g} rms {:.6g}\n", h.dmin, h.dmax, h.dmean, h.rms);
  out += fmt::format("  data stats      min {:.6g} max {:.6g} mean {:.6g} rms {:.6g}\n", st.min, st.max, st.mean, st.rms);
  for (int i = 0; i < std::min(10, std::max(0, h.nlabl)); ++i)
    if (!h.labels[size_t(i)].empty()) out += fmt::format("  label {}         {}\n", i, h.labels[size_t(i)]);
  return out;
}

}  // namespace regula::mrc

// MRC2014 images, stacks and volumes.
//
// Reading: modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16) and
// 101 (4-bit, two pixels per byte, low nibble first), any byte order (machine
// stamp), extended headers skipped (NSYMBT bytes), axis order MAPC/MAPR/MAPS
// permuted to x fastest, y, z. Data always come back as float.
// Writing: mode 2 (float32) by default, mode 12 (float16) on request; the header
// carries pixel size (cell), min/max/mean/rms, "MAP " stamp, little-endian
// machine stamp, nversion 20140, ISPG 0 for images/stacks and 1 for volumes.
// All writes are atomic (temporary name, then rename).
//
// Errors: InputError naming the file, the byte offset or image index, and what
// was expected (e.g. "x.mrcs: header says 128x128x11029 mode 2 (722797568 bytes of
// data from offset 1024) but the file has 66560 bytes").
#pragma once
#include <array>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "regula/core/grid.hpp"

namespace regula::mrc {

enum class Mode : int { Int8 = 0, Int16 = 1, Float32 = 2, UInt16 = 6, Float16 = 12, Packed4Bit = 101 };

struct Header {
  int nx = 0, ny = 0, nz = 0;  // columns, rows, sections as stored in the file
  int mode = 2;
  int nxstart = 0, nystart = 0, nzstart = 0;
  int mx = 0, my = 0, mz = 0;
  std::array<float, 3> cell{0, 0, 0};        // Å
  std::array<float, 3> cell_angles{90, 90, 90};
  int mapc = 1, mapr = 2, maps = 3;
  float dmin = 0, dmax = 0, dmean = 0, rms = 0;
  int ispg = 0;
  int nsymbt = 0;  // extended header bytes
  std::array<char, 4> exttyp{0, 0, 0, 0};
  int nversion = 0;
  std::array<float, 3> origin{0, 0, 0};
  bool has_map_stamp = false;
  bool big_endian = false;
  int nlabl = 0;
  std::array<std::string, 10> labels;

  // Sizes in x, y, z order after applying MAPC/MAPR/MAPS.
  int size_x() const;
  int size_y() const;
  int size_z() const;
  // Pixel size in Å along x (cell / mx; 0 when unset).
  double pixel_size() const;
  size_t bytes_per_section() const;  // in the file's own layout
  size_t data_offset() const { return 1024 + size_t(nsymbt); }
};

// Read and check the header (sizes against the file length, mode, axes).
Header read_header(const std::string& path);

// Read the whole file as float, axes permuted to x fastest. `header` receives the header.
Grid<float> read(const std::string& path, Header* header = nullptr);

// Lazy access to the images of a stack (or the sections of any MRC file):
// reads one image at a time with a seek, never the whole file.
class StackReader {
 public:
  explicit StackReader(const std::string& path);
  ~StackReader();
  StackReader(StackReader&&) noexcept;
  StackReader& operator=(StackReader&&) noexcept;
  int count() const;  // number of images (sections)
  int nx() const;
  int ny() const;
  const Header& header() const;
  const std::string& path() const;
  // Image `index` (0-based). Throws InputError "path: image N requested but the
  // stack has M images" when out of range. Not thread-safe per reader object.
  Grid<float> read(int index);
  void read_into(int index, float* out);  // out has nx*ny floats

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct WriteOptions {
  Mode mode = Mode::Float32;   // Float32 or Float16
  double pixel_size = 1.0;     // Å
  bool is_stack = false;       // true: ISPG 0 and mz = 1 (image stack); false: volume, ISPG 1
  std::array<float, 3> origin{0, 0, 0};
  std::string label = "Regula";
};

// Write a grid atomically. Header statistics are computed from the data.
void write(const std::string& path, const Grid<float>& data, const WriteOptions& opt = {});

// Streams images to a stack without holding them all: header statistics are
// accumulated and the header is rewritten by commit(); until commit() the data
// live under a temporary name, so a failed job leaves no partial stack.
class StackWriter {
 public:
  StackWriter(const std::string& path, int nx, int ny, const WriteOptions& opt = {});
  ~StackWriter();
  void append(const Grid<float>& image);  // nx*ny, nz == 1
  void append(const float* image);
  int count() const;
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Statistics of the data (not the header): min, max, mean and rms deviation from the mean.
struct Stats {
  double min = 0, max = 0, mean = 0, rms = 0;
};
Stats compute_stats(const float* data, size_t n);

// A human summary of a file for `regula info`: size, mode, pixel size, number of
// images, origin, axes, extended header, byte order, header and data statistics
// (the data are streamed section by section).
std::string describe(const std::string& path);

}  // namespace regula::mrc

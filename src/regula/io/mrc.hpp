// MRC2014 images, stacks and volumes.
//
// Reading: modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16) and
// 101 (4-bit, two pixels per byte, low nibble first, rows padded to whole bytes),
// either byte order (machine stamp; when the stamp is missing or odd, the byte
// order in which NX..NZ and MODE are plausible), extended headers skipped (NSYMBT
// bytes), axis order MAPC/MAPR/MAPS permuted to x fastest, then y, then z. Data
// always come back as float. An axis order that is not a permutation of 1,2,3 is
// read as 1,2,3 with a warning (what mrcfile does in permissive mode).
// Writing: mode 2 (float32) by default; modes 12 (float16), 0 (int8), 1 (int16) and 6 (uint16)
// on request (integer modes round to the nearest integer and clamp to the mode's range, with a
// warning counting the clamped values); the header
// carries pixel size (cell = pixel size x MX/MY/MZ), min/max/mean/rms of the data
// as stored, "MAP " stamp, little-endian machine stamp 0x44 0x44 0 0, nversion
// 20140, ISPG 0 and MZ = 1 for images and stacks, ISPG 1 and MZ = NZ for volumes.
// All writes are atomic (temporary name, then rename).
//
// Safety: sizes in the header are checked against the file length before anything
// is allocated, so a corrupt header cannot make the reader allocate more than the
// file can hold (at most 8 floats per byte of data, for mode 101).
//
// Errors: InputError naming the file, the byte offset or image index, and what
// was expected (e.g. "x.mrcs: header says 128x128x11029 mode 2 (722796544 bytes of
// data from byte offset 1024) but the file has 66560 bytes ...").
#pragma once
#include <array>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "regula/core/grid.hpp"

namespace regula::mrc {

enum class Mode : int { Int8 = 0, Int16 = 1, Float32 = 2, UInt16 = 6, Float16 = 12, Packed4Bit = 101 };

// "2 (float32)" etc.; "N (unknown)" for other numbers.
std::string mode_name(int mode);

struct Header {
  int nx = 0, ny = 0, nz = 0;  // columns, rows, sections as stored in the file
  int mode = 2;
  int nxstart = 0, nystart = 0, nzstart = 0;
  int mx = 0, my = 0, mz = 0;                 // sampling intervals along X, Y, Z
  std::array<float, 3> cell{0, 0, 0};         // cell lengths along X, Y, Z in Å
  std::array<float, 3> cell_angles{90, 90, 90};  // degrees
  // Axis of columns, rows, sections (1 = X, 2 = Y, 3 = Z). Always a permutation of
  // 1,2,3 after read_header(); `file_axes` keeps what the file said.
  int mapc = 1, mapr = 2, maps = 3;
  std::array<int, 3> file_axes{1, 2, 3};
  float dmin = 0, dmax = 0, dmean = 0, rms = 0;  // as written in the header
  int ispg = 0;
  int nsymbt = 0;  // extended header bytes
  std::array<char, 4> exttyp{0, 0, 0, 0};
  int nversion = 0;
  std::array<float, 3> origin{0, 0, 0};  // Å
  bool has_map_stamp = false;
  bool big_endian = false;
  std::array<unsigned char, 4> machine_stamp{0, 0, 0, 0};
  int nlabl = 0;
  std::array<std::string, 10> labels;

  // Sizes in x, y, z order after applying MAPC/MAPR/MAPS.
  int size_x() const;
  int size_y() const;
  int size_z() const;
  // Pixel size in Å along x (cell[0] / mx); 0 when unset (mx <= 0 or cell <= 0).
  double pixel_size() const;
  // Voxel size in Å along x, y, z (cell / m); 0 for an axis where it is unset.
  std::array<double, 3> voxel_size() const;
  // An image stack: ISPG 0 with more than one section and MZ != NZ (RELION and
  // mrcfile write MZ = 1). Files with ISPG 0 and MZ == NZ are old-style volumes
  // (EMAN, Chimera); a caller that knows better (".mrcs") overrides this.
  bool is_stack() const;
  // A volume: more than one section and not a stack.
  bool is_volume() const;
  size_t bytes_per_section() const;  // in the file's own layout
  size_t data_offset() const { return 1024 + size_t(nsymbt); }
};

// Read and check the header (sizes against the file length, mode, axes).
Header read_header(const std::string& path);

// Read the whole file as float, axes permuted to x fastest. `header` receives the header.
Grid<float> read(const std::string& path, Header* header = nullptr);

// Lazy access to the images of a stack (or the z-sections of any MRC file):
// reads one image at a time with a seek, never the whole file. Only a file whose
// sections are not z-slices (MAPS != 3, crystallographic maps) is read whole.
class StackReader {
 public:
  explicit StackReader(const std::string& path);
  ~StackReader();
  StackReader(StackReader&&) noexcept;
  StackReader& operator=(StackReader&&) noexcept;
  int count() const;  // number of images (z-sections)
  int nx() const;     // image size along x (after axis permutation)
  int ny() const;
  const Header& header() const;
  const std::string& path() const;
  // Image `index` (0-based). Throws InputError "path: image N (1-based) requested but
  // the stack has M images" when out of range. Not thread-safe per reader object.
  Grid<float> read(int index);
  void read_into(int index, float* out);  // out has nx*ny floats
  void read_into(int index, float* out, size_t row_stride);  // row y at out + y * row_stride

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct WriteOptions {
  Mode mode = Mode::Float32;   // any mode but Packed4Bit
  double pixel_size = 1.0;     // Å; 0 writes an unset cell
  bool is_stack = false;       // true: ISPG 0 and mz = 1 (image stack); false: volume, ISPG 1
  std::array<float, 3> origin{0, 0, 0};  // Å
  std::string label = "Regula";
};

// Write a grid atomically. Header statistics are computed from the data as stored
// (after rounding to float16 for mode 12). Values beyond the float16 range become
// +-infinity in mode 12 (with a warning).
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

// Statistics of the data (not the header): min, max, mean and rms deviation from
// the mean (population standard deviation, as numpy's std()). NaNs are skipped.
struct Stats {
  double min = 0, max = 0, mean = 0, rms = 0;
};
Stats compute_stats(const float* data, size_t n);

// A human summary of a file for `regula info`: size, mode, pixel size, number of
// images, origin, axes, extended header, byte order, header and data statistics
// (the data are streamed in chunks, never loaded whole).
std::string describe(const std::string& path);

}  // namespace regula::mrc

// Multi-page TIFF movies (libtiff): one frame per directory (page), one sample per pixel.
//
// Reading: 8-bit unsigned/signed, 16-bit unsigned/signed integer and 32-bit float samples, any
// compression libtiff decodes (none, LZW, deflate...), strips or tiles. Every page must have the
// size and sample format of the first. Rows are flipped so that row 0 of the file is the LAST row
// (y = ny - 1) of the image, as RELION, IMOD, SerialEM and MotionCor2 read TIFF files (TIFF's
// origin is top-left, MRC's bottom-left). The pixel size, when the file has a resolution in
// pixels per centimetre or inch, is read as RELION does (1e8 / XResolution Å for centimetres).
//
// Writing (simulated movies and tests): 8-bit or 16-bit unsigned integers (values rounded and
// clamped) or 32-bit floats, LZW or no compression, the resolution tag set from the pixel size,
// rows flipped as above; written under a temporary name and renamed when complete.
//
// Errors: InputError naming the file and the page ("x.tif: page 7 of 40 is 4096x4096, the first is
// 4096x4092"), also for truncated or corrupt pages (libtiff's own message is included).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula::tiff {

// True when the file name ends in .tif or .tiff (any case).
bool is_tiff_name(const std::string& path);

class TiffReader {
 public:
  explicit TiffReader(const std::string& path);
  ~TiffReader();
  TiffReader(TiffReader&&) noexcept;
  TiffReader& operator=(TiffReader&&) noexcept;
  int count() const;  // pages
  int nx() const;
  int ny() const;
  int bits_per_sample() const;
  bool is_float() const;
  double pixel_size() const;  // Å; 0 when the file has no usable resolution tag
  const std::string& path() const;
  // Page `index` (0-based) into out[nx * ny]. Not thread-safe per reader object.
  void read_into(int index, float* out);
  void read_into(int index, float* out, size_t row_stride);  // row y at out + y * row_stride
  Grid<float> read(int index);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct TiffWriteOptions {
  int bits = 16;             // 8 or 16 (unsigned integers) or 32 (float)
  bool lzw = true;           // LZW compression (else none)
  double pixel_size = 0;     // Å; > 0 writes XResolution/YResolution in pixels per centimetre
};

// Writes frames (each nx*ny, all the same size) as one multi-page TIFF, atomically.
void write(const std::string& path, const std::vector<Grid<float>>& frames, const TiffWriteOptions& opt = {});

// Streams pages to a TIFF file under a temporary name; commit() renames it into place.
class TiffWriter {
 public:
  TiffWriter(const std::string& path, int nx, int ny, const TiffWriteOptions& opt = {});
  ~TiffWriter();
  void append(const float* frame);
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace regula::tiff

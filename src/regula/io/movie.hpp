// Movies (stacks of detector frames) from MRC (modes 0, 1, 2, 6, 12, 101) or TIFF (io/tiff.hpp)
// behind one reader, chosen by the file name (.tif/.tiff: TIFF; anything else: MRC). Frames come
// back as float with x fastest, y as MRC's (TIFF rows are flipped, as RELION reads them).
// Every size is checked when the file is opened (a truncated MRC movie is an InputError naming the
// file before any frame is read; a truncated TIFF page when that page is read).
#pragma once
#include <memory>
#include <string>

#include "regula/core/grid.hpp"

namespace regula {

class MovieReader {
 public:
  explicit MovieReader(const std::string& path);
  ~MovieReader();
  MovieReader(MovieReader&&) noexcept;
  MovieReader& operator=(MovieReader&&) noexcept;

  int frames() const;
  int nx() const;
  int ny() const;
  double pixel_size() const;  // from the header (Å), 0 when unset
  const std::string& path() const;
  // Frame `index` (0-based) into out[nx * ny]. Not thread-safe per reader.
  void read_into(int index, float* out);
  void read_into(int index, float* out, size_t row_stride);  // row y at out + y * row_stride
  Grid<float> read(int index);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace regula

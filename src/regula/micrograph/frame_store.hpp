// The frames of one movie in memory, each first as a real image and then, transformed in place, as
// its half-complex spectrum (core/fft.hpp's in-place layout: rows of 2 (nx/2 + 1) floats). One
// aligned block for all frames, kept and reused from movie to movie (no allocation, zeroing or
// page faults per movie), and half the memory of separate real and complex copies.
#pragma once
#include <cstddef>

#include "regula/core/fft.hpp"
#include "regula/core/grid.hpp"

namespace regula {

class FrameStore {
 public:
  // Room for `frames` images of nx x ny (even sizes); the contents are undefined.
  void reset(int frames, int nx, int ny);

  int frames() const { return frames_; }
  int nx() const { return nx_; }
  int ny() const { return ny_; }
  int nxh() const { return nx_ / 2 + 1; }
  // Real layout: pixel (x, y) of frame f at real(f)[y * row_stride() + x].
  size_t row_stride() const { return size_t(2 * nxh()); }
  float* real(int f) { return data_.data() + size_t(f) * slot_; }
  const float* real(int f) const { return data_.data() + size_t(f) * slot_; }
  // Spectral layout (after transform(f)): coefficient (i, j) at spectrum(f)[j * nxh() + i].
  cfloat* spectrum(int f) { return reinterpret_cast<cfloat*>(real(f)); }
  const cfloat* spectrum(int f) const { return reinterpret_cast<const cfloat*>(real(f)); }

  // Forward transform of frame f in place (thread-safe for different f).
  void transform(int f) { fft2_forward_inplace(real(f), nx_, ny_); }
  // Binning by Fourier cropping, after every frame is transformed: each spectrum becomes the
  // (nx/2+1) x ny half-complex grid of an nx x ny image (even, not larger), in place; the crop's
  // Nyquist row is set to 0. The store then describes nx x ny images (transform() no longer applies).
  void crop_spectra(int nx, int ny);

 private:
  AlignedArray<float> data_;
  size_t slot_ = 0;  // floats per frame, a multiple of 16 (64 bytes) so every slot keeps the alignment
  int frames_ = 0, nx_ = 0, ny_ = 0;
};

}  // namespace regula

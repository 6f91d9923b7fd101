#include "regula/micrograph/frame_store.hpp"

#include <algorithm>
#include <cstring>

#include "regula/core/error.hpp"

namespace regula {

void FrameStore::reset(int frames, int nx, int ny) {
  if (frames < 1 || nx < 2 || ny < 2 || nx % 2 || ny % 2)
    runtime_error("frame store: need even image sizes and at least one frame (got {} x {} x {})", nx, ny, frames);
  frames_ = frames;
  nx_ = nx;
  ny_ = ny;
  slot_ = (size_t(2 * (nx / 2 + 1)) * size_t(ny) + 15) / 16 * 16;
  data_.resize(slot_ * size_t(frames));
}

void FrameStore::crop_spectra(int nx, int ny) {
  if (nx > nx_ || ny > ny_ || nx % 2 || ny % 2 || nx < 2 || ny < 2)
    runtime_error("frame store: cannot crop {} x {} spectra to {} x {}", nx_, ny_, nx, ny);
  if (nx == nx_ && ny == ny_) return;
  const size_t oh = size_t(nxh()), h = size_t(nx / 2 + 1);
  for (int f = 0; f < frames_; ++f) {
    cfloat* s = spectrum(f);
    // Rows in increasing order: each destination lies at or before its source and ends before the
    // next source begins.
    for (int j = 0; j < ny; ++j) {
      const int ky = fft_freq(j, ny);
      cfloat* dst = s + size_t(j) * h;
      if (ky == ny / 2 && ny < ny_) {
        std::fill(dst, dst + h, cfloat(0));
        continue;
      }
      const cfloat* src = s + size_t(ky >= 0 ? ky : ky + ny_) * oh;
      std::memmove(static_cast<void*>(dst), src, h * sizeof(cfloat));
    }
  }
  nx_ = nx;
  ny_ = ny;
}

}  // namespace regula

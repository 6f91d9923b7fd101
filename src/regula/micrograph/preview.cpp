#include "regula/micrograph/preview.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "regula/core/error.hpp"

namespace regula {

namespace {

// Block means: ceil(nx / bin) x ceil(ny / bin), partial blocks at the far edges averaged over what they hold.
Grid<float> bin_image(const Grid<float>& mic, int bin) {
  const int nx = mic.nx(), ny = mic.ny(), w = (nx + bin - 1) / bin, h = (ny + bin - 1) / bin;
  Grid<float> out(w, h);
  std::vector<double> row(static_cast<size_t>(w));
  for (int j = 0; j < h; ++j) {
    std::fill(row.begin(), row.end(), 0.0);
    const int y1 = std::min(ny, (j + 1) * bin);
    for (int y = j * bin; y < y1; ++y)
      for (int x = 0; x < nx; ++x) row[size_t(x / bin)] += mic(x, y);
    for (int i = 0; i < w; ++i) {
      const int cols = std::min(nx, (i + 1) * bin) - i * bin;
      out(i, j) = float(row[size_t(i)] / double(cols * (y1 - j * bin)));
    }
  }
  return out;
}

// Separable Gaussian blur (sigma in pixels), kernel truncated at 3 sigma, edges replicated.
void gaussian_blur(Grid<float>& img, double sigma) {
  const int r = int(std::ceil(3 * sigma)), w = img.nx(), h = img.ny();
  std::vector<double> k(size_t(2 * r + 1));
  double sum = 0;
  for (int t = -r; t <= r; ++t) sum += k[size_t(t + r)] = std::exp(-0.5 * t * t / (sigma * sigma));
  for (double& v : k) v /= sum;
  std::vector<float> line(static_cast<size_t>(std::max(w, h)));
  // One line of n values at `first` with `step` between them, blurred in place.
  const auto blur = [&](float* first, size_t step, int n) {
    for (int i = 0; i < n; ++i) line[size_t(i)] = first[size_t(i) * step];
    for (int i = 0; i < n; ++i) {
      double v = 0;
      for (int t = -r; t <= r; ++t) v += k[size_t(t + r)] * line[size_t(std::clamp(i + t, 0, n - 1))];
      first[size_t(i) * step] = float(v);
    }
  };
  for (int y = 0; y < h; ++y) blur(img.data() + size_t(y) * size_t(w), 1, w);
  for (int x = 0; x < w; ++x) blur(img.data() + x, size_t(w), h);
}

}  // namespace

Preview micrograph_preview(const Grid<float>& mic, const PreviewOptions& opt) {
  if (mic.nx() < 1 || mic.ny() < 1 || mic.nz() != 1)
    input_error("micrograph preview: expected one image, got {} x {} x {}", mic.nx(), mic.ny(), mic.nz());
  if (opt.max_size < 1) input_error("micrograph preview: max_size {} must be at least 1", opt.max_size);
  if (!(opt.clip >= 0 && opt.clip < 0.5)) input_error("micrograph preview: clip {} must be in [0, 0.5)", opt.clip);
  Preview p;
  p.bin = std::max(1, (std::max(mic.nx(), mic.ny()) + opt.max_size - 1) / opt.max_size);
  Grid<float> img = bin_image(mic, p.bin);
  p.width = img.nx();
  p.height = img.ny();
  if (opt.lowpass > 0 && opt.angpix > 0) {
    // exp(-2 pi^2 sigma^2 / lowpass^2) = 1/2 at 1/lowpass, sigma in binned pixels.
    const double sigma = opt.lowpass * std::sqrt(std::log(2.0) / 2) / std::numbers::pi / (opt.angpix * p.bin);
    if (sigma >= 0.3) gaussian_blur(img, sigma);
  }
  std::vector<float> sorted(img.begin(), img.end());
  const size_t n = sorted.size();
  const auto at = [&](double q) {
    const size_t k = std::min(n - 1, size_t(q * double(n - 1) + 0.5));
    std::nth_element(sorted.begin(), sorted.begin() + long(k), sorted.end());
    return double(sorted[k]);
  };
  p.black = at(opt.clip);
  p.white = at(1 - opt.clip);
  if (opt.sigma > 0) {
    const double median = at(0.5), robust_sd = (at(0.75) - at(0.25)) / 1.349;
    if (robust_sd > 0) {
      p.black = std::max(p.black, median - opt.sigma * robust_sd);
      p.white = std::min(p.white, median + opt.sigma * robust_sd);
    }
  }
  const double span = p.white > p.black ? p.white - p.black : 1.0;
  p.grey.resize(n);
  for (size_t i = 0; i < n; ++i)
    p.grey[i] = uint8_t(std::clamp((double(img.data()[i]) - p.black) / span * 255.0 + 0.5, 0.0, 255.0));
  return p;
}

}  // namespace regula

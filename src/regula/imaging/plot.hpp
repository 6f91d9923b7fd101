// Minimal PNG line plots (no text): a curve on a white background with axes,
// tick marks and optional horizontal reference lines (e.g. FSC = 0.143).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

struct LinePlot {
  std::vector<double> x, y;          // the curve (same length, x ascending)
  double x_min = 0, x_max = 1;       // axis ranges (data units)
  double y_min = 0, y_max = 1;
  std::vector<double> hlines;        // dashed horizontal lines at these y values
  int width = 640, height = 400;     // pixels
  int x_ticks = 10, y_ticks = 10;    // tick marks along each axis
  std::array<uint8_t, 3> colour{31, 119, 180};  // curve colour (RGB)
  // Further curves on the same axes (e.g. the FSC curves of post-processing).
  struct Series {
    std::vector<double> x, y;
    std::array<uint8_t, 3> colour{0, 0, 0};
  };
  std::vector<Series> more;
};

// RGB image (row-major, 3 bytes per pixel) of the plot.
std::vector<uint8_t> render_line_plot(const LinePlot& plot);
// The plot encoded as PNG bytes (libpng); InputError for an empty or
// inconsistent curve or ranges.
std::string render_line_plot_png(const LinePlot& plot);
// Encodes an RGB image (3 bytes per pixel, rows top to bottom) as PNG bytes.
std::string encode_png_rgb(const std::vector<uint8_t>& rgb, int width, int height);

}  // namespace regula

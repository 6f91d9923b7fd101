#include "regula/imaging/plot.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <png.h>

#include "regula/core/error.hpp"

namespace regula {
namespace {

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int width, int height) : w(width), h(height), px(size_t(width) * size_t(height) * 3, 255) {}
  void set(int x, int y, std::array<uint8_t, 3> c) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    uint8_t* p = &px[(size_t(y) * size_t(w) + size_t(x)) * 3];
    p[0] = c[0];
    p[1] = c[1];
    p[2] = c[2];
  }
  // Bresenham line, `thick` pixels wide (square brush).
  void line(int x0, int y0, int x1, int y1, std::array<uint8_t, 3> c, int thick = 1) {
    int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
    int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
      for (int a = 0; a < thick; ++a)
        for (int b = 0; b < thick; ++b) set(x0 + a - thick / 2, y0 + b - thick / 2, c);
      if (x0 == x1 && y0 == y1) break;
      int e2 = 2 * err;
      if (e2 >= dy) { err += dy; x0 += sx; }
      if (e2 <= dx) { err += dx; y0 += sy; }
    }
  }
};

void png_append(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), n);
}
void png_flush_noop(png_structp) {}

}  // namespace

std::vector<uint8_t> render_line_plot(const LinePlot& p) {
  if (p.x.size() != p.y.size() || p.x.empty()) input_error("plot: the curve needs equal, non-zero numbers of x and y");
  if (!(p.x_max > p.x_min) || !(p.y_max > p.y_min)) input_error("plot: empty axis range");
  if (p.width < 64 || p.height < 64) input_error("plot: image of {}x{} px is too small", p.width, p.height);
  Canvas c(p.width, p.height);
  const int left = 50, right = p.width - 20, top = 20, bottom = p.height - 40;
  auto X = [&](double x) { return int(std::lround(left + (x - p.x_min) / (p.x_max - p.x_min) * (right - left))); };
  auto Y = [&](double y) { return int(std::lround(bottom - (y - p.y_min) / (p.y_max - p.y_min) * (bottom - top))); };
  const std::array<uint8_t, 3> black{0, 0, 0}, grey{150, 150, 150}, light{225, 225, 225}, red{214, 39, 40};
  // Grid lines and ticks.
  for (int i = 0; i <= p.x_ticks; ++i) {
    int x = left + (right - left) * i / std::max(1, p.x_ticks);
    c.line(x, top, x, bottom, light);
    c.line(x, bottom, x, bottom + 5, black);
  }
  for (int i = 0; i <= p.y_ticks; ++i) {
    int y = bottom - (bottom - top) * i / std::max(1, p.y_ticks);
    c.line(left, y, right, y, light);
    c.line(left - 5, y, left, y, black);
  }
  // Reference lines (dashed); the first one red (e.g. 0.143), others grey.
  for (size_t k = 0; k < p.hlines.size(); ++k) {
    const double v = p.hlines[k];
    if (v < p.y_min || v > p.y_max) continue;
    const int y = Y(v);
    for (int x = left; x <= right; x += 10) c.line(x, y, std::min(x + 5, right), y, k == 0 ? red : grey);
  }
  // Axes.
  c.line(left, top, left, bottom, black, 2);
  c.line(left, bottom, right, bottom, black, 2);
  // Curve, clipped to the axis box.
  auto clampy = [&](int y) { return std::clamp(y, top, bottom); };
  for (size_t i = 1; i < p.x.size(); ++i) {
    if (!std::isfinite(p.y[i - 1]) || !std::isfinite(p.y[i])) continue;
    c.line(X(p.x[i - 1]), clampy(Y(p.y[i - 1])), X(p.x[i]), clampy(Y(p.y[i])), p.colour, 2);
  }
  for (const auto& ser : p.more)
    for (size_t i = 1; i < ser.x.size() && i < ser.y.size(); ++i)
      if (std::isfinite(ser.y[i - 1]) && std::isfinite(ser.y[i]))
        c.line(X(ser.x[i - 1]), clampy(Y(ser.y[i - 1])), X(ser.x[i]), clampy(Y(ser.y[i])), ser.colour, 2);
  return std::move(c.px);
}

std::string encode_png_rgb(const std::vector<uint8_t>& rgb, int width, int height) {
  if (rgb.size() != size_t(width) * size_t(height) * 3) runtime_error("png: {} bytes for {}x{} RGB", rgb.size(), width, height);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) runtime_error("png: cannot create a libpng writer");
  png_infop info = png_create_info_struct(png);
  std::string out;
  std::vector<png_bytep> rows(static_cast<size_t>(height));
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, info ? &info : nullptr);
    runtime_error("png: encoding failed");
  }
  png_set_write_fn(png, &out, png_append, png_flush_noop);
  png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (int y = 0; y < height; ++y) rows[size_t(y)] = const_cast<png_bytep>(&rgb[size_t(y) * size_t(width) * 3]);
  png_set_rows(png, info, rows.data());
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::string render_line_plot_png(const LinePlot& plot) {
  return encode_png_rgb(render_line_plot(plot), plot.width, plot.height);
}

}  // namespace regula

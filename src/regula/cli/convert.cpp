// regula convert: rewrite any supported MRC file as float32 (mode 2) or float16
// (mode 12) with x, y, z axis order, keeping the pixel size unless --angpix is given.
// Stacks stay stacks and are streamed image by image. --rescale_angpix and --new_box
// re-sample and re-window as relion_image_handler's options of those names.
#include <cmath>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/io/mrc.hpp"

namespace regula::cli {
namespace {

struct ConvertOptions {
  std::string in, out;
  int mode = 2;
  double angpix = 0;          // Å: the input's pixel size; 0: from its header
  double rescale_angpix = 0;  // Å: Fourier re-sampling to about this pixel size (0: none)
  int new_box = 0;            // px: real-space window about the centre, after any re-sampling (0: none)
};

// The box after --rescale_angpix, as relion_image_handler: round(n * angpix / target), made even
// by dropping one pixel.
int rescaled_box(int n, double angpix, double target) {
  int m = int(std::lround(n * angpix / target));
  m -= m % 2;
  return m;
}

bool has_suffix(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void convert(const ConvertOptions& o) {
  if (o.mode != 2 && o.mode != 12) input_error("--mode {}: expected 2 (float32) or 12 (float16)", o.mode);
  if (o.angpix < 0 || !(o.angpix < 1e6)) input_error("--angpix {}: expected a positive pixel size in Å", o.angpix);
  if (o.rescale_angpix < 0 || !(o.rescale_angpix < 1e6))
    input_error("--rescale_angpix {}: expected a positive pixel size in Å", o.rescale_angpix);
  if (o.new_box < 0) input_error("--new_box {}: expected a positive box size in pixels", o.new_box);
  const mrc::Header h = mrc::read_header(o.in);
  const bool stack = h.size_z() > 1 && (h.is_stack() || has_suffix(o.in, ".mrcs") || has_suffix(o.out, ".mrcs"));
  const int n = h.size_x();
  const bool resample = o.rescale_angpix > 0, rewindow = o.new_box > 0;
  double angpix = o.angpix > 0 ? o.angpix : h.pixel_size();
  int n_rescaled = n;
  if (resample || rewindow) {
    const bool square = h.size_x() == h.size_y() && (stack || h.size_z() == 1 || h.size_z() == h.size_x());
    if (!square)
      input_error("{}: {}x{}x{}: --rescale_angpix and --new_box need square images or a cubic map", o.in, h.size_x(),
                  h.size_y(), h.size_z());
  }
  if (resample) {
    if (!(angpix > 0)) input_error("{}: the header has no pixel size; give the input's with --angpix", o.in);
    n_rescaled = rescaled_box(n, angpix, o.rescale_angpix);
    if (n_rescaled < 2)
      input_error("--rescale_angpix {}: the {} px box at {} Å/px would become {} px", o.rescale_angpix, n, angpix,
                  n_rescaled);
    const double actual = angpix * n / n_rescaled;
    if (std::abs(actual - o.rescale_angpix) > 1e-6 * o.rescale_angpix)
      spdlog::warn("convert: {} px at {:.5g} Å/px -> {} px at {:.6g} Å/px (the box is rounded to an even size; "
                   "--rescale_angpix {} asked)", n, angpix, n_rescaled, actual, o.rescale_angpix);
    angpix = actual;
  }
  auto transform = [&](Grid<float> g) {
    if (resample && n_rescaled != n) g = rescale(g, n_rescaled);
    if (rewindow && o.new_box != g.nx()) g = window(g, o.new_box);
    return g;
  };
  const int n_out = rewindow ? o.new_box : n_rescaled;
  mrc::WriteOptions wo;
  wo.mode = o.mode == 12 ? mrc::Mode::Float16 : mrc::Mode::Float32;
  wo.pixel_size = angpix;
  wo.origin = h.origin;
  wo.label = "Regula convert";
  if (stack) {
    wo.is_stack = true;
    mrc::StackReader reader(o.in);
    const bool same = n_out == n;
    mrc::StackWriter writer(o.out, same ? reader.nx() : n_out, same ? reader.ny() : n_out, wo);
    Grid<float> img(reader.nx(), reader.ny());
    for (int i = 0; i < reader.count(); ++i) {
      reader.read_into(i, img.data());
      writer.append(same ? img : transform(img));
    }
    writer.commit();
  } else {
    wo.is_stack = false;
    mrc::write(o.out, transform(mrc::read(o.in)), wo);
  }
}

}  // namespace

void add_convert(CLI::App& app) {
  auto opt = std::make_shared<ConvertOptions>();
  auto* s = app.add_subcommand(
      "convert", "Rewrite an MRC image, stack or volume (modes 0, 1, 2, 6, 12, 101, any byte order and axis order) "
                 "as float32 or float16 with x, y, z axis order; optionally re-sampled (--rescale_angpix) and "
                 "re-windowed (--new_box) as relion_image_handler");
  s->add_option("--i", opt->in, "Input MRC/MRCS/MAP/CCP4/ST file")->required();
  s->add_option("--o", opt->out, "Output file (written atomically; .mrcs makes a stack)")->required();
  s->add_option("--mode", opt->mode, "Output mode: 2 (float32, default) or 12 (float16)");
  s->add_option("--angpix", opt->angpix, "The input's pixel size in Å (default: from its header); written as is "
                                          "unless --rescale_angpix")
      ->check(CLI::PositiveNumber);
  s->add_option("--rescale_angpix", opt->rescale_angpix,
                "Re-sample (Fourier crop or pad) to this pixel size in Å; the box is rounded to an even size and "
                "the pixel size written is the exact one (as relion_image_handler)")
      ->check(CLI::PositiveNumber);
  s->add_option("--new_box", opt->new_box, "Re-window (real-space crop, or pad with 0) to this box, px, about the centre")
      ->check(CLI::PositiveNumber);
  s->callback([opt] { convert(*opt); });
}

}  // namespace regula::cli

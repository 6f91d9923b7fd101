// regula convert: rewrite any supported MRC file as float32 (mode 2) or float16
// (mode 12) with x, y, z axis order, keeping the pixel size unless --angpix is given.
// Stacks stay stacks and are streamed image by image.
#include <memory>
#include <string>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"

namespace regula::cli {
namespace {

struct ConvertOptions {
  std::string in, out;
  int mode = 2;
  double angpix = 0;  // Å; 0: from the input header
};

bool has_suffix(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void convert(const ConvertOptions& o) {
  if (o.mode != 2 && o.mode != 12) input_error("--mode {}: expected 2 (float32) or 12 (float16)", o.mode);
  if (o.angpix < 0 || !(o.angpix < 1e6)) input_error("--angpix {}: expected a positive pixel size in Å", o.angpix);
  const mrc::Header h = mrc::read_header(o.in);
  mrc::WriteOptions wo;
  wo.mode = o.mode == 12 ? mrc::Mode::Float16 : mrc::Mode::Float32;
  wo.pixel_size = o.angpix > 0 ? o.angpix : h.pixel_size();
  wo.origin = h.origin;
  wo.label = "Regula convert";
  const bool stack = h.size_z() > 1 && (h.is_stack() || has_suffix(o.in, ".mrcs") || has_suffix(o.out, ".mrcs"));
  if (stack) {
    wo.is_stack = true;
    mrc::StackReader reader(o.in);
    mrc::StackWriter writer(o.out, reader.nx(), reader.ny(), wo);
    Grid<float> img(reader.nx(), reader.ny());
    for (int i = 0; i < reader.count(); ++i) {
      reader.read_into(i, img.data());
      writer.append(img);
    }
    writer.commit();
  } else {
    wo.is_stack = false;
    mrc::write(o.out, mrc::read(o.in), wo);
  }
}

}  // namespace

void add_convert(CLI::App& app) {
  auto opt = std::make_shared<ConvertOptions>();
  auto* s = app.add_subcommand(
      "convert", "Rewrite an MRC image, stack or volume (modes 0, 1, 2, 6, 12, 101, any byte order and axis order) "
                 "as float32 or float16 with x, y, z axis order");
  s->add_option("--i", opt->in, "Input MRC/MRCS/MAP/CCP4/ST file")->required();
  s->add_option("--o", opt->out, "Output file (written atomically; .mrcs makes a stack)")->required();
  s->add_option("--mode", opt->mode, "Output mode: 2 (float32, default) or 12 (float16)");
  s->add_option("--angpix", opt->angpix, "Pixel size in Å to write (default: from the input header)")
      ->check(CLI::PositiveNumber);
  s->callback([opt] { convert(*opt); });
}

}  // namespace regula::cli

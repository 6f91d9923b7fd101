#include "regula/jobs/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace regula {

std::string PreprocessOptions::validate() const {
  if (star.empty()) return "--i: a particle STAR file is required";
  if (out_root.empty()) return "--o: an output root name is required";
  if (norm && !(bg_radius > 0)) return "--norm needs --bg_radius R (px, > 0)";
  if (scale == 0 || scale == 1 || scale < -1) return fmt::format("--scale: must be at least 2 px (got {})", scale);
  if (window == 0 || window == 1 || window < -1)
    return fmt::format("--window: must be at least 2 px (got {})", window);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  if (!norm && !invert_contrast && scale <= 0 && window <= 0)
    return "nothing to do: give --norm, --invert_contrast, --scale or --window";
  return "";
}

PreprocessResult preprocess(const PreprocessOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("preprocess: " + msg);
  ParticleReadOptions ro;
  ro.angpix = opt.angpix;
  ParticleTable table = ParticleTable::read(opt.star, ro);
  const size_t count = table.size();
  if (count == 0) input_error("{}: no particles (the particles table has no rows)", opt.star);
  ParticleImages images(table);

  PreprocessResult res;
  res.stack = opt.out_root + ".mrcs";
  res.star = opt.out_root + ".star";
  res.count = long(count);
  Image first = images.read(0);
  const int n = first.nx();
  if (first.ny() != n || first.nz() != 1)
    input_error("{}: image is {}x{}x{}, expected a square 2D image", table.where(0), first.nx(), first.ny(),
                first.nz());
  const int n_scaled = opt.scale > 0 ? opt.scale : n;
  const int n_out = opt.window > 0 ? opt.window : n_scaled;
  if (opt.norm && opt.bg_radius >= n_out / 2.0)
    input_error("preprocess: --bg_radius {} px leaves no background in a {} px box (must be < {})", opt.bg_radius,
                n_out, n_out / 2.0);
  res.box_in = n;
  res.box_out = n_out;

  // Output optics: pixel size times n / n_scaled; image size n_out.
  const double factor = double(n) / double(n_scaled);
  for (OpticsGroup& og : table.optics) {
    if (og.pixel_size > 0) og.pixel_size *= factor;
    og.image_size = n_out;
  }
  const double out_angpix = table.optics_of(0).pixel_size > 0 ? table.optics_of(0).pixel_size : 1.0;

  mrc::WriteOptions wo;
  wo.pixel_size = out_angpix;
  wo.is_stack = true;
  mrc::StackWriter writer(res.stack, n_out, n_out, wo);
  ThreadPool pool(opt.threads);
  Progress progress("preprocess: images", double(count));
  const size_t batch = 256;
  std::vector<Image> buf(batch);
  for (size_t b0 = 0; b0 < count; b0 += batch) {
    const size_t b1 = std::min(count, b0 + batch);
    for (size_t i = b0; i < b1; ++i) {  // reading is sequential (one reader per stack)
      buf[i - b0] = i == 0 ? first : images.read(i);
      const Image& img = buf[i - b0];
      if (img.nx() != n || img.ny() != n || img.nz() != 1)
        input_error("{}: image is {}x{}x{}, expected {}x{} as particle 1", table.where(i), img.nx(), img.ny(),
                    img.nz(), n, n);
    }
    pool.parallel_for(b0, b1, [&](size_t i, int) {
      Image& img = buf[i - b0];
      if (n_scaled != n) img = rescale(img, n_scaled);
      if (n_out != n_scaled) img = window(img, n_out);
      if (opt.norm) normalise_background(img, opt.bg_radius);
      if (opt.invert_contrast) invert_contrast(img);
    });
    for (size_t i = b0; i < b1; ++i) writer.append(buf[i - b0]);
    progress.advance(double(b1 - b0));
  }
  for (size_t i = 0; i < count; ++i) table.set_image(i, long(i) + 1, res.stack);
  const std::string star_text = star::to_string(table.sync());
  writer.commit();
  write_file_atomic(res.star, star_text);
  progress.finish();
  spdlog::info("preprocess: {} images, {} px -> {} px; wrote {} and {}", count, n, n_out, res.stack, res.star);
  return res;
}

}  // namespace regula

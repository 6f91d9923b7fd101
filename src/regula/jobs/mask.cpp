#include "regula/jobs/mask.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/io/mrc.hpp"

namespace regula {

std::string MaskJobOptions::validate() const {
  if (map.empty()) return "--i: a map is required";
  if (out.empty()) return "--o: an output file name is required";
  if (!threshold_given) return "--ini_threshold: the binarisation threshold is required";
  if (lowpass < 0) return fmt::format("--lowpass: must be positive (got {})", lowpass);
  if (extend_px < 0) return fmt::format("--extend_inimask: must be >= 0 px (got {})", extend_px);
  if (soft_edge_px < 0) return fmt::format("--width_soft_edge: must be >= 0 px (got {})", soft_edge_px);
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  return "";
}

MaskJobResult mask_create(const MaskJobOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("mask: " + msg);
  mrc::Header header;
  Volume map = mrc::read(opt.map, &header);
  if (map.nx() != map.ny() || map.nx() != map.nz())
    input_error("{}: the map must be cubic, got {}x{}x{}", opt.map, map.nx(), map.ny(), map.nz());
  const double angpix = opt.angpix > 0 ? opt.angpix : header.pixel_size();
  if (opt.lowpass > 0 && !(angpix > 0))
    input_error("{}: the header has no pixel size; give --angpix for --lowpass", opt.map);
  MaskCreateOptions mo;
  mo.pixel_size = angpix > 0 ? angpix : 1.0;
  mo.lowpass_A = opt.lowpass;
  mo.ini_threshold = opt.ini_threshold;
  mo.extend_px = opt.extend_px;
  mo.soft_edge_px = opt.soft_edge_px;
  Grid<float> mask = create_mask(map, mo);
  double sum = 0;
  for (float v : mask) sum += v;
  mrc::WriteOptions wo;
  wo.pixel_size = angpix > 0 ? angpix : 1.0;
  wo.is_stack = false;
  mrc::write(opt.out, mask, wo);
  MaskJobResult res;
  res.box = map.nx();
  res.angpix = angpix;
  res.volume_fraction = sum / double(mask.size());
  spdlog::info("mask: {} px box, {:.2f}% of the box inside; wrote {}", res.box, 100 * res.volume_fraction, opt.out);
  return res;
}

}  // namespace regula

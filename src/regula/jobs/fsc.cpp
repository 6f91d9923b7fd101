#include "regula/jobs/fsc.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula {

std::string FscJobOptions::validate() const {
  if (map1.empty() || map2.empty()) return "--i1 and --i2: two maps are required";
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  return "";
}

namespace {

Volume read_cubic(const std::string& path, mrc::Header* h) {
  Volume v = mrc::read(path, h);
  if (v.nx() != v.ny() || v.nx() != v.nz())
    input_error("{}: the map must be cubic, got {}x{}x{}", path, v.nx(), v.ny(), v.nz());
  return v;
}

}  // namespace

FscJobResult fsc_compare(const FscJobOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("fsc: " + msg);
  mrc::Header h1, h2;
  Volume a = read_cubic(opt.map1, &h1);
  Volume b = read_cubic(opt.map2, &h2);
  if (!a.same_shape(b))
    input_error("{}: size {}^3 differs from {} ({}^3)", opt.map2, b.nx(), opt.map1, a.nx());
  const double angpix = opt.angpix > 0 ? opt.angpix : h1.pixel_size();
  if (!(angpix > 0)) input_error("{}: the header has no pixel size; give --angpix", opt.map1);
  if (!opt.mask.empty()) {
    Volume m = read_cubic(opt.mask, nullptr);
    if (!m.same_shape(a)) input_error("{}: size {}^3 differs from the maps ({}^3)", opt.mask, m.nx(), a.nx());
    for (size_t i = 0; i < a.size(); ++i) {
      a[i] *= m[i];
      b[i] *= m[i];
    }
  }
  const int n = a.nx();
  FscJobResult res;
  res.fsc = fsc(a, b);
  res.box = n;
  res.angpix = angpix;
  res.resolution_0143 = resolution_at(res.fsc, 0.143, angpix, n);
  if (!opt.out_root.empty()) {
    const size_t m = res.fsc.size();
    star::Document doc;
    star::Block& blk = doc.add_block("fsc", true);
    std::vector<int> idx(m);
    std::vector<double> res_inv(m), res_A(m);
    for (size_t i = 0; i < m; ++i) {
      blk.add_row();
      idx[i] = int(i);
      res_A[i] = i == 0 ? 999.0 : n * angpix / double(i);
      res_inv[i] = 1.0 / res_A[i];
    }
    blk.set_column("rlnSpectralIndex", idx);
    blk.set_column("rlnResolution", res_inv);
    blk.set_column("rlnAngstromResolution", res_A);
    blk.set_column("rlnFourierShellCorrelation", res.fsc);
    res.star = opt.out_root + "_fsc.star";
    res.png = opt.out_root + "_fsc.png";
    LinePlot plot;
    for (size_t i = 0; i < m; ++i) {
      plot.x.push_back(double(i) / (n * angpix));
      plot.y.push_back(res.fsc[i]);
    }
    plot.x_min = 0;
    plot.x_max = plot.x.back();
    plot.y_min = std::min(-0.1, *std::min_element(plot.y.begin(), plot.y.end()));
    plot.y_max = 1.05;
    plot.hlines = {0.143, 0.0};
    const std::string png = render_line_plot_png(plot);
    star::write(res.star, doc);
    write_file_atomic(res.png, png);
  }
  spdlog::info("fsc: {} px box at {} Å/px; FSC = 0.143 at {:.2f} Å", n, angpix, res.resolution_0143);
  return res;
}

}  // namespace regula

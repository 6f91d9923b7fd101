#include "regula/jobs/half_references.hpp"

#include <algorithm>
#include <cmath>

#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula {

HalfReferences load_half_references(const HalfReferenceOptions& opt) {
  HalfReferences r;
  r.half1 = opt.half1;
  r.half2 = opt.half2;
  r.mask = opt.mask;
  if (!opt.postprocess.empty()) {
    const star::Document pp = star::read(opt.postprocess);
    const star::Block* gen = pp.find("general");
    if (!gen) input_error("{}: no data_general block (a postprocess STAR file is expected)", opt.postprocess);
    auto get = [&](const char* label) { return std::string(gen->get(label)); };
    if (r.half1.empty()) r.half1 = get("rlnUnfilteredMapHalf1");
    if (r.half2.empty()) r.half2 = get("rlnUnfilteredMapHalf2");
    if (r.mask.empty()) r.mask = get("rlnMaskName");
    if (r.half1.empty() || r.half2.empty())
      input_error("{}: data_general has no _rlnUnfilteredMapHalf1/2 (give --m1 and --m2)", opt.postprocess);
  }
  mrc::Header h1;
  Grid<float> map1 = mrc::read(r.half1, &h1);
  Grid<float> map2 = mrc::read(r.half2);
  const int N = map1.nx();
  if (map1.ny() != N || map1.nz() != N)
    input_error("{}: map is {}x{}x{}, expected a cube", r.half1, map1.nx(), map1.ny(), map1.nz());
  if (!map2.same_shape(map1))
    input_error("{}: map is {}x{}x{}, expected {}^3 as {}", r.half2, map2.nx(), map2.ny(), map2.nz(), N, r.half1);
  r.box = N;
  r.pixel_size = opt.angpix_ref > 0 ? opt.angpix_ref : h1.pixel_size();
  if (!(r.pixel_size > 0)) input_error("{}: no pixel size in the header; give --angpix_ref", r.half1);
  if (!r.mask.empty()) {
    const Grid<float> mask = mrc::read(r.mask);
    if (!mask.same_shape(map1))
      input_error("{}: mask is {}x{}x{}, expected {}^3 as the maps", r.mask, mask.nx(), mask.ny(), mask.nz(), N);
    for (size_t v = 0; v < map1.size(); ++v) {
      if (!(mask[v] >= -1e-6f && mask[v] <= 1 + 1e-6f))
        input_error("{}: mask value {} at voxel {}: values in [0, 1] expected", r.mask, mask[v], v);
      map1[v] *= mask[v];
      map2[v] *= mask[v];
    }
  }
  r.fsc = fsc(map1, map2);
  r.shell_max = N / 2 - 1;
  for (int s = 1; s < int(r.fsc.size()); ++s)
    if (r.fsc[size_t(s)] < 0.143) {
      r.shell_max = std::max(1, s - 1);
      break;
    }
  r.f_max = r.shell_max / (N * r.pixel_size);
  for (Grid<float>* m : {&map1, &map2}) {
    Grid<cfloat> F = fourier_centred(*m, opt.threads);
    for (int z = 0; z < F.nz(); ++z)
      for (int y = 0; y < F.ny(); ++y)
        for (int x = 0; x < F.nx(); ++x) {
          const int ky = fft_freq(y, N), kz = fft_freq(z, N);
          const size_t s = size_t(std::lround(std::sqrt(double(x * x + ky * ky + kz * kz))));
          F(x, y, z) *= s < r.fsc.size() ? float(std::max(0.0, r.fsc[s])) : 0.0f;
        }
    *m = from_fourier_centred(F, N, opt.threads);
  }
  spdlog::info("{}: half maps {}^3 px at {} Å/px; FSC 0.143 at {:.2f} Å: frequencies up to there", opt.command, N,
               r.pixel_size, 1.0 / r.f_max);
  r.maps.push_back(std::make_unique<Projector>(map1, opt.pad, N / 2, opt.threads));
  r.maps.push_back(std::make_unique<Projector>(map2, opt.pad, N / 2, opt.threads));
  return r;
}

}  // namespace regula

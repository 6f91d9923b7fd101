#include "regula/jobs/fsc.hpp"

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/jobs/initial_model.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula {

std::string FscJobOptions::validate() const {
  if (map1.empty() || map2.empty()) return "--i1 and --i2: two maps are required";
  if (angpix < 0) return fmt::format("--angpix: must be positive (got {})", angpix);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  return "";
}

namespace {

Volume read_cubic(const std::string& path, mrc::Header* h) {
  Volume v = mrc::read(path, h);
  if (v.nx() != v.ny() || v.nx() != v.nz())
    input_error("{}: the map must be cubic, got {}x{}x{}", path, v.nx(), v.ny(), v.nz());
  return v;
}

Volume mirrored_z(const Volume& v) {
  const int n = v.nz();
  Volume out(v.nx(), v.ny(), n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < v.ny(); ++y)
      for (int x = 0; x < v.nx(); ++x) out(x, y, z) = v(x, y, (n - z) % n);
  return out;
}

void remove_mean(Volume& v) {
  double s = 0;
  for (float x : v) s += x;
  const float m = float(s / double(v.size()));
  for (float& x : v) x -= m;
}

double sum_sq(const Volume& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return s;
}

// The best circular shift t (|t| <= n/4 per axis) of b onto a, and the correlation there:
// c(t) = sum_x a(x + t) b(x) / (|a| |b|), through FFTs (a, b zero-mean).
struct ShiftScore {
  double score = -2;
  int t[3] = {0, 0, 0};
};
ShiftScore best_shift(const Grid<cfloat>& A, double norm_a, const Volume& b) {
  const int n = b.nx();
  Grid<cfloat> B = fft_forward(b);
  for (size_t i = 0; i < B.size(); ++i) B[i] = A[i] * std::conj(B[i]);
  const Volume c = fft_inverse(B, n);
  const double norm = std::sqrt(norm_a * sum_sq(b));
  ShiftScore r;
  if (!(norm > 0)) return r;
  const int lim = n / 4;
  for (int z = -lim; z <= lim; ++z)
    for (int y = -lim; y <= lim; ++y)
      for (int x = -lim; x <= lim; ++x) {
        const double v = c((x + n) % n, (y + n) % n, (z + n) % n) / norm;
        if (v > r.score) r = ShiftScore{v, {x, y, z}};
      }
  return r;
}

}  // namespace

namespace {

// A rotation tried by align_map and its score (with the best shift there).
struct Cand {
  double rot = 0, tilt = 0, psi = 0;
  ShiftScore s;
};

// Scores rotations of `map` against `ref` (same box): the correlation at the best shift.
struct RotationScorer {
  RotationScorer(const Volume& ref, const Volume& map) : map_(map) {
    Volume a = ref;
    remove_mean(a);
    A_ = fft_forward(a);
    norm_ = sum_sq(a);
  }
  void operator()(Cand& c) const {
    Volume r = rotate_map(map_, euler_to_matrix(c.rot, c.tilt, c.psi));
    remove_mean(r);
    c.s = best_shift(A_, norm_, r);
  }
  const Volume& map_;
  Grid<cfloat> A_;
  double norm_ = 0;
};

// Local steps about `best` (every combination of -step, 0, +step in the three angles), for each step in
// turn; ties go to the earlier candidate (the result does not depend on the thread count).
void refine_locally(Cand& best, std::initializer_list<double> steps, const RotationScorer& score, ThreadPool& pool) {
  for (double step : steps) {
    std::vector<Cand> local;
    for (int i = -1; i <= 1; ++i)
      for (int j = -1; j <= 1; ++j)
        for (int k = -1; k <= 1; ++k) local.push_back({best.rot + i * step, best.tilt + j * step, best.psi + k * step, {}});
    pool.parallel_for(0, local.size(), [&](size_t i, int) { score(local[i]); });
    for (const Cand& c : local)
      if (c.s.score > best.s.score) best = c;
  }
}

}  // namespace

Volume align_map(const Volume& ref, const Volume& map, FscJobResult& out, int threads) {
  const int n = ref.nx(), m = std::min(n, 24);
  const Volume ref_small = m < n ? rescale(ref, m) : ref;
  ThreadPool pool(threads);
  Cand best;
  int best_hand = 0;
  for (int hand = 0; hand < 2; ++hand) {
    const Volume turned = hand ? mirrored_z(map) : map;
    const Volume small = m < n ? rescale(turned, m) : turned;
    const RotationScorer score(ref_small, small);
    std::vector<Cand> cands;
    const int order = 2;
    for (long p = 0; p < healpix_num_pixels(order); ++p) {
      const auto d = healpix_direction(order, p);
      for (double psi = 0; psi < 360; psi += 15) cands.push_back({d[0], d[1], psi, {}});
    }
    pool.parallel_for(0, cands.size(), [&](size_t i, int) { score(cands[i]); }, 16);
    Cand b = cands.front();
    for (const Cand& c : cands)
      if (c.s.score > b.s.score) b = c;
    refine_locally(b, {5.0, 2.0}, score, pool);
    if (hand == 0 || b.s.score > best.s.score) {
      best = b;
      best_hand = hand;
    }
  }
  // At full size: local steps of 2° and 1° with the best shift at each rotation.
  const Volume hand = best_hand ? mirrored_z(map) : map;
  const RotationScorer score(ref, hand);
  score(best);
  refine_locally(best, {2.0, 1.0}, score, pool);
  const Volume turned = rotate_map(hand, euler_to_matrix(best.rot, best.tilt, best.psi));
  out.rot = best.rot;
  out.tilt = best.tilt;
  out.psi = best.psi;
  out.mirrored = best_hand == 1;
  for (int i = 0; i < 3; ++i) out.shift[i] = best.s.t[i];
  out.correlation = best.s.score;
  return shift_wrapped(turned, best.s.t[0], best.s.t[1], best.s.t[2]);
}

FscJobResult fsc_compare(const FscJobOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("fsc: " + msg);
  mrc::Header h1, h2;
  Volume a = read_cubic(opt.map1, &h1);
  Volume b = read_cubic(opt.map2, &h2);
  if (!a.same_shape(b))
    input_error("{}: size {}^3 differs from {} ({}^3)", opt.map2, b.nx(), opt.map1, a.nx());
  const double angpix = opt.angpix > 0 ? opt.angpix : h1.pixel_size();
  if (!(angpix > 0)) input_error("{}: the header has no pixel size; give --angpix", opt.map1);
  FscJobResult res;
  // (Aligned before the mask, which is in --i1's frame.)
  if (opt.align) {
    b = align_map(a, b, res, opt.threads);
    spdlog::info("fsc: {} turned onto {}{}: rot {:.1f}, tilt {:.1f}, psi {:.1f}°, shift {} {} {} px, correlation {:.3f}",
                 opt.map2, opt.map1, res.mirrored ? " (mirrored)" : "", res.rot, res.tilt, res.psi, res.shift[0],
                 res.shift[1], res.shift[2], res.correlation);
  }
  const Volume aligned = opt.align && !opt.out_root.empty() ? b : Volume();  // (unmasked)
  if (!opt.mask.empty()) {
    Volume m = read_cubic(opt.mask, nullptr);
    if (!m.same_shape(a)) input_error("{}: size {}^3 differs from the maps ({}^3)", opt.mask, m.nx(), a.nx());
    for (size_t i = 0; i < a.size(); ++i) {
      a[i] *= m[i];
      b[i] *= m[i];
    }
  }
  const int n = a.nx();
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
    if (opt.align) {
      res.aligned = opt.out_root + "_aligned.mrc";
      mrc::WriteOptions wo;
      wo.pixel_size = angpix;
      mrc::write(res.aligned, aligned, wo);
    }
  }
  spdlog::info("fsc: {} px box at {} Å/px; FSC = 0.143 at {:.2f} Å", n, angpix, res.resolution_0143);
  return res;
}

}  // namespace regula

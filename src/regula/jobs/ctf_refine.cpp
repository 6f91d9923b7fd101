#include "regula/jobs/ctf_refine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <type_traits>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/nelder_mead.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/aberration_fit.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/half_references.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

namespace fs = std::filesystem;

namespace {

using cf = std::complex<float>;

// The pixels of one optics group that are compared: half-complex grid of the group's box, x = 0
// only for y > 0 (the other half of that column are the Hermitian mates), 0 < |f| <= f_max and
// |T k| inside the projector.
struct PixelList {
  int box = 0;
  std::vector<uint32_t> index;  // x + iy * (box/2 + 1)
  std::vector<double> kx, ky;   // image Fourier px
  std::vector<double> fx, fy;   // physical frequency (1/Å), after the magnification
  std::vector<double> qx, qy;   // reference Fourier px (T k)
  std::vector<int> shell;       // round(|k|)
  std::vector<float> phase;     // the model's odd phase (radians)
  std::vector<cf> phase_factor; // exp(i phase)
  std::vector<float> gamma_offset;  // the model's even offset (radians)
  std::vector<float> kxf, kyf;  // kx, ky as float (the CTF's pixel lists)
  std::vector<float> cos2a, sin2a;  // cos, sin of twice the direction of f (astigmatism)
  size_t size() const { return index.size(); }
};

PixelList make_pixels(const OpticsGroupModel& g, double f_max, int r_max) {
  PixelList p;
  const int m = g.box;
  p.box = m;
  const int hx = m / 2 + 1;
  const double lim = double(r_max - 1) * (r_max - 1);
  for (int iy = 0; iy < m; ++iy) {
    const int y = fft_freq(iy, m);
    for (int x = 0; x < hx; ++x) {
      if (x == 0 && y <= 0) continue;
      if (x * x + y * y > (m / 2) * (m / 2)) continue;
      const auto f = g.frequency(x, y);
      if (std::hypot(f[0], f[1]) > f_max) continue;
      const double qx = g.to_reference[0][0] * x + g.to_reference[0][1] * y;
      const double qy = g.to_reference[1][0] * x + g.to_reference[1][1] * y;
      if (qx * qx + qy * qy > lim) continue;
      p.index.push_back(uint32_t(x + iy * hx));
      p.kx.push_back(x);
      p.ky.push_back(y);
      p.fx.push_back(f[0]);
      p.fy.push_back(f[1]);
      p.qx.push_back(qx);
      p.qy.push_back(qy);
      p.shell.push_back(int(std::lround(std::sqrt(double(x * x + y * y)))));
      p.phase.push_back(float(g.phase_at(f[0], f[1])));
      p.phase_factor.push_back(std::polar(1.0f, p.phase.back()));
      p.kxf.push_back(float(x));
      p.kyf.push_back(float(y));
      const double a = std::atan2(f[1], f[0]);
      p.cos2a.push_back(float(std::cos(2 * a)));
      p.sin2a.push_back(float(std::sin(2 * a)));
      p.gamma_offset.push_back(float(g.gamma_offset_at(f[0], f[1])));
    }
  }
  return p;
}

// The pixels of a list at or beyond an inner resolution limit (Å): their coordinates (physical
// frequency, or image Fourier px with `image_px`) and their per-pixel sums.
template <class T>
struct Band {
  std::vector<double> x, y;
  std::vector<T> sums;
};
template <class T>
Band<T> band(const PixelList& pl, const std::vector<T>& per_pixel, double kmin_angstrom, bool image_px = false) {
  Band<T> b;
  const double fmin = 1.0 / kmin_angstrom;
  for (size_t k = 0; k < pl.size(); ++k) {
    if (std::hypot(pl.fx[k], pl.fy[k]) < fmin) continue;
    b.x.push_back(image_px ? pl.kx[k] : pl.fx[k]);
    b.y.push_back(image_px ? pl.ky[k] : pl.fy[k]);
    b.sums.push_back(per_pixel[k]);
  }
  return b;
}

// Everything a pass needs about the current model.
struct Model {
  ParticleTable* table = nullptr;
  OpticsModel optics;
  std::vector<PixelList> pixels;               // per optics group
  std::vector<std::vector<double>> weight;     // per group, per shell: 1 / noise power
  std::vector<double> scale;                   // per group: grey scale of the particles
};

void build_model(Model& md, int ref_box, double ref_pixel, const std::vector<int>& boxes, double f_max, int r_max) {
  md.optics = OpticsModel(*md.table);
  for (size_t g = 0; g < boxes.size(); ++g)
    if (md.optics.group(g).box <= 0) md.optics.set_box(g, boxes[g]);
  md.optics.set_reference(ref_box, ref_pixel);
  md.pixels.clear();
  for (size_t g = 0; g < md.optics.groups(); ++g) md.pixels.push_back(make_pixels(md.optics.group(g), f_max, r_max));
}

// The observed and predicted coefficients of one particle on its group's pixel list.
struct Observation {
  std::vector<cf> X;   // observed
  std::vector<cf> Q;   // reference at the pose, origin shift and the model's odd phase (no CTF)
  std::vector<float> c;  // the model's CTF factor as predicted (C, |C| or C^2)
  // With `gradient`: the reference's derivative along image kx and ky, times the same shift and
  // phase factor as Q (the trilinear interpolant's own derivative, from the same 8 lattice points).
  std::vector<cf> Gx, Gy;
};

struct Context {
  const ParticleTable* table = nullptr;
  const std::vector<std::unique_ptr<Projector>>* maps = nullptr;  // per half
  std::vector<int> half;  // per particle, 0 or 1
  const std::vector<double>* fsc = nullptr;  // the half maps' FSC per shell (their filter)
};

void observe(const Context& cx, const Model& md, size_t i, ParticleImages& images, Observation& o,
             bool gradient = false) {
  const ParticleTable& t = *cx.table;
  const size_t gi = size_t(t.optics_index[i]);
  const OpticsGroupModel& g = md.optics.group(gi);
  const PixelList& pl = md.pixels[gi];
  const Image img = images.read(i);
  if (img.nx() != g.box || img.ny() != g.box || img.nz() != 1)
    input_error("{}: image is {}x{}x{}, expected {}x{} (the box of optics group {})", t.where(i), img.nx(), img.ny(),
                img.nz(), g.box, g.box, g.number);
  const Grid<cfloat> F = fourier_centred(img);
  const Projector& P = *(*cx.maps)[size_t(cx.half[i])];
  const Mat3 A = euler_to_matrix(t.rot[i], t.tilt[i], t.psi[i]);
  const int m = g.box;
  const double ox = t.origin_x[i] / g.pixel_size, oy = t.origin_y[i] / g.pixel_size;
  // The origin shift exp(2 pi i (kx ox + ky oy) / m) as a product of a row and a column factor.
  std::vector<cf> ex(size_t(m / 2 + 1)), ey(size_t(m + 1));
  for (int x = 0; x <= m / 2; ++x) ex[size_t(x)] = cf(std::polar(1.0, 2 * M_PI * x * ox / m));
  for (int y = -m / 2; y <= m / 2; ++y) ey[size_t(y + m / 2)] = cf(std::polar(1.0, 2 * M_PI * y * oy / m));
  const size_t n = pl.size();
  o.X.resize(n);
  o.Q.resize(n);
  o.c.resize(n);
  if (gradient) {
    o.Gx.resize(n);
    o.Gy.resize(n);
  }
  const ParticleOptics po = md.optics.particle(i);
  po.evaluate_ctf(pl.kxf, pl.kyf, pl.gamma_offset.data(), o.c.data());
  const double pad = P.padding();
  const Mat2& T = g.to_reference;
  // d(lattice position)/d(image kx, ky) = pad A^T (T e_d, 0).
  double dp[2][3];
  for (int d = 0; d < 2; ++d)
    for (int j = 0; j < 3; ++j) dp[d][j] = pad * (A[0][j] * T[0][d] + A[1][j] * T[1][d]);
  for (size_t k = 0; k < n; ++k) {
    o.X[k] = F[pl.index[k]];
    const cf factor = ex[size_t(pl.kx[k])] * ey[size_t(int(pl.ky[k]) + m / 2)] * pl.phase_factor[k];
    const double qx = pl.qx[k], qy = pl.qy[k];
    if (gradient) {
      cfloat g3[3];
      const cf v = P.value_at(A, qx, qy, g3);
      o.Q[k] = v * factor;
      cf gd[2];
      for (int d = 0; d < 2; ++d)
        gd[d] = g3[0] * float(dp[d][0]) + g3[1] * float(dp[d][1]) + g3[2] * float(dp[d][2]);
      o.Gx[k] = gd[0] * factor;
      o.Gy[k] = gd[1] * factor;
    } else {
      o.Q[k] = P.value_at(A, qx, qy) * factor;
    }
    o.c[k] = po.predicted(o.c[k]);
  }
}

// Work units: the particles of one micrograph each (or blocks of 64 without micrograph names).
std::vector<std::vector<size_t>> make_units(const ParticleTable& t, bool* by_micrograph) {
  std::vector<std::vector<size_t>> units;
  const star::Block& pb = t.particles_block();
  *by_micrograph = pb.has("rlnMicrographName") && !t.micrograph.empty();
  if (*by_micrograph) {
    std::map<uint32_t, size_t> at;
    for (size_t i = 0; i < t.size(); ++i) {
      auto [it, added] = at.emplace(t.micrograph[i], units.size());
      if (added) units.emplace_back();
      units[it->second].push_back(i);
    }
  } else {
    for (size_t i = 0; i < t.size(); i += 64) {
      units.emplace_back();
      for (size_t j = i; j < std::min(t.size(), i + 64); ++j) units.back().push_back(j);
    }
  }
  return units;
}

// The units of a pass that only sums (noise, magnification): every unit's half-set-1 particles,
// then every unit's half-set-2 particles, so that the threads read one half map's lattice at a time
// (at box 96 the two pad-2 lattices are 57 MB, more than the cache; one is 29 MB).
std::vector<std::vector<size_t>> units_by_half(const std::vector<std::vector<size_t>>& units,
                                               const std::vector<int>& half) {
  std::vector<std::vector<size_t>> out;
  for (int h = 0; h < 2; ++h)
    for (const auto& u : units) {
      std::vector<size_t> part;
      for (size_t i : u)
        if (half[i] == h) part.push_back(i);
      if (!part.empty()) out.push_back(std::move(part));
    }
  return out;
}

// Under mpirun the units go to the ranks in blocks of kUnitsPerBlock consecutive units, block b to
// rank b mod ranks; a rank reads and fits only its blocks' particles.
constexpr size_t kUnitsPerBlock = 4;
bool this_rank_fits(size_t unit) {
  return (unit / kUnitsPerBlock) % size_t(mpi::size()) == size_t(mpi::rank());
}

// The doubles of an accumulator made of vectors of vectors of T (T: doubles only, e.g. complex or a
// struct of sums), for `flat` below.
template <class T, class Visit>
void each_array(std::vector<std::vector<T>>& v, Visit&& visit) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) % sizeof(double) == 0);
  for (auto& x : v) visit(static_cast<void*>(x.data()), x.size() * (sizeof(T) / sizeof(double)));
}

// Runs `fn(unit, acc, images)` over the units with one accumulator per unit (made by `make`, zero).
// A block's units are added in unit order into a block sum (from zero) by `merge(sum, acc)`, and the
// block sums into `total` in block order: the same additions in the same order whatever the threads
// and ranks. Under mpirun every rank computes its blocks' sums, the ranks exchange them (each value
// comes from one rank, the others add zeros: exact), and every rank adds them all. `flat(acc, visit)`
// calls visit(data, count) for each array of doubles the accumulator holds.
template <class Acc, class Make, class Fn, class Merge, class Flat>
void run_pass(const std::vector<std::vector<size_t>>& units, const ParticleTable& t, ThreadPool& pool, const char* what,
              Acc& total, Make make, Fn fn, Merge merge, Flat flat) {
  std::vector<std::unique_ptr<ParticleImages>> readers(size_t(pool.size()));
  for (auto& r : readers) r = std::make_unique<ParticleImages>(t, 16);
  const size_t ranks = size_t(mpi::size());
  const size_t blocks = (units.size() + kUnitsPerBlock - 1) / kUnitsPerBlock;
  // Blocks per round: enough units for every thread of every rank (the same on all ranks: --j is).
  const size_t per_round = ranks * std::max<size_t>(1, (4 * size_t(pool.size()) + kUnitsPerBlock - 1) / kUnitsPerBlock);
  double mine = 0;
  for (size_t u = 0; u < units.size(); ++u)
    if (this_rank_fits(u)) mine += double(units[u].size());
  Progress progress(fmt::format("ctf_refine: {}", what), mine);
  std::vector<double> buffer;
  for (size_t b0 = 0; b0 < blocks; b0 += per_round) {
    const size_t b1 = std::min(blocks, b0 + per_round);
    std::vector<size_t> todo;
    for (size_t u = b0 * kUnitsPerBlock; u < std::min(units.size(), b1 * kUnitsPerBlock); ++u)
      if (this_rank_fits(u)) todo.push_back(u);
    std::vector<Acc> acc(todo.size());
    pool.parallel_for(0, todo.size(), [&](size_t k, int th) {
      acc[k] = make();
      fn(units[todo[k]], acc[k], *readers[size_t(th)]);
    });
    std::vector<Acc> sums;
    sums.reserve(b1 - b0);
    for (size_t b = b0; b < b1; ++b) sums.push_back(make());
    double done = 0;
    for (size_t k = 0; k < todo.size(); ++k) {
      merge(sums[todo[k] / kUnitsPerBlock - b0], acc[k]);
      done += double(units[todo[k]].size());
    }
    acc.clear();
    if (ranks > 1) {
      size_t n = 0;
      for (Acc& s : sums) flat(s, [&](void*, size_t c) { n += c; });
      if (n > 0) {
        buffer.resize(n);
        size_t at = 0;
        for (Acc& s : sums)
          flat(s, [&](void* p, size_t c) {
            std::memcpy(buffer.data() + at, p, c * sizeof(double));
            at += c;
          });
        mpi::allreduce_sum(buffer.data(), n);
        at = 0;
        for (Acc& s : sums)
          flat(s, [&](void* p, size_t c) {
            std::memcpy(p, buffer.data() + at, c * sizeof(double));
            at += c;
          });
      }
    }
    for (Acc& s : sums) merge(total, s);
    progress.advance(done);
  }
  progress.finish();
}

// Per-particle results (T) filled by the rank that fitted the particle's unit, made whole on every
// rank: the others add zeros (exact). `fields(value, visit)` calls visit(double&) for each value.
template <class T, class Fields>
void share_per_particle(const std::vector<std::vector<size_t>>& units, std::vector<T>& v, Fields fields) {
  if (mpi::size() == 1) return;
  size_t per = 0;
  T probe{};
  fields(probe, [&](double&) { ++per; });
  std::vector<double> buffer(v.size() * per, 0.0);
  for (size_t u = 0; u < units.size(); ++u)
    if (this_rank_fits(u))
      for (size_t i : units[u]) {
        size_t j = 0;
        fields(v[i], [&](double& x) { buffer[i * per + j++] = x; });
      }
  mpi::allreduce_sum(buffer.data(), buffer.size());
  for (size_t i = 0; i < v.size(); ++i) {
    size_t j = 0;
    fields(v[i], [&](double& x) { x = buffer[i * per + j++]; });
  }
}

// ---- noise power and grey scale (per optics group and shell) ----

using OddSums = std::vector<std::vector<cdouble>>;  // [group][pixel]: sum of w X conj(prediction without the part)
using RefitFactors = std::vector<std::vector<cdouble>>;  // [group][pixel]: see refitted_phase

OddSums make_odd_sums(const Model& md) {
  OddSums a(md.pixels.size());
  for (size_t g = 0; g < a.size(); ++g) a[g].assign(md.pixels[g].size(), cdouble(0, 0));
  return a;
}

// One particle's terms of the odd-phase sums; `weighted` false: without the weight w s (the noise
// pass, which estimates it).
void add_odd(const Model& md, const RefitFactors& refit, size_t g, const Observation& o, OddSums& a,
             bool weighted = true) {
  const PixelList& pl = md.pixels[g];
  const double s = weighted ? md.scale[g] : 1.0;
  for (size_t k = 0; k < pl.size(); ++k) {
    const double w = weighted ? md.weight[g][size_t(pl.shell[k])] : 1.0;
    const cdouble back = refit[g][k];  // conj of exp(-i phi_refit)
    a[g][k] += w * cdouble(o.X[k]) * std::conj(cdouble(o.Q[k]) * double(o.c[k]) * s) * back;
  }
}

struct ShellSums {
  std::vector<std::vector<double>> xx, xp, pp, count;  // [group][shell]
  OddSums odd;  // with `refit`: the odd-phase sums without their weight w s (see estimate_noise)
};

// The noise power per shell and the grey scale per optics group. With `refit` (the beam tilt is
// fitted), the same pass also gives the odd-phase sums of the current model (add_odd's) into `odd`:
// their weight w s per pixel (noise shell and group scale) is what this pass estimates, so the
// particles' terms are summed without it and it multiplies the sums afterwards (one pass fewer
// over the particles; the same sums up to rounding).
void estimate_noise(const Context& cx, Model& md, const std::vector<std::vector<size_t>>& units, ThreadPool& pool,
                    const RefitFactors* refit = nullptr, OddSums* odd = nullptr) {
  const size_t G = md.pixels.size();
  auto make = [&] {
    ShellSums s;
    for (auto* v : {&s.xx, &s.xp, &s.pp, &s.count}) {
      v->resize(G);
      for (size_t g = 0; g < G; ++g) (*v)[g].assign(size_t(md.pixels[g].box / 2 + 1), 0.0);
    }
    if (refit) s.odd = make_odd_sums(md);
    return s;
  };
  ShellSums total = make();
  run_pass(units, *cx.table, pool, "noise spectrum", total, make,
           [&](const std::vector<size_t>& unit, ShellSums& s, ParticleImages& images) {
             Observation o;
             for (size_t i : unit) {
               observe(cx, md, i, images, o);
               const size_t g = size_t(cx.table->optics_index[i]);
               const PixelList& pl = md.pixels[g];
               for (size_t k = 0; k < pl.size(); ++k) {
                 const size_t sh = size_t(pl.shell[k]);
                 const cf p = o.c[k] * o.Q[k];
                 s.xx[g][sh] += std::norm(o.X[k]);
                 s.xp[g][sh] += std::real(o.X[k] * std::conj(p));
                 s.pp[g][sh] += std::norm(p);
                 s.count[g][sh] += 1;
               }
               if (refit) add_odd(md, *refit, g, o, s.odd, false);
             }
           },
           [](ShellSums& t, const ShellSums& a) {
             for (size_t g = 0; g < t.xx.size(); ++g)
               for (size_t sh = 0; sh < t.xx[g].size(); ++sh) {
                 t.xx[g][sh] += a.xx[g][sh];
                 t.xp[g][sh] += a.xp[g][sh];
                 t.pp[g][sh] += a.pp[g][sh];
                 t.count[g][sh] += a.count[g][sh];
               }
             for (size_t g = 0; g < t.odd.size(); ++g)
               for (size_t k = 0; k < t.odd[g].size(); ++k) t.odd[g][k] += a.odd[g][k];
           },
           [](ShellSums& a, auto&& visit) {
             for (auto* v : {&a.xx, &a.xp, &a.pp, &a.count}) each_array(*v, visit);
             each_array(a.odd, visit);
           });
  md.weight.assign(G, {});
  md.scale.assign(G, 1.0);
  for (size_t g = 0; g < G; ++g) {
    const auto &xx = total.xx[g], &xp = total.xp[g], &pp = total.pp[g], &cnt = total.count[g];
    double sxp = 0, spp = 0;
    for (size_t sh = 0; sh < xx.size(); ++sh) {
      sxp += xp[sh];
      spp += pp[sh];
    }
    double s = spp > 0 ? sxp / spp : 1.0;
    std::vector<double> w(xx.size(), 0.0);
    for (int round = 0; round < 2; ++round) {
      double nw = 0, dw = 0;
      for (size_t sh = 0; sh < xx.size(); ++sh) {
        if (cnt[sh] < 1) continue;
        const double noise = (xx[sh] - 2 * s * xp[sh] + s * s * pp[sh]) / cnt[sh];
        w[sh] = noise > 0 ? 1.0 / noise : 0.0;
        nw += w[sh] * xp[sh];
        dw += w[sh] * pp[sh];
      }
      if (dw > 0 && nw > 0) s = nw / dw;
    }
    md.weight[g] = w;
    md.scale[g] = s;
    if (odd) {
      const PixelList& pl = md.pixels[g];
      for (size_t k = 0; k < pl.size(); ++k) total.odd[g][k] *= w[size_t(pl.shell[k])] * s;
    }
    spdlog::info("ctf_refine: optics group {}: grey scale of the particles {:.4g} x the maps' projections",
                 md.optics.group(g).number, s);
  }
  if (odd) *odd = std::move(total.odd);
}

// ---- diagnostic images ----

// A phase image (box x box, origin at the centre) from per-pixel values on a pixel list (and their
// Hermitian mates, negated: the odd phase is antisymmetric, `odd`) or symmetric (even).
void write_phase_png(const std::string& path, const PixelList& pl, const std::vector<double>& value, bool odd) {
  if (mpi::rank() != 0) return;  // under mpirun: every rank has the same values; one writes
  const int m = pl.box;
  std::vector<double> img(size_t(m) * m, std::nan(""));
  for (size_t k = 0; k < pl.size(); ++k) {
    const int x = int(pl.kx[k]), y = int(pl.ky[k]);
    const int cx = m / 2, cy = m / 2;
    const double v = value[k];
    auto put = [&](int px, int py, double val) {
      if (px >= 0 && px < m && py >= 0 && py < m) img[size_t(py) * m + size_t(px)] = val;
    };
    put(cx + x, cy - y, v);
    put(cx - x, cy + y, odd ? -v : v);
  }
  std::vector<uint8_t> rgb(size_t(m) * m * 3, 255);
  for (size_t p = 0; p < img.size(); ++p) {
    if (std::isnan(img[p])) {
      rgb[3 * p] = rgb[3 * p + 1] = rgb[3 * p + 2] = 200;
      continue;
    }
    const double v = std::remainder(img[p], 2 * M_PI) / M_PI;  // [-1, 1]: blue - white - red
    const double a = std::min(1.0, std::abs(v));
    const auto c = uint8_t(std::lround(255 * (1 - a)));
    rgb[3 * p] = v > 0 ? 255 : c;
    rgb[3 * p + 1] = c;
    rgb[3 * p + 2] = v > 0 ? c : 255;
  }
  write_file_atomic(path, encode_png_rgb(rgb, m, m));
}

// ---- optics-group estimates ----

double cs_angstrom(const OpticsGroup& og) { return og.cs * 1e7; }

// The same model with some aberrations left out of the prediction (restored afterwards).
template <class Edit>
void without(Model& md, const Context&, Edit edit, int ref_box, double ref_pixel, const std::vector<int>& boxes,
             double f_max, int r_max) {
  std::vector<OpticsGroup> saved = md.table->optics;
  for (OpticsGroup& og : md.table->optics) edit(og);
  build_model(md, ref_box, ref_pixel, boxes, f_max, r_max);
  md.table->optics = saved;
}

struct Geometry {
  int ref_box = 0;
  double ref_pixel = 0;
  std::vector<int> boxes;
  double f_max = 0;
  int r_max = 0;
};

void rebuild(Model& md, const Geometry& geo) {
  build_model(md, geo.ref_box, geo.ref_pixel, geo.boxes, geo.f_max, geo.r_max);
}

// The part of each pixel's odd phase that the odd fit replaces (per group): the beam tilt's phase,
// or with --odd_aberr_max_n >= 3 the whole odd phase; as the factor exp(+i phase) that takes it out
// of a prediction's conjugate (the same for every particle of a group: made once per pass).
RefitFactors refitted_phase(const CtfRefineOptions& opt, const Model& md) {
  RefitFactors out(md.pixels.size());
  for (size_t g = 0; g < md.pixels.size(); ++g) {
    const PixelList& pl = md.pixels[g];
    const OpticsGroup& og = md.table->optics[g];
    out[g].resize(pl.size());
    if (opt.odd_aberr_max_n >= 3) {
      for (size_t k = 0; k < pl.size(); ++k) out[g][k] = std::polar(1.0, double(pl.phase[k]));
      continue;
    }
    const PhaseBasis b = beam_tilt_basis(cs_angstrom(og), electron_wavelength(og.voltage));
    double v[4];
    for (size_t k = 0; k < pl.size(); ++k) {
      b.eval(pl.fx[k], pl.fy[k], v);
      out[g][k] = std::polar(1.0, double(float(v[0] * og.beam_tilt_x + v[1] * og.beam_tilt_y)));
    }
  }
  return out;
}

void merge_odd(OddSums& t, const OddSums& a) {
  for (size_t g = 0; g < t.size(); ++g)
    for (size_t k = 0; k < t[g].size(); ++k) t[g][k] += a[g][k];
}

// The odd phase per optics group from its sums (updates the table's optics groups, writes the PNGs).
void solve_odd(const CtfRefineOptions& opt, Model& md, const OddSums& total) {
  const bool zernike = opt.odd_aberr_max_n >= 3;
  for (size_t g = 0; g < md.pixels.size(); ++g) {
    OpticsGroup& og = md.table->optics[g];
    const PixelList& pl = md.pixels[g];
    const Band<cdouble> bd = band(pl, total[g], opt.kmin_tilt);
    const double lambda = electron_wavelength(og.voltage);
    const double cs = cs_angstrom(og);
    std::vector<double> c;
    PhaseBasis basis;
    if (!zernike) {
      basis = beam_tilt_basis(cs, lambda);
      c = fit_odd_phase(bd.x, bd.y, bd.sums, basis, {og.beam_tilt_x, og.beam_tilt_y, 0, 0});
      og.beam_tilt_x = c[0];
      og.beam_tilt_y = c[1];
      spdlog::info("ctf_refine: optics group {}: beam tilt ({:.4f}, {:.4f}) mrad (image shift ({:.3g}, {:.3g}) "
                   "rad Å, not kept)",
                   og.number, c[0], c[1], c[2], c[3]);
    } else {
      basis = odd_zernike_basis(opt.odd_aberr_max_n);
      std::vector<double> c0 = og.odd_zernike;
      c0.resize(size_t(basis.size), 0.0);
      const double a = -2 * M_PI * cs * lambda * lambda * 1e-3 / 3;
      c0[1] += 2 * a * og.beam_tilt_x;
      c0[0] += 2 * a * og.beam_tilt_y;
      c0[4] += a * og.beam_tilt_x;
      c0[3] += a * og.beam_tilt_y;
      c = fit_odd_phase(bd.x, bd.y, bd.sums, basis, c0);
      std::vector<double> z = c;
      const auto t = extract_beam_tilt(z, cs, lambda);
      og.beam_tilt_x = t[0];
      og.beam_tilt_y = t[1];
      og.odd_zernike = z;
      spdlog::info("ctf_refine: optics group {}: beam tilt ({:.4f}, {:.4f}) mrad, odd Zernike [{:.4g}]", og.number,
                   t[0], t[1], fmt::join(z, ", "));
    }
    // Diagnostics: the per-pixel phase of the sums and the fitted phase.
    std::vector<double> measured(pl.size()), fitted(pl.size()), b(size_t(basis.size));
    for (size_t k = 0; k < pl.size(); ++k) {
      measured[k] = std::arg(total[g][k]);
      basis.eval(pl.fx[k], pl.fy[k], b.data());
      fitted[k] = std::inner_product(b.begin(), b.end(), c.begin(), 0.0);
    }
    const std::string out = opt.out_dir + "/";
    write_phase_png(fmt::format("{}beamtilt_delta-phase_per-pixel_optics-group_{}.png", out, og.number), pl, measured,
                    true);
    write_phase_png(fmt::format("{}beamtilt_delta-phase_fit_optics-group_{}.png", out, og.number), pl, fitted, true);
  }
}

// The odd phase from the sums of the noise pass (estimate_noise with the refitted part), then the
// pixel lists with it.
void fit_odd(const CtfRefineOptions& opt, Model& md, const Geometry& geo, const OddSums& sums) {
  solve_odd(opt, md, sums);
  rebuild(md, geo);
}

void fit_even(const CtfRefineOptions& opt, const Context& cx, Model& md, const Geometry& geo,
              const std::vector<std::vector<size_t>>& units, ThreadPool& pool) {
  for (const OpticsGroup& og : md.table->optics)
    if (og.ctf_premultiplied || og.ctf_phase_flipped)
      input_error("{}: optics group {} has {} images: --fit_aberr needs the CTF's sign (not yet supported for them)",
                  md.table->source(), og.number, og.ctf_premultiplied ? "CTF-premultiplied" : "phase-flipped");
  without(md, cx, [](OpticsGroup& og) { og.even_zernike.clear(); }, geo.ref_box, geo.ref_pixel, geo.boxes, geo.f_max,
          geo.r_max);
  const size_t G = md.pixels.size();
  using Acc = std::vector<std::vector<EvenSums>>;
  auto make = [&] {
    Acc a(G);
    for (size_t g = 0; g < G; ++g) a[g].assign(md.pixels[g].size(), EvenSums{});
    return a;
  };
  Acc total = make();
  run_pass(units, *cx.table, pool, "symmetric aberrations", total, make,
           [&](const std::vector<size_t>& unit, Acc& a, ParticleImages& images) {
             Observation o;
             for (size_t i : unit) {
               observe(cx, md, i, images, o);
               const size_t g = size_t(cx.table->optics_index[i]);
               const PixelList& pl = md.pixels[g];
               const double s = md.scale[g];
               const CtfParams cp = particle_ctf_params(*cx.table, i);
               const Ctf ctf(cp);
               for (size_t k = 0; k < pl.size(); ++k) {
                 const double w = md.weight[g][size_t(pl.shell[k])];
                 const double f2 = pl.fx[k] * pl.fx[k] + pl.fy[k] * pl.fy[k];
                 const double env = std::exp(-cp.bfactor * f2 / 4) * cp.scale;
                 const double gam = ctf.gamma(pl.fx[k], pl.fy[k]);
                 const double t0 = std::sin(gam), t1 = std::cos(gam);
                 const cdouble q = cdouble(o.Q[k]) * s;
                 const double R = w * std::real(cdouble(o.X[k]) * std::conj(q)) * env;
                 const double P = w * std::norm(q) * env * env;
                 EvenSums& e = a[g][k];
                 e.b0 += R * t0;
                 e.b1 += R * t1;
                 e.m00 += P * t0 * t0;
                 e.m01 += P * t0 * t1;
                 e.m11 += P * t1 * t1;
               }
             }
           },
           [](Acc& t, const Acc& a) {
             for (size_t g = 0; g < t.size(); ++g)
               for (size_t k = 0; k < t[g].size(); ++k) {
                 EvenSums& x = t[g][k];
                 const EvenSums& y = a[g][k];
                 x.b0 += y.b0;
                 x.b1 += y.b1;
                 x.m00 += y.m00;
                 x.m01 += y.m01;
                 x.m11 += y.m11;
               }
           },
           [](Acc& a, auto&& visit) { each_array(a, visit); });
  for (size_t g = 0; g < G; ++g) {
    OpticsGroup& og = md.table->optics[g];
    const PixelList& pl = md.pixels[g];
    const Band<EvenSums> bd = band(pl, total[g], opt.kmin_aberr);
    const PhaseBasis basis = even_zernike_basis(opt.even_aberr_max_n);
    std::vector<double> c = fit_even_phase(bd.x, bd.y, bd.sums, basis, og.even_zernike);
    og.even_zernike = c;
    spdlog::info("ctf_refine: optics group {}: even Zernike [{:.4g}]", og.number, fmt::join(c, ", "));
    std::vector<double> measured(pl.size()), fitted(pl.size()), b(size_t(basis.size));
    for (size_t k = 0; k < pl.size(); ++k) {
      measured[k] = best_even_offset(total[g][k]);
      basis.eval(pl.fx[k], pl.fy[k], b.data());
      fitted[k] = std::inner_product(b.begin(), b.end(), c.begin(), 0.0);
    }
    const std::string out = opt.out_dir + "/";
    write_phase_png(fmt::format("{}aberr_delta-phase_per-pixel_optics-group_{}.png", out, og.number), pl, measured,
                    false);
    write_phase_png(fmt::format("{}aberr_delta-phase_fit_optics-group_{}.png", out, og.number), pl, fitted, false);
  }
  rebuild(md, geo);
}

Mat2 mul(const Mat2& a, const Mat2& b) {
  Mat2 r{};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) r[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
  return r;
}
Mat2 inverse(const Mat2& a) {
  const double det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
  return Mat2{{{a[1][1] / det, -a[0][1] / det}, {-a[1][0] / det, a[0][0] / det}}};
}
Mat2 as_mat(const std::array<double, 4>& m) { return Mat2{{{m[0], m[1]}, {m[2], m[3]}}}; }

// `iterations` linearised fits; returns the largest change of a matrix entry in the last one.
// With `with_odd`, the same passes also give the odd-phase sums, and the odd phase is refitted after
// each magnification update (from the same pass: one pass per iteration for both).
double fit_mag(const CtfRefineOptions& opt, const Context& cx, Model& md, const Geometry& geo,
               const std::vector<std::vector<size_t>>& units, ThreadPool& pool, bool with_odd) {
  ParticleTable& table = *md.table;
  const size_t G = md.pixels.size();
  double largest = 0;
  const Mat2 zero{{{0, 0}, {0, 0}}};
  std::vector<Mat2> previous_fit(G, zero), previous_step(G, zero);
  for (int it = 0; it < opt.mag_iterations; ++it) {
    struct Acc {
      std::vector<std::vector<MagSums>> mag;
      OddSums odd;
    };
    const auto refit = with_odd ? refitted_phase(opt, md) : RefitFactors();
    auto make = [&] {
      Acc a;
      a.mag.resize(G);
      for (size_t g = 0; g < G; ++g) a.mag[g].assign(md.pixels[g].size(), MagSums{});
      if (with_odd) a.odd = make_odd_sums(md);
      return a;
    };
    Acc total = make();
    run_pass(units, table, pool, "magnification", total, make,
             [&](const std::vector<size_t>& unit, Acc& a, ParticleImages& images) {
               Observation o;
               for (size_t i : unit) {
                 observe(cx, md, i, images, o, true);
                 const size_t g = size_t(table.optics_index[i]);
                 const PixelList& pl = md.pixels[g];
                 const double s = md.scale[g];
                 for (size_t k = 0; k < pl.size(); ++k) {
                   const double w = md.weight[g][size_t(pl.shell[k])];
                   const double sc = s * double(o.c[k]);
                   const cdouble grad[2] = {cdouble(o.Gx[k]) * sc, cdouble(o.Gy[k]) * sc};
                   const cdouble r = cdouble(o.X[k]) - s * double(o.c[k]) * cdouble(o.Q[k]);
                   MagSums& m = a.mag[g][k];
                   m.a00 += w * std::norm(grad[0]);
                   m.a01 += w * std::real(std::conj(grad[0]) * grad[1]);
                   m.a11 += w * std::norm(grad[1]);
                   m.b0 += w * std::real(std::conj(grad[0]) * r);
                   m.b1 += w * std::real(std::conj(grad[1]) * r);
                 }
                 if (with_odd) add_odd(md, refit, g, o, a.odd);
               }
             },
             [&](Acc& t, const Acc& a) {
               if (with_odd) merge_odd(t.odd, a.odd);
               for (size_t g = 0; g < t.mag.size(); ++g)
                 for (size_t k = 0; k < t.mag[g].size(); ++k) {
                   MagSums& x = t.mag[g][k];
                   const MagSums& y = a.mag[g][k];
                   x.a00 += y.a00;
                   x.a01 += y.a01;
                   x.a11 += y.a11;
                   x.b0 += y.b0;
                   x.b1 += y.b1;
                 }
             },
             [](Acc& a, auto&& visit) {
               each_array(a.mag, visit);
               each_array(a.odd, visit);
             });
    largest = 0;
    std::vector<Mat2> E(G, kIdentity2);
    for (size_t g = 0; g < G; ++g) {
      const PixelList& pl = md.pixels[g];
      const Band<MagSums> bd = band(pl, total.mag[g], opt.kmin_mag, true);
      const Mat2 fit = fit_displacement(bd.x, bd.y, bd.sums);
      // The linearised fit's gain: if each fit is gain x the remaining error, then this fit is the
      // previous one less gain x the step taken since (a secant along that step). Near the solution
      // the fits overshoot (gain 1.2-1.3 on 1U6G at 1.5 Å/px, 1.05-1.1 on pseudo-atomic maps at 1 Å/px,
      // noisy half maps), so from the second iteration on the step is the fit divided by the gain.
      // A gain below 1 (a first step from 1.5% away that fell short: outside the linear range, seen
      // 0.5-0.75) is not a property of the fit, and would lengthen the step: kept at 1; above 2, 2.
      Mat2 D = fit;
      double gain = 1;
      if (it > 0) {
        double num = 0, den = 0;
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b) {
            num += (previous_fit[g][a][b] - fit[a][b]) * previous_step[g][a][b];
            den += previous_step[g][a][b] * previous_step[g][a][b];
          }
        gain = den > 0 ? std::clamp(num / den, 1.0, 2.0) : 1.0;
        for (auto& row : D)
          for (double& v : row) v /= gain;
      }
      previous_fit[g] = fit;
      previous_step[g] = D;
      OpticsGroup& og = table.optics[g];
      const Mat2 M_old = as_mat(og.mag_matrix);
      const Mat2 ID{{{1 + D[0][0], D[0][1]}, {D[1][0], 1 + D[1][1]}}};
      const Mat2 M_new = mul(M_old, ID);
      og.mag_matrix = {M_new[0][0], M_new[0][1], M_new[1][0], M_new[1][1]};
      E[g] = mul(M_old, inverse(M_new));
      largest = std::max({largest, std::abs(D[0][0]), std::abs(D[0][1]), std::abs(D[1][0]), std::abs(D[1][1])});
      spdlog::info("ctf_refine: optics group {}: magnification matrix [[{:.5f}, {:.5f}], [{:.5f}, {:.5f}]] "
                   "(iteration {}, the fit's gain {:.3f}, change {:.2e})",
                   og.number, M_new[0][0], M_new[0][1], M_new[1][0], M_new[1][1], it + 1, gain,
                   std::max({std::abs(D[0][0]), std::abs(D[0][1]), std::abs(D[1][0]), std::abs(D[1][1])}));
    }
    if (!opt.keep_astig) {
      // The CTF in image pixels stays the same: Q_new = E^T Q_old E (RELION's astigmatism translation).
      for (size_t i = 0; i < table.size(); ++i) {
        const Mat2& e = E[size_t(table.optics_index[i])];
        const DefocusForm f = defocus_form(table.defocus_u[i], table.defocus_v[i], table.defocus_angle[i]);
        const Mat2 Q{{{f.d + f.a1, f.a2}, {f.a2, f.d - f.a1}}};
        const Mat2 Et{{{e[0][0], e[1][0]}, {e[0][1], e[1][1]}}};
        const Mat2 Qn = mul(Et, mul(Q, e));
        const double a2 = 0.5 * (Qn[0][1] + Qn[1][0]);
        const auto uva = defocus_uva(DefocusForm{0.5 * (Qn[0][0] + Qn[1][1]), 0.5 * (Qn[0][0] - Qn[1][1]), a2});
        table.defocus_u[i] = uva[0];
        table.defocus_v[i] = uva[1];
        table.defocus_angle[i] = uva[2];
      }
    }
    if (with_odd) solve_odd(opt, md, total.odd);  // on this pass's pixel lists, before the rebuild
    rebuild(md, geo);
    if (largest < 1e-5) break;
  }
  return largest;
}

// ---- per-particle defocus ----

// One particle's terms of the defocus likelihood over the pixels of |f| >= 1/kmin_defocus.
struct DefocusTerms {
  std::vector<float> R, P, gamma0, cd, c2, s2;  // per pixel, padded to a multiple of 8 with R = P = 0
  DefocusForm form;
  int kind = 0;  // 0: C, 1: |C|, 2: C^2
  // dphi: a change of the phase gamma (radians) at every pixel (a phase shift of -dphi).
  double score(double dd, double da1, double da2, double dphi = 0) const;
};

// The score's sums in 8 float lanes (lane l: pixels l, l + 8, ...), written with GCC's vector
// extensions so that the same operations per lane compile to SSE (two 4-wide halves) or, chosen at
// run time, AVX (one 8-wide register; no FMA): the lanes, added in a fixed order, give the same value
// on any x86-64 machine and build. -sin of the phase by a branch-free polynomial: reduction by whole
// turns (2 pi in two parts; rounding by the 1.5 * 2^23 trick, exact for |x| < 2^22), a fold to
// [-pi/2, pi/2] by sin(pi - r) = sin(r), then degree 9 (error below 2e-6 for |x| up to ~1e5).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors only inside always-inlined helpers
namespace score_simd {
using v8f = float __attribute__((vector_size(32)));
using v8i = int __attribute__((vector_size(32)));

[[gnu::always_inline]] inline v8f load(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int Kind>
[[gnu::always_inline]] inline void sums(const DefocusTerms& t, float dd, float da1, float da2, float dphi, float* ln,
                                        float* ld) {
  const v8f inv2pi = v8f{} + 0.15915494309189535f, hi = v8f{} + 6.28125f, lo = v8f{} + 1.9353071795864769e-3f,
            halfpi = v8f{} + 1.5707963267948966f, pi = v8f{} + 3.14159265358979f, magic = v8f{} + 12582912.0f;
  const v8i sign = v8i{} + int(0x80000000u);
  v8f vn = {}, vd = {};
  for (size_t k = 0; k < t.R.size(); k += 8) {
    const v8f arg = (load(&t.gamma0[k]) + dphi) + load(&t.cd[k]) * (dd + (da1 * load(&t.c2[k]) + da2 * load(&t.s2[k])));
    const v8f q = (arg * inv2pi + magic) - magic;
    v8f r = (arg - q * hi) - q * lo;
    const v8i ri = reinterpret_cast<v8i>(r);
    const v8i fold = reinterpret_cast<v8f>(ri & ~sign) > halfpi;  // |r| > pi/2: sign(r) pi - r
    const v8f folded = reinterpret_cast<v8f>(reinterpret_cast<v8i>(pi) | (ri & sign)) - r;
    r = reinterpret_cast<v8f>((fold & reinterpret_cast<v8i>(folded)) | (~fold & ri));
    const v8f r2 = r * r;
    v8f p = -1.9840874e-4f + r2 * 2.7525562e-6f;
    p = 8.3333310e-3f + r2 * p;
    p = -1.6666667e-1f + r2 * p;
    p = 1.0f + r2 * p;
    v8f c = reinterpret_cast<v8f>(reinterpret_cast<v8i>(r * p) ^ sign);  // -sin
    if constexpr (Kind == 1) c = reinterpret_cast<v8f>(reinterpret_cast<v8i>(c) & ~sign);
    if constexpr (Kind == 2) c = c * c;
    vn += c * load(&t.R[k]);
    vd += (c * c) * load(&t.P[k]);
  }
  std::memcpy(ln, &vn, sizeof vn);
  std::memcpy(ld, &vd, sizeof vd);
}

template <int Kind>
void sums_base(const DefocusTerms& t, float dd, float da1, float da2, float dphi, float* ln, float* ld) {
  sums<Kind>(t, dd, da1, da2, dphi, ln, ld);
}
#if defined(__x86_64__) && defined(__GNUC__)
template <int Kind>
__attribute__((target("avx"))) void sums_avx(const DefocusTerms& t, float dd, float da1, float da2, float dphi,
                                             float* ln, float* ld) {
  sums<Kind>(t, dd, da1, da2, dphi, ln, ld);
}
const bool kAvx = __builtin_cpu_supports("avx");
#endif

template <int Kind>
double score(const DefocusTerms& t, float dd, float da1, float da2, float dphi) {
  alignas(32) float ln[8], ld[8];
#if defined(__x86_64__) && defined(__GNUC__)
  if (kAvx)
    sums_avx<Kind>(t, dd, da1, da2, dphi, ln, ld);
  else
#endif
    sums_base<Kind>(t, dd, da1, da2, dphi, ln, ld);
  double N = 0, D = 0;
  for (int l = 0; l < 8; ++l) {
    N += ln[l];
    D += ld[l];
  }
  return N > 0 && D > 0 ? N * N / D : 0.0;
}
}  // namespace score_simd
#pragma GCC diagnostic pop

double DefocusTerms::score(double dd, double da1, double da2, double dphi) const {
  if (kind == 1) return score_simd::score<1>(*this, float(dd), float(da1), float(da2), float(dphi));
  if (kind == 2) return score_simd::score<2>(*this, float(dd), float(da1), float(da2), float(dphi));
  return score_simd::score<0>(*this, float(dd), float(da1), float(da2), float(dphi));
}

// The half maps' FSC at radius r (reference Fourier px), linear between shells; 0 beyond them.
double fsc_between_shells(const std::vector<double>& fsc, double r) {
  const size_t i = size_t(r);
  if (i + 1 >= fsc.size()) return 0.0;
  const double t = r - double(i);
  return std::max(0.0, (1 - t) * fsc[i] + t * fsc[i + 1]);
}

// `unfiltered`: the prediction from the particle's own half map without the FSC filter (see
// fit_envelope: the regression on it is unbiased; the phase-shift fit uses it).
void defocus_terms(const Context& cx, const Model& md, size_t i, const Observation& o, double fmin,
                   DefocusTerms& t, bool unfiltered = false) {
  const ParticleTable& table = *cx.table;
  const size_t g = size_t(table.optics_index[i]);
  const PixelList& pl = md.pixels[g];
  const OpticsGroup& og = table.optics[g];
  const CtfParams cp = particle_ctf_params(table, i);
  const Ctf ctf(cp);
  const double lambda = ctf.wavelength();
  t.kind = og.ctf_premultiplied ? 2 : (og.ctf_phase_flipped || md.optics.group(g).phase_flipped) ? 1 : 0;
  t.form = defocus_form(cp.defocus_u, cp.defocus_v, cp.defocus_angle);
  t.R.clear();
  t.P.clear();
  t.gamma0.clear();
  t.cd.clear();
  t.c2.clear();
  t.s2.clear();
  const double s = md.scale[g];
  for (size_t k = 0; k < pl.size(); ++k) {
    const double f2 = pl.fx[k] * pl.fx[k] + pl.fy[k] * pl.fy[k];
    if (f2 < fmin * fmin) continue;
    const double w = md.weight[g][size_t(pl.shell[k])];
    double env = (cp.bfactor != 0 ? std::exp(-cp.bfactor * f2 / 4) : 1.0) * cp.scale;
    if (t.kind == 2) env *= env;
    const cdouble q = cdouble(o.Q[k]) * s;
    double u = 1;  // the reference's FSC filter divided out (`unfiltered`)
    if (unfiltered) {
      u = fsc_between_shells(*cx.fsc, std::hypot(pl.qx[k], pl.qy[k]));
      if (u < 0.01) continue;
    }
    t.R.push_back(float(w * std::real(cdouble(o.X[k]) * std::conj(q)) / u * env));
    t.P.push_back(float(w * std::norm(q) / (u * u) * env * env));
    t.gamma0.push_back(float(ctf.gamma(pl.fx[k], pl.fy[k]) + pl.gamma_offset[k]));
    t.cd.push_back(float(-M_PI * lambda * f2));
    t.c2.push_back(pl.cos2a[k]);
    t.s2.push_back(pl.sin2a[k]);
  }
  while (t.R.size() % 8 != 0)
    for (auto* v : {&t.R, &t.P, &t.gamma0, &t.cd, &t.c2, &t.s2}) v->push_back(0.0f);
}

// Maximum of f on [lo, hi] by golden section (f unimodal near the optimum).
template <class F>
double golden(F f, double lo, double hi, double tol) {
  const double r = 0.3819660112501051;
  double a = lo + r * (hi - lo), b = hi - r * (hi - lo);
  double fa = f(a), fb = f(b);
  while (hi - lo > tol) {
    if (fa > fb) {
      hi = b;
      b = a;
      fb = fa;
      a = lo + r * (hi - lo);
      fa = f(a);
    } else {
      lo = a;
      a = b;
      fa = fb;
      b = hi - r * (hi - lo);
      fb = f(b);
    }
  }
  return 0.5 * (lo + hi);
}

// Nelder-Mead maximisation from x0 with initial steps `step`, until the simplex is smaller than `tol`.
std::vector<double> nelder_mead(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x0,
                                double step, double tol, int max_iter) {
  NelderMeadOptions o;
  o.step = {step};
  o.x_tol = tol;
  o.max_iterations = max_iter;
  return nelder_mead_maximise(f, x0, o).x;
}

struct DefocusChange {
  double dd = 0, da1 = 0, da2 = 0;
  double dphi = 0;  // change of the CTF phase (radians): the phase shift changes by -dphi
};

// The phase shift (fit_mode letter 1) of one micrograph's particles, from the defocus fit's result
// `out`: per particle ('p'), a local search of its defocus, phase and (astigmatism 'p') astigmatism;
// per micrograph ('m'), rounds alternating between the micrograph's phase (and astigmatism 'm') and
// its particles' defoci (and astigmatism 'p'), up to 8, until the phase moves by less than 0.02
// degrees; with a per-micrograph defocus, all together. The phase is searched in units where 0.3
// radian is one defocus scan step, so Nelder-Mead's simplex is balanced; the search is local (the
// input phase shift is CTFFIND's estimate). `terms` predict from the own half map unfiltered: with the
// FSC-filtered map the phase and the defocus traded off (on 1U6G at 1.5 Å/px, +3-4 degrees and
// -20-28 Å on average from the true values as input; unfiltered +1 degree and -5 Å, as the envelope
// fit's argument says).
void fit_unit_phase(const std::vector<DefocusTerms>& terms, char mode_defocus, char mode_astig, char mode_phase,
                    double h, double step, std::vector<DefocusChange>& out) {
  const size_t n = terms.size();
  const double S = step / 0.3;
  if (mode_defocus == 'm') {  // all per micrograph
    DefocusChange c = out.empty() ? DefocusChange{} : out[0];
    auto total = [&](double d, double a1, double a2, double u) {
      double v = 0;
      for (const DefocusTerms& t : terms) v += t.score(d, a1, a2, u / S);
      return v;
    };
    if (mode_astig == 'm') {
      const auto x = nelder_mead([&](const std::vector<double>& v) { return total(v[0], v[1], v[2], v[3]); },
                                 {c.dd, c.da1, c.da2, 0}, 0.5 * step, 0.5, 600);
      c = {x[0], x[1], x[2], x[3] / S};
    } else {
      const auto x = nelder_mead([&](const std::vector<double>& v) { return total(v[0], c.da1, c.da2, v[1]); },
                                 {c.dd, 0}, 0.5 * step, 0.5, 400);
      c.dd = x[0];
      c.dphi = x[1] / S;
    }
    std::fill(out.begin(), out.end(), c);
    return;
  }
  // A particle's defocus (and astigmatism 'p') at a given phase (and astigmatism when not 'p').
  auto refit_particle = [&](size_t i, double u) {
    DefocusChange& c = out[i];
    if (mode_astig == 'p') {
      const auto x = nelder_mead([&](const std::vector<double>& v) { return terms[i].score(v[0], v[1], v[2], u / S); },
                                 {c.dd, c.da1, c.da2}, 0.1 * step, 0.5, 400);
      c.dd = x[0];
      c.da1 = x[1];
      c.da2 = x[2];
    } else {
      c.dd = golden([&](double dd) { return terms[i].score(dd, c.da1, c.da2, u / S); }, c.dd - h, c.dd + h, 0.5);
    }
    c.dphi = u / S;
  };
  if (mode_phase == 'p') {
    for (size_t i = 0; i < n; ++i) {
      DefocusChange& c = out[i];
      if (mode_astig == 'p') {
        const auto x = nelder_mead(
            [&](const std::vector<double>& v) { return terms[i].score(v[0], v[1], v[2], v[3]); },
            {c.dd, c.da1, c.da2, 0}, 0.5 * step, 0.5, 600);
        c = {x[0], x[1], x[2], x[3] / S};
      } else {
        const auto x = nelder_mead(
            [&](const std::vector<double>& v) { return terms[i].score(v[0], c.da1, c.da2, v[1] / S); }, {c.dd, 0},
            0.5 * step, 0.5, 400);
        c.dd = x[0];
        c.dphi = x[1] / S;
      }
    }
    return;
  }
  // Per micrograph: its phase (and astigmatism 'm'), then each particle's defocus; two rounds.
  std::vector<double> y{0};
  if (mode_astig == 'm') y = {0, n ? out[0].da1 : 0.0, n ? out[0].da2 : 0.0};
  for (int round = 0; round < 8; ++round) {
    const double before = y[0];
    y = nelder_mead(
        [&](const std::vector<double>& v) {
          double t = 0;
          for (size_t i = 0; i < n; ++i) {
            const double a1 = mode_astig == 'm' ? v[1] : out[i].da1, a2 = mode_astig == 'm' ? v[2] : out[i].da2;
            t += terms[i].score(out[i].dd, a1, a2, v[0] / S);
          }
          return t;
        },
        y, round == 0 ? 0.5 * step : 0.1 * step, 0.5, 400);
    for (size_t i = 0; i < n; ++i) {
      if (mode_astig == 'm') {
        out[i].da1 = y[1];
        out[i].da2 = y[2];
      }
      refit_particle(i, y[0]);
    }
    if (round > 0 && std::abs(y[0] - before) / S < 0.02 * M_PI / 180) break;  // converged to 0.02 degrees
  }
}

// The defocus changes of one micrograph's particles (fit_mode letters 2 and 3), then the phase shift
// (letter 1) with them.
std::vector<DefocusChange> fit_unit_defocus(const std::vector<DefocusTerms>& terms, char mode_defocus, char mode_astig,
                                            char mode_phase, double range, double step,
                                            const std::vector<DefocusTerms>& phase_terms) {
  const size_t n = terms.size();
  std::vector<DefocusChange> out(n);
  const int nscan = std::max(2, int(std::ceil(range / step)));
  auto scan = [&](auto score) {  // best offset over [-range/2, range/2], then golden section
    double best = 0, bestv = -1;
    for (int j = 0; j <= nscan; ++j) {
      const double d = -0.5 * range + range * j / nscan;
      const double v = score(d);
      if (v > bestv) {
        bestv = v;
        best = d;
      }
    }
    const double h = range / nscan;
    return golden(score, best - h, best + h, 0.5);
  };
  if (mode_defocus == 'p') {
    for (size_t i = 0; i < n; ++i) out[i].dd = scan([&](double d) { return terms[i].score(d, 0, 0); });
    if (mode_astig == 'p') {
      for (size_t i = 0; i < n; ++i) {
        const auto x = nelder_mead([&](const std::vector<double>& v) { return terms[i].score(v[0], v[1], v[2]); },
                                   {out[i].dd, 0, 0}, 0.5 * step, 0.5, 400);
        out[i] = {x[0], x[1], x[2]};
      }
    } else if (mode_astig == 'm') {
      // Alternating: each particle's defocus at the micrograph's astigmatism (golden section near its
      // previous value), then the astigmatism (Nelder-Mead, to 1 Å) at those defoci; two rounds.
      const double h = range / nscan;
      std::vector<double> a{0, 0};
      for (int round = 0; round < 2; ++round) {
        for (size_t i = 0; i < n; ++i)
          out[i].dd = golden([&](double dd) { return terms[i].score(dd, a[0], a[1]); }, out[i].dd - h,
                             out[i].dd + h, 0.5);
        a = nelder_mead(
            [&](const std::vector<double>& v) {
              double s = 0;
              for (size_t i = 0; i < n; ++i) s += terms[i].score(out[i].dd, v[0], v[1]);
              return s;
            },
            a, round == 0 ? 0.5 * step : 0.1 * step, 1.0, 200);
      }
      for (size_t i = 0; i < n; ++i) {
        out[i].dd = golden([&](double dd) { return terms[i].score(dd, a[0], a[1]); }, out[i].dd - h, out[i].dd + h,
                           0.5);
        out[i].da1 = a[0];
        out[i].da2 = a[1];
      }
    }
  } else {  // 'm': one defocus change for the micrograph
    auto total = [&](double d, double a1, double a2) {
      double s = 0;
      for (const DefocusTerms& t : terms) s += t.score(d, a1, a2);
      return s;
    };
    DefocusChange c;
    c.dd = scan([&](double d) { return total(d, 0, 0); });
    if (mode_astig == 'm') {
      const auto x = nelder_mead([&](const std::vector<double>& v) { return total(v[0], v[1], v[2]); }, {c.dd, 0, 0},
                                 0.5 * step, 0.5, 400);
      c = {x[0], x[1], x[2]};
    }
    std::fill(out.begin(), out.end(), c);
  }
  if (mode_phase != 'f') fit_unit_phase(phase_terms, mode_defocus, mode_astig, mode_phase, range / nscan, step, out);
  return out;
}

// `preliminary`: the defoci only (astigmatism kept), before the magnification fit.
double fit_defocus(const CtfRefineOptions& opt, const Context& cx, Model& md, const Geometry& geo,
                   const std::vector<std::vector<size_t>>& units, ThreadPool& pool, bool preliminary = false) {
  ParticleTable& table = *md.table;
  const char mode_defocus = opt.fit_mode[1], mode_astig = preliminary ? 'f' : opt.fit_mode[2];
  const char mode_phase = preliminary ? 'f' : opt.fit_mode[0];
  // Scan step: a quarter turn of the defocus phase at the highest frequency used (or the range / 20).
  double lambda_max = 0;
  for (const OpticsGroup& og : table.optics) lambda_max = std::max(lambda_max, electron_wavelength(og.voltage));
  const double step = std::min(opt.defocus_range / 20, 1.0 / (4 * lambda_max * geo.f_max * geo.f_max));
  std::vector<DefocusChange> change(table.size());
  struct None {};
  None none;
  run_pass(units, table, pool, "defocus", none, [] { return None{}; },
           [&](const std::vector<size_t>& unit, None&, ParticleImages& images) {
             std::vector<DefocusTerms> terms(unit.size()), phase_terms(mode_phase != 'f' ? unit.size() : 0);
             Observation o;
             for (size_t u = 0; u < unit.size(); ++u) {
               observe(cx, md, unit[u], images, o);
               defocus_terms(cx, md, unit[u], o, 1.0 / opt.kmin_defocus, terms[u]);
               if (mode_phase != 'f') defocus_terms(cx, md, unit[u], o, 1.0 / opt.kmin_defocus, phase_terms[u], true);
             }
             const auto c =
                 fit_unit_defocus(terms, mode_defocus, mode_astig, mode_phase, opt.defocus_range, step, phase_terms);
             for (size_t u = 0; u < unit.size(); ++u) change[unit[u]] = c[u];
           },
           [](None&, const None&) {}, [](None&, auto&&) {});
  share_per_particle(units, change, [](DefocusChange& c, auto&& visit) {
    visit(c.dd);
    visit(c.da1);
    visit(c.da2);
    visit(c.dphi);
  });
  double sum2 = 0, phase2 = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    DefocusForm f = defocus_form(table.defocus_u[i], table.defocus_v[i], table.defocus_angle[i]);
    f.d += change[i].dd;
    f.a1 += change[i].da1;
    f.a2 += change[i].da2;
    const auto uva = defocus_uva(f);
    table.defocus_u[i] = uva[0];
    table.defocus_v[i] = uva[1];
    table.defocus_angle[i] = uva[2];
    sum2 += change[i].dd * change[i].dd;
    table.phase_shift[i] -= change[i].dphi * 180.0 / M_PI;
    phase2 += change[i].dphi * change[i].dphi;
  }
  const double rms = table.size() ? std::sqrt(sum2 / double(table.size())) : 0.0;
  spdlog::info("ctf_refine: defocus of {} particles refined (scan {} Å in steps of {:.1f} Å); RMS change {:.1f} Å",
               table.size(), opt.defocus_range, step, rms);
  if (mode_phase != 'f')
    spdlog::info("ctf_refine: phase shift refined {}; RMS change {:.2f}°",
                 mode_phase == 'm' ? "per micrograph" : "per particle",
                 table.size() ? std::sqrt(phase2 / double(table.size())) * 180.0 / M_PI : 0.0);
  rebuild(md, geo);
  return rms;
}


// ---- CTF envelope: B-factor and scale (rlnCtfBfactor, rlnCtfScalefactor) ----

// One particle's (or micrograph's) terms of the envelope likelihood, binned in f^2 (fine enough that
// exp(-B f^2 / 4) changes by at most 0.05 across a bin over the allowed B range): with c0 the CTF
// without envelope and q the particle's own half map unfiltered (the FSC filter divided out: the
// particle's own noise in its half map correlates with it by about what the half map's noise adds to
// |q|^2, so the regression on the unfiltered map is unbiased where the filtered one overestimates the
// signal at high frequency by 1/FSC; measured: B 30-40 Å² too low at box 64), T = sum w |c0 q|^2,
// S = sum w Re(X conj(c0 q)), F = sum w |c0 q|^2 f^2 (F / T: the bin's mean f^2), w = FSC / noise power.
struct EnvelopeTerms {
  std::vector<double> S, T, F;
  void add(const EnvelopeTerms& o) {
    for (size_t b = 0; b < S.size(); ++b) {
      S[b] += o.S[b];
      T[b] += o.T[b];
      F[b] += o.F[b];
    }
  }
};

struct EnvelopeFit {
  double bfactor = 0, scale = 1;
  bool at_bound = false;  // B or the scale at a limit of the allowed range
};

// The envelope a exp(-B f^2 / 4) maximising the Gaussian log-likelihood sum 2 a b S - a^2 b^2 T
// (b = exp(-B f^2 / 4)) for B in [b_lo, b_hi] and a >= a_min: a scan of B in steps of 5 Å^2 (a
// profiled out in closed form), then golden section to 0.05 Å^2. With `power` 2 (CTF-premultiplied
// images, the envelope squared in the prediction) the fit is of (a^2, 2B).
EnvelopeFit fit_envelope_terms(const EnvelopeTerms& t, double b_lo, double b_hi, double a_min, int power) {
  const double lo = power * b_lo, hi = power * b_hi, amin = std::pow(a_min, power);
  std::vector<size_t> used;
  for (size_t b = 0; b < t.T.size(); ++b)
    if (t.T[b] > 0) used.push_back(b);
  auto profile = [&](double B, double* a_out) {
    double sb = 0, tb = 0;
    for (size_t b : used) {
      const double e = std::exp(-B * (t.F[b] / t.T[b]) / 4);
      sb += e * t.S[b];
      tb += e * e * t.T[b];
    }
    double a = tb > 0 ? sb / tb : amin;
    a = std::max(a, amin);
    if (a_out) *a_out = a;
    return 2 * a * sb - a * a * tb;
  };
  EnvelopeFit fit;
  if (used.empty()) return fit;
  const int n = std::max(2, int(std::ceil((hi - lo) / (5.0 * power))));
  double best = lo, bestv = -std::numeric_limits<double>::infinity();
  for (int j = 0; j <= n; ++j) {
    const double B = lo + (hi - lo) * j / n;
    const double v = profile(B, nullptr);
    if (v > bestv) {
      bestv = v;
      best = B;
    }
  }
  const double h = (hi - lo) / n;
  const double B = golden([&](double x) { return profile(x, nullptr); }, std::max(lo, best - h),
                          std::min(hi, best + h), 0.05 * power);
  double a = 1;
  profile(B, &a);
  fit.bfactor = B / power;
  fit.scale = std::pow(a, 1.0 / power);
  const double tol = 0.1 * power;
  fit.at_bound = B - lo < tol || hi - B < tol || a <= amin;
  return fit;
}

// Fits each particle's CTF envelope (or one per micrograph, `per_micrograph`) from the pixels at or
// beyond `kmin` Å. The scale is that of the images against the maps' projections (as RELION's).
void fit_envelope(const CtfRefineOptions& opt, const Context& cx, Model& md,
                  const std::vector<std::vector<size_t>>& units, ThreadPool& pool, bool per_micrograph, double kmin) {
  ParticleTable& table = *md.table;
  // The prediction without envelope: B = 0 and scale 1 while the terms are measured.
  std::fill(table.ctf_bfactor.begin(), table.ctf_bfactor.end(), 0.0);
  std::fill(table.ctf_scale.begin(), table.ctf_scale.end(), 1.0);
  double f2_max = 1e-12;
  for (const PixelList& pl : md.pixels)
    for (size_t k = 0; k < pl.size(); ++k) f2_max = std::max(f2_max, pl.fx[k] * pl.fx[k] + pl.fy[k] * pl.fy[k]);
  const size_t bins = size_t(std::clamp(std::ceil((opt.bfac_max_B - opt.bfac_min_B) * 2 * f2_max / (4 * 0.05)), 16.0,
                                        4096.0));
  const double fmin2 = 1.0 / (kmin * kmin);
  std::vector<EnvelopeFit> fits(table.size());
  struct None {};
  None none;
  run_pass(units, table, pool, "CTF B-factors and scales", none, [] { return None{}; },
           [&](const std::vector<size_t>& unit, None&, ParticleImages& images) {
             Observation o;
             auto zeros = [&] {
               return EnvelopeTerms{std::vector<double>(bins, 0.0), std::vector<double>(bins, 0.0),
                                    std::vector<double>(bins, 0.0)};
             };
             EnvelopeTerms sum = zeros(), t = zeros();
             int power = 1;  // a micrograph's particles share their optics group (else: the last one's)
             for (size_t i : unit) {
               observe(cx, md, i, images, o);
               const size_t g = size_t(table.optics_index[i]);
               const OpticsGroup& og = table.optics[g];
               power = og.ctf_premultiplied ? 2 : 1;
               const PixelList& pl = md.pixels[g];
               for (auto* v : {&t.S, &t.T, &t.F}) std::fill(v->begin(), v->end(), 0.0);
               for (size_t k = 0; k < pl.size(); ++k) {
                 const double f2 = pl.fx[k] * pl.fx[k] + pl.fy[k] * pl.fy[k];
                 if (f2 < fmin2) continue;
                 const double fsc = fsc_between_shells(*cx.fsc, std::hypot(pl.qx[k], pl.qy[k]));
                 if (fsc < 0.01) continue;
                 const size_t b = std::min(bins - 1, size_t(f2 / f2_max * double(bins)));
                 const double w = md.weight[g][size_t(pl.shell[k])];
                 const cdouble p = cdouble(o.Q[k]) * (double(o.c[k]) / fsc);
                 const double pp = w * std::norm(p);
                 t.S[b] += w * std::real(cdouble(o.X[k]) * std::conj(p));
                 t.T[b] += pp;
                 t.F[b] += pp * f2;
               }
               if (per_micrograph) {
                 sum.add(t);
               } else {
                 fits[i] = fit_envelope_terms(t, opt.bfac_min_B, opt.bfac_max_B, opt.bfac_min_scale, power);
               }
             }
             if (per_micrograph) {
               const EnvelopeFit f =
                   fit_envelope_terms(sum, opt.bfac_min_B, opt.bfac_max_B, opt.bfac_min_scale, power);
               for (size_t i : unit) fits[i] = f;
             }
           },
           [](None&, const None&) {}, [](None&, auto&&) {});
  share_per_particle(units, fits, [](EnvelopeFit& f, auto&& visit) {
    visit(f.bfactor);
    visit(f.scale);
    double bound = f.at_bound ? 1 : 0;
    visit(bound);
    f.at_bound = bound != 0;
  });
  double sb = 0, sb2 = 0, ss = 0, ss2 = 0;
  size_t bound = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    table.ctf_bfactor[i] = fits[i].bfactor;
    table.ctf_scale[i] = fits[i].scale;
    sb += fits[i].bfactor;
    sb2 += fits[i].bfactor * fits[i].bfactor;
    ss += fits[i].scale;
    ss2 += fits[i].scale * fits[i].scale;
    bound += fits[i].at_bound ? 1 : 0;
  }
  const double n = double(std::max<size_t>(1, table.size()));
  spdlog::info("ctf_refine: CTF B-factor and scale {} (from {} Å): B {:.1f} ± {:.1f} Å², scale {:.3f} ± {:.3f}",
               per_micrograph ? "per micrograph" : "per particle", kmin, sb / n,
               std::sqrt(std::max(0.0, sb2 / n - (sb / n) * (sb / n))), ss / n,
               std::sqrt(std::max(0.0, ss2 / n - (ss / n) * (ss / n))));
  if (bound > 0)
    spdlog::warn("ctf_refine: {} of {} particles have a B-factor or scale at a limit of the allowed range "
                 "(--bfac_min_B {}, --bfac_max_B {}, --bfac_min_scale {})",
                 bound, table.size(), opt.bfac_min_B, opt.bfac_max_B, opt.bfac_min_scale);
}

// The optics groups' values of a particle table, as a result reports them (scale 1: not known here).
std::vector<CtfRefineGroupResult> group_results(const ParticleTable& t) {
  std::vector<CtfRefineGroupResult> out;
  for (const OpticsGroup& og : t.optics) {
    CtfRefineGroupResult gr;
    gr.number = og.number;
    gr.beam_tilt = {og.beam_tilt_x, og.beam_tilt_y};
    gr.odd = og.odd_zernike;
    gr.even = og.even_zernike;
    gr.mag = og.mag_matrix;
    out.push_back(gr);
  }
  return out;
}

}  // namespace

std::string CtfRefineOptions::validate() const {
  if (particles.empty()) return "--i: a particle STAR file with poses is required";
  if (out_dir.empty()) return "--o: an output directory is required";
  if (postprocess.empty() && (half1.empty() || half2.empty()))
    return "give the half maps (--m1 and --m2) or a postprocess STAR file (--f)";
  if (!fit_defocus && !fit_beamtilt && !fit_aberr && !fit_aniso && !fit_bfacs)
    return "nothing to do: give at least one of --fit_defocus, --fit_bfacs, --fit_beamtilt, --fit_aberr, "
           "--fit_aniso";
  if (fit_mode.size() != 5) return fmt::format("--fit_mode: 5 letters expected (got \"{}\")", fit_mode);
  for (char ch : fit_mode)
    if (ch != 'f' && ch != 'm' && ch != 'p')
      return fmt::format("--fit_mode \"{}\": each letter must be f, m or p", fit_mode);
  if (fit_defocus) {
    if (fit_mode[1] == 'm' && fit_mode[0] == 'p')
      return "--fit_mode: a per-particle phase shift with a per-micrograph defocus is not supported";
    if (fit_mode[3] != 'f') return "--fit_mode: fitting Cs (letter 4) is not supported yet; use 'f'";
    if (fit_mode[1] == 'f') return "--fit_mode: with --fit_defocus the defocus (letter 2) must be 'p' or 'm'";
    if (fit_mode[1] == 'm' && fit_mode[2] == 'p')
      return "--fit_mode: per-particle astigmatism with a per-micrograph defocus is not supported";
  }
  if (kmin_defocus <= 0 || kmin_tilt <= 0 || kmin_aberr <= 0 || kmin_mag <= 0)
    return "--kmin_defocus, --kmin_tilt, --kmin_aberr, --kmin_mag: must be positive (Å)";
  if (defocus_range <= 0) return "--bf_range: must be positive (Å)";
  if (!(bfac_min_B < bfac_max_B))
    return fmt::format("--bfac_min_B {} must be below --bfac_max_B {}", bfac_min_B, bfac_max_B);
  if (bfac_max_B - bfac_min_B > 5000) return "--bfac_min_B, --bfac_max_B: a range of at most 5,000 Å²";
  if (!(bfac_min_scale >= 0)) return fmt::format("--bfac_min_scale: must be 0 or more (got {})", bfac_min_scale);
  if (!(kmin_bfac > 0)) return "--kmin_bfac: must be positive (Å)";
  if (bfac_per_mg && !fit_bfacs) return "--bfac_per_mg: only with --fit_bfacs";
  if (odd_aberr_max_n < 0 || odd_aberr_max_n > 9 || (odd_aberr_max_n > 0 && odd_aberr_max_n % 2 == 0))
    return fmt::format("--odd_aberr_max_n: 0 or an odd order up to 9 (got {})", odd_aberr_max_n);
  if (odd_aberr_max_n == 1)
    return "--odd_aberr_max_n 1: order-1 terms are image shifts, absorbed by the particles' origins; use 0 (beam "
           "tilt only) or 3 and more";
  if (even_aberr_max_n < 2 || even_aberr_max_n > 10 || even_aberr_max_n % 2 != 0)
    return fmt::format("--even_aberr_max_n: an even order from 2 to 10 (got {})", even_aberr_max_n);
  if (pad < 1 || pad > 4) return fmt::format("--pad: 1 to 4 (got {})", pad);
  if (mag_iterations < 1) return "--mag_iter: at least 1";
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  return "";
}

CtfRefineResult ctf_refine(const CtfRefineOptions& opt_in) {
  if (auto msg = opt_in.validate(); !msg.empty()) throw InputError("ctf_refine: " + msg);
  CtfRefineOptions opt = opt_in;
  if (!opt.out_dir.empty() && opt.out_dir.back() == '/') opt.out_dir.pop_back();
  if (opt.only_do_unfinished && fs::exists(opt.out_dir + "/particles_ctf_refine.star")) {
    CtfRefineResult done;
    done.star = opt.out_dir + "/particles_ctf_refine.star";
    const ParticleTable t = ParticleTable::read(done.star);
    done.particles = long(t.size());
    done.groups = group_results(t);
    spdlog::info("ctf_refine: {} exists: done before (--only_do_unfinished)", done.star);
    return done;
  }

  HalfReferences refs = load_half_references(half_reference_options(opt, "ctf_refine"));
  const int N = refs.box;
  const double ref_pixel = refs.pixel_size, f_max = refs.f_max;

  ParticleTable table = ParticleTable::read(opt.particles);
  const size_t count = table.size();
  if (count == 0) input_error("{}: no particles (the particles table has no rows)", opt.particles);
  for (const char* label : {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"})
    if (!table.particles_block().has(label))
      input_error("{}: the particles table has no _{} (CTF refinement needs refined poses)", opt.particles, label);
  if (!table.particles_block().has("rlnRandomSubset"))
    input_error("{}: the particles table has no _rlnRandomSubset (each particle is compared with the map of its own "
                "half set)",
                opt.particles);
  Context cx;
  cx.table = &table;
  cx.half.resize(count);
  for (size_t i = 0; i < count; ++i) {
    const int h = table.random_subset[i];
    if (h != 1 && h != 2) input_error("{}: _rlnRandomSubset is {}, expected 1 or 2", table.where(i), h);
    cx.half[i] = h - 1;
  }
  for (const OpticsGroup& og : table.optics) {
    if (!(og.voltage > 0)) input_error("{}: optics group {} has no _rlnVoltage", opt.particles, og.number);
    if (!(og.pixel_size > 0)) input_error("{}: optics group {} has no _rlnImagePixelSize", opt.particles, og.number);
  }
  bool by_micrograph = false;
  const auto units = make_units(table, &by_micrograph);
  if (opt.fit_defocus &&
      (opt.fit_mode[0] == 'm' || opt.fit_mode[1] == 'm' || opt.fit_mode[2] == 'm' || opt.fit_mode[4] == 'm') &&
      !by_micrograph)
    input_error("{}: --fit_mode {} fits per micrograph but the particles have no _rlnMicrographName", opt.particles,
                opt.fit_mode);
  if (opt.fit_bfacs && opt.bfac_per_mg && !by_micrograph)
    input_error("{}: --bfac_per_mg fits per micrograph but the particles have no _rlnMicrographName", opt.particles);

  // Boxes of the groups (rlnImageSize, else the first image).
  Geometry geo;
  geo.ref_box = N;
  geo.ref_pixel = ref_pixel;
  geo.f_max = f_max;
  geo.r_max = N / 2;
  geo.boxes.assign(table.optics.size(), 0);
  {
    ParticleImages images(table, 1);
    for (size_t i = 0; i < count; ++i) {
      const size_t g = size_t(table.optics_index[i]);
      if (geo.boxes[g] > 0) continue;
      geo.boxes[g] = table.optics[g].image_size;
      if (geo.boxes[g] <= 0) geo.boxes[g] = images.read(i).nx();
    }
  }
  fs::create_directories(opt.out_dir);
  cx.maps = &refs.maps;
  cx.fsc = &refs.fsc;

  const std::vector<double> input_u = table.defocus_u, input_v = table.defocus_v;
  Model md;
  md.table = &table;
  rebuild(md, geo);
  for (size_t i = 0; i < count; ++i) (void)md.optics.particle(i);  // CTF parameters checked before the long part
  ThreadPool pool(opt.threads);
  const auto summing_units = units_by_half(units, cx.half);  // for the passes that only sum
  OddSums odd_sums;
  if (opt.fit_beamtilt) {
    const auto refit = refitted_phase(opt, md);
    estimate_noise(cx, md, summing_units, pool, &refit, &odd_sums);
  } else {
    estimate_noise(cx, md, summing_units, pool);
  }

  CtfRefineResult res;
  // Order (measured on the tests' data): the beam tilt and the magnification bias each other when
  // the other is unmodelled (1 mrad of tilt moved the magnification by 0.5%, 1.5% of magnification
  // the tilt by 0.9 mrad), and defocus errors of 300 Å moved the magnification's isotropic part by
  // 0.3%. So: odd phase, defocus (when the magnification is fitted too), then the linearised
  // magnification fits, each pass also refitting the odd phase, then even aberrations and defocus.
  if (opt.fit_beamtilt) fit_odd(opt, md, geo, odd_sums);
  if (opt.fit_aniso) {
    if (opt.fit_defocus) fit_defocus(opt, cx, md, geo, units, pool, true);
    fit_mag(opt, cx, md, geo, summing_units, pool, opt.fit_beamtilt);
  }
  if (opt.fit_aberr) fit_even(opt, cx, md, geo, summing_units, pool);
  // B-factor and scale: --fit_bfacs, or the fifth letter of --fit_mode (RELION fits that one jointly
  // with the defocus; here the envelope is fitted before the defocus, whose likelihood it weighs, and
  // again after it, with the defocus fit's kmin).
  const bool envelope = opt.fit_bfacs || (opt.fit_defocus && opt.fit_mode[4] != 'f');
  const bool envelope_per_micrograph = opt.fit_bfacs ? opt.bfac_per_mg : opt.fit_mode[4] == 'm';
  const double envelope_kmin = opt.fit_bfacs ? opt.kmin_bfac : opt.kmin_defocus;
  if (opt.fit_bfacs && opt.fit_defocus && opt.fit_mode[4] != 'f')
    spdlog::info("ctf_refine: --fit_bfacs decides the B-factor fit (--fit_mode's fifth letter is not used)");
  if (opt.fit_defocus) {
    if (envelope) fit_envelope(opt, cx, md, units, pool, envelope_per_micrograph, envelope_kmin);
    fit_defocus(opt, cx, md, geo, units, pool);
  }
  if (envelope) fit_envelope(opt, cx, md, units, pool, envelope_per_micrograph, envelope_kmin);
  double change2 = 0;
  for (size_t i = 0; i < count; ++i) {
    const double c = 0.5 * (table.defocus_u[i] + table.defocus_v[i] - input_u[i] - input_v[i]);
    change2 += c * c;
  }
  res.rms_defocus_change = std::sqrt(change2 / double(count));

  res.star = opt.out_dir + "/particles_ctf_refine.star";
  if (mpi::rank() == 0) table.write(res.star);
  mpi::barrier();  // the file exists when any rank returns
  res.particles = long(count);
  res.max_resolution = 1.0 / f_max;
  res.groups = group_results(table);
  for (size_t g = 0; g < res.groups.size(); ++g) res.groups[g].scale = md.scale[g];
  spdlog::info("ctf_refine: {} particles; wrote {}", count, res.star);
  return res;
}

}  // namespace regula

#include "regula/jobs/multibody.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/exact_sum.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/estep/search3d.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/jobs/particle_subtract.hpp"
#include "regula/model/particles.hpp"
#include "regula/model/refinement_files.hpp"
#include "regula/mstep/model_update.hpp"
#include "regula/sampling/healpix.hpp"

namespace regula {

namespace fs = std::filesystem;

std::string MultibodyOptions::validate() const {
  if (continue_from.empty())
    return "--multibody_masks needs --continue with the consensus refinement's ROOT_itNNN_optimiser.star";
  if (out_root.empty()) return "--o: an output root is required";
  if (healpix_order < 1 || healpix_order > 8) return fmt::format("--healpix_order {}: expected 1 to 8", healpix_order);
  if (oversampling < 0 || oversampling > 2) return fmt::format("--oversampling {}: expected 0, 1 or 2", oversampling);
  if (!(offset_range >= 0) || !(offset_step > 0))
    return fmt::format("--offset_range {} / --offset_step {}: expected a range >= 0 and a step > 0 px", offset_range,
                       offset_step);
  if (max_iterations < 1) return fmt::format("--iter {}: at least 1", max_iterations);
  if (threads < 1) return fmt::format("--j {}: at least 1", threads);
  if (pad != 1 && pad != 2) return fmt::format("--pad {}: 1 or 2", pad);
  if (!(tau2_fudge > 0)) return fmt::format("--tau2_fudge {}: must be positive", tau2_fudge);
  if (!(adaptive_fraction > 0 && adaptive_fraction <= 1))
    return fmt::format("--adaptive_fraction {}: expected (0, 1]", adaptive_fraction);
  return "";
}

Mat3 align_with_z(const Vec3& axis) {
  const double len = std::sqrt(axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]);
  if (!(len > 0)) return identity3();
  const Vec3 a{axis[0] / len, axis[1] / len, axis[2] / len};
  const double p = std::sqrt(a[1] * a[1] + a[2] * a[2]);  // length of the projection on the yz plane
  Mat3 r{};
  if (p > 1e-6) {
    r[0] = {p, -a[0] * a[1] / p, -a[0] * a[2] / p};
    r[1] = {0, a[2] / p, -a[1] / p};
    r[2] = {a[0], a[1], a[2]};
  } else {  // along x
    r[0] = {0, 0, a[0] > 0 ? -1.0 : 1.0};
    r[1] = {0, 1, 0};
    r[2] = {a[0] > 0 ? 1.0 : -1.0, 0, 0};
  }
  return r;
}

namespace {
// RELION's A_rot90: the transpose of euler_to_matrix(0, 90, 0), so that angles (0, 90, 0) are no rotation.
const Mat3 kRot90 = transpose(euler_to_matrix(0, 90, 0));
}  // namespace

Mat3 body_rotation_from_angles(const Euler& e, const Mat3& orient) {
  return matmul(matmul(transpose(orient), kRot90), matmul(euler_to_matrix(e), orient));
}

Euler body_angles_from_rotation(const Mat3& R, const Mat3& orient) {
  return matrix_to_euler(matmul(matmul(transpose(kRot90), orient), matmul(R, transpose(orient))));
}

std::vector<BodyDefinition> read_bodies(const std::string& path, int n, double angpix) {
  const star::Document doc = star::read(path);
  const star::Block* b = nullptr;
  for (const star::Block& blk : doc.blocks)
    if (blk.has("rlnBodyMaskName")) b = &blk;
  if (!b) input_error("{}: no table with _rlnBodyMaskName (a bodies STAR file: one row per body)", path);
  if (b->rows() < 2) input_error("{}: {} bod{}; multi-body refinement needs at least 2", path, b->rows(),
                                 b->rows() == 1 ? "y" : "ies");
  const int c_mask = b->column("rlnBodyMaskName"), c_rel = b->column("rlnBodyRotateRelativeTo");
  const int c_ang = b->column("rlnBodySigmaAngles"), c_tilt = b->column("rlnBodySigmaTilt"),
            c_psi = b->column("rlnBodySigmaPsi");
  const int c_offA = b->column("rlnBodySigmaOffsetAngst"), c_off = b->column("rlnBodySigmaOffset");
  const int c_dx = b->column("rlnBodyRotateDirectionX"), c_dy = b->column("rlnBodyRotateDirectionY"),
            c_dz = b->column("rlnBodyRotateDirectionZ");
  if (c_ang < 0 && (c_tilt < 0 || c_psi < 0))
    input_error("{}: give _rlnBodySigmaAngles, or _rlnBodySigmaTilt and _rlnBodySigmaPsi (the prior on each body's "
                "rotation, degrees)",
                path);
  if (c_offA < 0 && c_off < 0)
    input_error("{}: give _rlnBodySigmaOffsetAngst (the prior on each body's translation, Å)", path);
  const size_t B = b->rows();
  std::vector<BodyDefinition> out(B);
  std::vector<Vec3> direction(B);
  const bool directions = c_dx >= 0 && c_dy >= 0 && c_dz >= 0;
  const fs::path dir = fs::path(path).parent_path();
  for (size_t k = 0; k < B; ++k) {
    BodyDefinition& d = out[k];
    d.mask_path = std::string(b->value(k, c_mask));
    std::string p = d.mask_path;
    if (!fs::exists(p) && !dir.empty() && fs::exists(dir / p)) p = (dir / p).string();
    d.mask = mrc::read(p);
    if (d.mask.nx() != n || d.mask.ny() != n || d.mask.nz() != n)
      input_error("{}: body {} mask {} is {}x{}x{}, expected {}^3 (the consensus's box)", b->where(k), k + 1, p,
                  d.mask.nx(), d.mask.ny(), d.mask.nz(), n);
    const auto [lo, hi] = std::minmax_element(d.mask.begin(), d.mask.end());
    if (*lo < 0 || *hi > 1)
      input_error("{}: body {} mask {} has values in [{}, {}], expected [0, 1]", b->where(k), k + 1, p, *lo, *hi);
    const std::array<double, 3> com = centre_of_mass(d.mask);
    for (int a = 0; a < 3; ++a) d.com[size_t(a)] = int(std::lround(com[size_t(a)]));  // RELION's ROUND
    double r2 = 0;
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x)
          if (d.mask(x, y, z) > 0.05f) {
            const double dx = x - n / 2 - com[0], dy = y - n / 2 - com[1], dz = z - n / 2 - com[2];
            r2 = std::max(r2, dx * dx + dy * dy + dz * dz);
          }
    d.radius_px = std::sqrt(r2);
    if (c_rel >= 0) {
      const long r = b->integer(k, c_rel);
      if (r < 0 || r > long(B) || r == long(k) + 1)
        input_error("{}: _rlnBodyRotateRelativeTo {}: expected another body's number (1 to {})", b->where(k), r, B);
      d.relative_to = int(r) - 1;
    }
    d.sigma_ang = c_ang >= 0 ? b->number(k, c_ang) : std::max(b->number(k, c_tilt), b->number(k, c_psi));
    d.sigma_offset_A = c_offA >= 0 ? b->number(k, c_offA) : b->number(k, c_off) * angpix;
    if (!(d.sigma_ang > 0) || !(d.sigma_offset_A > 0))
      input_error("{}: body {}: the priors' widths must be positive (angles {}°, offset {} Å)", b->where(k), k + 1,
                  d.sigma_ang, d.sigma_offset_A);
    if (directions) direction[k] = {b->number(k, c_dx), b->number(k, c_dy), b->number(k, c_dz)};
  }
  for (size_t k = 0; k < B; ++k) {
    BodyDefinition& d = out[k];
    Vec3 v;
    if (d.relative_to >= 0) {
      const auto& o = out[size_t(d.relative_to)].com;
      v = {double(o[0] - d.com[0]), double(o[1] - d.com[1]), double(o[2] - d.com[2])};
    } else if (directions) {
      v = direction[k];
    } else {
      v = {-double(d.com[0]), -double(d.com[1]), -double(d.com[2])};
    }
    d.orient = align_with_z({-v[0], -v[1], -v[2]});
  }
  return out;
}

namespace {

constexpr size_t kBlock = 4;  // particles per work unit

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The per-thread sums of one body's E-step: the noise residuals per half and scalars.
enum Scalar : size_t { kPmax, kAngChange, kOffChange2, kCount, kSignificant, kFineSignificant, kScalars };
struct BodySums {
  std::array<ml3d::ModelSums, 2> half;
  ExactSums scalars{kScalars};
};

class Job {
 public:
  explicit Job(const MultibodyOptions& opt) : opt_(opt), pool_(opt.threads) {}
  MultibodyResult run();

 private:
  void setup();
  void initial_noise();
  void make_projectors(int r_search, bool subtraction);
  Image subtracted(size_t i, int b, ParticleImages& images) const;
  std::array<double, 2> body_origin(size_t i, int b) const;
  void iterate(int r_score, bool final);
  void write_outputs(MultibodyResult& res);
  double norm_factor(size_t i) const { return norm_factor_[i]; }

  const MultibodyOptions& opt_;
  ThreadPool pool_;
  RefinementFiles files_;
  ParticleTable table_;
  OpticsModel optics_model_;
  ml3d::PixelScale scale_;
  std::vector<std::vector<double>> all_counts_;
  int n_ = 0;
  double angpix_ = 0;
  std::vector<BodyDefinition> bodies_;
  std::vector<Grid<float>> centred_mask_;  // per body, centred on its centre of mass
  // Per particle: half (0/1), consensus orientation, origin (px), norm factor, group scale.
  std::vector<int> half_;
  std::vector<Mat3> A_;
  std::vector<std::array<double, 2>> origin_;
  std::vector<double> norm_factor_, group_scale_, norm_;
  // Per body and particle: residual rotation, offset (px), Pmax.
  std::vector<std::vector<Mat3>> R_;
  std::vector<std::vector<std::array<double, 2>>> d_;
  std::vector<std::vector<double>> pmax_;
  std::vector<std::vector<std::vector<double>>> sigma2_;  // [half][optics group][shell]
  std::array<std::vector<Grid<float>>, 2> body_map_;    // [half][body], the map's frame, masked
  // Projectors of the iteration: search_[h][b] (body b centred), sub_[h][b][o] (body o without body b's
  // mask, centred on o, for the subtraction from body b's images).
  std::array<std::vector<std::unique_ptr<Projector>>, 2> search_;
  std::array<std::vector<std::vector<std::unique_ptr<Projector>>>, 2> sub_;
  double x_l1_max_ = 0;
  // Per body: last FSC (corrected, under the mask), resolution shell.
  std::vector<std::vector<double>> fsc_;
  std::vector<int> res_shell_;
  std::vector<std::array<std::unique_ptr<BackProjector>, 2>> bp_;
  // Iteration report.
  std::vector<double> ang_change_, off_change_, mean_pmax_;
  std::vector<std::array<double, 2>> mean_significant_;  // per body: coarse and fine significant poses
  bool ctf_ = false;
};

void Job::setup() {
  files_ = read_refinement_files(opt_.continue_from);
  if (!files_.split_halves)
    input_error("{}: not a gold-standard refinement (rlnDoSplitRandomHalves 0); multi-body refinement continues "
                "from an auto-refinement",
                opt_.continue_from);
  if (!files_.body_star.empty())
    input_error("{}: already a multi-body refinement (_rlnBodyStarFile {}); continue from the consensus refinement",
                opt_.continue_from, files_.body_star);
  const ModelFile& m0 = files_.models[0];
  if (m0.references.size() != 1 || files_.models.size() != 2)
    input_error("{}: {} classes; multi-body refinement continues from a refinement of one class", m0.path,
                m0.references.size());
  n_ = m0.original_size;
  angpix_ = m0.pixel_size;
  ctf_ = files_.ctf;
  table_ = ParticleTable::read(files_.data_star);
  const size_t N = table_.size();
  if (N < 2) input_error("{}: multi-body refinement needs at least 2 particles (got {})", files_.data_star, N);
  table_.require_angles(files_.data_star, "multi-body refinement starts from the consensus poses");
  check_subtraction_optics(table_, angpix_, n_);
  optics_model_ = engine_optics(table_, n_, ctf_, "refine3d --multibody_masks", false);
  scale_ = ml3d::PixelScale(table_, optics_model_);
  if (!scale_.uniform())
    input_error("{}: optics groups of different pixel or box sizes are not supported by multi-body refinement yet",
                files_.data_star);
  all_counts_ = ml3d::shell_pixel_counts(scale_);
  bodies_ = read_bodies(opt_.bodies, n_, angpix_);
  const size_t B = bodies_.size();
  for (size_t b = 0; b < B; ++b) {
    const auto& c = bodies_[b].com;
    centred_mask_.push_back(shift_wrapped(bodies_[b].mask, -c[0], -c[1], -c[2]));
    spdlog::info("refine3d --multibody_masks: body {} ({}): centre of mass ({}, {}, {}) px, radius {:.1f} px, "
                 "prior sigma {:.1f}° and {:.2f} Å{}",
                 b + 1, bodies_[b].mask_path, c[0], c[1], c[2], bodies_[b].radius_px, bodies_[b].sigma_ang,
                 bodies_[b].sigma_offset_A,
                 bodies_[b].relative_to >= 0 ? fmt::format(", rotating relative to body {}", bodies_[b].relative_to + 1)
                                             : std::string());
  }
  if (opt_.particle_diameter > 0)
    for (size_t b = 0; b < B; ++b)
      if (2 * bodies_[b].radius_px * angpix_ > opt_.particle_diameter + 2 * angpix_)
        spdlog::warn("refine3d --multibody_masks: body {}'s mask reaches {:.0f} Å across, beyond --particle_diameter "
                     "{:.0f} Å",
                     b + 1, 2 * bodies_[b].radius_px * angpix_, opt_.particle_diameter);
  // Per particle values of the consensus.
  half_.resize(N);
  A_.resize(N);
  origin_.resize(N);
  norm_ = ml3d::input_norms(table_);
  norm_factor_.assign(N, 1.0);
  group_scale_.assign(N, 1.0);
  for (size_t i = 0; i < N; ++i) {
    const int h = table_.random_subset[i];
    if (h != 1 && h != 2)
      input_error("{}: _rlnRandomSubset is {}; the consensus's particles are in half sets 1 and 2", table_.where(i), h);
    half_[i] = h - 1;
    A_[i] = euler_to_matrix(table_.rot[i], table_.tilt[i], table_.psi[i]);
    origin_[i] = {table_.origin_x[i] / angpix_, table_.origin_y[i] / angpix_};
    if (files_.norm) norm_factor_[i] = files_.models[size_t(half_[i])].norm_average / norm_[i];
  }
  if (files_.scale) {
    const std::vector<int> group = relion_group_index(table_);
    for (size_t i = 0; i < N; ++i) {
      const ModelFile& m = files_.models[size_t(half_[i])];
      if (size_t(group[i]) >= m.group_scale.size())
        input_error("{}: the particles make {} or more groups but {} has {} in data_model_groups", table_.where(i),
                    group[i] + 1, m.path, m.group_scale.size());
      group_scale_[i] = m.group_scale[size_t(group[i])];
    }
  }
  R_.assign(B, std::vector<Mat3>(N, identity3()));
  d_.assign(B, std::vector<std::array<double, 2>>(N, {0.0, 0.0}));
  pmax_.assign(B, std::vector<double>(N, 0.0));
  // Body references: each half map times the body's mask.
  for (int h = 0; h < 2; ++h) {
    const std::string& path = files_.models[size_t(h)].references[0];
    const Grid<float> map = mrc::read(path);
    if (map.nx() != n_ || map.ny() != n_ || map.nz() != n_)
      input_error("{}: map is {}x{}x{}, expected {}^3", path, map.nx(), map.ny(), map.nz(), n_);
    body_map_[size_t(h)].resize(B);
    for (size_t b = 0; b < B; ++b) {
      Grid<float> v = map;
      for (size_t k = 0; k < v.size(); ++k) v[k] *= bodies_[b].mask[k];
      body_map_[size_t(h)][b] = std::move(v);
    }
  }
  fsc_.assign(B, {});
  res_shell_.assign(B, 0);
}

std::array<double, 2> Job::body_origin(size_t i, int b) const {
  const auto& c = bodies_[size_t(b)].com;
  const Vec3 Ac = matvec(A_[i], {double(c[0]), double(c[1]), double(c[2])});
  return {origin_[i][0] - Ac[0] + d_[size_t(b)][i][0], origin_[i][1] - Ac[1] + d_[size_t(b)][i][1]};
}

void Job::make_projectors(int r_search, bool subtraction) {
  const size_t B = bodies_.size();
  for (int h = 0; h < 2; ++h) {
    search_[size_t(h)].clear();
    sub_[size_t(h)].clear();
    sub_[size_t(h)].resize(B);
    for (size_t b = 0; b < B; ++b) {
      const auto& c = bodies_[b].com;
      search_[size_t(h)].push_back(std::make_unique<Projector>(
          shift_wrapped(body_map_[size_t(h)][b], -c[0], -c[1], -c[2]), opt_.pad, r_search + 1, opt_.threads));
      sub_[size_t(h)][b].resize(B);
      for (size_t o = 0; o < B && subtraction; ++o) {
        if (o == b) continue;
        Grid<float> v = body_map_[size_t(h)][o];
        for (size_t k = 0; k < v.size(); ++k) v[k] *= 1.0f - bodies_[b].mask[k];
        const auto& co = bodies_[o].com;
        sub_[size_t(h)][b][o] =
            std::make_unique<Projector>(shift_wrapped(v, -co[0], -co[1], -co[2]), opt_.pad, n_ / 2, opt_.threads);
      }
    }
  }
}

// Particle i's image (times its norm correction) minus the other bodies' projections at their poses,
// times the CTF and group scale; b < 0: minus every body (the consensus model's residual).
Image Job::subtracted(size_t i, int b, ParticleImages& images) const {
  Image img = images.read(i);
  if (img.nx() != n_ || img.ny() != n_ || img.nz() != 1)
    input_error("{}: image is {}x{}x{}, expected {}x{}", table_.where(i), img.nx(), img.ny(), img.nz(), n_, n_);
  const float f = float(norm_factor(i));
  for (float& v : img) v *= f;
  Grid<cfloat> F = fourier_centred(img);
  Grid<cfloat> S;
  const int h = half_[i];
  for (size_t o = 0; o < bodies_.size(); ++o) {
    if (int(o) == b) continue;
    const Projector& P = b >= 0 ? *sub_[size_t(h)][size_t(b)][o] : *search_[size_t(h)][o];
    Grid<cfloat> Po = P.project(matmul(A_[i], R_[o][i]));
    const auto O = body_origin(i, int(o));
    shift_phase(Po, -O[0], -O[1], n_);
    if (S.empty())
      S = std::move(Po);
    else
      for (size_t k = 0; k < S.size(); ++k) S[k] += Po[k];
  }
  subtract_projection(F, S, files_, table_, i, optics_model_.group_of(i).premultiplied, group_scale_[i], angpix_);
  return from_fourier_centred(F, n_);
}

// The first noise spectra: per half and optics group, the power of the consensus model's residual (every
// body at the consensus pose) per shell; and the largest L1 norm of an image (the exact sums' bound).
void Job::initial_noise() {
  const size_t N = table_.size(), G = table_.optics.size(), hs = size_t(n_ / 2 + 1);
  make_projectors(n_ / 2, false);  // the consensus residual: whole bodies only
  std::vector<std::array<ExactSums, 2>> tsum(size_t(pool_.size()));
  std::vector<double> l1(N, 0.0);
  for (auto& t : tsum)
    for (auto& s : t) s.resize(G * hs);
  std::vector<std::unique_ptr<ParticleImages>> readers(size_t(pool_.size()));
  for (auto& r : readers) r = std::make_unique<ParticleImages>(table_, 8);
  const ml3d::Blocks blocks(N, kBlock);
  Progress progress("refine3d --multibody_masks: noise of the consensus", double(N));
  pool_.parallel_for(0, blocks.mine.size(), [&](size_t u, int t) {
    const size_t blk = blocks.mine[u];
    for (size_t i = blocks.begin(blk); i < blocks.end(blk); ++i) {
      check_cancelled();
      Image raw = readers[size_t(t)]->read(i);
      double a = 0;
      for (float v : raw) a += std::abs(double(v) * norm_factor(i));
      l1[i] = a;
      const Image r = subtracted(i, -1, *readers[size_t(t)]);
      const estep::RotatableParticle x(r, 0, 0, std::nullopt, estep::RotatableParticle::PlainOnly{});
      const size_t g = size_t(table_.optics_index[i]);
      for (size_t s = 1; s < hs && s < x.shell_power().size(); ++s)
        tsum[size_t(t)][size_t(half_[i])][g * hs + s].add(x.shell_power()[s]);
      progress.advance(1);
    }
  });
  progress.finish();
  x_l1_max_ = *std::max_element(l1.begin(), l1.end());
  sigma2_.assign(2, std::vector<std::vector<double>>(G, std::vector<double>(hs, 0.0)));
  for (int h = 0; h < 2; ++h) {
    for (size_t t = 1; t < tsum.size(); ++t) tsum[0][size_t(h)].merge(tsum[t][size_t(h)]);
    const std::vector<double> v = tsum[0][size_t(h)].values();
    for (size_t g = 0; g < G; ++g) {
      double count = 0;
      for (size_t i = 0; i < N; ++i) count += half_[i] == h && size_t(table_.optics_index[i]) == g;
      std::vector<double> d2(hs, 0.0), npx(hs, 0.0);
      for (size_t s = 1; s < hs; ++s) {
        d2[s] = v[g * hs + s];
        npx[s] = count * all_counts_[g][s];
      }
      sigma2_[size_t(h)][g] = mstep::noise_spectrum(d2, npx, std::vector<double>(hs, 0.0));
    }
  }
}

void Job::iterate(int r_score, bool final) {
  const size_t N = table_.size(), B = bodies_.size(), G = table_.optics.size();
  const ml3d::FinePixels fine = ml3d::fine_pixels(r_score, scale_, optics_model_);
  // Non-final iterations back-project up to the E-step's limit; the final one at every frequency.
  const ml3d::FinePixels all = final ? ml3d::all_pixels(scale_, optics_model_) : fine;
  make_projectors(r_score, true);
  DirectionTable dir_table;
  dir_table.build(opt_.healpix_order);
  const SymmetryGroup c1 = SymmetryGroup::parse("C1");
  const double step = healpix_angular_step(opt_.healpix_order), fine_step = step / std::pow(2.0, opt_.oversampling);
  const std::vector<std::array<double, 2>> trans = translations(opt_.offset_range, opt_.offset_step);
  double max_norm = 1, smax = 1;
  for (size_t i = 0; i < N; ++i) {
    max_norm = std::max(max_norm, norm_factor(i));
    smax = std::max(smax, group_scale_[i]);
  }
  std::vector<std::vector<Mat3>> newR = R_;
  std::vector<std::vector<std::array<double, 2>>> newd = d_;
  std::vector<std::vector<double>> newp = pmax_;
  std::array<ml3d::ModelSums, 2> noise;
  for (auto& s : noise) s.init(G, scale_.noise_stride(), 1, 1);
  bp_.clear();
  bp_.resize(B);
  ang_change_.assign(B, 0);
  off_change_.assign(B, 0);
  mean_pmax_.assign(B, 0);
  mean_significant_.assign(B, {0.0, 0.0});
  for (size_t b = 0; b < B; ++b) {
    const BodyDefinition& body = bodies_[b];
    const double radius = std::min(body.radius_px + opt_.offset_range, n_ / 2.0);
    const int rc = std::clamp(
        estep::coarse_limit_shells(n_, angpix_, 2 * body.radius_px * angpix_, step, 1.2), std::min(6, r_score), r_score);
    const estep::SearchPixels px_coarse = estep::search_pixels(n_, rc);
    std::array<std::vector<estep::Search3DSetup>, 2> setups;
    std::array<std::unique_ptr<estep::SliceCache>, 2> caches;  // the local windows' coarse slices
    for (int h = 0; h < 2; ++h) {
      caches[size_t(h)] = std::make_unique<estep::SliceCache>(2 * dir_table.v.size(), px_coarse,
                                                              ml3d::kSharedSliceBytes);
      estep::Search3DSetup S;
      S.classes = 1;
      S.proj = {search_[size_t(h)][b].get()};
      S.px_coarse = &px_coarse;
      S.px_fine = &fine.px[0];
      S.local = true;
      S.order = opt_.healpix_order;
      // RELION's local searches of multi-body refinement: a window of 3 sigma about the body's previous
      // pose, sigma twice the fine angular step (its auto-refine's local-search prior), times the body's
      // prior about the consensus pose (the bodies file's sigma).
      S.sigma_ang = 2 * fine_step;
      S.sigma_centre = body.sigma_ang;
      S.table = &dir_table;
      S.table_slices = caches[size_t(h)].get();
      S.trans = trans;
      S.offset_step = opt_.offset_step;
      S.sigma_offset2 = std::pow(body.sigma_offset_A / angpix_, 2);
      S.pose_mean = true;
      S.symmetry = &c1;
      S.adaptive_fraction = opt_.adaptive_fraction;
      S.oversampling = opt_.oversampling;
      setups[size_t(h)] = ml3d::group_setups(S, scale_);
      for (size_t g = 0; g < G; ++g) {
        setups[size_t(h)][g].px_fine = &fine.px[g];
        setups[size_t(h)][g].px_sums = &all.px[g];
      }
      double inv_s2 = 1;
      for (const auto& g : sigma2_[size_t(h)])
        for (size_t s = 1; s < g.size(); ++s)
          if (g[s] > 0) inv_s2 = std::max(inv_s2, 1.0 / g[s]);
      const double np = double(N) + 1;
      // The exact sums' bounds as refine3d's; the subtracted image's L1 norm is at most twice the
      // largest image's (margin 4 more).
      bp_[b][size_t(h)] = std::make_unique<BackProjector>(n_, opt_.pad, final ? n_ / 2 : r_score, 3);
      bp_[b][size_t(h)]->start_exact(4 * np * smax * inv_s2 * std::max(x_l1_max_, 1e-30) * max_norm * 8,
                                     4 * np * smax * smax * inv_s2);
    }
    const ml3d::Blocks blocks(N, kBlock);
    const size_t T = size_t(pool_.size());
    std::vector<BodySums> tsums(T);
    for (auto& t : tsums)
      for (auto& s : t.half) s.init(G, scale_.noise_stride(), 1, 1);
    std::vector<std::unique_ptr<ParticleImages>> readers(T);
    for (auto& r : readers) r = std::make_unique<ParticleImages>(table_, 8);
    std::vector<estep::Search3DWork> works(T);
    Progress progress(fmt::format("refine3d --multibody_masks: body {}", b + 1), double(N));
    pool_.parallel_for(0, blocks.mine.size(), [&](size_t u, int t) {
      const size_t blk = blocks.mine[u];
      for (size_t i = blocks.begin(blk); i < blocks.end(blk); ++i) {
        check_cancelled();
        const int h = half_[i];
        const size_t g = size_t(table_.optics_index[i]);
        const std::vector<double>& s2 = sigma2_[size_t(h)][g];
        std::vector<float> inv_sigma2(s2.size(), 0.0f);
        for (size_t s = 1; s < s2.size(); ++s) inv_sigma2[s] = s2[s] > 0 ? float(1.0 / s2[s]) : 0.0f;
        const Image y = subtracted(i, int(b), *readers[size_t(t)]);
        const auto O = body_origin(i, int(b));
        ml3d::ParticleMasking m{n_, radius, opt_.mask_edge, opt_.zero_mask, opt_.seed + 7919 * (b + 1)};
        const auto optics = ml3d::particle_optics(optics_model_, i, ctf_);
        const ml3d::ParticleViews v = ml3d::particle_views(y, m, i, O, &s2, optics, inv_sigma2, all.px[g].r_max);
        const Euler c = matrix_to_euler(A_[i]), e = matrix_to_euler(matmul(A_[i], R_[b][i]));
        estep::Search3DInput in;
        in.x = &v.x;
        in.x_sums = &v.x_sums;
        in.inv_sigma2 = inv_sigma2;
        in.inv_sigma2_sums = v.inv_sigma2_sums;
        in.scale = group_scale_[i];
        in.rot = e.rot;
        in.tilt = e.tilt;
        in.psi = e.psi;
        in.centre_rot = c.rot;
        in.centre_tilt = c.tilt;
        in.centre_psi = c.psi;
        in.ox_px = d_[b][i][0];
        in.oy_px = d_[b][i][1];
        ml3d::SliceRouter sink({bp_[b][size_t(h)].get()});
        estep::Search3DResult res;
        estep::search_particle_3d(setups[size_t(h)][g], in, works[size_t(t)], &sink, res);
        progress.advance(1);
        if (!res.valid) {
          spdlog::warn("refine3d --multibody_masks: particle {} body {}: no finite likelihood; its pose is kept", i + 1,
                       b + 1);
          continue;
        }
        newR[b][i] = matmul(transpose(A_[i]), euler_to_matrix(res.rot, res.tilt, res.psi));
        newd[b][i] = {d_[b][i][0] + res.trans[0], d_[b][i][1] + res.trans[1]};
        newp[b][i] = res.max_posterior;
        BodySums& bs = tsums[size_t(t)];
        ml3d::add_particle(bs.half[size_t(h)], res, v.x, int(g), 0, fine.counts[g], all_counts_[g], fine.px[g].r_max,
                           scale_.noise_stride());
        bs.scalars[kPmax].add(res.max_posterior);
        bs.scalars[kAngChange].add(rotation_distance_deg(R_[b][i], newR[b][i]));
        const double dx = newd[b][i][0] - d_[b][i][0], dy = newd[b][i][1] - d_[b][i][1];
        bs.scalars[kOffChange2].add(dx * dx + dy * dy);
        bs.scalars[kCount].add(1.0);
        bs.scalars[kSignificant].add(double(res.n_significant));
        bs.scalars[kFineSignificant].add(double(res.n_fine_significant));
      }
    });
    progress.finish();
    for (auto& c : caches) ml3d::release_slice_cache(c, "refine3d --multibody_masks: the local windows' slices",
                                                     ml3d::kSharedSliceBytes);
    for (size_t t = 1; t < T; ++t) {
      for (int h = 0; h < 2; ++h) tsums[0].half[size_t(h)].merge(tsums[t].half[size_t(h)]);
      tsums[0].scalars.merge(tsums[t].scalars);
    }
    for (int h = 0; h < 2; ++h) noise[size_t(h)].merge(tsums[0].half[size_t(h)]);
    const std::vector<double> sc = tsums[0].scalars.values();
    const double cnt = std::max(1.0, sc[kCount]);
    mean_pmax_[b] = sc[kPmax] / cnt;
    mean_significant_[b] = {sc[kSignificant] / cnt, sc[kFineSignificant] / cnt};
    ang_change_[b] = sc[kAngChange] / cnt;
    off_change_[b] = std::sqrt(sc[kOffChange2] / (2 * cnt)) * angpix_;
  }
  // M-step: noise (the mean of the bodies' residuals), then each body's map.
  for (int h = 0; h < 2; ++h) {
    const std::vector<double> d2 = noise[size_t(h)].d2.values(), npx = noise[size_t(h)].npix.values();
    const size_t stride = scale_.noise_stride();
    for (size_t g = 0; g < G; ++g) {
      const size_t hg = sigma2_[size_t(h)][g].size();
      std::vector<double> a(d2.begin() + long(g * stride), d2.begin() + long(g * stride + hg)),
          c(npx.begin() + long(g * stride), npx.begin() + long(g * stride + hg));
      sigma2_[size_t(h)][g] = mstep::noise_spectrum(a, c, sigma2_[size_t(h)][g]);
    }
  }
  for (size_t b = 0; b < B; ++b) {
    std::array<Grid<float>, 2> unreg;
    for (int h = 0; h < 2; ++h) {
      BackProjector& bp = *bp_[b][size_t(h)];
      bp.finish_exact();
      bp.make_hermitian();
      ReconstructOptions ro;
      ro.max_frequency = final ? n_ / 2 : r_score;
      ro.nthreads = opt_.threads;
      ro.corners_from_edge = true;
      unreg[size_t(h)] = bp.reconstruct(ro);
    }
    // The gold-standard FSC under the body's (centred) mask, corrected by phase randomisation.
    const SolventCorrectedFsc sc = solvent_corrected_fsc(unreg[0], unreg[1], centred_mask_[b], 0.8,
                                                         opt_.seed ^ (0x4d42ull + 131 * uint64_t(b)));
    fsc_[b] = sc.corrected;
    for (size_t s = size_t(final ? n_ / 2 : r_score) + 1; s < fsc_[b].size(); ++s) fsc_[b][s] = 0;
    std::vector<double> fsc = fsc_[b];
    for (size_t s = size_t(r_score) + 1; s < fsc.size(); ++s) fsc[s] = 0;
    int res_shell = 0;
    for (size_t s = 1; s < fsc.size(); ++s) {
      if (fsc[s] < 0.143) break;
      res_shell = int(s);
    }
    res_shell_[b] = res_shell;
    const auto& c = bodies_[b].com;
    for (int h = 0; h < 2; ++h) {
      BackProjector& bp = *bp_[b][size_t(h)];
      const mstep::Prior prior = mstep::prior_from_fsc(fsc, bp.mean_weight_per_shell(), r_score, opt_.tau2_fudge, false);
      ReconstructOptions ro;
      ro.tau2 = prior.tau2;
      ro.max_frequency = r_score;
      ro.nthreads = opt_.threads;
      ro.corners_from_edge = true;
      Grid<float> map = shift_wrapped(bp.reconstruct(ro), c[0], c[1], c[2]);
      for (size_t k = 0; k < map.size(); ++k) map[k] *= bodies_[b].mask[k];
      body_map_[size_t(h)][b] = std::move(map);
    }
  }
  R_ = std::move(newR);
  d_ = std::move(newd);
  pmax_ = std::move(newp);
}

void Job::write_outputs(MultibodyResult& res) {
  const size_t B = bodies_.size(), N = table_.size();
  const std::string& root = opt_.out_root;
  mrc::WriteOptions wo;
  wo.pixel_size = angpix_;
  res.resolution.assign(B, 0);
  std::vector<std::string> maps(B);
  star::Document mdoc;
  for (size_t b = 0; b < B; ++b) {
    const auto& c = bodies_[b].com;
    std::array<Grid<float>, 2> unreg;
    for (int h = 0; h < 2; ++h) {
      ReconstructOptions ro;
      ro.max_frequency = n_ / 2;
      ro.nthreads = opt_.threads;
      ro.corners_from_edge = true;
      unreg[size_t(h)] = shift_wrapped(bp_[b][size_t(h)]->reconstruct(ro), c[0], c[1], c[2]);
      mrc::write(fmt::format("{}_half{}_body{:03d}_unfil.mrc", root, h + 1, b + 1), unreg[size_t(h)], wo);
    }
    BackProjector& all = *bp_[b][0];
    all.add(*bp_[b][1]);
    const mstep::Prior prior = mstep::prior_from_fsc(fsc_[b], all.mean_weight_per_shell(), n_ / 2, opt_.tau2_fudge, true);
    ReconstructOptions ro;
    ro.tau2 = prior.tau2;
    ro.max_frequency = n_ / 2;
    ro.nthreads = opt_.threads;
    ro.corners_from_edge = true;
    maps[b] = fmt::format("{}_body{:03d}.mrc", root, b + 1);
    mrc::write(maps[b], shift_wrapped(all.reconstruct(ro), c[0], c[1], c[2]), wo);
    mrc::write(fmt::format("{}_body{:03d}_mask.mrc", root, b + 1), bodies_[b].mask, wo);
    int shell = 0;
    for (size_t s = 1; s < fsc_[b].size(); ++s) {
      if (fsc_[b][s] < 0.143) break;
      shell = int(s);
    }
    res.resolution[b] = shell > 0 ? n_ * angpix_ / shell : 999.0;
    star::Block& fb = mdoc.add_block(fmt::format("model_body_{}", b + 1), true);
    for (size_t s = 0; s < fsc_[b].size(); ++s) fb.add_row();
    std::vector<int> idx(fsc_[b].size());
    std::vector<double> r(fsc_[b].size());
    for (size_t s = 0; s < idx.size(); ++s) {
      idx[s] = int(s);
      r[s] = double(s) / (n_ * angpix_);
    }
    fb.set_column("rlnSpectralIndex", idx);
    fb.set_column("rlnResolution", r);
    fb.set_column("rlnGoldStandardFsc", fsc_[b]);
  }
  // Model: the bodies as RELION's classes, then their FSCs.
  star::Document doc;
  star::Block& g = doc.add_block("model_general", false);
  g.set("rlnReferenceDimensionality", "3");
  g.set("rlnDataDimensionality", "2");
  g.set("rlnOriginalImageSize", std::to_string(n_));
  g.set("rlnPixelSize", fmt::format("{}", angpix_));
  g.set("rlnNrClasses", "1");
  g.set("rlnNrBodies", std::to_string(B));
  g.set("rlnPaddingFactor", std::to_string(opt_.pad));
  star::Block& cls = doc.add_block("model_classes", true);
  for (size_t b = 0; b < B; ++b) cls.add_row();
  cls.set_column("rlnReferenceImage", maps);
  cls.set_column("rlnEstimatedResolution", res.resolution);
  for (auto& blk : mdoc.blocks) doc.blocks.push_back(std::move(blk));
  res.model_star = root + "_model.star";
  star::write(res.model_star, doc);
  // Data: the consensus's particles, then one table per body (RELION's data_images_body_N).
  ParticleTable out = table_;
  star::Document ddoc = out.sync();
  for (size_t b = 0; b < B; ++b) {
    star::Block& t = ddoc.add_block(fmt::format("images_body_{}", b + 1), true);
    for (size_t i = 0; i < N; ++i) t.add_row();
    std::vector<double> rot(N), tilt(N), psi(N), ox(N), oy(N), nrm(N);
    for (size_t i = 0; i < N; ++i) {
      const Euler e = body_angles_from_rotation(R_[b][i], bodies_[b].orient);
      rot[i] = e.rot;
      tilt[i] = e.tilt;
      psi[i] = e.psi;
      ox[i] = d_[b][i][0] * angpix_;
      oy[i] = d_[b][i][1] * angpix_;
      nrm[i] = norm_[i];
    }
    t.set_column("rlnAngleRot", rot);
    t.set_column("rlnAngleTilt", tilt);
    t.set_column("rlnAnglePsi", psi);
    t.set_column("rlnOriginXAngst", ox);
    t.set_column("rlnOriginYAngst", oy);
    t.set_column("rlnNormCorrection", nrm);
    t.set_column("rlnMaxValueProbDistribution", pmax_[b]);
  }
  res.data_star = root + "_data.star";
  star::write(res.data_star, ddoc);
  res.maps = maps;
}

MultibodyResult Job::run() {
  if (mpi::active())
    input_error("refine3d --multibody_masks runs in one process (use --j for threads), not under mpirun");
  setup();
  const fs::path dir = fs::path(opt_.out_root).parent_path();
  if (!dir.empty()) fs::create_directories(dir);
  initial_noise();
  const size_t B = bodies_.size();
  int r_score = files_.models[0].current_size > 0 ? std::min(files_.models[0].current_size / 2, n_ / 2) : n_ / 2;
  r_score = std::max(r_score, 8);
  std::vector<int> best(B, 0);
  std::vector<double> smallest_change(B, 999.0), smallest_offset(B, 999.0);
  const double fine_step = healpix_angular_step(opt_.healpix_order) / std::pow(2.0, opt_.oversampling);
  const double fine_trans_A = opt_.offset_step / std::pow(2.0, opt_.oversampling) * angpix_;
  MultibodyResult res;
  bool final = false, converged = false;
  for (int it = 1; it <= opt_.max_iterations; ++it) {
    // The last iteration (after convergence, or the --iter-th) back-projects every frequency.
    final = final || it == opt_.max_iterations;
    const auto t0 = std::chrono::steady_clock::now();
    iterate(r_score, final);
    bool gained = false;
    std::string line;
    for (size_t b = 0; b < B; ++b) {
      gained |= res_shell_[b] > best[b];
      best[b] = std::max(best[b], res_shell_[b]);
      line += fmt::format("; body {}: {:.2f} Å, <Pmax> {:.3f}, change {:.2f}° {:.2f} Å, significant poses {:.0f} "
                          "coarse {:.0f} fine",
                          b + 1, res_shell_[b] > 0 ? n_ * angpix_ / res_shell_[b] : 999.0, mean_pmax_[b],
                          ang_change_[b], off_change_[b], mean_significant_[b][0], mean_significant_[b][1]);
    }
    spdlog::info("refine3d --multibody_masks: iteration {}{} ({} shells, {:.1f} s){}", it, final ? " (final)" : "",
                 r_score, seconds_since(t0), line);
    res.iterations = it;
    if (final) break;
    // RELION's convergence of auto-refine (updateOverallChangesInHiddenVariables, checkConvergence): no
    // body's resolution improved, and no large changes in the hidden variables: for every body, the mean
    // angular change within 3% of its smallest so far or below 40% of the fine angular step, and the
    // offsets' change likewise against the fine translational step.
    bool large = false;
    for (size_t b = 0; b < B; ++b) {
      const bool ang_ok = ang_change_[b] < 0.4 * fine_step || 1.03 * ang_change_[b] >= smallest_change[b];
      const bool off_ok = off_change_[b] < 0.4 * fine_trans_A || 1.03 * off_change_[b] >= smallest_offset[b];
      large |= !(ang_ok && off_ok);
      smallest_change[b] = std::min(smallest_change[b], ang_change_[b]);
      smallest_offset[b] = std::min(smallest_offset[b], off_change_[b]);
    }
    if (it >= 2 && !gained && !large) {
      spdlog::info("refine3d --multibody_masks: converged (no body's resolution improved, no large changes of the "
                   "poses); a final iteration at every frequency follows");
      final = converged = true;
    }
    const int mx = *std::max_element(res_shell_.begin(), res_shell_.end());
    r_score = std::min(n_ / 2, std::max(r_score, mx + 10));
  }
  if (!converged)
    spdlog::info("refine3d --multibody_masks: stopped at --iter {} before convergence", opt_.max_iterations);
  write_outputs(res);
  std::string resol;
  for (size_t b = 0; b < B; ++b) resol += fmt::format("{}body {}: {:.2f} Å", b ? ", " : "", b + 1, res.resolution[b]);
  spdlog::info("refine3d --multibody_masks: {} iterations; {}; wrote {} and {}", res.iterations, resol, res.data_star,
               res.model_star);
  return res;
}

}  // namespace

MultibodyResult run_multibody(const MultibodyOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("refine3d: " + msg);
  Job job(opt);
  return job.run();
}

}  // namespace regula

#include "regula/imaging/optics_model.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/zernike.hpp"
#include "regula/model/image_labels.hpp"

namespace regula {

namespace {

bool any_nonzero(const std::vector<double>& v) {
  return std::any_of(v.begin(), v.end(), [](double x) { return x != 0; });
}

// Beam tilt (mrad) folded into the odd Zernike coefficients (RELION 4/5's rule: added).
void add_beam_tilt(std::vector<double>& odd, double tx, double ty, double cs_mm, double lambda) {
  if (tx == 0 && ty == 0) return;
  if (odd.size() < 6) odd.resize(6, 0.0);
  // phi = -2 pi Cs lambda^2 |f|^2 (f . t) = a (3 |f|^2 f . t) with 3 |f|^2 x = Z_3^1 + 2 Z_1^1.
  const double a = -2.0 * kPi * (cs_mm * 1e7) * lambda * lambda * 1e-3 / 3.0;
  odd[1] += 2 * a * tx;
  odd[0] += 2 * a * ty;
  odd[4] += a * tx;
  odd[3] += a * ty;
}

}  // namespace

// ------------------------------------------------------------------ OpticsGroupModel

std::array<double, 2> OpticsGroupModel::frequency(double kx, double ky) const {
  const double s = 1.0 / (double(box) * pixel_size);
  return {(mag[0][0] * kx + mag[0][1] * ky) * s, (mag[1][0] * kx + mag[1][1] * ky) * s};
}

double OpticsGroupModel::phase_at(double fx, double fy) const { return odd_zernike_sum(odd, fx, fy); }

double OpticsGroupModel::gamma_offset_at(double fx, double fy) const {
  return even_zernike_sum(even, fx, fy);
}

bool OpticsGroupModel::has_phase() const { return any_nonzero(odd); }
bool OpticsGroupModel::has_gamma_offset() const { return any_nonzero(even); }

void OpticsGroupModel::evaluate(std::span<const float> kx, std::span<const float> ky, float* phase,
                                float* gamma_offset, float* ref_kx, float* ref_ky) const {
  const bool ph = phase && has_phase(), go = gamma_offset && has_gamma_offset();
  const Mat2& T = to_reference;
  for (size_t q = 0; q < kx.size(); ++q) {
    const double x = kx[q], y = ky[q];
    if (ph || go) {
      const auto f = frequency(x, y);
      if (ph) phase[q] = float(phase_at(f[0], f[1]));
      if (go) gamma_offset[q] = float(gamma_offset_at(f[0], f[1]));
    }
    if (ref_kx) ref_kx[q] = float(T[0][0] * x + T[0][1] * y);
    if (ref_ky) ref_ky[q] = float(T[1][0] * x + T[1][1] * y);
  }
  if (phase && !ph) std::fill(phase, phase + kx.size(), 0.0f);
  if (gamma_offset && !go) std::fill(gamma_offset, gamma_offset + kx.size(), 0.0f);
}

void OpticsGroupModel::phase_half(Grid<cfloat>& out) const {
  const int n = box, nxh = n / 2 + 1;
  if (phase_grid.nx() == nxh && phase_grid.ny() == n) {
    out = phase_grid;
    return;
  }
  if (out.nx() != nxh || out.ny() != n || out.nz() != 1) out = Grid<cfloat>(nxh, n);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < nxh; ++i) {
      const auto f = frequency(i, fft_freq(j, n));
      out(i, j) = std::polar(1.0f, float(phase_at(f[0], f[1])));
    }
}

namespace {
// F <- F * exp(sign i phi).
void apply_phase(const OpticsGroupModel& g, Grid<cfloat>& F, bool conjugate) {
  if (!g.has_phase()) return;
  Grid<cfloat> computed;
  if (!g.phase_grid.same_shape(F)) g.phase_half(computed);
  const Grid<cfloat>& p = g.phase_grid.same_shape(F) ? g.phase_grid : computed;
  if (!F.same_shape(p))
    runtime_error("aberration phase: transform is {}x{}, the optics group's box is {}", F.nx(), F.ny(), g.box);
  for (size_t k = 0; k < F.size(); ++k) F[k] *= conjugate ? std::conj(p[k]) : p[k];
}
}  // namespace

void OpticsGroupModel::demodulate(Grid<cfloat>& F) const { apply_phase(*this, F, true); }
void OpticsGroupModel::modulate(Grid<cfloat>& F) const { apply_phase(*this, F, false); }

// ------------------------------------------------------------------ ParticleOptics

namespace {
CtfOptions ctf_options(const OpticsGroupModel& g) {
  CtfOptions o;
  o.abs = g.phase_flipped;
  return o;
}
}  // namespace

ParticleOptics::ParticleOptics(const OpticsGroupModel& group, const CtfParams& ctf)
    : group_(&group), ctf_(ctf, ctf_options(group)), gamma_offset_(group.has_gamma_offset()) {}

double ParticleOptics::ctf_value(double kx, double ky) const {
  const auto f = group_->frequency(kx, ky);
  return ctf_.value(f[0], f[1], gamma_offset_ ? group_->gamma_offset_at(f[0], f[1]) : 0.0);
}

float ParticleOptics::ctf_value_float(double kx, double ky) const {
  const auto f = group_->frequency(kx, ky);
  return ctf_.value_float(f[0], f[1], gamma_offset_ ? group_->gamma_offset_at(f[0], f[1]) : 0.0);
}

void ParticleOptics::evaluate_ctf(std::span<const float> kx, std::span<const float> ky, const float* gamma_offset,
                                  float* ctf) const {
  const bool go = gamma_offset_;
  for (size_t q = 0; q < kx.size(); ++q) {
    const auto f = group_->frequency(kx[q], ky[q]);
    const double off = !go ? 0.0 : gamma_offset ? double(gamma_offset[q]) : group_->gamma_offset_at(f[0], f[1]);
    ctf[q] = ctf_.value_float(f[0], f[1], off);
  }
}

void ParticleOptics::ctf_half(Grid<float>& out) const {
  const int n = group_->box, nxh = n / 2 + 1;
  if (n <= 0 || !(group_->pixel_size > 0))
    runtime_error("ParticleOptics: optics group {} has no box or pixel size", group_->number);
  if (out.nx() != nxh || out.ny() != n || out.nz() != 1) out = Grid<float>(nxh, n);
  const Grid<float>& go = group_->gamma_offset_grid;
  const bool cached = gamma_offset_ && go.same_shape(out);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < nxh; ++i) {
      if (!cached) {
        out(i, j) = float(ctf_value(i, fft_freq(j, n)));
        continue;
      }
      const auto f = group_->frequency(i, fft_freq(j, n));
      out(i, j) = float(ctf_.value(f[0], f[1], go(i, j)));
    }
}

// ------------------------------------------------------------------ OpticsModel

OpticsModel::OpticsModel(const ParticleTable& table, const OpticsOptions& opt) : table_(&table) {
  check_image_labels(table);
  const std::string& src = table.source();
  for (const OpticsGroup& og : table.optics) {
    OpticsGroupModel g;
    g.number = og.number;
    g.name = og.name;
    g.pixel_size = og.pixel_size;
    g.box = og.image_size;
    g.premultiplied = og.ctf_premultiplied;
    g.phase_flipped = og.ctf_phase_flipped || opt.phase_flipped;
    if (og.ctf_premultiplied && og.ctf_phase_flipped)
      input_error("{}: optics group {} ({}) has both _rlnCtfDataAreCtfPremultiplied and "
                  "_rlnCtfDataArePhaseFlipped set: images cannot be both",
                  src, og.number, og.name);
    g.odd = og.odd_zernike;
    g.even = og.even_zernike;
    if (og.beam_tilt_x != 0 || og.beam_tilt_y != 0) {
      if (!(og.voltage > 0))
        input_error("{}: optics group {} ({}) has a beam tilt but no rlnVoltage (needed to model it)", src,
                    og.number, og.name);
      add_beam_tilt(g.odd, og.beam_tilt_x, og.beam_tilt_y, og.cs, electron_wavelength(og.voltage));
    }
    const auto& m = og.mag_matrix;
    g.mag = {{{m[0], m[1]}, {m[2], m[3]}}};
    const double det = m[0] * m[3] - m[1] * m[2];
    if (!(std::abs(det) > 1e-6))
      input_error("{}: optics group {} ({}): the magnification matrix _rlnMagMat00.._rlnMagMat11 "
                  "[[{}, {}], [{}, {}]] is singular",
                  src, og.number, og.name, m[0], m[1], m[2], m[3]);
    groups_.push_back(std::move(g));
    beam_tilt_.push_back({og.beam_tilt_x, og.beam_tilt_y});
  }
  if (!groups_.empty()) {
    ref_box_ = groups_.front().box;
    ref_pixel_ = groups_.front().pixel_size;
  }
  update_mapping();
}

void OpticsModel::set_reference(int box, double pixel_size) {
  if (box < 2 || !(pixel_size > 0))
    runtime_error("OpticsModel: reference box {} and pixel size {} must be positive", box, pixel_size);
  ref_box_ = box;
  ref_pixel_ = pixel_size;
  update_mapping();
}

void OpticsModel::set_box(size_t g, int box) {
  groups_.at(g).box = box;
  update_mapping();
}

void OpticsModel::update_mapping() {
  for (OpticsGroupModel& g : groups_) {
    const bool known = g.box > 0 && g.pixel_size > 0 && ref_box_ > 0 && ref_pixel_ > 0;
    const double s = known ? (double(ref_box_) * ref_pixel_) / (double(g.box) * g.pixel_size) : 1.0;
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 2; ++c) g.to_reference[size_t(r)][size_t(c)] = g.mag[size_t(r)][size_t(c)] * s;
    // Exactly the identity for the same sampling and no magnification (fast paths).
    if (std::abs(s - 1.0) <= 1e-6 && g.mag == kIdentity2) g.to_reference = kIdentity2;
    // The aberrations on the box's grid, once per group.
    g.phase_grid = Grid<cfloat>();
    g.gamma_offset_grid = Grid<float>();
    if (g.box > 0 && g.pixel_size > 0) {
      if (g.has_phase()) g.phase_half(g.phase_grid);
      if (g.has_gamma_offset()) {
        const int n = g.box;
        g.gamma_offset_grid = Grid<float>(n / 2 + 1, n);
        for (int j = 0; j < n; ++j)
          for (int i = 0; i <= n / 2; ++i) {
            const auto f = g.frequency(i, fft_freq(j, n));
            g.gamma_offset_grid(i, j) = float(g.gamma_offset_at(f[0], f[1]));
          }
      }
    }
  }
}

const OpticsGroupModel& OpticsModel::group_of(size_t i) const {
  return groups_[size_t(table_->optics_index[i])];
}

ParticleOptics OpticsModel::particle(size_t i) const {
  return ParticleOptics(group_of(i), particle_ctf_params(*table_, i));
}

unsigned OpticsModel::features() const {
  unsigned f = 0;
  for (size_t k = 0; k < groups_.size(); ++k) {
    const OpticsGroupModel& g = groups_[k];
    const OpticsGroup& og = table_->optics[k];
    if (g.phase_flipped) f |= kPhaseFlipped;
    if (g.premultiplied) f |= kPremultiplied;
    if (beam_tilt_[k][0] != 0 || beam_tilt_[k][1] != 0) f |= kBeamTilt;
    if (any_nonzero(og.odd_zernike)) f |= kOddZernike;
    if (g.has_gamma_offset()) f |= kEvenZernike;
    if (g.mag != kIdentity2) f |= kAnisoMag;
    if (!same_pixel_size(g.pixel_size, groups_[0].pixel_size)) f |= kMixedPixel;
    if (g.box != groups_[0].box) f |= kMixedBox;
  }
  return f;
}

void OpticsModel::require_only(unsigned supported, std::string_view command) const {
  const unsigned missing = features() & ~supported;
  if (!missing) return;
  const std::string& src = table_->source();
  for (size_t k = 0; k < groups_.size(); ++k) {
    const OpticsGroupModel& g = groups_[k];
    const OpticsGroup& og = table_->optics[k];
    std::string what;
    if ((missing & kPhaseFlipped) && g.phase_flipped)
      what = "_rlnCtfDataArePhaseFlipped = 1 (phase-flipped images)";
    else if ((missing & kPremultiplied) && g.premultiplied)
      what = "_rlnCtfDataAreCtfPremultiplied = 1 (CTF-premultiplied images)";
    else if ((missing & kBeamTilt) && (beam_tilt_[k][0] != 0 || beam_tilt_[k][1] != 0))
      what = fmt::format("_rlnBeamTiltX/_rlnBeamTiltY = ({}, {}) mrad (beam tilt)", beam_tilt_[k][0],
                         beam_tilt_[k][1]);
    else if ((missing & kOddZernike) && any_nonzero(og.odd_zernike))
      what = "_rlnOddZernike (antisymmetric aberrations)";
    else if ((missing & kEvenZernike) && g.has_gamma_offset())
      what = "_rlnEvenZernike (symmetric aberrations)";
    else if ((missing & kAnisoMag) && g.mag != kIdentity2)
      what = fmt::format("_rlnMagMat00.._rlnMagMat11 = [[{}, {}], [{}, {}]] (anisotropic magnification)",
                         g.mag[0][0], g.mag[0][1], g.mag[1][0], g.mag[1][1]);
    else if ((missing & kMixedBox) && g.box != groups_[0].box)
      what = fmt::format("_rlnImageSize {} px, unlike optics group {} ({} px) (optics groups of different box "
                         "sizes)",
                         g.box, groups_[0].number, groups_[0].box);
    else if ((missing & kMixedPixel) && !same_pixel_size(g.pixel_size, groups_[0].pixel_size))
      what = fmt::format("_rlnImagePixelSize {} Å, unlike optics group {} ({} Å) (optics groups of different pixel "
                         "sizes)",
                         g.pixel_size, groups_[0].number, groups_[0].pixel_size);
    // Which commands do model it (the 3D engines model the geometry but need --ctf for it).
    const bool geometry = what.find("(anisotropic magnification)") != std::string::npos ||
                          what.find("(optics groups of different pixel sizes)") != std::string::npos ||
                          what.find("(optics groups of different box sizes)") != std::string::npos;
    if (!what.empty())
      input_error("{}: optics group {} ({}) has {}: not yet supported by {} (reconstruct, project and simulate "
                  "model it{})",
                  src, g.number, g.name, what, command,
                  geometry ? "; so do refine3d, class3d and initial_model with --ctf" : "");
  }
}

bool same_pixel_size(double a, double b) {
  return std::abs(a - b) <= 1e-6 * std::max(std::abs(a), std::abs(b));
}

OpticsModel engine_optics(const ParticleTable& table, int n, bool ctf, std::string_view command,
                          bool magnification) {
  OpticsModel model(table);
  for (size_t g = 0; g < model.groups(); ++g)
    if (model.group(g).box <= 0) model.set_box(g, n);  // a file without rlnImageSize: the images' size
  for (size_t g = 0; g < model.groups(); ++g)  // (the 3D engines' boxes; class2d takes odd ones)
    if (magnification && (model.group(g).box < 16 || model.group(g).box % 2))
      input_error("{}: optics group {} has rlnImageSize {}: particle images must be square, even and at least "
                  "16 px",
                  table.source(), model.group(g).number, model.group(g).box);
  // The reference at the first group's sampling (a pixel size of 0 is refused by the jobs: --angpix).
  if (model.groups() > 0)
    model.set_reference(model.group(0).box, model.group(0).pixel_size > 0 ? model.group(0).pixel_size : 1.0);
  const unsigned geometry =
      magnification ? unsigned(OpticsModel::kAnisoMag | OpticsModel::kMixedPixel | OpticsModel::kMixedBox) : 0u;
  const unsigned modelled = OpticsModel::kPhaseFlipped | OpticsModel::kPremultiplied | OpticsModel::kBeamTilt |
                            OpticsModel::kOddZernike | OpticsModel::kEvenZernike | geometry;
  // Box sizes first where they are not modelled: refused with or without --ctf.
  if (!magnification) model.require_only(OpticsModel::kAll & ~unsigned(OpticsModel::kMixedBox), command);
  model.require_only(ctf ? modelled : 0u,
                     ctf ? std::string(command) : fmt::format("{} without --ctf", command));
  // The first image (n px) against its group's rlnImageSize; the others are checked as they are read.
  if (table.size() > 0) {
    const OpticsGroupModel& g = model.group(size_t(table.optics_index[0]));
    if (g.box != n)
      input_error("{}: optics group {} says rlnImageSize {} but its images are {} px", table.source(), g.number,
                  g.box, n);
  }
  return model;
}

CtfReach ctf_reach(const ParticleOptics& po) {
  const CtfParams& p = po.ctf().params();
  return CtfReach{po.ctf().wavelength(), p.defocus_u, p.defocus_v, p.cs_mm * 1e7, po.group().pixel_size,
                  po.group().premultiplied ? 2.0 : 1.0};
}

}  // namespace regula

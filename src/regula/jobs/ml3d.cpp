#include "regula/jobs/ml3d.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/random.hpp"
#include "regula/sampling/healpix.hpp"

namespace regula::ml3d {

namespace {
// The pixels px at T k (the reference frame).
estep::SearchPixels mapped(const estep::SearchPixels& px, const Mat2& T) {
  estep::SearchPixels r = px;
  for (size_t q = 0; q < px.size(); ++q) {
    r.kx[q] = float(T[0][0] * px.kx[q] + T[0][1] * px.ky[q]);
    r.ky[q] = float(T[1][0] * px.kx[q] + T[1][1] * px.ky[q]);
  }
  return r;
}
}  // namespace

PixelScale::PixelScale(const ParticleTable& t, const OpticsModel& model)
    : ref_pixel(model.reference_pixel_size()), ref_box(model.reference_box()), table(&t) {
  for (size_t g = 0; g < model.groups(); ++g) {
    const double p = model.group(g).pixel_size;
    ratio.push_back(p > 0 && !same_pixel_size(p, ref_pixel) ? ref_pixel / p : 1.0);
    box.push_back(model.group(g).box > 0 ? model.group(g).box : ref_box);
  }
}

bool PixelScale::uniform() const {
  return std::all_of(ratio.begin(), ratio.end(), [](double r) { return r == 1.0; }) &&
         std::all_of(box.begin(), box.end(), [&](int b) { return b == ref_box; });
}

int PixelScale::max_box() const {
  return box.empty() ? ref_box : *std::max_element(box.begin(), box.end());
}

namespace {
FinePixels group_pixels_up_to(const PixelScale& scale, const OpticsModel& model, int r, bool all) {
  FinePixels f;
  const size_t G = model.groups();
  f.px.resize(G);
  f.ref.resize(G);
  f.counts.resize(G);
  for (size_t g = 0; g < G; ++g) {
    const int n = g < scale.box.size() ? scale.box[g] : scale.ref_box;
    const double freq = g < scale.ratio.size() ? scale.frequency(g) : 1.0;
    const int rg = all ? n / 2 : freq == 1.0 ? std::min(r, n / 2) : std::clamp(int(std::lround(r / freq)), 1, n / 2);
    f.px[g] = estep::search_pixels(n, rg);
    if (model.group(g).maps_to_reference()) f.ref[g] = mapped(f.px[g], model.group(g).to_reference);
    f.counts[g].assign(size_t(n / 2 + 1), 0.0);
    for (size_t q = 0; q < f.px[g].size(); ++q) f.counts[g][size_t(f.px[g].shell[q])] += 1;
  }
  return f;
}
}  // namespace

FinePixels fine_pixels(int r, const PixelScale& scale, const OpticsModel& model) {
  return group_pixels_up_to(scale, model, r, false);
}

FinePixels all_pixels(const PixelScale& scale, const OpticsModel& model) {
  return group_pixels_up_to(scale, model, 0, true);
}

void log_pixel_sizes(std::string_view command, const PixelScale& scale) {
  std::string groups;
  for (size_t g = 0; g < scale.ratio.size(); ++g)
    groups += fmt::format("{}{} ({:.6g} Å, {} px)", groups.empty() ? "" : ", ", g + 1, scale.ref_pixel / scale.ratio[g],
                          scale.box[g]);
  spdlog::info("{}: optics groups of different samplings: {}; each compared with the reference ({:.6g} Å, {} px) "
               "through its own sampling",
               command, groups, scale.ref_pixel, scale.ref_box);
}

std::unique_ptr<estep::SliceCache> global_fine_cache(size_t P, size_t D, int oversampling,
                                                     const estep::SearchPixels& px, size_t max_bytes) {
  const size_t os = size_t(std::max(0, oversampling)), entries = P * D * (size_t(1) << (3 * os));
  if (entries == 0 || entries > kSharedSliceEntries) return nullptr;
  return std::make_unique<estep::SliceCache>(entries, px, max_bytes);
}

void release_slice_cache(std::unique_ptr<estep::SliceCache>& cache, std::string_view what, size_t max_bytes) {
  if (cache && cache->bound())
    spdlog::info("{} exceeded {} MB; the rest were projected per particle", what, max_bytes >> 20);
  cache.reset();
}

std::vector<estep::Search3DSetup> group_setups(const estep::Search3DSetup& S, const PixelScale& scale) {
  std::vector<estep::Search3DSetup> out(scale.ratio.size(), S);
  for (size_t g = 0; g < out.size(); ++g) {
    const double r = scale.ratio[g], f = scale.frequency(g);
    if (r != 1.0) {
      for (auto& t : out[g].trans) t = {t[0] * r, t[1] * r};
      out[g].offset_step *= r;
      out[g].sigma_offset2 *= r * r;
    }
    if (f != 1.0 && !S.scale_shells.empty()) {
      // Image shell s of the group reads reference shell round(s f_g).
      std::vector<char> shells(size_t(scale.box[g] / 2 + 1), 0);
      for (size_t s = 0; s < shells.size(); ++s) {
        const size_t rs = size_t(std::lround(double(s) * f));
        shells[s] = rs < S.scale_shells.size() ? S.scale_shells[rs] : 0;
      }
      out[g].scale_shells = std::move(shells);
    }
  }
  return out;
}

void mask_reference(Volume& map, const Volume& solvent_mask, bool flatten_solvent, double radius_px, double edge_px) {
  if (!solvent_mask.empty()) {
    for (size_t i = 0; i < map.size(); ++i) map[i] *= solvent_mask[i];
  } else if (flatten_solvent) {
    apply_spherical_mask(map, radius_px, edge_px, MaskFill::Zero);
  }
}

Image read_particle(ParticleImages& images, const ParticleTable& table, size_t i, const ParticleMasking& m,
                    double norm_factor, std::array<double, 2> origin_px, const std::vector<double>* noise_sigma2,
                    bool unmasked) {
  Image img = images.read(i);
  if (img.nx() != m.n || img.ny() != m.n)
    input_error("{}: image of particle {} is {}x{}, expected {}x{}", table.where(i), i + 1, img.nx(), img.ny(), m.n,
                m.n);
  if (norm_factor != 1.0)
    for (float& v : img) v = float(v * norm_factor);
  if (!unmasked) mask_particle(img, m, i, origin_px, noise_sigma2);
  return img;
}

void mask_particle(Image& img, const ParticleMasking& m, size_t i, std::array<double, 2> origin_px,
                   const std::vector<double>* noise_sigma2) {
  apply_particle_mask(img, m.radius_px, m.edge_px, MaskCentre{-origin_px[0], -origin_px[1]},
                      ParticleSolvent{m.zero_mask, noise_sigma2, m.seed, i});
}

ParticleViews particle_views(const Image& raw, const ParticleMasking& m, size_t i, std::array<double, 2> origin_px,
                             const std::vector<double>* noise_sigma2, const std::optional<ParticleOptics>& optics,
                             std::span<const float> inv_sigma2, int r_max_sums) {
  Image img = raw, wide = raw;
  mask_particle(img, m, i, origin_px, noise_sigma2);
  const MaskCentre at{-origin_px[0], -origin_px[1]};
  const CtfReach reach = optics ? ctf_reach(*optics) : CtfReach{};  // none without a CTF
  const std::vector<double> kept = apply_reach_mask(wide, m.radius_px, m.edge_px, at, reach, r_max_sums);
  // Particles and shells weighed by the noise they carry, on RELION's scale for the unmasked image
  // (which class3d's prior, from the map's power, is balanced against).
  std::vector<float> w(inv_sigma2.size());
  for (size_t s = 0; s < w.size(); ++s) w[s] = float(inv_sigma2[s] * reach_weight(kept, s));
  return ParticleViews{estep::RotatableParticle(img, origin_px[0], origin_px[1], optics),
                       estep::RotatableParticle(wide, origin_px[0], origin_px[1], optics,
                                                estep::RotatableParticle::PlainOnly{}),
                       std::move(w)};
}

Volume read_solvent_mask(const std::string& path, int n) {
  Volume m = mrc::read(path);
  if (m.nx() != n || m.ny() != n || m.nz() != n)
    input_error("{}: the solvent mask is {}x{}x{}, the particles are {} px", path, m.nx(), m.ny(), m.nz(), n);
  for (size_t i = 0; i < m.size(); ++i)
    if (!(m[i] >= -1e-3f && m[i] <= 1.001f))
      input_error("{}: mask values must be in [0, 1] (voxel {} is {})", path, i, m[i]);
  return m;
}

Volume read_reference(const std::string& path, double angpix, int n) {
  mrc::Header h;
  try {
    h = mrc::read_header(path);
  } catch (const InputError& e) {
    throw InputError(fmt::format("--ref: {}", e.what()));
  }
  if (!h.is_volume())
    input_error("--ref {}: not a 3D map ({}x{}x{} {}; expected a volume of {}x{}x{} px, the particles' box)", path,
                h.size_x(), h.size_y(), h.size_z(), h.is_stack() ? "image stack" : "image", n, n, n);
  if (h.size_x() != n || h.size_y() != n || h.size_z() != n)
    input_error("--ref {}: the map is {}x{}x{} px, expected {}x{}x{} (the particles' box; re-sample or re-window it "
                "with regula convert --rescale_angpix/--new_box)",
                path, h.size_x(), h.size_y(), h.size_z(), n, n, n);
  const double ref = h.pixel_size();
  if (ref > 0 && std::abs(ref - angpix) > 1e-3 * angpix)
    input_error("--ref {}: the map's pixel size is {:.6g} Å (header), the particles' is {:.6g} Å; re-sample it, "
                "e.g. regula convert --i {} --o ref_{:.4g}A.mrc --rescale_angpix {:.6g} --new_box {}",
                path, ref, angpix, path, angpix, angpix, n);
  return mrc::read(path);
}

Blocks::Blocks(size_t n_particles, size_t block_size) : n(n_particles), block(std::max<size_t>(block_size, 1)) {
  const size_t nblocks = (n + block - 1) / block;
  for (size_t b = 0; b < nblocks; ++b)
    if (int(b % size_t(mpi::size())) == mpi::rank()) {
      mine.push_back(b);
      my_particles += double(end(b) - begin(b));
    }
}

void ModelSums::init(size_t optics, size_t shells, size_t groups, size_t classes) {
  d2.resize(optics * shells);
  npix.resize(optics * shells);
  xa.resize(groups);
  aa.resize(groups);
  cls.resize(classes);
}

void ModelSums::merge(const ModelSums& o) {
  d2.merge(o.d2);
  npix.merge(o.npix);
  xa.merge(o.xa);
  aa.merge(o.aa);
  cls.merge(o.cls);
}

double add_particle(ModelSums& sums, const estep::Search3DResult& res, const estep::RotatableParticle& x, int optics,
                    int group, const std::vector<double>& fine_counts, const std::vector<double>& all_counts, int r_fine,
                    size_t stride) {
  const size_t hs = fine_counts.size(), base = size_t(optics) * stride;
  if (hs > stride || all_counts.size() != hs)
    runtime_error("add_particle: {} shells in a stride of {} ({} counted)", hs, stride, all_counts.size());
  double total = 0;
  for (size_t s = 1; s < hs; ++s) {
    double v = s < res.diff2.size() ? res.diff2[s] : 0.0, c = res.weight_sum * fine_counts[s];
    if (int(s) > r_fine) {
      v += res.weight_sum * x.shell_power()[s];
      c += res.weight_sum * all_counts[s];
    }
    sums.d2[base + s].add(v);
    sums.npix[base + s].add(c);
    total += v;
  }
  sums.xa[size_t(group)].add(res.xa);
  sums.aa[size_t(group)].add(res.aa);
  for (size_t c = 0; c < res.class_weight.size() && c < sums.cls.size(); ++c) sums.cls[c].add(res.class_weight[c]);
  return total;
}

double norm_correction(double old_norm, double avg_norm, double total_d2, double weight_sum, int n) {
  const double w = weight_sum > 0 ? weight_sum : 1.0;
  return old_norm / avg_norm * std::sqrt(2 * total_d2 / w) / (double(n) * n);
}

void reduce_over_ranks(const std::vector<ExactSums*>& sums) {
  if (!mpi::active()) return;
  for (ExactSums* s : sums) {
    std::vector<int64_t> packed = s->pack();
    mpi::allreduce_sum(packed.data(), packed.size());
    ExactSums total(s->size());
    total.merge_packed(packed);
    *s = std::move(total);
  }
}

std::vector<double> shell_pixel_counts(int n) {
  std::vector<double> c(size_t(n / 2 + 1), 0.0);
  for (int ky = -n / 2; ky < n / 2; ++ky)
    for (int kx = 0; kx <= n / 2; ++kx) {
      if (kx == 0 && ky <= 0) continue;
      const int s = int(std::lround(std::sqrt(double(kx * kx + ky * ky))));
      if (s <= n / 2) c[size_t(s)] += 1;
    }
  return c;
}

std::vector<std::vector<double>> shell_pixel_counts(const PixelScale& scale) {
  std::vector<std::vector<double>> c;
  for (int n : scale.box) c.push_back(shell_pixel_counts(n));
  return c;
}

bool spectra_fit(const std::vector<std::vector<double>>& sigma2, const PixelScale& scale) {
  if (sigma2.size() != scale.box.size()) return false;
  for (size_t g = 0; g < sigma2.size(); ++g)
    if (sigma2[g].size() != size_t(scale.box[g] / 2 + 1)) return false;
  return true;
}

Groups particle_groups(const ParticleTable& table) {
  Groups g;
  const size_t N = table.size();
  g.group_of.assign(N, 0);
  const star::Block& pb = table.particles_block();
  std::vector<std::string> key(N);
  const int name_col = pb.column("rlnGroupName");
  if (name_col >= 0) {
    for (size_t i = 0; i < N; ++i) key[i] = std::string(pb.value(i, name_col));
  } else if (!table.micrographs.empty()) {
    for (size_t i = 0; i < N; ++i) key[i] = table.micrographs[table.micrograph[i]];
  }
  std::unordered_map<std::string, int> index;
  for (size_t i = 0; i < N; ++i) {
    auto [it, added] = index.try_emplace(key[i], int(g.names.size()));
    if (added) {
      g.names.push_back(key[i].empty() ? "group1" : key[i]);
      g.count.push_back(0);
    }
    g.group_of[i] = it->second;
    g.count[size_t(it->second)] += 1;
  }
  return g;
}

ParticleValues ParticleValues::from_table(const ParticleTable& table) {
  const size_t N = table.size();
  ParticleValues v;
  v.assign(N);
  v.rot = table.rot;
  v.tilt = table.tilt;
  v.psi = table.psi;
  v.ox = table.origin_x;
  v.oy = table.origin_y;
  v.norm = input_norms(table);
  return v;
}

std::vector<double> input_norms(const ParticleTable& table) {
  const size_t N = table.size();
  std::vector<double> norm(N, 1.0);
  const star::Block& pb = table.particles_block();
  const int c = pb.column("rlnNormCorrection");
  if (c >= 0)
    for (size_t i = 0; i < N; ++i) {
      const double x = pb.number(i, c);
      norm[i] = x > 0 && std::isfinite(x) ? x : 1.0;
    }
  return norm;
}

double average(const std::vector<double>& v) {
  return v.empty() ? 1.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

std::array<std::vector<double>*, 9> ParticleValues::columns() {
  return {&rot, &tilt, &psi, &ox, &oy, &norm, &pmax, &loglik, &nsig};
}
std::array<const std::vector<double>*, 9> ParticleValues::columns() const {
  return {&rot, &tilt, &psi, &ox, &oy, &norm, &pmax, &loglik, &nsig};
}

void ParticleValues::assign(size_t n) {
  for (auto* c : columns()) c->assign(n, 0.0);
}

void ParticleValues::copy(size_t i, const ParticleValues& from) {
  const auto to = columns();
  const auto src = from.columns();
  for (size_t c = 0; c < to.size(); ++c) (*to[c])[i] = (*src[c])[i];
}

void ParticleValues::take(size_t i, const ParticleValues& prev, const estep::Search3DResult& res, double angpix) {
  rot[i] = res.rot;
  tilt[i] = res.tilt;
  psi[i] = res.psi;
  ox[i] = prev.ox[i] + res.trans[0] * angpix;
  oy[i] = prev.oy[i] + res.trans[1] * angpix;
  pmax[i] = res.max_posterior;
  loglik[i] = res.log_likelihood;
  nsig[i] = double(res.n_significant);
}

void ParticleValues::sum_over_ranks() {
  if (!mpi::active()) return;
  for (auto* c : columns()) mpi::allreduce_sum(c->data(), c->size());
}

double ParticleValues::average_norm() const {
  return average(norm);
}

void ParticleValues::set_poses(ParticleTable& out) const {
  out.rot = rot;
  out.tilt = tilt;
  out.psi = psi;
  out.origin_x = ox;
  out.origin_y = oy;
}

std::vector<int> ParticleValues::nsig_int() const {
  std::vector<int> n(nsig.size());
  for (size_t i = 0; i < n.size(); ++i) n[i] = int(std::lround(nsig[i]));
  return n;
}

void ParticleValues::write_columns(star::Block& pb) const {
  pb.set_column("rlnMaxValueProbDistribution", pmax);
  pb.set_column("rlnNrOfSignificantSamples", nsig_int());
  pb.set_column("rlnLogLikeliContribution", loglik);
  pb.set_column("rlnNormCorrection", norm);
}

Perturbation sampling_perturbation(uint64_t seed, int iteration, double factor, double angular_step_deg,
                                   double offset_step_px) {
  Perturbation p;
  if (!(factor > 0)) return p;
  double r = 0;
  for (int k = 1; k <= iteration; ++k) {
    auto g = make_rng(seed, 0x505442, uint64_t(k));  // "PTB"
    r += factor * (0.5 + 0.5 * uniform01(g));
    r -= 2 * factor * std::floor((r + factor) / (2 * factor));  // into [-f, f)
  }
  p.fraction = r;
  const double a = r * angular_step_deg;
  p.rotation = euler_to_matrix(a, a, a);
  p.shift_px = r * offset_step_px;
  return p;
}

std::vector<Euler> perturbed_directions(std::span<const std::array<double, 2>> rot_tilt, const Mat3& P) {
  std::vector<Euler> out(rot_tilt.size());
  const bool none = P == identity3();  // the directions as they are (no round trip through a matrix)
  for (size_t d = 0; d < rot_tilt.size(); ++d)
    out[d] = none ? Euler{rot_tilt[d][0], rot_tilt[d][1], 0.0}
                  : matrix_to_euler(matmul(euler_to_matrix(rot_tilt[d][0], rot_tilt[d][1], 0.0), P));
  return out;
}

}  // namespace regula::ml3d

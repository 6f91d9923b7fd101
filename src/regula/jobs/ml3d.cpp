#include "regula/jobs/ml3d.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/sampling/healpix.hpp"

namespace regula::ml3d {

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

std::array<double, 4> to_quaternion(const Mat3& R) {
  const double tr = R[0][0] + R[1][1] + R[2][2];
  std::array<double, 4> q;
  if (tr > 0) {
    const double s = 2 * std::sqrt(tr + 1.0);
    q = {0.25 * s, (R[2][1] - R[1][2]) / s, (R[0][2] - R[2][0]) / s, (R[1][0] - R[0][1]) / s};
  } else if (R[0][0] > R[1][1] && R[0][0] > R[2][2]) {
    const double s = 2 * std::sqrt(1.0 + R[0][0] - R[1][1] - R[2][2]);
    q = {(R[2][1] - R[1][2]) / s, 0.25 * s, (R[0][1] + R[1][0]) / s, (R[0][2] + R[2][0]) / s};
  } else if (R[1][1] > R[2][2]) {
    const double s = 2 * std::sqrt(1.0 + R[1][1] - R[0][0] - R[2][2]);
    q = {(R[0][2] - R[2][0]) / s, (R[0][1] + R[1][0]) / s, 0.25 * s, (R[1][2] + R[2][1]) / s};
  } else {
    const double s = 2 * std::sqrt(1.0 + R[2][2] - R[0][0] - R[1][1]);
    q = {(R[1][0] - R[0][1]) / s, (R[0][2] + R[2][0]) / s, (R[1][2] + R[2][1]) / s, 0.25 * s};
  }
  return q;
}

Mat3 from_quaternion(std::array<double, 4> q) {
  const double nrm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  for (double& v : q) v /= nrm;
  const double w = q[0], x = q[1], y = q[2], z = q[3];
  Mat3 R;
  R[0] = {1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)};
  R[1] = {2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)};
  R[2] = {2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)};
  return R;
}

double wrap180(double a) {
  a = std::fmod(a + 180.0, 360.0);
  if (a < 0) a += 360.0;
  return a - 180.0;
}

double angle_between(const Vec3& a, const Vec3& b) {
  const double c = std::clamp(a[0] * b[0] + a[1] * b[1] + a[2] * b[2], -1.0, 1.0);
  return rad2deg(std::acos(c));
}

void DirectionTable::build(int o) {
  if (order == o) return;
  order = o;
  const long np = healpix_num_pixels(o);
  rot_tilt.resize(size_t(np));
  v.resize(size_t(np));
  for (long p = 0; p < np; ++p) {
    rot_tilt[size_t(p)] = healpix_direction(o, p);
    v[size_t(p)] = euler_direction(rot_tilt[size_t(p)][0], rot_tilt[size_t(p)][1]);
  }
}

namespace {

// Indices of the entries holding `fraction` of the mass, by decreasing weight (ties by index), at most `cap`.
std::vector<size_t> significant(std::vector<std::pair<double, size_t>> w, size_t cap, double fraction = 0.999) {
  std::sort(w.begin(), w.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  std::vector<size_t> out;
  double acc = 0;
  for (const auto& [v, j] : w) {
    if (out.size() >= cap) break;
    out.push_back(j);
    acc += v;
    if (acc >= fraction) break;
  }
  return out;
}

}  // namespace

ParticleResult search_particle(const IterationSetup& S, const ParticleInput& in, Workspace& ws,
                               std::span<BackProjector* const> bp) {
  ParticleResult res;
  const size_t K = size_t(S.classes);
  const estep::RotatableParticle& x = *in.x;
  const bool cc = S.cross_correlation;
  estep::SearchOptions so;
  so.cross_correlation = cc;
  const double step = healpix_angular_step(S.order), sigma_ang = S.sigma_ang;
  // Local searches look around the previous pose A in its own angles, except near the poles of the
  // Euler angles (tilt 0 or 180), where one orientation has any rot with psi -/+ rot fixed: a window
  // of directions around (rot, tilt) times in-plane angles around psi holds it only for directions
  // whose rot is near A's, and the HEALPix directions nearest a pole have rot 45 + 90 k. There the
  // search runs in the angles of B = A Q^T, Q a quarter turn about y taking z to x (B's direction
  // is on the equator), and each pose B' searched is the orientation B' Q.
  const double pole_zone = std::cos(deg2rad(3 * sigma_ang + step));  // the window may reach a pole
  const bool turned = S.local && std::abs(euler_direction(in.rot, in.tilt)[2]) > pole_zone;
  const Mat3 Q = turned ? axis_angle_matrix({0, 1, 0}, 90) : identity3();
  const Euler prev = turned ? matrix_to_euler(matmul(euler_to_matrix(in.rot, in.tilt, in.psi), transpose(Q)))
                            : Euler{in.rot, in.tilt, in.psi};
  const Vec3 prev_dir = euler_direction(prev.rot, prev.tilt);
  auto map_frame = [&](double rot, double tilt, double psi) -> Euler {
    return turned ? matrix_to_euler(matmul(euler_to_matrix(rot, tilt, psi), Q)) : Euler{rot, tilt, psi};
  };
  // Coarse slices (in-plane angle 0) of the local window's directions.
  auto window_slices = [&](const Projector& proj, estep::Slices& out) {
    if (!turned) return estep::project_slices(proj, *S.px_coarse, ws.cdirs, out);
    std::vector<Euler> a;
    for (const auto& d : ws.cdirs) a.push_back(map_frame(d[0], d[1], 0.0));
    estep::project_orientations(proj, *S.px_coarse, a, out);
  };
  auto trans_prior = [&](const std::vector<std::array<double, 2>>& tr) {
    std::vector<double> lp(tr.size(), 0.0);
    if (cc) return lp;
    for (size_t t = 0; t < tr.size(); ++t) {
      const double dx = in.ox_px + tr[t][0], dy = in.oy_px + tr[t][1];
      lp[t] = -(dx * dx + dy * dy) / (2 * S.sigma_offset2);
    }
    return lp;
  };
  auto class_prior = [&](size_t c) { return S.log_class_prior.empty() ? 0.0 : S.log_class_prior[c]; };

  // ---- coarse pass ----
  estep::PoseSet ps;
  ps.trans = S.trans;
  ps.log_prior_trans = trans_prior(ps.trans);
  const estep::Slices* cslices = nullptr;
  size_t d_per_class = 0;
  if (!S.local) {
    ps.psi = *S.global_psi;
    ps.dirs = *S.global_dirs;
    cslices = S.global_slices;
    d_per_class = S.global_dirs->size() / K;
    if (K > 1 && !S.log_class_prior.empty())
      for (size_t d = 0; d < S.global_dirs->size(); ++d) ps.log_prior_dir.push_back(class_prior(d / d_per_class));
  } else {
    const int J = int(std::ceil(3 * sigma_ang / step - 1e-9));
    for (int j = -J; j <= J; ++j) {
      ps.psi.push_back(wrap180(prev.psi + j * step));
      ps.log_prior_psi.push_back(-(j * step) * (j * step) / (2 * sigma_ang * sigma_ang));
    }
    ws.cdirs.clear();
    ws.cpix.clear();
    std::vector<double> window_prior;
    const double cos_lim = std::cos(deg2rad(3 * sigma_ang));
    for (size_t d = 0; d < S.table->v.size(); ++d) {
      const Vec3& v = S.table->v[d];
      if (prev_dir[0] * v[0] + prev_dir[1] * v[1] + prev_dir[2] * v[2] < cos_lim) continue;
      const double a = angle_between(prev_dir, v);
      ws.cdirs.push_back(S.table->rot_tilt[d]);
      ws.cpix.push_back(long(d));
      window_prior.push_back(-a * a / (2 * sigma_ang * sigma_ang));
    }
    if (ws.cdirs.empty()) {  // 3 sigma is always wider than a pixel; kept for safety: the nearest
      size_t best = 0;
      double ba = 1e9;
      for (size_t d = 0; d < S.table->v.size(); ++d) {
        const double a = angle_between(prev_dir, S.table->v[d]);
        if (a < ba) ba = a, best = d;
      }
      ws.cdirs.push_back(S.table->rot_tilt[best]);
      ws.cpix.push_back(long(best));
      window_prior.push_back(0);
    }
    d_per_class = ws.cdirs.size();
    if (K == 1) {
      ps.log_prior_dir = window_prior;
      window_slices(*S.proj[0], ws.local_slices);
    } else {
      // One window per class, class-major.
      const size_t D = d_per_class, m = S.px_coarse->size();
      estep::Slices one;
      ws.local_slices.d = K * D;
      ws.local_slices.m = m;
      ws.local_slices.s.resize(K * D * 2 * m);
      ws.local_slices.s2.resize(K * D * m);
      for (size_t c = 0; c < K; ++c) {
        window_slices(*S.proj[c], one);
        std::copy(one.s.begin(), one.s.end(), ws.local_slices.s.begin() + long(c * D * 2 * m));
        std::copy(one.s2.begin(), one.s2.end(), ws.local_slices.s2.begin() + long(c * D * m));
        for (size_t d = 0; d < D; ++d) ps.log_prior_dir.push_back(window_prior[d] + class_prior(c));
      }
      const auto dirs = ws.cdirs;
      const auto pix = ws.cpix;
      for (size_t c = 1; c < K; ++c) {
        ws.cdirs.insert(ws.cdirs.end(), dirs.begin(), dirs.end());
        ws.cpix.insert(ws.cpix.end(), pix.begin(), pix.end());
      }
    }
    ps.dirs = ws.cdirs;
    cslices = &ws.local_slices;
  }
  estep::search_poses(x, *S.px_coarse, in.inv_sigma2, float(in.scale), *cslices, ps, so, ws.work, ws.coarse);
  const estep::PoseResult& coarse = ws.coarse;
  if (!coarse.valid) return res;

  // ---- significant coarse poses -> fine poses, scored in the particle's frame ----
  const size_t cP = coarse.P, cT = coarse.T, cD = coarse.D;
  std::vector<std::pair<double, size_t>> wpd;
  {
    std::vector<double> acc(cP * cD, 0.0);
    for (size_t p = 0; p < cP; ++p)
      for (size_t t = 0; t < cT; ++t)
        for (size_t d = 0; d < cD; ++d) acc[p * cD + d] += coarse.weight[(p * cT + t) * cD + d];
    for (size_t j = 0; j < acc.size(); ++j)
      if (acc[j] > 1e-8) wpd.push_back({acc[j], j});
  }
  const std::vector<size_t> pairs = significant(wpd, cc ? 1 : S.max_pairs);
  std::vector<std::pair<double, size_t>> wt;
  for (size_t t = 0; t < cT; ++t) wt.push_back({coarse.w_trans[t], t});
  const std::vector<size_t> sig_t = significant(wt, cc ? 1 : S.max_trans);

  std::vector<Euler> fang;
  std::vector<size_t> fclass;
  std::vector<double> fang_prior;
  const bool fine_prior = S.local || (K > 1 && !S.log_class_prior.empty());
  for (size_t pr : pairs) {
    const size_t p = pr / cD, d = pr % cD, c = d / d_per_class;
    const long pix = S.local ? ws.cpix[d] : (*S.global_pix)[d];
    for (long child : healpix_children(pix, 1)) {
      const auto crt = healpix_direction(S.order + 1, child);
      const double a = S.local ? angle_between(prev_dir, euler_direction(crt[0], crt[1])) : 0.0;
      for (int sgn : {-1, 1}) {
        const double psi = wrap180(ps.psi[p] + sgn * step / 4);
        fang.push_back(map_frame(crt[0], crt[1], psi));
        fclass.push_back(c);
        if (fine_prior) {
          double lp = class_prior(c);
          if (S.local) {
            const double dp = wrap180(psi - prev.psi);
            lp += -(a * a + dp * dp) / (2 * sigma_ang * sigma_ang);
          }
          fang_prior.push_back(lp);
        }
      }
    }
  }
  std::vector<std::array<double, 2>> ftrans;
  const double fstep = S.offset_step / 4;
  for (size_t t : sig_t)
    for (int sx : {-1, 1})
      for (int sy : {-1, 1}) ftrans.push_back({ps.trans[t][0] + sx * fstep, ps.trans[t][1] + sy * fstep});
  const std::vector<double> ftrans_prior = trans_prior(ftrans);
  if (K == 1) {
    estep::project_orientations(*S.proj[0], *S.px_fine, fang, ws.fine_slices);
  } else {
    const size_t m = S.px_fine->size(), J = fang.size();
    ws.fine_slices.d = J;
    ws.fine_slices.m = m;
    ws.fine_slices.s.resize(J * 2 * m);
    ws.fine_slices.s2.resize(J * m);
    estep::Slices one;
    for (size_t c = 0; c < K; ++c) {
      std::vector<Euler> sub;
      std::vector<size_t> where;
      for (size_t j = 0; j < J; ++j)
        if (fclass[j] == c) sub.push_back(fang[j]), where.push_back(j);
      if (sub.empty()) continue;
      estep::project_orientations(*S.proj[c], *S.px_fine, sub, one);
      for (size_t u = 0; u < where.size(); ++u) {
        std::copy_n(one.s.begin() + long(u * 2 * m), 2 * m, ws.fine_slices.s.begin() + long(where[u] * 2 * m));
        std::copy_n(one.s2.begin() + long(u * m), m, ws.fine_slices.s2.begin() + long(where[u] * m));
      }
    }
  }
  estep::search_direct(x, *S.px_fine, in.inv_sigma2, float(in.scale), ws.fine_slices, ftrans, ftrans_prior, fang_prior, so,
                       ws.work, ws.fine);
  const estep::PoseResult& fine = ws.fine;
  if (!fine.valid) return res;

  // ---- weighted sums, inserted at the full orientations ----
  const estep::SearchPixels& pxs = S.px_sums ? *S.px_sums : *S.px_fine;
  std::vector<size_t> used =
      S.px_sums ? estep::direct_sums(x, pxs, in.inv_sigma2, float(in.scale), ftrans, fine, ws.work, ws.sdata, ws.sweight, 1e-5)
                : estep::pose_sums(fine, pxs.size(), ws.work, ws.sdata, ws.sweight, 1e-5);
  const size_t m = pxs.size();
  for (size_t j : used) {
    BackProjector* b = bp[fclass[j]];
    if (b)
      b->insert_pixels(pxs.kx, pxs.ky, ws.sdata.data() + j * 2 * m, ws.sweight.data() + j * m,
                       euler_to_matrix(fang[j].rot, fang[j].tilt, fang[j].psi));
  }
  res.class_weight.assign(K, 0.0);
  for (size_t j = 0; j < fine.D; ++j) res.class_weight[fclass[j]] += fine.w_dir[j];

  // ---- best (or posterior mean) pose ----
  const size_t bj = fine.best_d;
  res.cls = int(fclass[bj]);
  std::array<double, 2> bt = ftrans[fine.best_t];
  double rot = fang[bj].rot, tilt = fang[bj].tilt, psi = fang[bj].psi;
  if (S.pose_mean && !cc) {
    // The weighted average of the orientations of the best class (quaternions aligned with the
    // best one) and of the translations. With symmetry, each orientation enters as its copy A R
    // nearest the best one: the posterior may hold several copies of one pose (a particle on the
    // edge of the asymmetric unit, or one looking down a Cn axis, whose copies A Rz(360/n) are in
    // both local windows), and the mean of copies far apart is far from all of them.
    const Mat3 Mb = euler_to_matrix(rot, tilt, psi);
    const auto qb = to_quaternion(Mb);
    std::array<double, 4> qs{0, 0, 0, 0};
    for (size_t j = 0; j < fine.D; ++j) {
      const double w = fine.w_dir[j];
      if (w < 1e-6 || fclass[j] != fclass[bj]) continue;
      Mat3 Mj = euler_to_matrix(fang[j].rot, fang[j].tilt, fang[j].psi);
      if (S.symmetry && !S.symmetry->is_c1()) Mj = nearest_symmetry_copy(Mj, Mb, *S.symmetry);
      auto q = to_quaternion(Mj);
      const double dot = q[0] * qb[0] + q[1] * qb[1] + q[2] * qb[2] + q[3] * qb[3];
      for (int c = 0; c < 4; ++c) qs[size_t(c)] += (dot < 0 ? -w : w) * q[size_t(c)];
    }
    const Euler e = matrix_to_euler(from_quaternion(qs));
    rot = e.rot;
    tilt = e.tilt;
    psi = e.psi;
    bt = {0, 0};
    for (size_t t = 0; t < fine.T; ++t) {
      bt[0] += fine.w_trans[t] * ftrans[t][0];
      bt[1] += fine.w_trans[t] * ftrans[t][1];
    }
  }
  res.valid = true;
  res.rot = rot;
  res.tilt = tilt;
  res.psi = psi;
  res.trans = bt;
  res.max_posterior = fine.max_posterior;
  res.n_significant = fine.n_significant;
  res.log_likelihood = fine.log_likelihood;

  // ---- residual at the pose (noise model) and the scale correction ----
  const Projector& proj = *S.proj[size_t(res.cls)];
  res.residual = estep::pose_residual(x, *S.px_fine, in.inv_sigma2, float(in.scale), proj, rot, tilt, psi, bt);
  res.scale = in.scale;
  const auto& r0 = res.residual;
  if (S.fit_scale && !cc && r0.aa > 0 && r0.xa > 0) res.scale = std::clamp(in.scale * r0.xa / r0.aa, 0.2, 5.0);
  if (cc && r0.aa > 0 && r0.xa > 0) {
    // The first iteration puts the reference on the data's grey scale: the residuals for the noise
    // model are those at the fitted scale.
    const double ns = std::clamp(in.scale * r0.xa / r0.aa, 1e-6, 1e6);
    res.residual = estep::pose_residual(x, *S.px_fine, in.inv_sigma2, float(ns), proj, rot, tilt, psi, bt);
    res.scale = 1.0;  // after the CC iteration the new references are on the data's scale
  }
  return res;
}

}  // namespace regula::ml3d

#include "regula/estep/search3d.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/estep/matrices.hpp"
#include "regula/estep/posteriors.hpp"

namespace regula::estep {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The coarse pass: the candidate poses around the previous pose (local) or over the asymmetric
// unit (global), scored by search_poses. Fills ws.coarse and, for local searches, ws.cdirs/cpix.
struct CoarseFrame {
  bool turned = false;  // local search in the angles of B = A Q^T (near a pole of the Euler angles)
  Mat3 Q = identity3();
  bool perturbed = false;
  Mat3 P = identity3();  // Search3DSetup::perturb
  Euler prev;           // previous pose in the search frame
  Vec3 prev_dir{0, 0, 1};
  double centre_w = 0;  // 1 / (2 sigma_centre^2), 0: no centre prior
  Euler centre;         // Search3DInput's centre in the search frame
  Vec3 centre_dir{0, 0, 1};
  size_t d_per_class = 0;
  // The centre prior of a pose of the search frame (direction dir, in-plane angle psi): the sum of a
  // direction part and an in-plane part (the coarse pass applies them separately).
  double centre_dir_prior(const Vec3& dir) const {
    if (centre_w == 0) return 0;
    const double a = angle_between(centre_dir, dir);
    return -a * a * centre_w;
  }
  double centre_psi_prior(double psi) const {
    if (centre_w == 0) return 0;
    const double dp = wrap180(psi - centre.psi);
    return -dp * dp * centre_w;
  }
  double centre_prior(const Vec3& dir, double psi) const { return centre_dir_prior(dir) + centre_psi_prior(psi); }
  // Orientation of a pose (rot, tilt, psi) of the search frame (then perturbed).
  Euler map(double rot, double tilt, double psi) const {
    if (!turned && !perturbed) return Euler{rot, tilt, psi};
    Mat3 A = euler_to_matrix(rot, tilt, psi);
    if (turned) A = matmul(A, Q);
    if (perturbed) A = matmul(A, P);
    return matrix_to_euler(A);
  }
};

double class_prior(const Search3DSetup& S, size_t c) {
  return S.log_class_prior.empty() ? 0.0 : S.log_class_prior[c];
}

std::vector<double> offset_prior(const Search3DSetup& S, const Search3DInput& in,
                                 const std::vector<std::array<double, 2>>& tr) {
  std::vector<double> lp(tr.size(), 0.0);
  if (S.cross_correlation) return lp;
  for (size_t t = 0; t < tr.size(); ++t) {
    const double dx = in.ox_px + tr[t][0], dy = in.oy_px + tr[t][1];
    lp[t] = -(dx * dx + dy * dy) / (2 * S.sigma_offset2);
  }
  return lp;
}

PoseSet coarse_pass(const Search3DSetup& S, const Search3DInput& in, Search3DWork& ws, CoarseFrame& f) {
  const size_t K = size_t(S.classes);
  const double step = healpix_angular_step(S.order), sigma_ang = S.sigma_ang;
  // Local searches look around the previous pose A in its own angles, except near the poles of the
  // Euler angles (tilt 0 or 180), where one orientation has any rot with psi -/+ rot fixed: a window
  // of directions around (rot, tilt) times in-plane angles around psi holds it only for directions
  // whose rot is near A's, and the HEALPix directions nearest a pole have rot 45 + 90 k. There the
  // search runs in the angles of B = A Q^T, Q a quarter turn about y taking z to x (B's direction
  // is on the equator), and each pose B' searched is the orientation B' Q.
  const double pole_zone = std::cos(deg2rad(3 * sigma_ang + step));
  f.turned = S.local && std::abs(euler_direction(in.rot, in.tilt)[2]) > pole_zone;
  f.Q = f.turned ? axis_angle_matrix({0, 1, 0}, 90) : identity3();
  f.prev = f.turned ? matrix_to_euler(matmul(euler_to_matrix(in.rot, in.tilt, in.psi), transpose(f.Q)))
                    : Euler{in.rot, in.tilt, in.psi};
  f.prev_dir = euler_direction(f.prev.rot, f.prev.tilt);
  if (S.local && S.sigma_centre > 0) {
    f.centre_w = 1 / (2 * S.sigma_centre * S.sigma_centre);
    f.centre = f.turned ? matrix_to_euler(matmul(euler_to_matrix(in.centre_rot, in.centre_tilt, in.centre_psi),
                                                 transpose(f.Q)))
                        : Euler{in.centre_rot, in.centre_tilt, in.centre_psi};
    f.centre_dir = euler_direction(f.centre.rot, f.centre.tilt);
  }
  f.P = S.perturb;
  f.perturbed = S.perturb != identity3();

  PoseSet ps;
  ps.trans = S.trans;
  ps.log_prior_trans = offset_prior(S, in, ps.trans);
  if (!S.local) {
    ps.psi = *S.global_psi;
    ps.dirs = *S.global_dirs;
    f.d_per_class = S.global_dirs->size() / K;
    if (K > 1 && !S.log_class_prior.empty())
      for (size_t d = 0; d < S.global_dirs->size(); ++d) ps.log_prior_dir.push_back(class_prior(S, d / f.d_per_class));
    return ps;
  }
  const int J = int(std::ceil(3 * sigma_ang / step - 1e-9));
  for (int j = -J; j <= J; ++j) {
    ps.psi.push_back(wrap180(f.prev.psi + j * step));
    ps.log_prior_psi.push_back(-(j * step) * (j * step) / (2 * sigma_ang * sigma_ang) +
                               f.centre_psi_prior(ps.psi.back()));
  }
  ws.cdirs.clear();
  ws.cpix.clear();
  std::vector<double> window_prior;
  const double cos_lim = std::cos(deg2rad(3 * sigma_ang));
  for (size_t d = 0; d < S.table->v.size(); ++d) {
    const Vec3& v = S.table->v[d];
    if (f.prev_dir[0] * v[0] + f.prev_dir[1] * v[1] + f.prev_dir[2] * v[2] < cos_lim) continue;
    const double a = angle_between(f.prev_dir, v);
    ws.cdirs.push_back(S.table->rot_tilt[d]);
    ws.cpix.push_back(long(d));
    window_prior.push_back(-a * a / (2 * sigma_ang * sigma_ang) + f.centre_dir_prior(v));
  }
  if (ws.cdirs.empty()) {  // 3 sigma is always wider than a pixel; kept for safety: the nearest
    size_t best = 0;
    double ba = 1e9;
    for (size_t d = 0; d < S.table->v.size(); ++d) {
      const double a = angle_between(f.prev_dir, S.table->v[d]);
      if (a < ba) ba = a, best = d;
    }
    ws.cdirs.push_back(S.table->rot_tilt[best]);
    ws.cpix.push_back(long(best));
    window_prior.push_back(f.centre_dir_prior(S.table->v[best]));
  }
  f.d_per_class = ws.cdirs.size();
  const size_t D = f.d_per_class, m = S.px_coarse->size();
  std::vector<Euler> a;
  for (const auto& d : ws.cdirs) a.push_back(f.map(d[0], d[1], 0.0));
  // One window per class, class-major.
  ws.local_slices.d = K * D;
  ws.local_slices.m = m;
  ws.local_slices.s.resize(K * D * 2 * m);
  ws.local_slices.s2.resize(K * D * m);
  SliceCache* cache = S.table_slices;
  const size_t TD = S.table->v.size();
  if (cache && (&cache->pixels() != S.px_coarse || cache->entries() != 2 * K * TD))
    runtime_error("search_particle_3d: a window slice cache not made for this search");
  for (size_t c = 0; c < K; ++c) {
    float* s = ws.local_slices.s.data() + c * D * 2 * m;
    float* s2 = ws.local_slices.s2.data() + c * D * m;
    if (cache)
      for (size_t d = 0; d < D; ++d)
        cache->get(((f.turned ? K : 0) + c) * TD + size_t(ws.cpix[d]), *S.proj[c], a[d], s + d * 2 * m, s2 + d * m);
    else
      project_orientations(*S.proj[c], *S.px_coarse, a, s, s2);
  }
  if (K == 1) {
    ps.log_prior_dir = window_prior;
  } else {
    for (size_t c = 0; c < K; ++c)
      for (size_t d = 0; d < D; ++d) ps.log_prior_dir.push_back(window_prior[d] + class_prior(S, c));
    const auto dirs = ws.cdirs;
    const auto pix = ws.cpix;
    for (size_t c = 1; c < K; ++c) {
      ws.cdirs.insert(ws.cdirs.end(), dirs.begin(), dirs.end());
      ws.cpix.insert(ws.cpix.end(), pix.begin(), pix.end());
    }
  }
  ps.dirs = ws.cdirs;
  return ps;
}

// The fine poses: children of the significant coarse poses.
struct FinePoses {
  std::vector<Euler> ang;                     // fine orientations (full, in the map frame)
  std::vector<int> cls;                       // their class
  std::vector<double> ang_prior;              // log-prior (class + local angular), empty if none
  std::vector<uint32_t> ang_parent;           // index of the distinct coarse (p, d) pair
  std::vector<size_t> grid;                   // global searches with fine_slices: their entries
  std::vector<std::array<double, 2>> trans;   // fine translations, px
  std::vector<double> trans_prior;
  std::vector<uint32_t> trans_parent;         // index of the distinct coarse translation
  size_t n_trans_parents = 0;
};

void fine_poses(const Search3DSetup& S, const Search3DInput& in, const PoseSet& ps, const CoarseFrame& f,
                Search3DWork& ws, FinePoses& fp) {
  const PoseResult& coarse = ws.coarse;
  const size_t cT = coarse.T, cD = coarse.D;
  const int os = std::max(0, S.oversampling);
  const double step = healpix_angular_step(S.order), sigma_ang = S.sigma_ang;
  // Distinct (p, d) pairs and translations of the significant set, sorted by key.
  std::vector<uint32_t> pairs, tparents;
  for (uint32_t q : ws.sig.index) {
    const uint32_t d = q % uint32_t(cD), t = (q / uint32_t(cD)) % uint32_t(cT), p = q / uint32_t(cD * cT);
    pairs.push_back(p * uint32_t(cD) + d);
    tparents.push_back(t);
  }
  std::sort(pairs.begin(), pairs.end());
  pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
  std::sort(tparents.begin(), tparents.end());
  tparents.erase(std::unique(tparents.begin(), tparents.end()), tparents.end());
  const size_t nT = tparents.size();
  fp.n_trans_parents = nT;
  ws.allowed.assign(pairs.size() * nT, 0);
  for (uint32_t q : ws.sig.index) {
    const uint32_t d = q % uint32_t(cD), t = (q / uint32_t(cD)) % uint32_t(cT), p = q / uint32_t(cD * cT);
    const size_t qi = size_t(std::lower_bound(pairs.begin(), pairs.end(), p * uint32_t(cD) + d) - pairs.begin());
    const size_t ti = size_t(std::lower_bound(tparents.begin(), tparents.end(), t) - tparents.begin());
    ws.allowed[qi * nT + ti] = 1;
  }
  const bool with_prior = S.local || (S.classes > 1 && !S.log_class_prior.empty());
  const int npsi = 1 << os;
  for (size_t qi = 0; qi < pairs.size(); ++qi) {
    const size_t p = pairs[qi] / cD, d = pairs[qi] % cD, c = d / f.d_per_class;
    const long pix = S.local ? ws.cpix[d] : (*S.global_pix)[d];
    const std::vector<long> children = healpix_children(pix, os);
    for (size_t ci = 0; ci < children.size(); ++ci) {
      const long child = children[ci];
      const auto crt = healpix_direction(S.order + os, child);
      const Vec3 cdir = S.local ? euler_direction(crt[0], crt[1]) : Vec3{0, 0, 1};
      const double a = S.local ? angle_between(f.prev_dir, cdir) : 0.0;
      for (int b = 0; b < npsi; ++b) {
        const double psi = wrap180(ps.psi[p] - step / 2 + (b + 0.5) * step / npsi);
        fp.ang.push_back(f.map(crt[0], crt[1], psi));
        fp.cls.push_back(int(c));
        fp.ang_parent.push_back(uint32_t(qi));
        if (!S.local && S.fine_slices) fp.grid.push_back(((p * cD + d) * children.size() + ci) * size_t(npsi) + size_t(b));
        if (with_prior) {
          double lp = class_prior(S, c);
          if (S.local) {
            const double dp = wrap180(psi - f.prev.psi);
            lp += -(a * a + dp * dp) / (2 * sigma_ang * sigma_ang) + f.centre_prior(cdir, psi);
          }
          fp.ang_prior.push_back(lp);
        }
      }
    }
  }
  const int ntr = 1 << os;
  const double tstep = S.offset_step;
  for (size_t ti = 0; ti < nT; ++ti) {
    const auto& t0 = ps.trans[tparents[ti]];
    for (int ax = 0; ax < ntr; ++ax)
      for (int ay = 0; ay < ntr; ++ay) {
        fp.trans.push_back({t0[0] - tstep / 2 + (ax + 0.5) * tstep / ntr, t0[1] - tstep / 2 + (ay + 0.5) * tstep / ntr});
        fp.trans_parent.push_back(uint32_t(ti));
      }
  }
  fp.trans_prior = offset_prior(S, in, fp.trans);
}

// Scores of every fine pose, [t][j] (T_f x J_f), by blocks of orientations; A1 per orientation.
// The projections are kept (ws.block holds all of them) when they fit in kKeepProjections floats,
// for the residuals of the significant poses; else blocks of about 2 M floats are reused.
constexpr size_t kKeepProjections = size_t(16) << 20;  // floats (64 MB per thread)

bool score_fine(const Search3DSetup& S, const Search3DInput& in, const FinePoses& fp, Search3DWork& ws) {
  const SearchPixels& px = in.ref_fine ? *in.ref_fine : *S.px_fine;  // where the references are projected
  const size_t m = px.size(), T = fp.trans.size(), J = fp.ang.size();
  ws.score.resize(T * J);
  ws.a1.resize(J);
  const bool keep = J * 3 * m <= kKeepProjections;
  // The fine poses of a global search are on the iteration's grid (fp.grid): shared slices, when the
  // cache was made for these pixels (not for another group's pixel set or a magnified particle's).
  SliceCache* cache = (!S.local && !S.fixed_pose && S.fine_slices && &S.fine_slices->pixels() == &px) ? S.fine_slices : nullptr;
  const size_t block = keep ? std::max<size_t>(J, 1)
                            : std::clamp<size_t>((size_t(1) << 21) / std::max<size_t>(2 * m, 1), 8, std::max<size_t>(J, 8));
  for (size_t j0 = 0; j0 < J; j0 += block) {
    const size_t j1 = std::min(J, j0 + block), nb = j1 - j0;
    ws.block.d = nb;
    ws.block.m = m;
    ws.block.s.resize(nb * 2 * m);
    ws.block.s2.resize(nb * m);
    if (cache) {
      for (size_t j = j0; j < j1; ++j)
        cache->get(fp.grid[j], *S.proj[size_t(fp.cls[j])], fp.ang[j], ws.block.s.data() + (j - j0) * 2 * m,
                   ws.block.s2.data() + (j - j0) * m);
    } else {
      for (size_t ja = j0; ja < j1;) {  // runs of one class
        size_t jb = ja + 1;
        while (jb < j1 && fp.cls[jb] == fp.cls[ja]) ++jb;
        project_orientations(*S.proj[size_t(fp.cls[ja])], px, std::span<const Euler>(fp.ang.data() + ja, jb - ja),
                             ws.block.s.data() + (ja - j0) * 2 * m, ws.block.s2.data() + (ja - j0) * m);
        ja = jb;
      }
    }
    detail::sgemm(false, true, T, nb, 2 * m, ws.work.q.data(), 2 * m, ws.block.s.data(), 2 * m, 0.0f,
                  ws.score.data() + j0, J);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(nb), int(m), 1.0f, ws.block.s2.data(), int(m), ws.work.b.data(), 1,
                0.0f, ws.a1.data() + j0, 1);
  }
  return keep;
}

// The weighted residuals of the significant fine poses (noise, scale, offsets) and their sums.
void residual_sums(const Search3DSetup& S, const Search3DInput& in, const FinePoses& fp,
                   const std::vector<uint32_t>& js, const std::vector<uint32_t>& ts, bool kept, Search3DWork& ws,
                   Search3DResult& res) {
  const SearchPixels& px = *S.px_fine;
  const SearchPixels& ref_px = in.ref_fine ? *in.ref_fine : px;  // where the references are projected
  const size_t m = px.size(), nj = js.size(), nt = ts.size();
  const int n = px.n, r = px.r_max;
  // Projections of the significant orientations.
  ws.sig_slices.d = nj;
  ws.sig_slices.m = m;
  ws.sig_slices.s.resize(nj * 2 * m);
  ws.sig_slices.s2.resize(nj * m);
  for (size_t u = 0; u < nj; ++u) {
    if (kept) {  // the scoring's projections, all of them in ws.block
      std::copy_n(ws.block.s.data() + size_t(js[u]) * 2 * m, 2 * m, ws.sig_slices.s.data() + u * 2 * m);
      std::copy_n(ws.block.s2.data() + size_t(js[u]) * m, m, ws.sig_slices.s2.data() + u * m);
    } else {
      project_orientation(*S.proj[size_t(fp.cls[js[u]])], ref_px, fp.ang[js[u]], ws.sig_slices.s.data() + u * 2 * m,
                          ws.sig_slices.s2.data() + u * m);
    }
  }
  // qsum_t = sum_j w_tj P_j (nt x 2m), gsum = sum_j w_j |P_j|^2 (m).
  std::vector<float> wj(nj, 0.0f);
  for (size_t a = 0; a < nt; ++a)
    for (size_t u = 0; u < nj; ++u) wj[u] += ws.wmat[a * nj + u];
  ws.qsum.resize(nt * 2 * m);
  ws.gsum.resize(m);
  detail::sgemm(false, false, nt, 2 * m, nj, ws.wmat.data(), nj,
                ws.sig_slices.s.data(), 2 * m, 0.0f, ws.qsum.data(), 2 * m);
  cblas_sgemv(CblasRowMajor, CblasTrans, int(nj), int(m), 1.0f, ws.sig_slices.s2.data(), int(m), wj.data(), 1, 0.0f,
              ws.gsum.data(), 1);
  // Xbar(k) = sum_t conj(phase_t(k)) qsum_t(k), phase_t(k) = exp(-2 pi i k.t / n).
  std::vector<std::complex<double>> xbar(m, {0.0, 0.0});
  std::vector<std::complex<double>> ex(size_t(r + 1)), ey(size_t(2 * r + 1));
  const double two_pi_n = 2.0 * std::numbers::pi / n;
  double wsum = 0;
  res.offset2 = 0;
  for (size_t a = 0; a < nt; ++a) {
    const auto& t = fp.trans[ts[a]];
    double wt = 0;
    for (size_t u = 0; u < nj; ++u) wt += ws.wmat[a * nj + u];
    wsum += wt;
    const double dx = in.ox_px + t[0], dy = in.oy_px + t[1];
    res.offset2 += wt * (dx * dx + dy * dy);
    for (int k = 0; k <= r; ++k) ex[size_t(k)] = std::polar(1.0, two_pi_n * k * t[0]);
    for (int k = -r; k <= r; ++k) ey[size_t(k + r)] = std::polar(1.0, two_pi_n * k * t[1]);
    const float* qs = ws.qsum.data() + a * 2 * m;
    for (size_t q = 0; q < m; ++q)
      xbar[q] += ex[size_t(px.kx[q])] * ey[size_t(int(px.ky[q]) + r)] * std::complex<double>(qs[2 * q], qs[2 * q + 1]);
  }
  res.weight_sum = wsum;
  const double s = in.scale;
  res.diff2.assign(size_t(n / 2 + 1), 0.0);
  res.xa = res.aa = 0;
  for (size_t q = 0; q < m; ++q) {
    const std::complex<double> X(ws.work.xr[q]);
    const double C = ws.work.cr[q], G = ws.gsum[q];
    const double xr = X.real() * xbar[q].real() + X.imag() * xbar[q].imag();  // Re(conj(X) Xbar)
    const int sh = px.shell[q];
    res.diff2[size_t(sh)] += wsum * std::norm(X) - 2 * s * C * xr + s * s * C * C * G;
    if (S.scale_shells.empty() || (size_t(sh) < S.scale_shells.size() && S.scale_shells[size_t(sh)])) {
      res.xa += C * xr;
      res.aa += C * C * G;
    }
  }
}

// The posterior-mean (or best) pose of the significant fine poses.
void pose_estimate(const Search3DSetup& S, const FinePoses& fp, const std::vector<uint32_t>& js,
                   const std::vector<uint32_t>& ts, const Search3DWork& ws, size_t best_j, size_t best_t,
                   Search3DResult& res) {
  const Euler& b = fp.ang[best_j];
  res.rot = b.rot;
  res.tilt = b.tilt;
  res.psi = b.psi;
  res.trans = fp.trans[best_t];
  if (!S.pose_mean || S.cross_correlation) return;
  const size_t nj = js.size(), nt = ts.size();
  // Quaternions aligned with the best one; with symmetry each orientation enters as its copy A R
  // nearest the best one (the posterior may hold several copies of one pose, and the mean of copies
  // far apart is far from all of them). Only orientations of the best class.
  const Mat3 Mb = euler_to_matrix(b.rot, b.tilt, b.psi);
  const auto qb = to_quaternion(Mb);
  std::array<double, 4> qs{0, 0, 0, 0};
  std::array<double, 2> tm{0, 0};
  double tw = 0;
  for (size_t u = 0; u < nj; ++u) {
    double w = 0;
    for (size_t a = 0; a < nt; ++a) w += ws.wmat[a * nj + u];
    if (w <= 0 || fp.cls[js[u]] != fp.cls[best_j]) continue;
    const Euler& e = fp.ang[js[u]];
    Mat3 Mj = euler_to_matrix(e.rot, e.tilt, e.psi);
    if (S.symmetry && !S.symmetry->is_c1()) Mj = nearest_symmetry_copy(Mj, Mb, *S.symmetry);
    const auto q = to_quaternion(Mj);
    const double dot = q[0] * qb[0] + q[1] * qb[1] + q[2] * qb[2] + q[3] * qb[3];
    for (int c = 0; c < 4; ++c) qs[size_t(c)] += (dot < 0 ? -w : w) * q[size_t(c)];
  }
  for (size_t a = 0; a < nt; ++a) {
    double w = 0;
    for (size_t u = 0; u < nj; ++u) w += ws.wmat[a * nj + u];
    tm[0] += w * fp.trans[ts[a]][0];
    tm[1] += w * fp.trans[ts[a]][1];
    tw += w;
  }
  const Euler e = matrix_to_euler(from_quaternion(qs));
  res.rot = e.rot;
  res.tilt = e.tilt;
  res.psi = e.psi;
  if (tw > 0) res.trans = {tm[0] / tw, tm[1] / tw};
}

}  // namespace

SliceCache::SliceCache(size_t entries, const SearchPixels& px, size_t max_bytes)
    : entries_(entries), px_(px), max_bytes_(max_bytes), state_(new std::atomic<uint8_t>[entries]),
      data_(new std::unique_ptr<float[]>[entries]) {
  for (size_t i = 0; i < entries; ++i) state_[i].store(0, std::memory_order_relaxed);
}

void SliceCache::get(size_t i, const Projector& proj, const Euler& a, float* s, float* s2) {
  const SearchPixels& px = px_;
  const size_t m = px.size();
  if (i >= entries_) runtime_error("SliceCache: entry {} of {}", i, entries_);
  auto copy_out = [&](const float* v) {
    std::copy_n(v, 2 * m, s);
    std::copy_n(v + 2 * m, m, s2);
  };
  if (state_[i].load(std::memory_order_acquire) == 2) return copy_out(data_[i].get());
  uint8_t expected = 0;
  const size_t bytes = 3 * m * sizeof(float);
  if (state_[i].compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    if (bytes_.fetch_add(bytes, std::memory_order_relaxed) + bytes <= max_bytes_) {
      data_[i].reset(new float[3 * m]);
      project_orientation(proj, px, a, data_[i].get(), data_[i].get() + 2 * m);
      state_[i].store(2, std::memory_order_release);
      return copy_out(data_[i].get());
    }
    bytes_.fetch_sub(bytes, std::memory_order_relaxed);
    bound_.store(true, std::memory_order_relaxed);
    state_[i].store(0, std::memory_order_release);
  }
  project_orientation(proj, px, a, s, s2);  // being made by another thread, or over the bound
}

void search_particle_3d(const Search3DSetup& S, const Search3DInput& in, Search3DWork& ws, SliceSink* sink,
                        Search3DResult& res) {
  set_blas_single_threaded();
  res = Search3DResult();
  const size_t K = size_t(S.classes);
  const RotatableParticle& x = *in.x;
  const bool cc = S.cross_correlation;
  if (S.oversampling < 0 || S.oversampling > 3) runtime_error("search_particle_3d: oversampling {}", S.oversampling);
  SearchOptions so;
  so.cross_correlation = cc;
  so.significant_fraction = S.adaptive_fraction;

  FinePoses fp;
  if (S.fixed_pose) {
    // ---- no alignment: the classes at the current pose ----
    for (size_t c = 0; c < K; ++c) {
      fp.ang.push_back({in.rot, in.tilt, in.psi});
      fp.cls.push_back(int(c));
      fp.ang_parent.push_back(0);
      if (!S.log_class_prior.empty()) fp.ang_prior.push_back(class_prior(S, c));
    }
    fp.trans = {{0.0, 0.0}};
    fp.trans_parent = {0};
    fp.n_trans_parents = 1;
    fp.trans_prior = {0.0};
    ws.allowed.assign(1, 1);
    res.n_significant = K;
  } else {
    // ---- 1. coarse pass ----
    CoarseFrame frame;
    const PoseSet ps = coarse_pass(S, in, ws, frame);
    const Slices& cslices = S.local ? ws.local_slices : *S.global_slices;
    search_poses(x, *S.px_coarse, in.inv_sigma2, float(in.scale), cslices, ps, so, ws.work, ws.coarse);
    const PoseResult& coarse = ws.coarse;
    if (!coarse.valid) return;
    // ---- 2. significant coarse poses ----
    if (cc) {
      ws.sig.index = {uint32_t((coarse.best_p * coarse.T + coarse.best_t) * coarse.D + coarse.best_d)};
      ws.sig.mass = 1;
      ws.sig.bound = false;
    } else {
      double total = 0;
      for (float w : coarse.weight) total += w;
      significant_set(coarse.weight, total, S.adaptive_fraction, S.max_significants, ws.sig);
    }
    res.n_significant = ws.sig.index.size();
    res.significance_bound = ws.sig.bound;
    // ---- 3. fine pass: the children of the significant poses ----
    fine_poses(S, in, ps, frame, ws, fp);
  }
  const size_t T = fp.trans.size(), J = fp.ang.size(), nT = fp.n_trans_parents;
  prepare_direct(x, *S.px_fine, in.inv_sigma2, float(in.scale), fp.trans, ws.work);
  const bool kept = score_fine(S, in, fp, ws);
  ws.v.resize(T * J);
  double mx = kNegInf;
  size_t arg = 0, n_fine = 0;
  for (size_t t = 0; t < T; ++t) {
    const size_t tp = fp.trans_parent[t];
    const double lpt = cc ? 0.0 : fp.trans_prior[t];
    for (size_t j = 0; j < J; ++j) {
      double v = kNegInf;
      if (ws.allowed[size_t(fp.ang_parent[j]) * nT + tp]) {
        ++n_fine;
        const double a2 = ws.score[t * J + j], a1 = ws.a1[j];
        if (cc)
          v = a1 > 0 ? a2 / std::sqrt(a1) : kNegInf;
        else
          v = a2 - 0.5 * a1 + lpt + (fp.ang_prior.empty() ? 0.0 : fp.ang_prior[j]);
        if (!std::isfinite(v)) v = kNegInf;
      }
      ws.v[t * J + j] = v;
      if (v > mx) {
        mx = v;
        arg = t * J + j;
      }
    }
  }
  if (!std::isfinite(mx)) return;
  res.n_fine = n_fine;
  ws.fweight.assign(T * J, 0.0f);
  if (cc) {
    ws.fweight[arg] = 1.0f;
    res.max_posterior = 1;
    res.log_likelihood = mx;
    ws.fine_sig.index = {uint32_t(arg)};
  } else {
    const double sum = exp_relative(ws.v, mx);
    for (size_t q = 0; q < T * J; ++q) {
      const double e = ws.v[q] / sum;
      ws.fweight[q] = e < double(std::numeric_limits<float>::min()) ? 0.0f : float(e);
    }
    res.max_posterior = 1.0 / sum;
    res.log_likelihood = mx + std::log(sum);
    significant_set(ws.fweight, 1.0, S.adaptive_fraction, 0, ws.fine_sig);
  }
  res.n_fine_significant = ws.fine_sig.index.size();
  res.class_weight.assign(K, 0.0);
  for (size_t t = 0; t < T; ++t)
    for (size_t j = 0; j < J; ++j) res.class_weight[size_t(fp.cls[j])] += ws.fweight[t * J + j];

  // ---- 4. sums over the significant fine poses ----
  std::vector<uint32_t> js, ts;
  for (uint32_t q : ws.fine_sig.index) {
    ts.push_back(q / uint32_t(J));
    js.push_back(q % uint32_t(J));
  }
  std::sort(js.begin(), js.end());
  js.erase(std::unique(js.begin(), js.end()), js.end());
  std::sort(ts.begin(), ts.end());
  ts.erase(std::unique(ts.begin(), ts.end()), ts.end());
  const size_t nj = js.size(), nt = ts.size();
  ws.wmat.assign(nt * nj, 0.0f);
  for (uint32_t q : ws.fine_sig.index) {
    const size_t a = size_t(std::lower_bound(ts.begin(), ts.end(), q / uint32_t(J)) - ts.begin());
    const size_t u = size_t(std::lower_bound(js.begin(), js.end(), q % uint32_t(J)) - js.begin());
    ws.wmat[a * nj + u] = ws.fweight[q];
  }
  residual_sums(S, in, fp, js, ts, kept, ws, res);
  pose_estimate(S, fp, js, ts, ws, arg % J, arg / J, res);
  res.cls = fp.cls[arg % J];
  res.valid = true;

  if (!sink) return;
  // Weighted slices: data_j = sum_t w_tj Q_t, weight_j = (sum_t w_tj) B, at the pixels of the sums.
  const SearchPixels& pxs = S.px_sums ? *S.px_sums : *S.px_fine;
  const SearchPixels& ref_pxs = S.px_sums ? (in.ref_sums ? *in.ref_sums : pxs) : (in.ref_fine ? *in.ref_fine : pxs);
  std::vector<std::array<double, 2>> tsig(nt);
  for (size_t a = 0; a < nt; ++a) tsig[a] = fp.trans[ts[a]];
  prepare_direct(in.x_sums ? *in.x_sums : x, pxs, in.inv_sigma2_sums.empty() ? in.inv_sigma2 : in.inv_sigma2_sums,
                 float(in.scale), tsig, ws.work, true);
  const size_t ms = pxs.size();
  ws.sdata.resize(nj * 2 * ms);
  ws.sweight.resize(nj * ms);
  detail::sgemm(true, false, nj, 2 * ms, nt, ws.wmat.data(), nj,
                ws.work.q.data(), 2 * ms, 0.0f, ws.sdata.data(), 2 * ms);
  std::vector<Mat3> A(nj);
  for (size_t u = 0; u < nj; ++u) {
    float wj = 0;
    for (size_t a = 0; a < nt; ++a) wj += ws.wmat[a * nj + u];
    float* o = ws.sweight.data() + u * ms;
    for (size_t q = 0; q < ms; ++q) o[q] = wj * ws.work.b[q];
    const Euler& e = fp.ang[js[u]];
    A[u] = euler_to_matrix(e.rot, e.tilt, e.psi);
  }
  // One call per class over its consecutive run of orientations (js is sorted; classes interleave
  // only in multi-class searches).
  for (size_t u0 = 0; u0 < nj;) {
    size_t u1 = u0 + 1;
    while (u1 < nj && fp.cls[js[u1]] == fp.cls[js[u0]]) ++u1;
    sink->insert_many(fp.cls[js[u0]], ref_pxs.kx, ref_pxs.ky, ws.sdata.data() + u0 * 2 * ms, ws.sweight.data() + u0 * ms,
                      std::span<const Mat3>(A.data() + u0, u1 - u0));
    u0 = u1;
  }
}

}  // namespace regula::estep

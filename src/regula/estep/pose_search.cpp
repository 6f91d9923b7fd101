#include "regula/estep/pose_search.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/estep/matrices.hpp"
#include "regula/estep/posteriors.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/core/grid.hpp"

namespace regula::estep {

int coarse_limit_shells(int n, double angpix, double diameter_A, double step_deg, double keepsafe) {
  const double rotated = step_deg / 360.0 * kPi * diameter_A;  // Å moved by one step at the edge
  return int(std::ceil(n * angpix / (rotated / keepsafe)));
}

SearchPixels search_pixels(int n, int r_max) {
  SearchPixels px;
  px.n = n;
  px.r_max = r_max;
  for (int ky = -r_max; ky <= r_max; ++ky)
    for (int kx = 0; kx <= r_max; ++kx) {
      if (kx == 0 && ky <= 0) continue;
      const int s = int(std::lround(std::sqrt(double(kx * kx + ky * ky))));
      if (s < 1 || s > r_max || s > n / 2) continue;
      px.kx.push_back(float(kx));
      px.ky.push_back(float(ky));
      px.shell.push_back(s);
    }
  return px;
}

RotatableParticle::RotatableParticle(const Image& in, double dx_px, double dy_px, std::optional<ParticleOptics> optics)
    : RotatableParticle(in, dx_px, dy_px, std::move(optics), true) {}

RotatableParticle::RotatableParticle(const Image& in, double dx_px, double dy_px, std::optional<ParticleOptics> optics,
                                     PlainOnly)
    : RotatableParticle(in, dx_px, dy_px, std::move(optics), false) {}

RotatableParticle::RotatableParticle(const Image& in, double dx_px, double dy_px, std::optional<ParticleOptics> optics,
                                     bool padded)
    : n_(in.nx()), optics_(std::move(optics)) {
  const int n = n_, N2 = kPad * n;
  if (optics_ && optics_->group().box != n)
    runtime_error("RotatableParticle: a {} px image with the model of optics group {} ({} px)", n,
                  optics_->group().number, optics_->group().box);
  if (optics_ && optics_->group().maps_to_reference()) {
    const Mat2& T = optics_->group().to_reference;
    const double det = T[0][0] * T[1][1] - T[0][1] * T[1][0];
    mapped_ = true;
    to_image_ = {{{T[1][1] / det, -T[0][1] / det}, {-T[1][0] / det, T[0][0] / det}}};
  }
  // The aberration phase is removed from the image's own transform (RELION's order); the
  // padded transform below is then that of the corrected image.
  Image corrected;
  if (optics_ && optics_->group().has_phase()) {
    G_ = fourier_centred(in);
    optics_->group().demodulate(G_);
    corrected = from_fourier_centred(G_, n);
  }
  const Image& img = corrected.empty() ? in : corrected;
  if (padded) {
    Image big(N2, N2);
    const int off = N2 / 2 - n / 2;  // the image centre n/2 goes to the padded centre
    // Bilinear interpolation of the padded transform multiplies the image by the transform of the
    // triangle kernel, sinc^2(pi x / N2) sinc^2(pi y / N2) (x, y from the centre); dividing by it
    // first (as the projector does for its maps) makes interpolated values unbiased.
    std::vector<double> corr(static_cast<size_t>(n));
    for (int x = 0; x < n; ++x) {
      const double a = kPi * double(x - n / 2) / N2;
      corr[size_t(x)] = a == 0 ? 1.0 : (std::sin(a) / a) * (std::sin(a) / a);
    }
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) big(x + off, y + off) = float(img(x, y) / (corr[size_t(x)] * corr[size_t(y)]));
    F_ = fourier_centred(big);
    if (dx_px != 0 || dy_px != 0) shift_phase(F_, dx_px, dy_px, N2);
  }
  // On-grid values (residuals, power spectrum) from the plain transform.
  if (corrected.empty()) G_ = fourier_centred(img);
  if (dx_px != 0 || dy_px != 0) shift_phase(G_, dx_px, dy_px, n);
  power_.assign(size_t(n / 2 + 1), 0.0);
  const int h = n / 2;
  for (int ky = -h; ky < h; ++ky)
    for (int kx = 0; kx <= h; ++kx) {
      if (kx == 0 && ky <= 0) continue;
      const int s = int(std::lround(std::sqrt(double(kx * kx + ky * ky))));
      if (s > h) continue;
      power_[size_t(s)] += std::norm(G_(kx, fft_index(ky, n)));
    }
}

cfloat RotatableParticle::value(double kx, double ky) const {
  if (F_.empty()) runtime_error("RotatableParticle::value: a plain-only particle has no interpolation grid");
  double px = kPad * kx, py = kPad * ky;
  bool conj = false;
  if (px < 0) {
    px = -px;
    py = -py;
    conj = true;
  }
  const int N2 = kPad * n_, h = N2 / 2;
  const int x0 = int(std::floor(px)), y0 = int(std::floor(py));
  const float fx = float(px - x0), fy = float(py - y0);
  auto at = [&](int x, int y) -> cfloat {
    if (x > h || y < -h || y >= h) return {0.0f, 0.0f};
    return F_(x, fft_index(y, N2));
  };
  const cfloat a = at(x0, y0) + fx * (at(x0 + 1, y0) - at(x0, y0));
  const cfloat b = at(x0, y0 + 1) + fx * (at(x0 + 1, y0 + 1) - at(x0, y0 + 1));
  const cfloat v = a + fy * (b - a);
  return conj ? std::conj(v) : v;
}

cfloat RotatableParticle::on_grid(int kx, int ky) const {
  if (kx < 0) return std::conj(on_grid(-kx, -ky));
  if (kx > n_ / 2 || ky < -n_ / 2 || ky >= n_ / 2) return {0.0f, 0.0f};
  return G_(kx, fft_index(ky, n_));
}

cfloat RotatableParticle::reference_value(double qx, double qy) const {
  if (!mapped_) return value(qx, qy);
  return value(to_image_[0][0] * qx + to_image_[0][1] * qy, to_image_[1][0] * qx + to_image_[1][1] * qy);
}

float RotatableParticle::reference_ctf(double qx, double qy) const {
  if (!mapped_) return ctf(qx, qy);
  return ctf(to_image_[0][0] * qx + to_image_[0][1] * qy, to_image_[1][0] * qx + to_image_[1][1] * qy);
}

int RotatableParticle::image_shell(double qx, double qy) const {
  const double kx = to_image_[0][0] * qx + to_image_[0][1] * qy, ky = to_image_[1][0] * qx + to_image_[1][1] * qy;
  const int s = int(std::lround(std::sqrt(kx * kx + ky * ky)));
  return s > n_ / 2 ? -1 : s;
}

double RotatableParticle::reference_density() const {
  return std::abs(to_image_[0][0] * to_image_[1][1] - to_image_[0][1] * to_image_[1][0]);
}

float RotatableParticle::ctf(double kx, double ky) const {
  return optics_ ? optics_->predicted(optics_->ctf_value_float(kx, ky)) : 1.0f;
}

namespace {

// Pixels [q0, q1) of one projection (s, s2: the whole rows).
void project_pixels(const FourierLattice& lat, const SearchPixels& px, const CentralSlice& c, double lim2, size_t q0,
                    size_t q1, float* s, float* s2) {
  for (size_t q = q0; q < q1; ++q) {
    const double x = px.kx[q], y = px.ky[q];
    const cfloat v = x * x + y * y > lim2
                         ? cfloat(0.0f, 0.0f)
                         : lat.interpolate(c.m00 * x + c.m01 * y, c.m10 * x + c.m11 * y, c.m20 * x + c.m21 * y);
    s[2 * q] = v.real();
    s[2 * q + 1] = v.imag();
    s2[q] = std::norm(v);
  }
}

}  // namespace

void project_orientations(const Projector& proj, const SearchPixels& px, std::span<const Euler> angles, float* s,
                          float* s2) {
  const size_t m = px.size(), J = angles.size();
  const FourierLattice& lat = proj.lattice();
  // Pixels beyond the projector's limit (only reference-frame pixels T k of a magnified group can
  // be) have no reference there: 0, as the back-projector skips them.
  const double lim2 = (proj.r_max() + 0.5) * (proj.r_max() + 0.5);
  std::vector<CentralSlice> maps;
  maps.reserve(J);
  for (const Euler& e : angles) maps.emplace_back(euler_to_matrix(e.rot, e.tilt, e.psi), double(proj.padding()));
  // Pixel blocks outer, orientations inner: nearby orientations (a local search's) read nearby
  // lattice points, which stay in cache for the next orientation (measured with the inline
  // interpolation: the E-step of the apoferritin final iteration 94 s -> 65 s).
  constexpr size_t kBlock = 64;
  for (size_t q0 = 0; q0 < m; q0 += kBlock)
    for (size_t j = 0; j < J; ++j)
      project_pixels(lat, px, maps[j], lim2, q0, std::min(m, q0 + kBlock), s + j * 2 * m, s2 + j * m);
}

void project_orientation(const Projector& proj, const SearchPixels& px, const Euler& angle, float* s, float* s2) {
  project_orientations(proj, px, std::span<const Euler>(&angle, 1), s, s2);
}

void project_orientations(const Projector& proj, const SearchPixels& px, std::span<const Euler> angles, Slices& out) {
  const size_t m = px.size(), J = angles.size();
  out.d = J;
  out.m = m;
  out.s.resize(J * 2 * m);
  out.s2.resize(J * m);
  project_orientations(proj, px, angles, out.s.data(), out.s2.data());
}

void project_slices(const Projector& proj, const SearchPixels& px, std::span<const std::array<double, 2>> rot_tilt,
                    Slices& out) {
  std::vector<Euler> angles(rot_tilt.size());
  for (size_t d = 0; d < rot_tilt.size(); ++d) angles[d] = {rot_tilt[d][0], rot_tilt[d][1], 0.0};
  project_orientations(proj, px, angles, out);
}

namespace {

// Rotated particle quantities for each in-plane angle: X(R k'), C(R k').
void rotate_particle(const RotatableParticle& x, const SearchPixels& px, std::span<const double> psi, SearchWork& w) {
  const size_t m = px.size(), P = psi.size();
  w.xr.resize(P * m);
  w.cr.resize(P * m);
  for (size_t p = 0; p < P; ++p) {
    const double c = std::cos(deg2rad(psi[p])), s = std::sin(deg2rad(psi[p]));
    for (size_t q = 0; q < m; ++q) {
      const double kx = c * px.kx[q] + s * px.ky[q], ky = -s * px.kx[q] + c * px.ky[q];
      w.xr[p * m + q] = x.reference_value(kx, ky);
      w.cr[p * m + q] = x.reference_ctf(kx, ky);
    }
  }
}

// Runs of a pixel list: consecutive pixels of one row ky whose kx grows by 1 (search_pixels'
// order), so that a translation's phase exp(-2 pi i (kx tx + ky ty) / n) is a row factor times a
// contiguous stretch of the kx table.
struct PixelRun {
  int ky = 0, kx0 = 0;
  size_t q0 = 0, len = 0;
};

std::vector<PixelRun> pixel_runs(const SearchPixels& px) {
  std::vector<PixelRun> runs;
  for (size_t q = 0; q < px.size(); ++q) {
    const int kx = int(px.kx[q]), ky = int(px.ky[q]);
    if (!runs.empty() && runs.back().ky == ky && runs.back().kx0 + int(runs.back().len) == kx)
      ++runs.back().len;
    else
      runs.push_back({ky, kx, q, 1});
  }
  return runs;
}

// out(k) = g(k) exp(-2 pi i k.t / n) for the pixels of `runs`: ex[kx] = exp(-2 pi i kx tx / n)
// for kx in [0, r], ey[ky + r] likewise for ky in [-r, r]. Interleaved complex floats, written
// as real arithmetic so that the loop vectorises (std::complex<float> products check for NaN).
void shifted_row(const float* g, std::span<const PixelRun> runs, const cfloat* ex, const cfloat* ey, int r,
                 float* out) {
  const float* exf = reinterpret_cast<const float*>(ex);
  for (const PixelRun& run : runs) {
    const cfloat y = ey[size_t(run.ky + r)];
    const float yr = y.real(), yi = y.imag();
    const float* e = exf + 2 * size_t(run.kx0);
    const float* a = g + 2 * run.q0;
    float* o = out + 2 * run.q0;
    for (size_t i = 0; i < run.len; ++i) {
      const float pr = e[2 * i] * yr - e[2 * i + 1] * yi, pi = e[2 * i] * yi + e[2 * i + 1] * yr;
      o[2 * i] = a[2 * i] * pr - a[2 * i + 1] * pi;
      o[2 * i + 1] = a[2 * i] * pi + a[2 * i + 1] * pr;
    }
  }
}

}  // namespace

namespace {

void posterior_from_scores(size_t P, size_t T, size_t D, std::span<const double> log_prior_psi,
                           std::span<const double> log_prior_trans, std::span<const double> log_prior_dir,
                           const SearchOptions& opt, SearchWork& w, PoseResult& out) {
  const size_t PT = P * T;
  out.P = P;
  out.T = T;
  out.D = D;
  const size_t J = PT * D;
  w.v.resize(J);
  double mx = -INFINITY;
  size_t arg = 0;
  for (size_t p = 0; p < P; ++p)
    for (size_t t = 0; t < T; ++t) {
      const double lp = (log_prior_psi.empty() ? 0.0 : log_prior_psi[p]) +
                        (log_prior_trans.empty() ? 0.0 : log_prior_trans[t]);
      const float* a2 = w.a2.data() + (p * T + t) * D;
      const float* a1 = w.a1.data() + p * D;
      double* v = w.v.data() + (p * T + t) * D;
      for (size_t d = 0; d < D; ++d) {
        double s;
        if (opt.cross_correlation) {
          s = a1[d] > 0 ? double(a2[d]) / std::sqrt(double(a1[d])) : -INFINITY;
        } else {
          s = double(a2[d]) - 0.5 * double(a1[d]) + lp + (log_prior_dir.empty() ? 0.0 : log_prior_dir[d]);
        }
        if (!std::isfinite(s)) s = -INFINITY;
        v[d] = s;
        if (s > mx) {
          mx = s;
          arg = (p * T + t) * D + d;
        }
      }
    }
  out.weight.assign(J, 0.0f);
  out.w_psi.assign(P, 0.0);
  out.w_trans.assign(T, 0.0);
  out.w_dir.assign(D, 0.0);
  out.valid = std::isfinite(mx);
  if (!out.valid) return;
  out.best_d = arg % D;
  out.best_t = (arg / D) % T;
  out.best_p = arg / D / T;
  if (opt.cross_correlation) {
    out.weight[arg] = 1.0f;
    out.max_posterior = 1;
    out.n_significant = 1;
    out.log_likelihood = mx;
    out.w_dir[out.best_d] = out.w_psi[out.best_p] = out.w_trans[out.best_t] = 1;
    return;
  }
  const double sum = exp_relative(w.v, mx);
  out.log_likelihood = mx + std::log(sum);
  out.max_posterior = 1.0 / sum;
  // Weights (below 1e-30: 0), their marginals, and the weights above 1e-9 of the maximum, from
  // which the smallest number of poses holding the significant fraction. Most poses are far below
  // the best one: exp_relative left them 0, and they are skipped (adding 0 changes no sum).
  std::vector<float> sorted;
  sorted.reserve(256);
  const float floor = float(1e-9 / sum);
  for (size_t p = 0; p < P; ++p)
    for (size_t t = 0; t < T; ++t) {
      const double* vr = w.v.data() + (p * T + t) * D;
      float* wr = out.weight.data() + (p * T + t) * D;
      double s = 0;
      for (size_t d = 0; d < D; ++d) {
        if (vr[d] == 0) continue;
        const double e = vr[d] / sum;
        if (e < 1e-30) continue;
        const float f = float(e);
        wr[d] = f;
        s += f;
        out.w_dir[d] += f;
        if (f > floor) sorted.push_back(f);
      }
      out.w_psi[p] += s;
      out.w_trans[t] += s;
    }
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  double acc = 0;
  size_t cnt = 0;
  for (float e : sorted) {
    acc += e;
    ++cnt;
    if (acc >= opt.significant_fraction) break;
  }
  out.n_significant = std::max<size_t>(cnt, 1);
}

}  // namespace

void search_poses(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2, float scale,
                  const Slices& slices, const PoseSet& poses, const SearchOptions& opt, SearchWork& w,
                  PoseResult& out) {
  set_blas_single_threaded();
  const size_t m = px.size(), P = poses.psi.size(), T = poses.trans.size(), D = slices.d;
  if (slices.m != m || poses.dirs.size() != D)
    runtime_error("search_poses: {} slices of {} pixels for {} directions and {} pixels", D, slices.m,
                  poses.dirs.size(), m);
  const size_t PT = P * T;
  rotate_particle(x, px, poses.psi, w);
  const int n = px.n, r = px.r_max;
  // B rows and Q rows.
  w.b.resize(P * m);
  w.q.resize(PT * 2 * m);
  std::vector<cfloat> ex(size_t(r + 1)), ey(size_t(2 * r + 1));
  const double two_pi_n = 2.0 * std::numbers::pi / n;
  // Per-pixel noise weights: the pixel's shell, or for a mapped particle the image shell it reads
  // (rotated: R k') times the image pixels per reference pixel (RotatableParticle::image_shell).
  std::vector<float> iw(m), g(2 * m);
  const std::vector<PixelRun> runs = pixel_runs(px);
  const float density = x.mapped() ? float(x.reference_density()) : 1.0f;
  for (size_t p = 0; p < P; ++p) {
    const double c = std::cos(deg2rad(poses.psi[p])), s = std::sin(deg2rad(poses.psi[p]));
    float* b = w.b.data() + p * m;
    for (size_t q = 0; q < m; ++q) {
      if (x.mapped()) {
        const int sh = x.image_shell(c * px.kx[q] + s * px.ky[q], -s * px.kx[q] + c * px.ky[q]);
        iw[q] = sh < 0 || size_t(sh) >= inv_sigma2.size() ? 0.0f : density * inv_sigma2[size_t(sh)];
      } else {
        // (An image of another box at the same frequencies has no data beyond its own Nyquist.)
        iw[q] = size_t(px.shell[q]) < inv_sigma2.size() ? inv_sigma2[size_t(px.shell[q])] : 0.0f;
      }
      const float cw = w.cr[p * m + q];
      b[q] = scale * scale * cw * cw * iw[q];
      const cfloat v = (scale * cw * iw[q]) * w.xr[p * m + q];  // s C w X(R k')
      g[2 * q] = v.real();
      g[2 * q + 1] = v.imag();
    }
    for (size_t t = 0; t < T; ++t) {
      // phase_t(R k') = exp(-2 pi i k'.(R^T t) / n); R = [[c, s], [-s, c]]; t in the reference frame.
      const std::array<double, 2> tr = x.reference_shift(poses.trans[t], n);
      const double tx = c * tr[0] - s * tr[1];
      const double ty = s * tr[0] + c * tr[1];
      for (int k = 0; k <= r; ++k) ex[size_t(k)] = std::polar(1.0f, float(-two_pi_n * k * tx));
      for (int k = -r; k <= r; ++k) ey[size_t(k + r)] = std::polar(1.0f, float(-two_pi_n * k * ty));
      shifted_row(g.data(), runs, ex.data(), ey.data(), r, w.q.data() + (p * T + t) * 2 * m);
    }
  }
  w.a2.resize(PT * D);
  w.a1.resize(P * D);
  detail::sgemm(false, true, PT, D, 2 * m, w.q.data(), 2 * m,
                slices.s.data(), 2 * m, 0.0f, w.a2.data(), D);
  detail::sgemm(false, true, P, D, m, w.b.data(), m,
                slices.s2.data(), m, 0.0f, w.a1.data(), D);

  posterior_from_scores(P, T, D, poses.log_prior_psi, poses.log_prior_trans, poses.log_prior_dir, opt, w, out);
}

// Q_t(k) = s C w X phase_t and B(k) = s^2 C^2 w on the particle's own grid (search_direct).
void prepare_direct(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2, float scale,
                    std::span<const std::array<double, 2>> trans, SearchWork& w, bool for_sums) {
  const size_t m = px.size(), T = trans.size();
  const int n = px.n, r = px.r_max;
  const bool pre = for_sums && x.premultiplied();
  w.b.resize(m);
  w.q.resize(T * 2 * m);
  w.xr.resize(m);
  w.cr.resize(m);
  std::vector<float> g(2 * m);  // the unshifted Q row, s C w X (s w X for premultiplied sums)
  for (size_t q = 0; q < m; ++q) {
    const float c = x.ctf(px.kx[q], px.ky[q]), is2 = inv_sigma2[size_t(px.shell[q])];
    w.xr[q] = x.on_grid(int(px.kx[q]), int(px.ky[q]));
    w.cr[q] = c;
    w.b[q] = scale * scale * (pre ? c : c * c) * is2;
    const cfloat v = (scale * (pre ? 1.0f : c) * is2) * w.xr[q];
    g[2 * q] = v.real();
    g[2 * q + 1] = v.imag();
  }
  const std::vector<PixelRun> runs = pixel_runs(px);
  std::vector<cfloat> ex(size_t(r + 1)), ey(size_t(2 * r + 1));
  const double two_pi_n = 2.0 * std::numbers::pi / n;
  for (size_t t = 0; t < T; ++t) {
    for (int k = 0; k <= r; ++k) ex[size_t(k)] = std::polar(1.0f, float(-two_pi_n * k * trans[t][0]));
    for (int k = -r; k <= r; ++k) ey[size_t(k + r)] = std::polar(1.0f, float(-two_pi_n * k * trans[t][1]));
    shifted_row(g.data(), runs, ex.data(), ey.data(), r, w.q.data() + t * 2 * m);
  }
}


void search_direct(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2, float scale,
                   const Slices& refs, std::span<const std::array<double, 2>> trans,
                   std::span<const double> log_prior_trans, std::span<const double> log_prior_ref,
                   const SearchOptions& opt, SearchWork& w, PoseResult& out) {
  const size_t m = px.size(), T = trans.size(), J = refs.d;
  if (refs.m != m) runtime_error("search_direct: references of {} pixels for {} pixels", refs.m, m);
  prepare_direct(x, px, inv_sigma2, scale, trans, w);
  w.a2.resize(T * J);
  w.a1.resize(J);
  detail::sgemm(false, true, T, J, 2 * m, w.q.data(), 2 * m,
                refs.s.data(), 2 * m, 0.0f, w.a2.data(), J);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, int(J), int(m), 1.0f, refs.s2.data(), int(m), w.b.data(), 1, 0.0f,
              w.a1.data(), 1);
  posterior_from_scores(1, T, J, {}, log_prior_trans, log_prior_ref, opt, w, out);
}

std::vector<size_t> direct_sums(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2,
                                float scale, std::span<const std::array<double, 2>> trans, const PoseResult& post,
                                SearchWork& work, std::vector<float>& data, std::vector<float>& weight,
                                double min_weight) {
  prepare_direct(x, px, inv_sigma2, scale, trans, work, true);
  return pose_sums(post, px.size(), work, data, weight, min_weight);
}

std::vector<size_t> pose_sums(const PoseResult& post, size_t m, SearchWork& w, std::vector<float>& data,
                              std::vector<float>& weight, double min_weight) {
  const size_t P = post.P, T = post.T, D = post.D, PT = P * T;
  data.assign(D * 2 * m, 0.0f);
  weight.assign(D * m, 0.0f);
  std::vector<size_t> used;
  if (!post.valid) return used;
  for (size_t d = 0; d < D; ++d)
    if (post.w_dir[d] > min_weight) used.push_back(d);
  if (used.empty()) return used;
  w.wsum_pd.assign(P * D, 0.0f);
  for (size_t p = 0; p < P; ++p)
    for (size_t t = 0; t < T; ++t) {
      const float* wr = post.weight.data() + (p * T + t) * D;
      float* o = w.wsum_pd.data() + p * D;
      for (size_t d = 0; d < D; ++d) o[d] += wr[d];
    }
  detail::sgemm(true, false, D, 2 * m, PT, post.weight.data(), D,
                w.q.data(), 2 * m, 0.0f, data.data(), 2 * m);
  detail::sgemm(true, false, D, m, P, w.wsum_pd.data(), D,
                w.b.data(), m, 0.0f, weight.data(), m);
  return used;
}

PoseResidual pose_residual(const RotatableParticle& x, const SearchPixels& px, std::span<const float> inv_sigma2,
                           float scale, const Projector& proj, double rot, double tilt, double psi,
                           std::array<double, 2> trans) {
  PoseResidual res;
  const int n = px.n;
  res.diff2.assign(size_t(n / 2 + 1), 0.0);
  const CentralSlice c(euler_to_matrix(rot, tilt, psi), proj.padding());
  const double two_pi_n = 2.0 * std::numbers::pi / n;
  const FourierLattice& lat = proj.lattice();
  for (size_t q = 0; q < px.size(); ++q) {
    const double kx = px.kx[q], ky = px.ky[q];
    const cfloat S = lat.interpolate(c.m00 * kx + c.m01 * ky, c.m10 * kx + c.m11 * ky, c.m20 * kx + c.m21 * ky);
    const cfloat X = x.on_grid(int(kx), int(ky)) * std::polar(1.0f, float(-two_pi_n * (kx * trans[0] + ky * trans[1])));
    const cfloat M = scale * x.ctf(kx, ky) * S;
    res.diff2[size_t(px.shell[q])] += std::norm(X - M);
    const double wq = inv_sigma2[size_t(px.shell[q])];
    res.xa += wq * (double(X.real()) * M.real() + double(X.imag()) * M.imag());
    res.aa += wq * std::norm(M);
  }
  return res;
}

}  // namespace regula::estep

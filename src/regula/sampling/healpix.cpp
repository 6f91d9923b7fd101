#include "regula/sampling/healpix.hpp"

#include <cmath>

#include <healpix_cxx/healpix_base.h>

#include "regula/core/error.hpp"

namespace regula {

namespace {

constexpr int kMaxOrder = 7;

void check_order(int order) {
  if (order < 0 || order > kMaxOrder)
    input_error("HEALPix order {} out of range (expected 0-{}; angular step 60/2^order degrees)", order,
                kMaxOrder);
}

double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

}  // namespace

double healpix_angular_step(int order) { return 360.0 / (6.0 * std::ldexp(1.0, order)); }

long healpix_num_pixels(int order) { return 12L << (2 * order); }

double healpix_max_pixel_radius(int order) {
  check_order(order);
  return rad2deg(Healpix_Base(order, NEST).max_pixrad());
}

std::array<double, 2> healpix_direction(int order, long pixel) {
  Healpix_Base base(order, NEST);
  const pointing p = base.pix2ang(int(pixel));
  double rot = rad2deg(p.phi);
  if (rot >= 180.0) rot -= 360.0;
  return {rot, rad2deg(p.theta)};
}

std::vector<long> healpix_children(long pixel, int levels) {
  const long n = 1L << (2 * levels);
  std::vector<long> out(static_cast<size_t>(n));
  for (long i = 0; i < n; ++i) out[size_t(i)] = pixel * n + i;
  return out;
}

std::vector<double> psi_angles(double step_deg) {
  if (!(step_deg > 0) || step_deg > 360)
    input_error("in-plane angular step {} deg out of range (expected 0 < step <= 360)", step_deg);
  const int n = int(std::ceil(360.0 / step_deg - 1e-9));
  const double step = 360.0 / n;
  std::vector<double> out(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out[size_t(i)] = i * step;
  return out;
}

std::vector<std::array<double, 2>> translations(double range_px, double step_px) {
  if (!(range_px >= 0)) input_error("offset range {} px must be >= 0", range_px);
  if (!(step_px > 0)) input_error("offset step {} px must be > 0", step_px);
  const long maxp = long(std::ceil(range_px / step_px - 1e-9));
  std::vector<std::array<double, 2>> out;
  for (long ix = -maxp; ix <= maxp; ++ix)
    for (long iy = -maxp; iy <= maxp; ++iy) {
      const double x = double(ix) * step_px, y = double(iy) * step_px;
      if (x * x + y * y < range_px * range_px + 0.001) out.push_back({x, y});
    }
  return out;
}

std::vector<double> oversampled_psi_angles(const std::vector<double>& psi, double step_deg, int order) {
  if (order < 0 || order > 8) input_error("oversampling order {} out of range [0, 8]", order);
  if (order == 0) return psi;
  const int c = 1 << order;
  std::vector<double> out;
  out.reserve(psi.size() * size_t(c));
  for (double a : psi)
    for (int b = 0; b < c; ++b) {
      double v = a - 0.5 * step_deg + (0.5 + b) * step_deg / c;
      if (v > 180) v -= 360;
      if (v <= -180) v += 360;
      out.push_back(v);
    }
  return out;
}

std::vector<std::array<double, 2>> oversampled_translations(const std::vector<std::array<double, 2>>& trans,
                                                            double step_px, int order) {
  if (order < 0 || order > 8) input_error("oversampling order {} out of range [0, 8]", order);
  if (order == 0) return trans;
  const int c = 1 << order;
  std::vector<std::array<double, 2>> out;
  out.reserve(trans.size() * size_t(c) * size_t(c));
  for (const auto& t : trans)
    for (int ax = 0; ax < c; ++ax)
      for (int ay = 0; ay < c; ++ay)
        out.push_back({t[0] - 0.5 * step_px + (0.5 + ax) * step_px / c, t[1] - 0.5 * step_px + (0.5 + ay) * step_px / c});
  return out;
}

std::vector<long> asymmetric_unit_pixels(int order, const SymmetryGroup& sym) {
  check_order(order);
  const long npix = healpix_num_pixels(order);
  std::vector<long> kept;
  if (sym.is_c1()) {
    kept.resize(size_t(npix));
    for (long p = 0; p < npix; ++p) kept[size_t(p)] = p;
    return kept;
  }
  // A generic point: not on any symmetry axis, and with rot slightly off 0 so
  // that cell edges do not pass exactly through HEALPix pixel centres (their
  // phi values are rational multiples of pi). Cn: cells are wedges
  // |rot - 0.0731| < 180/n; Dn: additionally tilt < ~90.
  const Vec3 p0 = euler_direction(0.0731, 57.2958);
  std::vector<Vec3> orbit;
  for (size_t i = 1; i < sym.operators().size(); ++i) orbit.push_back(matvec(transpose(sym.operators()[i]), p0));
  Healpix_Base base(order, NEST);
  // RELION's tolerance for symmetry-equivalent directions: half the largest
  // pixel radius.
  const double tol = 0.5 * base.max_pixrad();
  const double cos_tol = std::cos(tol);
  std::vector<Vec3> dirs;
  std::vector<char> near_edge;
  for (long p = 0; p < npix; ++p) {
    const vec3 v = base.pix2vec(int(p));
    const Vec3 d{v.x, v.y, v.z};
    const double own = dot(d, p0);
    bool keep = true, edge = false;
    for (const auto& q : orbit) {
      const double diff = own - dot(d, q);
      if (diff < 0) {
        keep = false;
        break;
      }
      // Angular distance to the bisecting great circle of p0 and q: asin(diff / |p0 - q|).
      const Vec3 pq{p0[0] - q[0], p0[1] - q[1], p0[2] - q[2]};
      if (diff < std::sin(tol) * std::sqrt(dot(pq, pq))) edge = true;
    }
    if (keep) {
      kept.push_back(p);
      dirs.push_back(d);
      near_edge.push_back(edge);
    }
  }
  // Directions within `tol` of an edge of the cell may be within `tol` of a
  // symmetry copy of another kept direction (the pixel grid is not symmetric):
  // drop those, first come first kept, as RELION's pairwise pass does.
  std::vector<size_t> edge_kept;  // indices into kept/dirs of edge directions kept so far
  std::vector<long> result;
  const auto& ops = sym.operators();
  for (size_t i = 0; i < kept.size(); ++i) {
    if (!near_edge[i]) {
      result.push_back(kept[i]);
      continue;
    }
    bool unique = true;
    for (size_t j : edge_kept) {
      for (size_t r = 1; r < ops.size() && unique; ++r)
        if (dot(dirs[i], matvec(ops[r], dirs[j])) > cos_tol) unique = false;
      if (!unique) break;
    }
    if (unique) {
      edge_kept.push_back(i);
      result.push_back(kept[i]);
    }
  }
  return result;
}

OrientationSampling::OrientationSampling(int healpix_order, const SymmetryGroup& sym, double psi_step_deg)
    : order_(healpix_order) {
  check_order(healpix_order);
  psi_ = psi_angles(psi_step_deg > 0 ? psi_step_deg : healpix_angular_step(healpix_order));
  psi_step_ = 360.0 / double(psi_.size());
  pixels_ = asymmetric_unit_pixels(healpix_order, sym);
  rot_.reserve(pixels_.size());
  tilt_.reserve(pixels_.size());
  for (long p : pixels_) {
    const auto rt = healpix_direction(healpix_order, p);
    rot_.push_back(rt[0]);
    tilt_.push_back(rt[1]);
  }
}

std::vector<Orientation> OrientationSampling::oversampled(size_t dir, size_t ipsi, int oversampling) const {
  if (oversampling < 0 || order_ + oversampling > 13)
    input_error("oversampling order {} out of range at HEALPix order {}", oversampling, order_);
  std::vector<Orientation> out;
  if (oversampling == 0) {
    out.push_back({rot_[dir], tilt_[dir], psi_[ipsi]});
    return out;
  }
  const int npsi = 1 << oversampling;
  const int fine = order_ + oversampling;
  for (long child : healpix_children(pixels_[dir], oversampling)) {
    const auto rt = healpix_direction(fine, child);
    for (int j = 0; j < npsi; ++j)
      out.push_back({rt[0], rt[1], psi_[ipsi] - 0.5 * psi_step_ + (j + 0.5) * psi_step_ / npsi});
  }
  return out;
}

}  // namespace regula

namespace regula {

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

}  // namespace regula

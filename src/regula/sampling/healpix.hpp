// Orientation sampling as RELION: HEALPix directions (NEST scheme) times
// uniform in-plane angles, restricted to an asymmetric unit of the symmetry
// group; translations on a square grid inside a circle.
//
// Units and conventions:
//  * HEALPix order k: Nside = 2^k, 12 * 4^k directions on the full sphere,
//    angular step 360 / (6 * 2^k) = 60 / 2^k degrees (RELION's
//    getAngularSampling: order 2 = 15 deg, order 3 = 7.5 deg, order 4 = 3.75 deg).
//  * A direction is a HEALPix pixel centre (z, phi): tilt = acos(z) in [0, 180],
//    rot = phi in [-180, 180) degrees; it is the viewing direction
//    euler_direction(rot, tilt) (third row of the Euler matrix).
//  * In-plane angles: nr_psi = ceil(360 / psi_step), psi_step := 360 / nr_psi,
//    psi_i = i * psi_step (degrees), as RELION.
//  * Asymmetric unit: a direction d is kept when it lies in the spherical
//    Voronoi cell of a fixed generic point p0 among its orbit {R^T p0, R in G}
//    (d.p0 >= d.(R^T p0) for every R). The cells tile the sphere with |G|
//    congruent copies (Cn: the wedge |rot| < 180/n; Dn: that wedge with
//    tilt < ~90). Because the pixel grid is not symmetric, directions within
//    half the largest pixel radius (RELION's tolerance) of a symmetry copy of
//    an earlier kept direction are then dropped, as RELION's pairwise pass in
//    removeSymmetryEquivalentPoints. RELION's own region is cut by ranges of
//    rot/tilt per group; the shape differs, the orientations modulo symmetry
//    and the count (about 12*4^k/|G|) do not.
//  * Translations in pixels: the grid i*step, j*step for |i|, |j| <=
//    ceil(range/step), kept when x^2 + y^2 < range^2 + 0.001 (RELION 3.1).
#pragma once
#include <array>
#include <cstddef>
#include <vector>

#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

struct Orientation {
  double rot = 0, tilt = 0, psi = 0;  // degrees
};

// Angular step (degrees) of HEALPix order k: 60 / 2^k.
double healpix_angular_step(int order);
// Number of HEALPix pixels of order k on the full sphere: 12 * 4^k.
long healpix_num_pixels(int order);
// Largest angular distance (degrees) from a pixel centre to its corners at order k.
double healpix_max_pixel_radius(int order);
// (rot, tilt) in degrees of NEST pixel `pixel` at order k; rot in [-180, 180).
std::array<double, 2> healpix_direction(int order, long pixel);
// NEST pixels at order k + levels covered by `pixel` at order k:
// pixel * 4^levels ... (pixel + 1) * 4^levels - 1 (the NEST hierarchy).
std::vector<long> healpix_children(long pixel, int levels = 1);

// In-plane angles (degrees) for a step: ceil(360/step) values i * 360/ceil(360/step).
std::vector<double> psi_angles(double step_deg);

// Translations (x, y) in pixels on a grid of `step_px` inside the circle of
// radius `range_px` (centre first is NOT guaranteed; order: x outer, y inner,
// both ascending). range 0 gives the single translation (0, 0).
std::vector<std::array<double, 2>> translations(double range_px, double step_px);

// RELION's adaptive oversampling of order o (HealpixSampling) for grids of step `step`: every
// in-plane angle a becomes the 2^o angles a - step/2 + (b + 1/2) step / 2^o (b = 0..2^o-1; kept
// in (-180, 180], as RELION writes oversampled 2D angles), every translation (x, y) the 4^o
// translations with the same rule per axis (x index major). Children of element e are at
// e * 2^o + b (angles) and e * 4^o + a (translations). Order 0 returns the input.
std::vector<double> oversampled_psi_angles(const std::vector<double>& psi, double step_deg, int order);
std::vector<std::array<double, 2>> oversampled_translations(const std::vector<std::array<double, 2>>& trans,
                                                            double step_px, int order);

class OrientationSampling {
 public:
  // healpix_order in [0, 7] (else InputError). psi_step_deg <= 0 means the
  // angular step of the order.
  OrientationSampling(int healpix_order, const SymmetryGroup& sym, double psi_step_deg = 0);

  int order() const { return order_; }
  double angular_step() const { return healpix_angular_step(order_); }
  double psi_step() const { return psi_step_; }
  size_t num_directions() const { return pixels_.size(); }
  size_t num_psi() const { return psi_.size(); }
  size_t size() const { return num_directions() * num_psi(); }

  long pixel(size_t dir) const { return pixels_[dir]; }  // NEST index at order()
  double rot(size_t dir) const { return rot_[dir]; }
  double tilt(size_t dir) const { return tilt_[dir]; }
  double psi(size_t ipsi) const { return psi_[ipsi]; }
  Euler orientation(size_t dir, size_t ipsi) const { return {rot_[dir], tilt_[dir], psi_[ipsi]}; }

  // The finer orientations under (dir, ipsi) at `oversampling` levels (RELION's
  // adaptive oversampling): the 4^k NEST children directions at order()+k, in
  // NEST order, each with the 2^k in-plane angles
  // psi - step/2 + (j + 1/2) * step / 2^k, j = 0..2^k-1 (psi inner).
  std::vector<Orientation> oversampled(size_t dir, size_t ipsi, int oversampling) const;

 private:
  int order_;
  double psi_step_;
  std::vector<long> pixels_;
  std::vector<double> rot_, tilt_, psi_;
};

// HEALPix pixel centres of one order (NEST index = position) and their unit vectors, for local
// searches (the directions within an angle of a given one).
struct DirectionTable {
  int order = -1;
  std::vector<std::array<double, 2>> rot_tilt;  // degrees
  std::vector<Vec3> v;
  void build(int order);  // no-op when already built for this order
};

// Directions of order k kept for the asymmetric unit of `sym` (NEST pixel
// indices, ascending). C1 keeps all 12 * 4^k.
std::vector<long> asymmetric_unit_pixels(int order, const SymmetryGroup& sym);

}  // namespace regula

// Point-group symmetry (rotations only) with RELION's axis conventions.
//
// Groups and the axes that generate them (unit vectors in map coordinates,
// x fastest; the same axes as RELION 3.1's symmetry definitions):
//   Cn     n-fold about z                                             order n
//   Dn     n-fold about z, 2-fold about x                             order 2n
//   T      3-fold about z, 2-fold about (0, 0.816497, 0.577350)       order 12
//   O      4-fold about z, 3-fold about (1, 1, 1)/sqrt(3)             order 24
//   I, I2  2-fold about z, 5-fold about (0.525731, 0, 0.850651)        order 60
//   I1     2-fold about x, 5-fold about (0.850651, 0, -0.525731)       order 60
//   I3     5-fold about z, 2-fold about (-0.525731, 0, 0.850651)       order 60
//   I4     5-fold about (0.894427, 0, 0.447214),
//          2-fold about (0.525731, 0, 0.850651)                         order 60
// RELION also lists a 3-fold per icosahedral group; it follows from the two
// generators above. I2 and I1 have 2-folds on x, y and z (I1 is I2 turned by
// 90 deg about y); I3 and I4 have a 5-fold on z. The operator sets equal those
// of relion_particle_symmetry_expand (tests/cpp/test_symmetry.cpp).
// Mirror groups (Cnv, Cnh, Dnh, Td, Oh, Ih, ...) are not supported: cryo-EM
// maps are chiral.
//
// The operators are rotation matrices R (orthogonal, det +1) forming a group:
// a map V is symmetric when V(R x) = V(x) for every R. For an orientation with
// Euler matrix A, the orientations A * R are equivalent (same projection of a
// symmetric map); their viewing directions are R^T d.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

class SymmetryGroup {
 public:
  // Parse a group name, case-insensitive: "C1", "c7", "D3", "T", "O", "I",
  // "I1".."I4". Throws InputError "unknown symmetry group 'X' (expected C<n>,
  // D<n>, T, O, I, I1-I4)".
  static SymmetryGroup parse(std::string_view name);

  // All rotations of the group, identity first, then in a fixed order
  // (breadth-first products of the generators).
  const std::vector<Mat3>& operators() const { return ops_; }
  int order() const { return int(ops_.size()); }
  // Canonical upper-case name ("C7", "D3", "I2"; "I" stays "I").
  const std::string& name() const { return name_; }
  bool is_c1() const { return ops_.size() == 1; }

  // The operators other than the identity in the order in which RELION 3.1 lists them (its
  // SymList, used by relion_particle_symmetry_expand): for each axis RELION names for the group
  // (the generators above, plus the 3-fold of the icosahedral groups), the rotations by -k 360/n
  // deg, k = 1..n-1; then the products P_i P_j of the list in its closure order (pairs (0,m),
  // (1,m), ..., (m,m), (m,m-1), ..., (m,0) for m = 0, 1, ...; each new product appended), elements
  // below 1e-6 set to 0 as RELION does. Symmetry copy k of an orientation A is A * list[k]
  // (tests/cpp/test_symmetry.cpp checks the order against relion_particle_symmetry_expand).
  std::vector<Mat3> relion_ordered_operators() const;

 private:
  struct Axis {
    Vec3 direction;  // as RELION writes it (normalised when used)
    int fold;
  };
  SymmetryGroup(std::string name, std::vector<Mat3> ops, std::vector<Axis> relion_axes)
      : name_(std::move(name)), ops_(std::move(ops)), relion_axes_(std::move(relion_axes)) {}
  std::string name_;
  std::vector<Mat3> ops_;
  std::vector<Axis> relion_axes_;  // the axes RELION's symmetry definition lists, in its order
};

// Rotation by `angle_deg` (right-handed, counter-clockwise looking down the
// axis towards the origin) about the unit vector `axis`, as the matrix acting
// on column vectors: R = cos a I + sin a [axis]_x + (1 - cos a) axis axis^T.
Mat3 axis_angle_matrix(const Vec3& axis, double angle_deg);

// Orientations modulo the group (A and A R are equivalent): the copy A R closest to B, and the angle
// between them (degrees, the smallest rotation_distance_deg(A R, B) over the operators R).
Mat3 nearest_symmetry_copy(const Mat3& A, const Mat3& B, const SymmetryGroup& group);
double symmetric_distance_deg(const Mat3& A, const Mat3& B, const SymmetryGroup& group);

// Average of the rotated copies of a cubic volume: out(x) = 1/|G| sum_R
// in(c + R (x - c)), with c = (n/2, n/2, n/2) (integer division, as RELION's
// map centre) and trilinear interpolation; samples outside the box count as 0.
// The volume must be cubic (nx == ny == nz), else InputError.
Volume symmetrise(const Volume& in, const SymmetryGroup& group, int nthreads = 1);

}  // namespace regula

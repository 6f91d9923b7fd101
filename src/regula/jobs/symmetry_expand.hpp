// Symmetry expansion of a particle set: `regula symmetry_expand`, the counterpart of
// relion_particle_symmetry_expand (RELION 3.1).
//
// Point groups (--sym G): each particle becomes |G| rows, the input row first (unchanged) and then
// one row per operator R other than the identity, in RELION's order
// (SymmetryGroup::relion_ordered_operators), with the Euler angles of A * R (A =
// euler_to_matrix(rot, tilt, psi); angles from matrix_to_euler, RELION's ranges). Every other
// column is copied. A map with symmetry G projects the same for every copy; a part that breaks
// the symmetry (one subunit) is seen in |G| positions.
//
// Helices (--helix, no --sym): copies along the helical axis at z = k (in units of the rise) for
// --asu N (k = -(N-1)/2 .. N/2, integer division as RELION), or at z = -frac_range,
// -frac_range + 1/frac_sampling, ... while z <= frac_range - 0.001 for --frac_sampling M. Copy z
// has rot - z * twist (not wrapped into [-180, 180], as RELION) and its origin moved along the
// helical axis's image: with d = sin(tilt) z rise (Å), originX + cos(-psi) d, originY + sin(-psi) d;
// tilt and psi unchanged. The input row itself is not repeated (z = 0 is one of the copies
// when N is odd).
//
// Output: the 3.1 STAR form (data_optics + data_particles; a RELION 3.0 file is converted, as
// RELION does without --ignore_optics). Origins are in Å (rlnOriginX/YAngst); a helix with no
// origin columns in the input gets them.
#pragma once
#include <string>

namespace regula {

struct SymmetryExpandOptions {
  std::string input;                  // --i: particle STAR file
  std::string output = "expanded.star";  // --o: expanded particle STAR file
  std::string sym = "C1";             // --sym: point group (C<n>, D<n>, T, O, I, I1-I4)
  bool helix = false;                 // --helix: helical expansion instead of a point group
  double twist = 0;                   // --twist: helical twist, degrees
  double rise = 0;                    // --rise: helical rise, Å
  int asu = 1;                        // --asu: number of asymmetric units (copies at whole rises)
  int frac_sampling = 1;              // --frac_sampling: copies per rise (fractions of one unit)
  double frac_range = 0.5;            // --frac_range: z in [-frac_range, frac_range) rises

  std::string validate() const;
};

struct SymmetryExpandResult {
  size_t particles_in = 0;
  size_t particles_out = 0;
  int copies = 0;  // rows per input particle
};

SymmetryExpandResult symmetry_expand(const SymmetryExpandOptions& opt);

}  // namespace regula

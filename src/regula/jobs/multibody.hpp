// Multi-body refinement (`regula refine3d --continue CONSENSUS_optimiser.star --multibody_masks bodies.star`,
// RELION's relion_refine --multibody_masks): a consensus refinement's particles, each split into
// bodies given by soft masks, every body refined with its own orientation and translation relative to
// the consensus pose (docs/multibody.md).
//
// Model, per particle i (consensus orientation A_i, origin o_i) and body b (mask M_b, centre of mass
// c_b rounded to whole voxels, as RELION): the body's map W_b, kept centred on c_b, turns about c_b by
// a residual rotation R_b,i and moves by a residual offset d_b,i, so that its projection is
// Proj_{A_i R_b,i}(W_b), placed where the body sits in the image: origin O_b,i = o_i - (A_i c_b)_xy +
// d_b,i (the particle sits at the box centre minus its origin, as particle_subtract).
// Each iteration, for each body b: every particle's image minus the projections of the other bodies
// (at their poses of the last iteration; body o's map without the part that body b's mask covers,
// RELION's overlap handling) times CTF and group scale is searched locally around R = I (window 3
// sigma, Gaussian prior of sigma rlnBodySigmaAngles on the orientation, rlnBodySigmaOffsetAngst on d)
// by the 3D E-step (estep/search3d.hpp), and back-projected at its posterior into body b's half
// reconstructions. M-step per body: gold-standard FSC under the body's mask (corrected by phase
// randomisation), the references' prior from it, MAP reconstruction times the mask. The noise
// spectra start from the residual of the consensus at the consensus poses and are then re-estimated
// from the bodies' posterior-weighted residuals (the mean over the bodies); the norm and group scale
// corrections of the consensus are kept (RELION does not update them in multi-body refinement).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

struct MultibodyOptions {
  std::string continue_from;     // --continue: the consensus's ROOT_itNNN_optimiser.star (RELION's or Regula's)
  std::string bodies;            // --multibody_masks: STAR file of the bodies
  std::string out_root;          // --o
  int healpix_order = 4;         // --healpix_order: angular step of the local searches' coarse pass
  int oversampling = 1;          // --oversampling
  double offset_range = 3;       // --offset_range, px
  double offset_step = 1.5;      // --offset_step, px
  int max_iterations = 12;       // --iter: at most this many iterations
  int threads = 1;               // --j
  uint64_t seed = 1;             // --seed: the noise outside the particle masks, phase randomisation
  double particle_diameter = -1; // --particle_diameter, Å: only checked against the bodies (their masks' radii are used)
  double tau2_fudge = 1;         // --tau2_fudge
  double adaptive_fraction = 0.999;
  int pad = 2;                   // --pad
  bool zero_mask = false;        // --zero_mask
  double mask_edge = 5;          // px
  std::string validate() const;
};

struct MultibodyResult {
  int iterations = 0;
  std::vector<double> resolution;  // Å per body (gold-standard FSC 0.143 under the body's mask)
  std::string data_star, model_star;
  std::vector<std::string> maps;   // ROOT_body00N.mrc
};

MultibodyResult run_multibody(const MultibodyOptions& opt);

// One row of the bodies STAR file (RELION's rlnBodyMaskName, rlnBodyRotateRelativeTo,
// rlnBodySigmaAngles or rlnBodySigmaTilt/Psi, rlnBodySigmaOffsetAngst or rlnBodySigmaOffset (px),
// rlnBodyRotateDirectionX/Y/Z), with what RELION derives from it.
struct BodyDefinition {
  std::string mask_path;
  Grid<float> mask;                 // n^3, values in [0, 1]
  std::array<int, 3> com{0, 0, 0};  // centre of mass of the mask, px from the map centre, rounded
  double radius_px = 0;             // farthest voxel of the mask above 0.05 from its centre of mass, px
  int relative_to = -1;             // 0-based body, or -1
  double sigma_ang = 0;             // degrees (rlnBodySigmaAngles; or the larger of tilt and psi)
  double sigma_offset_A = 0;        // Å
  Mat3 orient{};                    // RELION's orient_bodies: the rotation taking -direction to +z
};

// Reads the bodies STAR file; masks must be n^3 with values in [0, 1] (InputError naming the file,
// row and what is wrong). angpix converts rlnBodySigmaOffset (px) to Å.
std::vector<BodyDefinition> read_bodies(const std::string& path, int n, double angpix);

// RELION's alignWithZ: a rotation taking the unit vector along `axis` to +z.
Mat3 align_with_z(const Vec3& axis);

// The residual rotation R (map frame: the body turns about its centre by R, its orientation is A R)
// from RELION's body angles (rlnAngleRot/Tilt/Psi of data_images_body_N, (0, 90, 0) for none: RELION
// orients them as O^T R90 E(rot, tilt, psi) O) and back.
Mat3 body_rotation_from_angles(const Euler& e, const Mat3& orient);
Euler body_angles_from_rotation(const Mat3& R, const Mat3& orient);

}  // namespace regula

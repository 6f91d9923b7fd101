// The per-particle search of the 3D jobs (refine3d, class3d): a coarse pass over (class, direction,
// in-plane angle, translation), separable in direction and angle, then a fine pass in the
// particle's own frame on the poses holding 0.999 of the coarse posterior, one level finer; the
// weighted sums go into one back-projector per class (docs/refine3d.md#the-e-step).
#pragma once
#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "regula/estep/pose_search.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula::ml3d {

// The --ref map of a 3D job, checked before it is read: a 3D map of the particles' box (n px), and
// of their pixel size when its header gives one (within 0.1%; relion_refine too stops with "The
// reference pixel size is ..."); a header without one is taken at the particles' pixel size.
// Input errors name the file and both values.
Volume read_reference(const std::string& path, double angpix, int n);

// Unit quaternion (w, x, y, z) of a rotation and back (for posterior mean orientations).
std::array<double, 4> to_quaternion(const Mat3& R);
Mat3 from_quaternion(std::array<double, 4> q);
double wrap180(double a);
double angle_between(const Vec3& a, const Vec3& b);  // degrees

// HEALPix pixel centres of one order (NEST index = position), with their unit vectors.
struct DirectionTable {
  int order = -1;
  std::vector<std::array<double, 2>> rot_tilt;
  std::vector<Vec3> v;
  void build(int order);
};

// What all particles of an iteration share. Pointers must outlive the searches.
struct IterationSetup {
  int classes = 1;
  std::vector<const Projector*> proj;      // per class (padding 2, r_max above px_fine's limit)
  std::vector<double> log_class_prior;     // per class; empty: uniform (no term)
  const estep::SearchPixels* px_coarse = nullptr;
  const estep::SearchPixels* px_fine = nullptr;
  const estep::SearchPixels* px_sums = nullptr;  // pixels of the weighted sums (null: px_fine)
  bool local = false;                      // local searches around the previous pose
  int order = 2;                           // HEALPix order of the coarse pass
  double sigma_ang = 15;                   // local: Gaussian prior sigma, degrees
  // Global searches: the directions of the asymmetric unit and their NEST pixels (one copy per
  // class, class-major), the in-plane angles, and the coarse slices of every class (class-major).
  const std::vector<std::array<double, 2>>* global_dirs = nullptr;
  const std::vector<long>* global_pix = nullptr;
  const std::vector<double>* global_psi = nullptr;
  const estep::Slices* global_slices = nullptr;
  const DirectionTable* table = nullptr;   // order `order`: local windows
  std::vector<std::array<double, 2>> trans;  // coarse translations, px (relative to the current origin)
  double offset_step = 1;                  // px
  double sigma_offset2 = 1;                // px^2 per component (prior on the total offset)
  bool cross_correlation = false;          // --firstiter_cc: hard assignment, scale fitted
  bool pose_mean = true;                   // posterior mean pose (else the maximum)
  // The point group of the map (null: C1). The posterior mean averages each orientation's symmetry
  // copy A R closest to the best orientation: copies of one pose are all the same pose.
  const SymmetryGroup* symmetry = nullptr;
  bool fit_scale = false;                  // norm correction from the best pose
  size_t max_pairs = 48, max_trans = 9;    // caps of the significant coarse set
};

struct ParticleInput {
  const estep::RotatableParticle* x = nullptr;  // moved by its current origin
  std::span<const float> inv_sigma2;            // per shell
  double scale = 1;                             // s (the kernels use it in single precision)
  double rot = 0, tilt = 0, psi = 0;            // previous pose (local searches)
  double ox_px = 0, oy_px = 0;                  // current origin, px (offset prior)
};

struct ParticleResult {
  bool valid = false;
  int cls = 0;                       // 0-based class of the best pose
  double rot = 0, tilt = 0, psi = 0;
  std::array<double, 2> trans{0, 0};  // px, to add to the origin
  double max_posterior = 0, log_likelihood = 0;
  size_t n_significant = 0;
  std::vector<double> class_weight;  // posterior mass per class
  estep::PoseResidual residual;      // at the pose, at the scale below
  double scale = 1;                  // new scale (fit_scale), else the input's
};

struct Workspace {
  estep::SearchWork work;
  estep::PoseResult coarse, fine;
  estep::Slices local_slices, fine_slices;
  std::vector<float> sdata, sweight;
  std::vector<std::array<double, 2>> cdirs;
  std::vector<long> cpix;
};

// Searches one particle and adds its weighted sums to bp[class] (bp may hold nulls for classes
// whose sums are not wanted).
ParticleResult search_particle(const IterationSetup& setup, const ParticleInput& in, Workspace& ws,
                               std::span<BackProjector* const> bp);

}  // namespace regula::ml3d

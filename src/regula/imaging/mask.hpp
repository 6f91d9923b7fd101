// Real-space masks for images (nz == 1) and cubic maps: soft spheres and
// masks made from a map as relion_mask_create does. Distances in pixels from
// the centre at n/2 along every axis.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

// Raised-cosine edge profile: 1 for r <= radius, 0.5 + 0.5 cos(pi (r - radius) / edge)
// for radius < r < radius + edge, 0 beyond (a hard edge when edge <= 0).
double soft_edge_value(double r_px, double radius_px, double edge_px);

// Mask of the given shape (nx x ny x nz, nz == 1 for an image) with the soft
// spherical profile above around the centre (nx/2, ny/2, nz/2).
Grid<float> spherical_mask(int nx, int ny, int nz, double radius_px, double edge_px);

enum class MaskFill {
  Zero,            // img *= mask
  BackgroundMean,  // img = mask * img + (1 - mask) * b, b the (1 - mask)-weighted mean outside radius (RELION)
};
// `centre_shift` moves the mask's centre from (n/2, n/2, n/2) by that many pixels (e.g. to a
// particle's current position).
struct MaskCentre {
  double dx = 0, dy = 0, dz = 0;
};
void apply_spherical_mask(Grid<float>& img, double radius_px, double edge_px, MaskFill fill = MaskFill::Zero,
                          MaskCentre centre_shift = {});
// img = mask * img + (1 - mask) * background (same shape): RELION's particle mask without
// --zero_mask, where the background is noise with the noise model's spectrum.
void apply_spherical_mask(Grid<float>& img, double radius_px, double edge_px, const Grid<float>& background,
                          MaskCentre centre_shift = {});

// The particle mask of RELION's refinement programs: a soft circle about the particle's current
// position (box centre moved by -origin, `at`); outside it zeros (--zero_mask), or noise with the
// current noise spectrum of the particle's group (coloured_noise, our FFT units), drawn from
// make_rng(seed, particle, 1) so that it is the same in every iteration and on any thread or MPI
// rank; before there is a spectrum (noise_sigma2 == nullptr), the mean outside the mask.
struct ParticleSolvent {
  bool zero = false;
  const std::vector<double>* noise_sigma2 = nullptr;
  uint64_t seed = 0, particle = 0;
};
void apply_particle_mask(Grid<float>& img, double radius_px, double edge_px, MaskCentre at, const ParticleSolvent& solvent);

struct MaskCreateOptions {
  double pixel_size = 1.0;      // Å
  double lowpass_A = 0;         // low-pass the map to this resolution first (<= 0: no filter)
  double ini_threshold = 0.01;  // voxels with value >= threshold are in the initial binary mask
  double extend_px = 0;         // binary dilation: add voxels at distance < extend_px from the mask
  double soft_edge_px = 0;      // raised-cosine edge of this width outside the extended mask
};
// A mask from a map, as relion_mask_create --ini_threshold --extend_inimask
// --width_soft_edge [--lowpass]: values in [0, 1].
Grid<float> create_mask(const Grid<float>& map, const MaskCreateOptions& opt);

// Centre of mass of a map (weights = the positive voxel values; others ignored) in pixels
// relative to the centre (n/2 per axis), x, y, z: RELION's centerOfMass with its logical origin.
// InputError when no value is positive.
std::array<double, 3> centre_of_mass(const Grid<float>& map);

// Exact squared Euclidean distance (pixels^2) from every voxel to the nearest
// voxel with value > 0.5 in `binary` (0 on those voxels; +inf when there is none).
Grid<float> squared_distance_transform(const Grid<float>& binary);

}  // namespace regula

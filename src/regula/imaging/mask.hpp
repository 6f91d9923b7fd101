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
  EdgeMean,        // the same with b the mean of the shell (radius - 2, radius] just inside the edge
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

// How far the CTF moves a particle's signal: the part at spatial frequency s (1/Å) lies on a ring of
// radius R(s) = factor |lambda defocus s - Cs lambda^3 s^3| Å about where it was (the group delay of
// the CTF's phase; the larger over the two defoci of the astigmatic pair; factor 2 for CTF-
// premultiplied images, where the CTF is applied twice). At 300 kV and 2 µm underfocus the signal
// at 3 Å lies 130 Å away; at 15 Å, 26 Å.
struct CtfReach {
  double wavelength = 0;             // Å
  double defocus_u = 0, defocus_v = 0;  // Å, positive = underfocus
  double cs = 0;                     // Å
  double pixel_size = 1;             // Å
  double factor = 1;
  // R at Fourier shell `shell` of an n-pixel box, in pixels.
  double at_shell_px(double shell, int n) const;
};
// The particle image a reconstruction takes: frequency band by band, the image times the particle
// mask (a soft circle of radius_px + R(s) px about `at`, edge edge_px, zeros outside) widened by
// the CTF's reach over the band's shells, so the particle's delocalised signal is kept and the
// noise of the rest of the box is not (the unmasked image keeps both; the particle mask, the first
// only at low resolution). Bands overlap in smooth windows; shells above r_max (not used) go with
// the last band; once the widened circle covers the box the rest is unmasked.
// Returns, per shell 0..n/2, the mean of mask^2 over the box (the share of white noise kept: 1 for
// unmasked shells). Square images only.
std::vector<double> apply_reach_mask(Grid<float>& img, double radius_px, double edge_px, MaskCentre at,
                                     const CtfReach& reach, int r_max);
// The weight of an image masked by apply_reach_mask at `shell`, relative to the unmasked image's
// (RELION weighs the unmasked image by 1/sigma2): 1/kept, as the image carries that share of the noise;
// 1 for shells it does not cover.
inline double reach_weight(const std::vector<double>& kept, size_t shell) {
  return shell < kept.size() && kept[shell] > 0 ? 1.0 / kept[shell] : 1.0;
}

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

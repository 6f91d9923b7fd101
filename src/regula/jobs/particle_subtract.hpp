// Signal subtraction: `regula particle_subtract`, the counterpart of relion_particle_subtract
// (RELION 3.1).
//
// Input: the optimiser STAR file of a refinement or classification (model/refinement_files.hpp),
// optionally another particle STAR file (--data) whose rows (poses, classes, CTF) are used
// instead of the optimiser's. For each particle: the reference of its class (rlnClassNumber,
// unless --ignore_class: class 1), or for a gold-standard refinement the map of its half
// (rlnRandomSubset 1: the first model, 2: the second), multiplied in real space by (1 - mask)
// (--mask: the density to keep; none: subtract the whole map), is projected as RELION's
// refinement does (imaging/projector.hpp: padding and Fourier window rlnCurrentImageSize of the
// model, trilinear interpolation, gridding correction), moved by minus the particle's origin,
// multiplied by its CTF when the refinement corrected the CTF (|CTF| for phase-flipped data,
// 1 before the first peak with rlnDoIgnoreCtfUntilFirstPeak, CTF^2 when the optics group says
// rlnCtfDataAreCtfPremultiplied), by the group's rlnGroupScaleCorrection when the refinement
// corrected scales, and subtracted from the image; with norm correction the image is first
// multiplied by rlnNormCorrectionAverage / rlnNormCorrection.
//
// Re-centring (--recenter_on_mask: the centre of mass of the mask; or --center_x/y/z, pixels
// from the box centre): the image is moved by the integer part of (origin - A c) (c the centre,
// A the particle's rotation; rounded half away from zero, wrapped around the box) and the
// remaining fraction becomes its origin (Å); origin priors are removed. --new_box N (even)
// crops (or zero-pads) the subtracted images about the box centre.
//
// Output in --o (a directory): Particles/subtracted_opticsgroupG.mrcs (one stack per optics
// group, images in the order of the particle file) and particles_subtracted.star (the particle
// file's rows with rlnImageName pointing at the subtracted images, rlnImageOriginalName at the
// input images; rlnImageSize of the optics groups set to --new_box). --revert FILE swaps
// rlnImageName and rlnImageOriginalName of a subtracted STAR file, sets each optics group's
// rlnImageSize from its first image, and writes --o/original.star.
//
// Refused with a message: multi-body refinements, 3D (subtomogram) data, nearest-neighbour
// interpolation, and optics groups with beam tilt, odd or even Zernike aberrations, anisotropic
// magnification, several MTFs, or a pixel size or box other than the model's (RELION rescales
// such groups; Regula does not model them).
#pragma once
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/model/particles.hpp"
#include "regula/model/refinement_files.hpp"

namespace regula {

struct ParticleSubtractOptions {
  std::string optimiser;             // --i: ROOT_itNNN_optimiser.star
  std::string out_dir = "Subtract/";  // --o: output directory
  std::string mask;                  // --mask: the density to keep (values in [0, 1]); "": subtract all
  std::string data;                  // --data: particle STAR file to use instead of the optimiser's
  bool ignore_class = false;         // --ignore_class: every particle uses class 1
  std::string revert;                // --revert: subtracted STAR file to turn back
  bool recenter_on_mask = false;     // --recenter_on_mask
  double center_x = 9999;            // --center_x: px from the map centre (9999: unset, as RELION)
  double center_y = 9999;            // --center_y
  double center_z = 9999;            // --center_z
  int new_box = -1;                  // --new_box: output box (px, made even); -1: unchanged
  int threads = 1;                   // --j

  std::string validate() const;
};

struct ParticleSubtractResult {
  size_t particles = 0;
  std::string star;   // particles_subtracted.star (or original.star with --revert)
  int box = 0;        // output box, px
  bool recentred = false;
  double centre[3] = {0, 0, 0};  // px from the box centre (when recentred)
};

ParticleSubtractResult particle_subtract(const ParticleSubtractOptions& opt);

// What the subtraction's CTF and projection do not model (also refine3d --multibody_masks): InputError
// for optics groups of another pixel or box size than the refinement's model (model_pixel Å,
// model_box px), beam tilt, Zernike aberrations, anisotropic magnification, or different MTFs.
void check_subtraction_optics(const ParticleTable& table, double model_pixel, int model_box);
// The group of each particle (0-based) as RELION's Experiment numbers them, the index into a model's
// data_model_groups: groups in order of first appearance of rlnGroupName, or else of the micrograph
// name without its "Job/jobNNN/" prefix; a single group when the file has neither.
std::vector<int> relion_group_index(const ParticleTable& table);
// Particle i's transform minus a model projection P, both centred half-complex of the image's box, as the
// refinement f modelled its images: F -= scale CTF P (CTF^2 when the data are CTF-premultiplied; no CTF
// when f has none; |CTF| for phase-flipped data). pixel_size: the image's, Å.
void subtract_projection(Grid<cfloat>& F, const Grid<cfloat>& P, const RefinementFiles& f, const ParticleTable& table,
                         size_t i, bool premultiplied, double scale, double pixel_size);

}  // namespace regula

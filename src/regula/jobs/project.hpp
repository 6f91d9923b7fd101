// Projections of a map: `regula project`, the counterpart of relion_project.
//
// For each pose (from --ang, a RELION particle STAR file, or --nr_uniform N
// random poses uniform on SO(3)) the output image is the Fourier central slice
// of the map for A = euler_to_matrix(rot, tilt, psi) (linear interpolation on a
// lattice padded by --pad, sinc^2 pre-correction; imaging/projector.hpp), made as
// RELION's observation model predicts a particle (imaging/optics_model.hpp):
//   * at the particle's optics group's sampling (rlnImagePixelSize, rlnImageSize;
//     the map's where the file gives none) and anisotropic magnification
//     (rlnMagMat): image frequency k samples the map at M k (N P) / (m p);
//   * with --ctf, multiplied by the particle's CTF C (defocus U/V/angle, phase
//     shift, B-factor and scale from the STAR file; voltage, Cs, amplitude
//     contrast, rlnEvenZernike and the magnification from its optics group;
//     imaging/ctf.hpp) -- |C| for phase-flipped data (rlnCtfDataArePhaseFlipped or
//     --ctf_phase_flip), C^2 for CTF-premultiplied data -- and by exp(i phi), the
//     phase of the group's beam tilt and rlnOddZernike;
//   * moved by MINUS the origin offset (rlnOriginX/YAngst / pixel size, in px),
//     as a RELION 3.1 particle is formed,
//   * with --add_noise, plus white Gaussian noise of standard deviation
//     --white_noise (same units as the projection: the line integral of the map
//     in voxels), from a stream seeded by (--seed, particle index).
// relion_project 3.1.3 agrees for one optics group at the map's sampling without
// anisotropic magnification in the geometry and without beam tilt or odd Zernikes
// (it renders every image at the map's box and pixel size, applies the
// magnification matrix and even Zernikes in the CTF only, and no phase).
// Images are m x m (the group's box), origin at m/2, scaled as relion_project
// (sum along z). Outputs ROOT.mrcs (or ROOT_opticsgroupG.mrcs per optics group
// when the groups' boxes differ) and ROOT.star (3.1 form: optics block with
// rlnImagePixelSize/rlnImageSize, every input column kept, rlnImageName
// "N@ROOT.mrcs").
//
// Pixel size of the map (Å): --angpix if given, else the map header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

class ParticleTable;

struct ProjectOptions {
  std::string map;          // --i: cubic map (MRC)
  std::string out_root;     // --o: writes ROOT.mrcs and ROOT.star
  std::string ang_star;     // --ang: poses (and CTF) from this particle STAR file
  long nr_uniform = 0;      // --nr_uniform: this many random poses instead of --ang
  bool ctf = false;         // --ctf: multiply by each particle's CTF (needs --ang)
  bool ctf_phase_flip = false;  // --ctf_phase_flip: |CTF| (phase-flipped images)
  double angpix = 0;        // --angpix (Å); 0 = from the map header
  bool add_noise = false;   // --add_noise
  double white_noise = 0;   // --white_noise: noise standard deviation (image units)
  double maxres = 0;        // --maxres (Å): zero frequencies beyond; 0 = Nyquist
  int pad = 2;              // --pad: Fourier oversampling of the projector
  uint64_t seed = 0;        // --seed: poses of --nr_uniform and noise
  int threads = 1;          // --j

  // "" when valid, else a one-line message naming the option and the constraint.
  std::string validate() const;
};

struct ProjectResult {
  std::string stack, star;  // paths written (stack: the first of stacks)
  std::vector<std::string> stacks;  // one, or one per optics group when their boxes differ
  long count = 0;           // images
  int box = 0;              // px
  double angpix = 0;        // Å
};

// Throws InputError (bad options or input files; nothing is written then).
ProjectResult project(const ProjectOptions& opt);


}  // namespace regula

// Projections of a map: `regula project`, the counterpart of relion_project.
//
// For each pose (from --ang, a RELION particle STAR file, or --nr_uniform N
// random poses uniform on SO(3)) the output image is the Fourier central slice
// of the map for A = euler_to_matrix(rot, tilt, psi) (linear interpolation on a
// lattice padded by --pad, sinc^2 pre-correction; imaging/projector.hpp), then
//   * with --ctf, multiplied by the particle's CTF (defocus U/V/angle, phase
//     shift, B-factor and scale from the STAR file; voltage, Cs and amplitude
//     contrast from its optics group; imaging/ctf.hpp),
//   * moved by MINUS the origin offset (rlnOriginX/YAngst / pixel size, in px),
//     as a RELION 3.1 particle is formed,
//   * with --add_noise, plus white Gaussian noise of standard deviation
//     --white_noise (same units as the projection: the line integral of the map
//     in voxels), from a stream seeded by (--seed, particle index).
// Images are n x n (the map box), origin at n/2, scaled as relion_project
// (sum along z). Outputs ROOT.mrcs and ROOT.star (3.1 form: optics block with
// rlnImagePixelSize/rlnImageSize, every input column kept, rlnImageName
// "N@ROOT.mrcs").
//
// Pixel size (Å): --angpix if given, else the map header. With --ang and --ctf
// the STAR optics pixel size must agree with it within 1% (InputError otherwise).
#pragma once
#include "regula/imaging/particle_ctf.hpp"
#include <cstddef>
#include <cstdint>
#include <string>

#include "regula/imaging/ctf.hpp"

namespace regula {

class ParticleTable;

struct ProjectOptions {
  std::string map;          // --i: cubic map (MRC)
  std::string out_root;     // --o: writes ROOT.mrcs and ROOT.star
  std::string ang_star;     // --ang: poses (and CTF) from this particle STAR file
  long nr_uniform = 0;      // --nr_uniform: this many random poses instead of --ang
  bool ctf = false;         // --ctf: multiply by each particle's CTF (needs --ang)
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
  std::string stack, star;  // paths written
  long count = 0;           // images
  int box = 0;              // px
  double angpix = 0;        // Å
};

// Throws InputError (bad options or input files; nothing is written then).
ProjectResult project(const ProjectOptions& opt);


}  // namespace regula

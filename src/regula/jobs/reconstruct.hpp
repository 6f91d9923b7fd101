// Reconstruction from particles with known poses: `regula reconstruct`, the
// counterpart of relion_reconstruct.
//
// Each particle image (read lazily from its stack) is Fourier transformed about
// its centre n/2, moved by PLUS its origin offset (rlnOriginX/YAngst / pixel
// size, in px: the inverse of the particle formation, see jobs/project.hpp),
// and inserted at A = euler_to_matrix(rot, tilt, psi) into a lattice padded by
// --pad (imaging/backprojector.hpp) at the map's sampling. The image model is
// imaging/optics_model.hpp, as relion_reconstruct's: with --ctf the image is
// corrected for its optics group's antisymmetric aberrations (beam tilt,
// rlnOddZernike), multiplied by its CTF C (with rlnEvenZernike and the
// magnification matrix; |C| for phase-flipped data: rlnCtfDataArePhaseFlipped or
// --ctf_phase_flipped; not multiplied for rlnCtfDataAreCtfPremultiplied data) and
// weighted by C^2; without --ctf, weight 1 and no aberration correction (as
// RELION). Each image keeps its own box and pixel size: coefficient k of an image
// of box m and pixel p goes to the map frequency M k (N P) / (m p) (N, P: the
// map's box and pixel size, M the magnification matrix), so optics groups of
// different sampling are reconstructed together. As relion_reconstruct, the origin
// coefficient (the image's mean) of each image is set to 0 (its weight is kept). Threads work on fixed contiguous ranges of
// particles, each with its own accumulator, summed in range order: the result
// is the same for every run with the same --j (float rounding differs between
// different --j). Then point-group symmetry (--sym) is applied to the
// accumulated data and weights, and the map is reconstructed as
// relion_reconstruct does without --fsc (no Wiener term): iterative gridding
// (Pipe & Menon, 10 iterations, Kaiser-Bessel blob radius 1.9, order 0,
// alpha 15, convolved through FFTs), inverse FFT, crop, corner mask, sinc^2
// correction (BackProjector::reconstruct), coefficients beyond --maxres zeroed.
// The output map has the box of the first particle (or --newbox) and the pixel size of
// the first optics group (or --angpix), header set, origin n/2.
#pragma once
#include <string>

namespace regula {

struct ReconstructJobOptions {
  std::string star;          // --i: particle STAR file (poses, origins, CTF)
  std::string out_map;       // --o: output map (MRC)
  bool ctf = false;          // --ctf: CTF-multiply images, CTF^2 weights
  bool ctf_phase_flipped = false;  // --ctf_phase_flipped: every image is phase-flipped (|CTF|)
  int newbox = 0;            // --newbox: box of the map (0: the first particle's)
  std::string sym = "C1";    // --sym: point group (sampling/symmetry.hpp)
  double maxres = 0;         // --maxres (Å): highest frequency used; 0 = Nyquist
  double angpix = 0;         // --angpix (Å): pixel size of the map (and of groups the STAR file gives none)
  int pad = 2;               // --pad: Fourier oversampling
  int gridding_iterations = 10;  // --iter
  double blob_r = 1.9;           // --blob_r: gridding blob radius (Fourier px of the original box)
  int blob_m = 0;                // --blob_m: blob order
  double blob_a = 15.0;          // --blob_a: blob alpha
  int threads = 1;           // --j

  std::string validate() const;
};

struct ReconstructResult {
  long particles = 0;
  int box = 0;        // px
  double angpix = 0;  // Å of the map
  int r_max = 0;      // highest frequency used, Fourier px
};

ReconstructResult reconstruct(const ReconstructJobOptions& opt);

}  // namespace regula

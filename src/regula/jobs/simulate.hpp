// Ground-truth particle data sets from one or two maps: `regula simulate`.
//
// Each particle i is made from its own random stream (seed, i), so the data do
// not depend on the thread count:
//   1. map: the second map with probability frac2 (rlnClassNumber 2), else the first;
//      with --views V, rlnClassNumber is instead the view (1..V);
//   2. orientation: uniform on the sphere with uniform psi; with --views V, one of V
//      viewing directions (rot, tilt) drawn once from the seed, psi uniform;
//   3. shift: uniform in a disc of radius max_shift pixels; the image content is
//      moved by (dx, dy) px, so the truth has rlnOriginX/YAngst = (-dx, -dy) * angpix
//      (RELION 3.1 convention: the origin is the shift that re-centres the particle);
//   4. CTF: defocus U uniform in [defocus_min, defocus_max] Å, V = U - astigmatism
//      with astigmatism uniform in [0, 300] Å, angle uniform in [0, 180) degrees; with
//      --micrographs M, particle i is on micrograph floor(i M / n) (rlnMicrographName
//      micNNNN.mrc), whose defocus, astigmatism and angle are drawn so from the micrograph's
//      own stream, and the particle's U and V are those plus a height in the ice uniform in
//      +-defocus_spread/2 Å;
//   5. noise: white Gaussian with variance var(signal) / snr, where var(signal) is
//      the mean over the first min(n, 200) particles of the variance of the noise-free,
//      CTF-modulated image over the whole box;
//   6. normalised as `relion_preprocess --norm` does: minus the mean and divided by
//      the standard deviation of the pixels outside a circle of radius bg_radius
//      (default 0.75 * box/2).
// Optics (imaging/optics_model.hpp, the image model `reconstruct` and `project` use):
// --beamtilt_x/y (mrad), --odd_zernike and --even_zernike (RELION's coefficient order,
// radians) and --mag (the 2x2 magnification matrix) apply to every optics group and are
// written to data_optics; with --og2_fraction F a fraction F of the particles (drawn from
// their own stream, seed and particle index) form optics group 2 with pixel size
// --og2_angpix and box --og2_box (rendered at that sampling from the same map; own noise
// level from its own signal variance at --snr per pixel, times --og2_box / the box: the same noise
// per pixel in a larger box around the same particle; stack DIR/particles_og2.mrcs); with --premultiply
// the noisy images are multiplied by their CTF once more (rlnCtfDataAreCtfPremultiplied 1),
// as RELION's extraction with CTF premultiplication.
// Junk (--junk_fraction F; drawn per image from its own stream, and its kind too): a fraction F of
// the images holds no particle but one of, equally likely,
//   1 empty ice: noise only;
//   2 carbon edge: a half-plane of carbon (a step across the box at a random angle and distance
//     <= box/4 from the centre, 3 px soft edge, with 30% low-passed texture), 3x the particles'
//     signal variance;
//   3 aggregate: 2-4 copies of the particle at random poses, 0.15-0.35 box apart, overlapping;
//   4 contamination (ice crystal, ethane): a dense disc of radius 0.08-0.25 box anywhere within
//     box/3 of the centre, soft edge, 4x the particles' signal variance;
//   5 a wrong particle: a projection of --junk_map (when given) at the particles' signal variance;
// all through the same CTF and noise as the particles. truth.star marks each image with
// rlnRegulaTruthKind (0 particle, 1-5 the kinds above); particles.star does not tell.
// Outputs: DIR/particles.mrcs, DIR/particles.star (3.1 form, CTF, no poses),
// DIR/truth.star (the same plus rlnAngleRot/Tilt/Psi, rlnOriginX/YAngst,
// rlnClassNumber), DIR/truth_map1.mrc (and truth_map2.mrc): the maps as projected,
// after --box, with the pixel size. Image names are "N@DIR/particles.mrcs", relative to the
// working directory as RELION resolves them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

struct SimulateOptions {
  std::string map;            // --i
  std::string map2;           // --i2 (optional)
  double frac2 = 0.5;         // --frac2: fraction of particles from map2
  std::string out_dir;        // --o
  long n = 0;                 // --n
  double angpix = 0;          // --angpix (Å); 0 = from the map header
  int box = 0;                // --box: pad/crop the map to this size (0 = map size)
  double snr = 0.05;          // --snr (0 or less: no noise)
  bool ctf = true;            // --no_ctf turns it off
  double defocus_min = 10000; // Å
  double defocus_max = 30000; // Å
  double voltage = 300;       // kV
  double cs = 2.7;            // mm
  double amplitude_contrast = 0.1;
  double max_shift = 0;       // px
  int views = 0;              // --views V (0 = uniform orientations)
  double bg_radius = 0;       // px; 0 = 0.75 * box/2
  double beamtilt_x = 0;                    // --beamtilt_x: mrad
  double beamtilt_y = 0;                    // --beamtilt_y: mrad
  std::vector<double> odd_zernike;          // --odd_zernike c0,c1,...: rlnOddZernike
  std::vector<double> even_zernike;         // --even_zernike c0,c1,...: rlnEvenZernike
  std::vector<double> mag;                  // --mag m00,m01,m10,m11 (empty: identity)
  bool premultiply = false;                 // --premultiply: CTF-premultiplied images
  double og2_fraction = 0;                  // --og2_fraction: particles in optics group 2
  double og2_angpix = 0;                    // --og2_angpix: its pixel size, Å (0: as group 1)
  int og2_box = 0;                          // --og2_box: its box, px (0: as group 1)
  long micrographs = 0;                     // --micrographs M: particles in M micrographs (0: one)
  double defocus_spread = 0;                // --defocus_spread: Å, particle heights within a micrograph
  double noise_spread = 1;                  // --noise_spread R: with --micrographs, noise sigma per micrograph
                                            // times R^(u - 1/2), u uniform (ice thickness; max/min = R)
  double noise_bfactor = 0;                 // --noise_bfactor B (Å^2): coloured noise, amplitude exp(-B s^2 / 4)
                                            // at spatial frequency s (1/Å), rescaled to keep the per-pixel
                                            // variance (and so --snr); 0: white
  double junk_fraction = 0;                 // --junk_fraction: share of the images that are junk
  std::string junk_map;                     // --junk_map: a wrong particle, one more kind of junk
  uint64_t seed = 1;
  int threads = 1;

  // "" when valid, else a message naming the option and the constraint.
  std::string validate() const;
};

struct SimulateResult {
  std::string particles_star, truth_star, stack;
  std::string stack2;      // optics group 2's stack ("" without --og2_fraction)
  double noise_sigma = 0;  // before normalisation (optics group 1)
  double signal_variance = 0;
  double map_scale = 1;    // truth maps = input map (after --box) times this: the particles' grey scale
};

SimulateResult simulate(const SimulateOptions& opt);

}  // namespace regula

// Ground-truth movies: `regula simulate_movies` (its own subcommand rather than an option of
// `simulate`: it shares none of simulate's options (a particle box, SNR, one CTF per particle),
// makes a different node (movies, RELION's NODE_MOVIES) and its help reads on its own).
//
// For each movie i (random streams (seed, i), so the data do not depend on --j):
//  1. a scene (micrograph/scene.hpp): particles of every --i map at known positions and poses,
//     aggregates, ice crystals, a carbon edge (with probability --carbon), amorphous ice, and the
//     micrograph's defocus (mean uniform in [--defocus_min, --defocus_max]), astigmatism
//     (uniform in [0, --astigmatism_max]) and astigmatism angle (uniform in [-90, 90));
//  2. motion (micrograph/movie_render.hpp): global drift of --drift_min..--drift_max px in total,
//     fast at the start, plus a smooth local deformation of up to --local_max px;
//  3. frames: the expected electrons per pixel (--dose_per_frame e/Å² per frame, damage by the
//     exposure at the middle of each frame, after --preexposure) times the detector's per-pixel
//     efficiency q (with --gain: uniform in [0.85, 1.15], and the gain reference written is 1/q,
//     which RELION multiplies the frames by), drawn as Poisson counts; --hot_pixels pixels of the
//     detector (the same in every movie) add Poisson(20 x dose per pixel) counts in every frame.
//
// Outputs in --o DIR:
//   Movies/movie_NNN.mrc (or .tif with --format tiff): the frames (MRC --mode 0, 1, 2, 6 or 12;
//     TIFF --tiff_bits 8 or 16, LZW unless --no_lzw);
//   movies.star: data_optics + data_movies as relion_import --do_movies writes them (names
//     relative to the working directory, as RELION resolves them);
//   gain.mrc (with --gain): the gain reference, stored rotated/flipped so that RELION's
//     --gain_rot/--gain_flip with the values given here recover the detector's;
//   truth_micrographs.star: per movie the CTF (rlnDefocusU/V, rlnDefocusAngle, rlnCtfAstigmatism,
//     rlnVoltage...), the total drift and local amplitude, the numbers of particles;
//   truth_particles.star: data_optics + data_particles (rlnMicrographMovieName,
//     rlnCoordinateX/Y in pixels, rlnAngleRot/Tilt/Psi, rlnClassNumber = map number, the CTF);
//   truth_junk.star: aggregates, ice crystals and carbon edges (kind, position, radius, angle);
//   Truth/movie_NNN_motion.star: data_global_shift (rlnMicrographFrameNumber,
//     rlnMicrographShiftX/Y: RELION's convention, the shift that re-aligns frame f onto frame 1,
//     i.e. minus the drift) and data_local_shift (the total shift on an 8 x 8 grid of positions
//     rlnCoordinateX/Y, per frame);
//   Truth/movie_NNN_tracks.star: every particle's displacement per frame at its position (global
//     plus local, in Å, 0 in the first frame), in relion_motion_refine's tracks format (data_general
//     rlnParticleNumber; data_0, data_1...: rlnOriginXAngst/YAngst per frame; particles in the order
//     of truth_particles.star);
//   Truth/movie_NNN_ideal.mrc (unless --no_ideal): the drift-free, undamaged, noise-free image
//     (intensity, mean about 1), the reference for the FRC of a motion-corrected sum.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

struct SimulateMoviesOptions {
  std::vector<std::string> maps;     // --i (one or more)
  std::vector<double> fractions;     // --fractions (relative abundance of each map)
  std::string out_dir;               // --o
  int movies = 20;                   // --n
  int nx = 2048, ny = 2048;          // --size / --size_y
  double angpix = 1.0;               // --angpix (must match the maps' within 1%)
  int frames = 40;                   // --frames
  double dose_per_frame = 1.0;       // e/Å²
  double preexposure = 0;            // e/Å²
  double voltage = 300, cs = 2.7, amplitude_contrast = 0.1, bfactor = 0;
  double defocus_min = 5000, defocus_max = 40000, astigmatism_max = 2000;  // Å
  int particles = 100;               // per micrograph
  double ice_rms = 0.15;
  int aggregates = 1, ice_crystals = 1;
  double carbon = 0.3;               // probability of a carbon edge
  double drift_min = 5, drift_max = 30, local_max = 2.0;  // px
  bool gain = false;
  int gain_rot = 0, gain_flip = 0;   // as RELION's --gain_rot / --gain_flip
  int hot_pixels = 0;
  std::string format = "mrc";        // mrc or tiff
  int mode = 6;                      // MRC mode
  int tiff_bits = 8;
  bool lzw = true;
  bool ideal = true;
  bool damage = true;                // --no_damage: frames without radiation damage (tests)
  uint64_t seed = 1;
  int threads = 1;

  std::string validate() const;
};

struct SimulateMoviesResult {
  std::string movies_star, truth_micrographs, truth_particles, gain;
  std::vector<std::string> movie_files;
  long particles = 0;
};

SimulateMoviesResult simulate_movies(const SimulateMoviesOptions& opt);

}  // namespace regula

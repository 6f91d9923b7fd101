// Bayesian polishing: `regula polish`, the counterpart of relion_motion_refine (RELION's Polish
// job): per-particle motion tracks in every movie, per-frame B-factors, and "shiny" particles
// re-extracted from the movies with those tracks and weights.
//
// Inputs: refined particles (--i: rlnMicrographName, rlnCoordinateX/Y, poses, origins, CTF,
// rlnRandomSubset), the two half maps (--m1/--m2 [--mask] or --f postprocess.star) and motion
// correction's micrograph list (--corr_mic corrected_micrographs.star: rlnMicrographName ->
// rlnMicrographMetadata, the per-movie STAR file of micrograph/motion_model.hpp with the movie,
// gain, binning, pixel size, dose, global shifts, local model and hot pixels).
//
// Per micrograph (one at a time; the threads share its particles):
//  1. frames --first_frame..--last_frame of the movie, times the gain, hot pixels replaced by the
//     mean of their good neighbours; for particle p in frame f a box of s_mov = box x
//     (particle pixel / movie pixel) movie pixels at its initial track: the coordinate (in movie
//     pixels, coordinate x binning) minus motion correction's shift of that frame there (global
//     plus local model); the box Fourier-cropped to the particle box, the sub-pixel remainder
//     applied as a phase shift;
//  2. the prediction of each particle from its own half map (pose, origin, CTF, aberrations,
//     magnification: imaging/optics_model.hpp) times the radiation damage of the frame (Grant &
//     Grigorieff's critical exposure at the middle of the frame, after rlnMicrographPreExposure);
//     a grey scale (sign included: frames are raw counts) and the noise power per shell from the
//     residuals of all the micrograph's frames (two rounds);
//  3. per particle and frame, the Gaussian log-likelihood of a displacement d from the initial track
//     (frequencies up to where the half maps' FSC first falls to 0; the references are FSC-weighted)
//     on the pixel grid |d| <= --range (one inverse FFT per particle and frame), and the tracks of
//     all the micrograph's particles fitted together with the Gaussian-process prior of
//     micrograph/particle_motion.hpp: velocity s.d. --s_vel x dose per frame (Å per e/Å²),
//     spatial correlation exp(-distance / --s_div) (Å), acceleration s.d. --s_acc x dose per frame,
//     and a Gaussian prior on each track's mean displacement whose width is estimated per micrograph by
//     EM from the likelihood of a constant displacement against the OTHER half map (own noise in the
//     own half map would pull it to 0);
//  4. the sums of the per-frame Fourier shell correlation with the OTHER half map (so the
//     particle's own noise does not correlate), over all micrographs.
// Then per frame a B-factor and scale (FCC_f(k) ~ g(k) a_f exp(B_f k^2 / 4) by least squares over
// --bfac_minfreq .. --bfac_maxfreq (default: the half maps' FSC 0.143); B_f quadratic in the frame
// number, a_f free (--bfac_per_frame: each B_f on its own, as RELION); B_f relative to the best
// frame) and the frame weights W_f(k) = a_f exp(B_f k^2 / 4), normalised to sum to 1 over the
// frames at every frequency. With --combine_frames, each movie is read again and each particle's
// frames moved by its track, weighted and summed (Fourier space), normalised as relion_preprocess
// (background beyond 75% of the box radius: mean 0, s.d. 1) with the particles' contrast.
//
// Outputs in --o DIR/ (RELION's names; ROOT = DIR/ + rlnMicrographName without its job directory
// ("Type/jobNNN/") and extension): ROOT_tracks.star (data_general: rlnParticleNumber; data_0, data_1...: one row
// per frame, rlnOriginXAngst/YAngst, the particle's displacement in Å from its position in the
// micrograph), bfactors.star (data_perframe_bfactors: rlnMovieFrameNumber, rlnBfactorUsedForSharpening,
// rlnFittedInterceptGuinierPlot), bfactors.png, and with --combine_frames ROOT_shiny.mrcs and
// shiny.star (the input with rlnImageName pointing there; origins, coordinates kept).
// Differences from RELION 3.1 (docs/polish.md): the data term is the Gaussian log-likelihood with
// the measured noise and the prior a normalised Gaussian (RELION's cross-correlation of whitened
// images and a prior without the 1/2: its s_vel, s_div, s_acc mean somewhat different amounts of
// smoothing); the shiny particles keep the particles' box and pixel size (--window / --scale are
// not offered) and are normalised as extracted particles. With --only_do_unfinished a micrograph whose
// ROOT_tracks.star exists is not fitted again: its tracks, grey scale and FCC sums are read from
// ROOT_polish_sums.bin (written beside the tracks, in binary), so the B-factors and shiny particles are
// those of an uninterrupted run. Under mpirun the ranks take the micrographs in turn (mi = rank mod ranks),
// then each reads all the micrographs' sums files in order: the files are those of one process; rank 0
// writes bfactors.star/png and shiny.star. With --params2/--params3 (RELION's parameter training) the job
// fits the prior's s_vel, s_div (and s_acc) instead: tracks from the lower frequencies of micrographs
// drawn until --min_p particles, scored by the correlation of the moved frames with the other half map
// at the higher frequencies, Nelder-Mead; writes opt_params_all_groups.txt for --params_file
// (docs/polish.md). Not yet: EER movies.
#pragma once
#include <array>
#include <string>
#include <vector>

namespace regula {

struct PolishOptions {
  std::string particles;          // --i
  std::string out_dir;            // --o
  std::string postprocess;        // --f
  std::string half1, half2, mask; // --m1, --m2, --mask
  double angpix_ref = -1;         // --angpix_ref
  int pad = 2;                    // --pad
  std::string corr_mic;           // --corr_mic
  int first_frame = 1;            // --first_frame (1-based)
  int last_frame = -1;            // --last_frame (-1: the last)
  double s_vel = 0.5;             // --s_vel, Å per e/Å²
  double s_div = 5000;            // --s_div, Å
  double s_acc = 2;               // --s_acc, Å per e/Å²
  std::string params_file;        // --params_file: "s_vel s_div s_acc"
  double fdose = -1;              // --fdose: dose per frame (e/Å²; <= 0: from the metadata)
  int range = 20;                 // --range: largest displacement from the initial track, px of the particles
  int max_iters = 300;            // --max_iters
  bool combine_frames = false;    // --combine_frames
  double bfac_minfreq = 20;       // --bfac_minfreq, Å
  double bfac_maxfreq = -1;       // --bfac_maxfreq, Å (<= 0: FSC 0.143)
  bool bfac_per_frame = false;    // --bfac_per_frame: each frame's B-factor on its own (RELION's fit)
  bool only_do_unfinished = false;  // --only_do_unfinished: micrographs with tracks (and their sums) are kept
  int threads = 1;                // --j
  // Training mode (RELION's --params2/--params3): the prior's parameters instead of tracks.
  bool params2 = false;           // --params2: s_vel and s_div (s_acc fixed at --s_acc_0)
  bool params3 = false;           // --params3: s_vel, s_div and s_acc
  double align_frac = 0.5;        // --align_frac: fraction of the fitted pixels (lowest) to align with
  double eval_frac = 0.5;         // --eval_frac: fraction of the fitted pixels (highest) to score with
  int min_p = 1000;               // --min_p: particles to train on (whole micrographs, drawn at random)
  int par_group = -1;             // --par_group: train on this optics group only (1-based; <= 0: all)
  double s_vel_0 = 0.6, s_div_0 = 10000, s_acc_0 = 3;  // --s_vel_0, --s_div_0, --s_acc_0: the start
  double in_step = 3000;          // --in_step: initial simplex step (scaled units: s_vel x 1e4, s_div, s_acc x 1e3)
  double conv = 30;               // --conv: stop when the simplex is smaller than this (scaled units)
  int par_iters = 100;            // --par_iters: most Nelder-Mead iterations
  int seed = 23;                  // --seed: the micrographs' random draw

  std::string validate() const;
};

struct PolishFrame {
  int frame = 0;  // 0-based index among the frames used
  double bfactor = 0, intercept = 0;
};

struct PolishResult {
  std::string shiny_star, bfactors_star;
  long particles = 0, skipped = 0;
  int micrographs = 0, micrographs_skipped = 0;
  std::vector<PolishFrame> frames;
  // Training mode: the parameters found (s_vel, s_div, s_acc; s_acc -1: no acceleration term), the
  // score (correlation of the evaluation pixels) at the start and at the end, and the file written.
  std::array<double, 3> trained{};
  double score_start = 0, score_end = 0;
  std::string params_out;
};

PolishResult polish(const PolishOptions& opt);

}  // namespace regula

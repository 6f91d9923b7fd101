// Beam-induced motion correction: `regula motioncorr`, RELION's MotionCorr job
// (relion_run_motioncorr --use_own) with its options and outputs.
//
// Per movie (MRC modes 0, 1, 2, 6, 12 or TIFF), with frames --first_frame_sum..--last_frame_sum:
//  1. gain reference (--gainref, oriented by --gain_rot/--gain_flip as RELION, micrograph/gain.hpp)
//     multiplied in; defects (--defect_file: MotionCor2's "x y w h" text or a map where non-zero is
//     bad), pixels where the gain is 0 and hot pixels (above mean + 6 sd of the unaligned sum, as
//     RELION; not with --skip_defect) replaced by a random good neighbour (seeded per movie);
//  2. frames Fourier transformed and binned by Fourier cropping (--bin_factor; shifts are written
//     in pixels of the movie);
//  3. global alignment of all frames (micrograph/motion_align.hpp, B-factor --bfactor);
//  4. with --patch_x and --patch_y both above 2 (RELION's rule), the global alignment again with
//     contrast weights (--contrast_window, micrograph/movie_correct.cpp: the field's mean motion rather
//     than a carbon edge's), then patches of frame groups
//     (--group_frames, RELION's grouping) aligned after the global shifts, and RELION's
//     third-order polynomial model fitted to them (dropped when its rms misfit is 10 px or more);
//  5. --dose_weighting: Grant & Grigorieff's weights per frame (micrograph/dose.hpp);
//  6. the sum: global shifts as exact phase shifts in Fourier space; the local model's remaining
//     shifts applied by cubic B-spline interpolation (RELION: bilinear) to groups of consecutive
//     frames whose local shifts differ by less than 0.05 px.
// Outputs in --o DIR/ (RELION's names, ROOT = DIR/<movie name without extension, '.' -> '_'>):
//   ROOT.mrc (dose-weighted with --dose_weighting), ROOT_noDW.mrc (--save_noDW), ROOT_PS.mrc
//   (--grouping_for_ps N: the amplitude spectrum summed over groups of N unaligned frames,
//   resampled to --ps_size px at no less than 1.4 Å per pixel, as RELION), ROOT.star (the motion,
//   micrograph/motion_model.hpp, which relion_motion_refine reads), ROOT_shifts.png (the
//   trajectories, scaled up 20x), ROOT.log; corrected_micrographs.star (data_optics with
//   rlnMicrographPixelSize, data_micrographs with rlnMicrographName, rlnMicrographMetadata,
//   rlnOpticsGroup, rlnAccumMotionTotal/Early/Late and rlnCtfPowerSpectrum/rlnMicrographNameNoDW).
// --only_do_unfinished (and `regula run --job DIR --continue`) keeps movies whose outputs exist. A
// bad movie (unreadable, truncated, too few frames, gain of another size) is skipped with a message.
// Under mpirun the movies are split over the ranks; rank 0 joins. Not done: EER movies,
// --no_early_binning, MotionCor2 (--use_motioncor2 is refused).
#pragma once
#include <cstdint>
#include <string>

namespace regula {

struct MotioncorrOptions {
  std::string input, out_dir;  // --i, --o
  int first_frame = 1;         // --first_frame_sum
  int last_frame = -1;         // --last_frame_sum
  double bin_factor = 1;       // --bin_factor
  double bfactor = 150;        // --bfactor (px^2)
  std::string gainref;         // --gainref
  int gain_rot = 0, gain_flip = 0;
  std::string defect_file;     // --defect_file
  int patch_x = 1, patch_y = 1;
  int group_frames = 1;        // --group_frames
  bool dose_weighting = false;
  double angpix = -1, voltage = -1;  // when the STAR file has none
  double dose_per_frame = 1, preexposure = 0;
  bool save_noDW = false, skip_defect = false;
  int max_iter = 5;            // --max_iter (RELION's default)
  double contrast_window = 256;  // --contrast_window (Å; 0: none)
  int grouping_for_ps = -1, ps_size = 512;
  bool only_unfinished = false;
  double dose_motionstats_cutoff = 4;
  int threads = 1;
  uint64_t seed = 1;           // hot-pixel replacement

  std::string validate() const;
};

struct MotioncorrResult {
  std::string star;
  int done = 0, skipped = 0, failed = 0;
};

MotioncorrResult motioncorr(const MotioncorrOptions& opt);

// RELION's name of the corrected micrograph of `movie` in `out_dir` (ending in '/').
std::string motioncorr_output_name(const std::string& movie, const std::string& out_dir);

}  // namespace regula

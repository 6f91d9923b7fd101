// Motion correction of one movie (the mathematics of jobs/motioncorr): frames read into a reusable
// workspace, defects and hot pixels, Fourier transforms (in place) and binning, global and patch
// alignment, the polynomial local model, dose weighting and the corrected sums, and RELION's
// power-spectrum sum. See jobs/motioncorr.hpp for the steps and where they differ from
// relion_run_motioncorr --use_own.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/fft.hpp"
#include "regula/core/grid.hpp"
#include "regula/core/parallel.hpp"
#include "regula/io/movie.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/micrograph/frame_store.hpp"
#include "regula/micrograph/motion_align.hpp"
#include "regula/micrograph/motion_model.hpp"

namespace regula {

struct CorrectParams {
  double bin_factor = 1;
  double bfactor = 150;       // px^2 of the movie (RELION's --bfactor)
  double highpass = 0.02;     // cycles per pixel of the binned frames (motion_align.hpp)
  int patch_x = 1, patch_y = 1, group_frames = 1;
  int max_iter = 5;
  double patch_search = 10;   // px of the binned frames: largest local shift beyond the global one
  double tolerance = 0.005;   // px, rms change of a trajectory between rounds
  bool smooth = true;         // temporal regularisation of the global trajectory (smooth_trajectory)
  double contrast_window = 256;  // Å: with local motion, the global alignment again with contrast weights (0: not)
  double early_exposure = 4;  // e/Å²: frames ending before this exposure keep their curvature free
  bool dose_weighting = false, save_noDW = false, skip_defect = false;
  double angpix = 1, voltage = 300, dose_per_frame = 1, preexposure = 0;
  int grouping_for_ps = -1, ps_size = 512;
  uint64_t seed = 1, stream = 0;
};

// Frames [first, first + count) of `movie` (0-based), times `gain` when given; `bad` marks defect
// pixels (1 = bad; may be empty).
struct CorrectInput {
  MovieReader* movie = nullptr;
  int first = 0, count = 0;
  const Grid<float>* gain = nullptr;
  const Grid<unsigned char>* bad = nullptr;
};

struct CorrectOutput {
  Grid<float> sum, sum_noDW;         // binned micrograph(s)
  Grid<float> ps;                    // power spectrum (empty without grouping_for_ps)
  double ps_angpix = 0;
  double out_angpix = 0;
  std::vector<double> shift_x, shift_y;  // per frame used, movie pixels
  bool has_model = false;
  PolynomialMotion model;
  std::vector<MovieMotion::Observation> local;  // frames 1-based in the movie
  std::vector<int> hot_x, hot_y;
  std::string log;                   // what happened, for ROOT.log
};

// Memory kept from one movie to the next (frames, crops, dose weights, the local sums' and the
// alignments' buffers).
struct MovieWorkspace {
  // The local sums' buffers, one per thread: a run's spectrum for each sum (kept: fresh pages of this
  // size cost the kernel's zeroing at every movie).
  struct RunSlot {
    AlignedArray<cfloat> spec[2];
  };
  std::vector<RunSlot> run_slots;
  FrameStore store;
  std::vector<Grid<cfloat>> crops;
  std::vector<AlignedArray<cfloat>> groups, group_crops;  // local motion: group sums; per thread a frame's crop
  std::vector<float> edge_rows, edge_cols;
  DoseWeighting dose;
  AlignBuffers align;
};

CorrectOutput correct_movie(const CorrectInput& in, const CorrectParams& p, MovieWorkspace& ws, ThreadPool& pool);

}  // namespace regula

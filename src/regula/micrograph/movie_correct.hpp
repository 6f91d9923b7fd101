// Motion correction of one movie held in memory (the mathematics of jobs/motioncorr): defects and
// hot pixels, Fourier transforms and binning, global and patch alignment, the polynomial local
// model, dose weighting and the corrected sums, and RELION's power-spectrum sum. See
// jobs/motioncorr.hpp for the steps and where they differ from relion_run_motioncorr --use_own.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/core/parallel.hpp"
#include "regula/micrograph/motion_model.hpp"

namespace regula {

struct CorrectParams {
  double bin_factor = 1;
  double bfactor = 150;
  int patch_x = 1, patch_y = 1, group_frames = 1;
  int max_iter = 20;
  double smoothness = 1.0;  // temporal regularisation of the global trajectory (AlignParams)
  bool dose_weighting = false, save_noDW = false, skip_defect = false;
  double angpix = 1, voltage = 300, dose_per_frame = 1, preexposure = 0;
  int grouping_for_ps = -1, ps_size = 512;
  uint64_t seed = 1, stream = 0;
};

struct CorrectInput {
  std::vector<Grid<float>> frames;   // the frames used, gain already applied
  std::vector<int> frame_index;      // their 0-based index in the movie
  Grid<unsigned char> bad;           // defect mask (1 = bad), empty for none; same size as a frame
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

// Consumes `in.frames` (they are freed as the work proceeds).
CorrectOutput correct_movie(CorrectInput& in, const CorrectParams& p, ThreadPool& pool);

}  // namespace regula

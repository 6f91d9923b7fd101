// The motion of one movie as RELION 3.1 records it (the per-movie STAR file that motion
// correction writes and Bayesian polishing, relion_motion_refine, reads):
//   data_general: rlnImageSizeX/Y/Z, rlnMicrographMovieName, [rlnMicrographGainName,
//     rlnMicrographDefectFile], rlnMicrographBinning, rlnMicrographOriginalPixelSize,
//     rlnMicrographDoseRate, rlnMicrographPreExposure, rlnVoltage, rlnMicrographStartFrame,
//     rlnMotionModelVersion (0: none, 1: third-order polynomial);
//   data_global_shift: rlnMicrographFrameNumber (1-based), rlnMicrographShiftX/Y (pixels of the
//     movie: the shift that re-aligns each frame onto the first used one);
//   data_local_motion_model (version 1): rlnMotionModelCoeffsIdx 0..35, rlnMotionModelCoeff;
//   data_hot_pixels: rlnCoordinateX/Y;
//   data_local_shift: the patch observations (frame, patch centre, shift) for plots.
//
// The local model (RELION's ThirdOrderPolynomialModel): with x = X / width - 0.5,
// y = Y / height - 0.5 and z = frame - start frame (0-based from the first frame used),
//   shift_x = sum over (1, x, x^2, y, y^2, xy) of (c_z z + c_z2 z^2 + c_z3 z^3),
// 18 coefficients for x then 18 for y, in that order; added to the global shift.
#pragma once
#include <array>
#include <string>
#include <vector>

namespace regula {

struct PolynomialMotion {
  std::array<double, 18> cx{}, cy{};
  void shift_at(double z, double x, double y, double& sx, double& sy) const;  // x, y normalised
  // The shift along a row: for frame z and normalised y, shift_x = ax[0] + ax[1] x + ax[2] x^2
  // (and likewise y), x normalised.
  void row_quadratic(double z, double y, double ax[3], double ay[3]) const;
};

// Least-squares fit of the 36 coefficients to observations (z, x, y normalised) of local shifts;
// returns false (and leaves `m`) when there are too few observations (<= 18) or they do not
// determine the model. With `track` (one id 0..K-1 per observation), the observations of a track
// share an unknown constant, fitted too and returned in `offset_x/y` (K each): a patch's trajectory
// is measured relative to its own first frame, whose error moves all of it. With `ridge`, the
// coefficients are shrunk towards 0 (no local motion) by a ridge penalty lambda |diag(A)^(1/2) c|^2
// (A the normal matrix) with lambda chosen by generalised cross-validation and returned: noisy
// observations give a model near zero instead of fitted noise.
bool fit_polynomial_motion(const std::vector<double>& z, const std::vector<double>& x, const std::vector<double>& y,
                           const std::vector<double>& sx, const std::vector<double>& sy, PolynomialMotion& m,
                           const std::vector<int>* track = nullptr, std::vector<double>* offset_x = nullptr,
                           std::vector<double>* offset_y = nullptr, double* ridge = nullptr);

struct MovieMotion {
  int width = 0, height = 0, frames = 0;  // of the movie (unbinned)
  std::string movie, gain, defect;
  double binning = 1, angpix = -1, dose_per_frame = -1, preexposure = -1, voltage = -1;
  int first_frame = 1;                     // 1-based
  std::vector<double> shift_x, shift_y;    // per frame of the movie (-9999 for frames not used)
  bool has_model = false;
  PolynomialMotion model;
  std::vector<int> hot_x, hot_y;
  struct Observation {
    double frame, x, y, sx, sy;  // frame 1-based, patch centre (px), observed shift
  };
  std::vector<Observation> local;
};

void write_movie_motion(const std::string& path, const MovieMotion& m);
MovieMotion read_movie_motion(const std::string& path);

}  // namespace regula

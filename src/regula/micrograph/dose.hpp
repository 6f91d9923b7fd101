// Radiation damage per frame (Grant & Grigorieff 2015, eLife 4:e06980): the critical exposure
//   Ne(k) = 0.245 k^-1.665 + 2.81   (e/Å², k in 1/Å, measured at 300 kV)
// at which the amplitude of spatial frequency k has fallen to exp(-1/2). After an accumulated
// exposure N (e/Å², converted to its 300 kV equivalent) an amplitude is multiplied by
// exp(-N / (2 Ne(k))). Lower voltages damage more per electron: RELION divides the exposure by
// 0.8 at 200 kV and by 0.64 at 100 kV (relion_run_motioncorr), which is what we do.
#pragma once
#include <cmath>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

// Ne(k) in e/Å² for k in 1/Å (k = 0 gives +infinity: no damage).
double critical_exposure(double k_inv_A);
// Factor converting an exposure at `voltage_kv` to its 300 kV equivalent (1, 1/0.8 or 1/0.64);
// InputError for voltages other than 100, 200 or 300 kV (within 2 kV), as RELION.
double dose_voltage_factor(double voltage_kv);
// Amplitude attenuation exp(-N / (2 Ne(k))) for a 300 kV-equivalent exposure N.
inline double damage_attenuation(double exposure_300kv, double k_inv_A) {
  return k_inv_A <= 0 ? 1.0 : std::exp(-exposure_300kv / (2.0 * critical_exposure(k_inv_A)));
}

// The largest misplacement d (px) of a frame in a dose-weighted sum such that, at every spatial
// frequency k up to Nyquist (0.5 / px), the signal it loses, (1 - cos(2 pi k d)) in the worst direction
// times its amplitude exp(-extra / (2 Ne(k))) relative to the first frame's (extra: its additional
// 300 kV-equivalent exposure, e/Å²), is at most `loss`. The first frame (extra 0) may move by
// acos(1 - loss) / pi px (0.1 px for loss = 1 - cos(0.1 pi) = 0.049); a damaged frame, whose
// high frequencies carry little weight, by more.
double misplacement_tolerance(double extra_exposure_300kv, double angpix, double loss);

// Grant & Grigorieff's optimal weights for the half-complex transforms of frames of nx x ny pixels
// of `angpix` Å (Fourier index (i, j): kx = i / (nx angpix), ky = fft_freq(j, ny) / (ny angpix)):
//   w_f(k) = exp(-N_f / (2 Ne(k))) / sqrt(sum_g exp(-N_g / Ne(k)))
// over the frames g = 0 .. frames-1 used, normalised so that the weighted sum keeps the noise power
// of one frame times the number of frames at k = 0, with N_f = first + f * increment the
// 300 kV-equivalent exposure at the END of frame f (RELION's choice, relion_run_motioncorr). The
// weights of frame f are w_0(k) q(k)^f: two numbers per coefficient, computed once.
class DoseWeighting {
 public:
  DoseWeighting() = default;
  DoseWeighting(int nx, int ny, double angpix, double first, double increment, int frames);
  bool same(int nx, int ny, double angpix, double first, double increment, int frames) const;
  int nxh() const { return w0_.nx(); }
  // Weights of frame 0 and the ratio between consecutive frames for row j (nx/2+1 values each).
  const float* first_row(int j) const { return w0_.data() + size_t(j) * size_t(w0_.nx()); }
  const float* ratio_row(int j) const { return q_.data() + size_t(j) * size_t(q_.nx()); }
  // w_f(i, j) (for tests and single values).
  float weight(int f, int i, int j) const;

 private:
  int nx_ = 0, ny_ = 0, frames_ = 0;
  double angpix_ = 0, first_ = 0, increment_ = 0;
  Grid<float> w0_, q_;
};

}  // namespace regula

// M-step updates of the model's nuisance parameters from the E-step's posterior-weighted sums
// (RELION's maximizationOtherParameters, updateSSNRarrays and tau2_class), shared by the jobs.
//
// Units: noise variances per shell sigma2(s) are per complex component, in |X|^2 of the
// unnormalised FFT of the images (RELION's sigma2_noise times n^4); shells s = round(|k|) in
// Fourier pixels of the box n.
#pragma once
#include <cstddef>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula::mstep {

// The SSNR written for a shell reconstructed without prior (tau2 0 there: no power in the reference
// yet), RELION's value for a shell without a data-to-prior ratio.
inline constexpr double kNoPriorSsnr = 999;

// The prior of a class's next reconstruction as RELION measures it on the map its projector
// transforms (Projector::computeFourierTransformMap): per shell 0..n/2, half the shell power
// (the variance of each real component, the noise sigma2's scale) of the image or map divided by
// the gridding correction of a projector padded `padding` times. Shells without power get 0.
std::vector<double> map_prior_tau2(const Grid<float>& map, int padding);

// The rule initial_model's EM keeps (docs/initial_model.md): the whole shell power of the map, the
// last non-zero value held beyond its band so that the prior does not stop the limit growing.
std::vector<double> held_shell_power(const Grid<float>& map);

// sigma2(s) = sum_w |X^t - s C P|^2 / (2 * sum_w npix(s)) for shells with data (RELION: wsum
// sigma2_noise / (2 sumw_group Npix_per_shell)); shells without data keep `previous`. `diff2` and
// `weighted_pixels` per shell 0..n/2.
std::vector<double> noise_spectrum(const std::vector<double>& diff2, const std::vector<double>& weighted_pixels,
                                   const std::vector<double>& previous);

// The Wiener prior from the gold-standard FSC of two halves (RELION's updateSSNRarrays with
// update_tau2_with_fsc): per shell, f = max(FSC, 0.001); for the reconstruction of both halves joined
// (`whole`) f = sqrt(2 f / (f + 1)) (twice the particles); f = min(f, 0.999);
// SSNR = tau2_fudge * f / (1 - f); tau2 = SSNR / mean_weight (BackProjector::mean_weight_per_shell,
// i.e. SSNR times RELION's sigma2 of the reconstruction). Shells beyond r_max get 0 (no signal).
struct Prior {
  std::vector<double> ssnr, tau2;
};
Prior prior_from_fsc(const std::vector<double>& fsc, const std::vector<double>& mean_weight, int r_max,
                     double tau2_fudge, bool whole);

// RELION's scale correction per group (--scale): new scale = sum X.A / sum A.A of the group (its
// products divided by the old scale), then bounded to [median / 5, 5 median] and normalised so that
// the particle-weighted average is 1. Groups without products keep their old scale.
std::vector<double> group_scales(const std::vector<double>& xa, const std::vector<double>& aa,
                                 const std::vector<double>& particles_per_group, const std::vector<double>& old);

}  // namespace regula::mstep

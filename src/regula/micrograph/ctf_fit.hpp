// CTF estimation from a power spectrum (our own estimator, used by `regula ctffind`).
//
// Input: an amplitude spectrum on an n x n grid with its origin at (n/2, n/2) (RELION's _PS.mrc
// files, or average_spectrum() of a micrograph), sampled at `angpix` Å per pixel of the image it
// came from (frequency of pixel (i, j): ((i - n/2), (j - n/2)) / (n angpix) 1/Å).
//
// Model: S(k) = B(|k|) + E(|k|) CTF(k)^2 in the band 1/res_min <= |k| <= 1/res_max, with CTF
// RELION's (imaging/ctf.hpp: defocus U along the direction at angle theta from x, V across it,
// positive = underfocus) and B, E smooth (cubic B-splines in |k| with 8 knots over the band).
//  1. 1D: the rotational average is fitted for every mean defocus from dF_min to dF_max in
//     steps of dF_step (B and E by linear least squares for each); the best residual wins.
//  2. 2D: with the background B(|k|) subtracted and each ring scaled to unit rms, the normalised
//     correlation of the spectrum with CTF^2 is the score; a grid over mean defocus (+-6% of the 1D
//     value), astigmatism (0 to the largest searched: 3 x dAst when dAst > 0, else 3000 Å) and
//     its angle (every 15 degrees) gives the start of a Nelder-Mead refinement of (mean defocus,
//     astigmatism x cos 2 theta, astigmatism x sin 2 theta).
//  3. The background is fitted again along equal-phase rings of the 2D fit (equi-phase
//     averaging), and step 2's refinement runs once more from the result.
//  4. Figure of merit: the final correlation (rlnCtfFigureOfMerit). Fit resolution
//     (rlnCtfMaxResolution): on the equi-phase average, the correlation of the data with CTF^2 in
//     a window of one CTF period on either side, slid outwards from 1/res_min; the last frequency
//     before it first falls below 0.3, in Å (res_min when it never holds).
// Pixels on the two axes through the origin (tile-edge artefacts) are left out.
#pragma once
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/ctf.hpp"

namespace regula {

struct CtfFitOptions {
  double res_min = 100;    // Å (--ResMin)
  double res_max = 7;      // Å (--ResMax)
  double df_min = 10000;   // Å (--dFMin)
  double df_max = 50000;   // Å (--dFMax)
  double df_step = 250;    // Å (--FStep)
  double astigmatism = 0;  // Å (--dAst): expected astigmatism; 0 = search up to 3000 Å
  double voltage_kv = 300, cs_mm = 2.7, amplitude_contrast = 0.1;
};

struct CtfFitResult {
  double defocus_u = 0, defocus_v = 0, defocus_angle = 0;  // Å, Å, degrees (U >= V)
  double figure_of_merit = 0;
  double max_resolution = 0;  // Å
  double defocus_1d = 0;      // Å, the 1D search's mean defocus
  Grid<float> diagnostic;     // n x n: left half the background-subtracted spectrum, right half the fit
  std::vector<double> epa_k, epa_data, epa_fit;  // equi-phase average (1/Å), data and fit (for plots)
};

// Amplitude spectrum (n x n, origin at n/2) averaged over box x box tiles of the micrograph
// overlapping by half (each minus its mean): sqrt of the mean power. box is reduced to the largest
// even size that fits. Threads over tiles; the sum is in tile order (deterministic).
Grid<float> average_spectrum(const Grid<float>& micrograph, int box, int nthreads = 1);

CtfFitResult fit_ctf(const Grid<float>& spectrum, double angpix, const CtfFitOptions& opt, int nthreads = 1);

}  // namespace regula

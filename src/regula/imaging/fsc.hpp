// Fourier shell (ring) correlation between two maps (images) and the
// resolution at a threshold.
#pragma once
#include <cstdint>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

// FSC per shell 0..n/2 between two real maps of equal cubic (or square, for
// the FRC) shape: shell = round(|k|) in Fourier pixels; each stored
// half-complex coefficient counts once, as RELION's getFSC. Shell 0 is set to 1
// (as RELION). A shell where either map has no power has FSC 0.
std::vector<double> fsc(const Grid<float>& a, const Grid<float>& b);
// The same from centred or uncentred half-complex transforms of equal shape
// ((n/2+1) x n [x n]); both must use the same origin convention.
std::vector<double> fsc_fourier(const Grid<cfloat>& A, const Grid<cfloat>& B);
// For many FSCs of transforms of one cubic shape: the shell round(|k|) of every coefficient of the
// half-complex transform of an n^3 map (-1 beyond n/2), and the FSC from that table (as fsc_fourier).
std::vector<int16_t> fourier_shells(int n);
std::vector<double> fsc_fourier(const Grid<cfloat>& A, const Grid<cfloat>& B, const std::vector<int16_t>& shells);
// 2D Fourier ring correlation (same as fsc for images; named for clarity).
inline std::vector<double> frc(const Grid<float>& a, const Grid<float>& b) { return fsc(a, b); }

// FSC weighting of a half-complex transform (n = F.ny(); centred or not): the coefficients in shell
// i = round(|k|) are multiplied by sqrt(2 FSC_i / (1 + FSC_i)) (0 where FSC_i <= 0), and set to 0 beyond
// the last shell before the FSC first drops below 1e-4 (RELION's applyFscWeighting, Rosenthal &
// Henderson 2003). `fsc` has one value per shell 0..n/2.
void apply_fsc_weighting(Grid<cfloat>& F, const std::vector<double>& fsc);
// The multiplier of each shell in apply_fsc_weighting.
std::vector<double> fsc_weights(const std::vector<double>& fsc);

// RELION's solvent-corrected FSC of two half maps under a mask (Chen et al. 2013; relion_postprocess
// and relion_refine --solvent_correct_fsc): the FSC of the masked halves, corrected by the FSC of the
// masked halves whose phases were randomised beyond the first shell where the unmasked FSC drops
// below `randomize_at_fsc` (RELION: 0.8): corrected = (masked - random) / (1 - random) from two
// shells above that shell, the masked FSC below. randomize_at -1 when the unmasked FSC never drops
// below the threshold: then `random` is empty and corrected = masked. The random phases are drawn
// from (seed, streams 1 and 2). Shell 0 of the masked and random curves is 1 where it would be <= 0.
struct SolventCorrectedFsc {
  std::vector<double> unmasked, masked, random, corrected;
  int randomize_at = -1;
};
SolventCorrectedFsc solvent_corrected_fsc(const Grid<float>& h1, const Grid<float>& h2, const Grid<float>& mask,
                                          double randomize_at_fsc, uint64_t seed);

// Pearson correlation of all voxels (pixels) of two grids of equal size; 0 when either is constant.
double real_space_correlation(const Grid<float>& a, const Grid<float>& b);

// Resolution in Å at which the FSC first drops below `threshold`, as
// relion_postprocess reports it: the last shell i >= 1 before the first shell
// with FSC < threshold, giving n * pixel_size / i. With `interpolate`, the
// crossing between that shell and the next is found by linear interpolation
// (RELION's fractional resolution). Returns +infinity when FSC(1) is already
// below the threshold; when the FSC never drops, the Nyquist resolution
// n * pixel_size / (fsc.size() - 1).
double resolution_at(const std::vector<double>& fsc, double threshold, double pixel_size, int n,
                     bool interpolate = false);

}  // namespace regula

// Local resolution from two half maps (RELION's relion_postprocess --locres): the FSC between the
// half maps inside a soft spherical window, corrected by phase randomisation, at the points of a
// sampling grid, blended into a map of local resolution and a locally filtered map.
//
// Grid: points (x, y, z) = -n/2 + (i, j, k) * step (pixels from the map centre n/2, step =
// round(sampling / pixel)) with |(x, y, z)| < n/2 - r1, r1 = round(mask_radius / pixel); at each, the
// window w(d) = 1 for d <= r1, a raised cosine to 0 at r2 = r1 + round(edge_width / pixel) (d the
// distance in pixels; truncated at the box).
//
// At each point: the FSC of w*half1 and w*half2 (FSC_t) and of the phase-randomised halves (phases
// random from |k| = s_r = int(n pixel / randomize_at) on, the same randomised maps for every point;
// FSC_n is the mean over `randomisations` independent randomisations, RELION uses one) give
// FSC_true = FSC_t below shell s_r + 2 and (FSC_t - FSC_n) / (1 - FSC_n) from there (Chen et al.
// 2013). FSC_n estimates the correlation the window itself brings to the randomised maps; one
// randomisation gives it with a noise that moves the 0.143 crossing of a point by a shell or more
// between seeds, and the mean of several halves the variance of that noise; the local resolution is n pixel / s for the last shell s before FSC_true drops
// below 0.143 (999 Å when shell 1 already does), capped at `min_resolution` (the worst value
// reported). RELION computes these FSCs by transforms of the whole box; here the windowed maps are
// transformed in the smallest FFT-friendly box that holds the window (side >= 2 r2 + 2; the whole box
// when that is not smaller), which samples the same continuous transform (the windowed map is zero
// outside the window) more coarsely, and the FSC per shell of the whole box is read off by linear
// interpolation in frequency: the same curve, at a small fraction of the cost.
//
// Maps: local_resolution(x) = sum_p w_p(x) / (sum_p w_p(x) / res_p) (a weighted harmonic mean, as
// RELION; 0 where no window reaches). filtered(x) = sum_p w_p(x) M_p(x) / sum_p w_p(x), where M_p is the
// sum of the half maps (divided by the MTF, sharpened by the B-factor) weighted by sqrt(2 FSC /
// (1 + FSC)) and low-passed at res_p (raised cosine over `filter_edge_width` shells). RELION filters
// the whole map once per point with that point's FSC; Regula filters once per distinct local
// resolution, with the mean FSC weighting of the points of that resolution (the weights differ
// little between points whose FSC crosses 0.143 at the same shell).
//
// Threads work on points, and on slabs of the box for the sums, each in a fixed order: the result
// does not depend on the thread count. Randomisation k (0-based) draws from (seed, 2k + 1) and
// (seed, 2k + 2).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/mtf.hpp"

namespace regula {

struct LocalResolutionOptions {
  double pixel_size = 1;        // Å
  double sampling = 25;         // Å between sampling points
  double mask_radius = -1;      // Å, radius of the window's flat part (< 0: sampling / 2)
  double edge_width = -1;       // Å, width of its soft edge (< 0: sampling)
  double randomize_at = 25;     // Å: phases randomised from this resolution on
  double min_resolution = 50;   // Å: the worst local resolution reported
  double bfactor = 0;           // Å^2 applied to the sum of the halves for the filtered map (negative sharpens)
  const Mtf* mtf = nullptr;     // divide the sum by this MTF (detector pixel `mtf_pixel_size`)
  double mtf_pixel_size = 0;    // Å (0: pixel_size)
  int filter_edge_width = 2;    // shells
  int randomisations = 4;       // phase randomisations averaged for FSC_n (RELION: 1)
  int fsc_box = 0;              // side of the box of the local FSCs (0: the smallest FFT-friendly one that
                                // holds the window; the map's box gives RELION's sampling of the FSC)
  uint64_t seed = 1;
  int threads = 1;
};

struct LocalResolutionPoint {
  std::array<int, 3> position{0, 0, 0};  // x, y, z in pixels from the map centre
  double resolution = 0;                 // Å
  std::vector<double> fsc_true, fsc_masked, fsc_random;  // per shell 0..n/2 of the whole box
};

struct LocalResolutionResult {
  Grid<float> local_resolution;  // Å; 0 where no window reaches
  Grid<float> filtered;          // locally filtered sum of the halves
  std::vector<LocalResolutionPoint> points;
  std::vector<double> fsc_unmasked;  // global FSC of the halves, per shell
  int step = 0, mask_radius_px = 0, edge_px = 0, randomize_shell = 0, window = 0;  // as used (pixels)
};

// Half maps: cubic, equal shape, even box >= 8 (InputError otherwise).
LocalResolutionResult local_resolution(const Grid<float>& half1, const Grid<float>& half2,
                                       const LocalResolutionOptions& opt);

}  // namespace regula

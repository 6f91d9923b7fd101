// Particle normalisation as relion_preprocess --norm (RELION's normalise() in image.cpp): the
// background is every pixel farther than the background radius from the centre (n/2, n/2), i.e.
// (x - n/2)^2 + (y - n/2)^2 > R^2 (imaging/filter.hpp's background_stats), and, in this order,
//   1. dust removal (--white_dust S / --black_dust S, S > 0): a pixel more than S background standard
//      deviations above (white) or below (black) the background mean is replaced by a draw from the
//      normal distribution of the background's mean and standard deviation (from `rng`, so the
//      result is reproducible; RELION draws from its own global generator);
//   2. ramp removal (RELION's default; --no_ramp skips it): the least-squares plane
//      a x + b y + c through the background pixels (x, y relative to the centre) is subtracted from
//      every pixel;
//   3. the background mean is subtracted and the image divided by the background standard
//      deviation (population, as RELION); a standard deviation below 1e-10 leaves the scale as it
//      is (RELION warns and skips the division; so do we, with the status returned).
#pragma once
#include <random>

#include "regula/core/grid.hpp"
#include "regula/imaging/filter.hpp"

namespace regula {

struct NormaliseOptions {
  double bg_radius_px = 0;  // background: distance from the centre > this (px)
  bool ramp = true;         // subtract the background's least-squares plane first
  double white_dust = -1;   // sigmas; <= 0: no white dust removal
  double black_dust = -1;   // sigmas; <= 0: no black dust removal
};

struct NormaliseResult {
  BackgroundStats stats;    // of the background after dust and ramp removal, before scaling
  long dust_replaced = 0;   // pixels replaced by dust removal
  bool flat = false;        // background standard deviation < 1e-10: not scaled
};

// Normalises a 2D image in place. InputError when the radius leaves no background pixel.
// `rng` is needed only for dust removal (may be null otherwise).
NormaliseResult normalise_particle(Grid<float>& img, const NormaliseOptions& opt, std::mt19937_64* rng = nullptr);

// Subtracts the least-squares plane through the background pixels (distance from the centre
// > bg_radius_px) from every pixel of a 2D image. InputError for fewer than 3 background pixels.
void subtract_background_ramp(Grid<float>& img, double bg_radius_px);

}  // namespace regula

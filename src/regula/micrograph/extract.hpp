// Cutting particle boxes out of a micrograph as relion_preprocess --extract (RELION 3.1.3), and the
// per-particle operations that follow (Fourier re-scaling, windowing, normalisation, contrast).
//
// Box of a coordinate (x, y) in micrograph pixels (x along columns, 0 at the first pixel): the
// integer position (X, Y) = (x, y) truncated towards zero (RELION's (long int) cast), and the box
// covers pixels X - n/2 ... X + n/2 - 1 (and the same in y), so pixel X lands at the box centre
// n/2. Parts of the box outside the micrograph repeat the nearest edge pixel (RELION fills them
// with the edge row or column, never zeros), first along x, then along y. A box entirely outside
// the micrograph has no pixel to repeat: RELION stops the whole job there; extract_box reports it
// (ExtractStatus::Outside) and the job skips that particle with a message.
//
// Per-particle operations, in RELION's order: --scale N (imaging/filter.hpp rescale: Fourier
// cropping/padding to N px), --window N (real-space crop/pad about the centre), --norm
// (imaging/normalise.hpp: dust, ramp, background mean 0 and standard deviation 1, background
// radius in pixels of the box after scaling), --invert_contrast (times -1).
#pragma once
#include <random>

#include "regula/core/grid.hpp"
#include "regula/imaging/normalise.hpp"

namespace regula {

enum class ExtractStatus { Inside, Partial, Outside };

// The box of size n (even, >= 2) at (x, y) with RELION's edge handling. `out` becomes n x n
// (unless Outside, when it is left empty).
ExtractStatus extract_box(const Grid<float>& micrograph, double x, double y, int n, Grid<float>& out);

struct ParticleOps {
  int scale = -1;            // new box (px) by Fourier re-scaling; <= 0: none
  int window = -1;           // new box (px) by real-space windowing; <= 0: none
  bool norm = false;
  NormaliseOptions normalise;  // bg_radius in px of the box after scale/window
  bool invert_contrast = false;
};

// Applies the operations in place. `rng` is used only for dust removal.
void apply_particle_ops(Grid<float>& img, const ParticleOps& ops, std::mt19937_64* rng);

}  // namespace regula

// Gain references as RELION orients them (relion_run_motioncorr --gain_rot R --gain_flip F, the
// same as MotionCor2's -RotGain/-FlipGain): first a rotation by R x 90 degrees clockwise as
// relion_display shows an image (R = 1: new(x' = ny-1-y, y' = x) = old(x, y); sizes swap for odd R),
// then a flip (F = 1: upside down, y -> ny-1-y; F = 2: left-right, x -> nx-1-x).
#pragma once
#include "regula/core/grid.hpp"

namespace regula {

// RELION's operation: rotate, then flip. InputError for R outside 0..3 or F outside 0..2.
Grid<float> orient_gain(const Grid<float>& gain, int rot, int flip);
// Its inverse (what to store so that orient_gain(stored, rot, flip) is `gain`).
Grid<float> unorient_gain(const Grid<float>& gain, int rot, int flip);

}  // namespace regula

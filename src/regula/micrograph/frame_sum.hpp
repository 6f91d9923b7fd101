// Sums of a movie's frame spectra moved by their global shifts (exact phase shifts) and weighted for
// radiation damage, in one pass over the frames (no shifted or weighted copy of any frame).
#pragma once
#include <vector>

#include "regula/core/parallel.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/micrograph/frame_store.hpp"

namespace regula {

// For the half-complex spectra of frames [f0, f1) of `store` ((nx/2+1) x ny each, transformed):
//   weighted[k] = sum_f F_f(k) exp(-2 pi i (kx sx_f / nx + ky sy_f / ny)) w_f(k)
//   plain[k]    = the same without w_f
// (written, not added to: the outputs need no zeroing)
// (content moved by (+sx_f, +sy_f) pixels; sx, sy indexed by frame). `dose` (the weights of all the
// frames of the store, frame f of the store being frame f of the weighting) may be null when
// `weighted` is; either output may be null. Rows in parallel; deterministic.
void sum_frames(const FrameStore& store, int f0, int f1, const std::vector<double>& sx, const std::vector<double>& sy,
                const DoseWeighting* dose, cfloat* weighted, cfloat* plain, ThreadPool& pool);

}  // namespace regula

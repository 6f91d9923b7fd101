// The finer pass of adaptive oversampling (RELION's second E-step pass): scores at a list of
// poses per particle, the children of that particle's significant coarse poses on a finer grid.
//
// After the coarse pass (compute_scores over every translation and reference, then
// compute_posteriors with keep_significant) only the poses holding 0.999 of the posterior mass
// are refined. Each coarse translation t has `t_children` fine translations and each coarse
// reference j `j_children` fine references, numbered t * t_children + a and j * j_children + b
// (2D classification with oversampling order o: 2^o in-plane angles psi - step/2 + (b + 1/2)
// step / 2^o, and 4^o translations on the same rule per axis; RELION's HealpixSampling). The score
// of a pose is the same L(i,t,j) as compute_scores (scores.hpp), and compute_pose_posteriors
// (posteriors.hpp) normalises it over the particle's candidates.
//
// Fine references are usually computed per batch, only for the references some particle of
// the batch needs: compact_references renumbers the references of a pose list to 0..J'-1.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "regula/estep/posteriors.hpp"
#include "regula/estep/scores.hpp"

namespace regula {
class ThreadPool;
}

namespace regula::estep {

// The children of every pose of `coarse` (its entries, whatever their weights), per particle in
// the order of the coarse entries, each entry's children in (a, b) order; children of different
// coarse poses are different. The list has t = coarse.t * t_children and j = coarse.j * j_children.
PoseList oversampled_poses(const SparseWeights& coarse, size_t t_children, size_t j_children);

// Renumbers the references of `poses` to 0..J'-1 in increasing order of their original index
// and returns the original index of each new one (size J'); poses.j becomes J'.
std::vector<uint32_t> compact_references(PoseList& poses);

// L(i,t,j) (scores.hpp) for every pose of the list, in list order, into `out` (resized). Per
// particle one SGEMM over its distinct translations x distinct references (the rows of
// compute_scores restricted to them) and one product for the CTF^2 |P|^2 term; the values are
// those of compute_scores up to single-precision rounding. Deterministic for any thread count.
// Returns the flops of those products: per particle 4 m T_i J_i + 2 m J_i (T_i, J_i its distinct
// translations and references).
double compute_pose_scores(const ParticleBatch& particles, const TranslationPhases& shifts, const ReferenceSlices& refs,
                           const PoseList& poses, std::vector<float>& out, ThreadPool& pool);

}  // namespace regula::estep

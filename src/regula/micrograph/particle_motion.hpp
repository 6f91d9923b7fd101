// Per-particle motion of one movie with a Gaussian-process prior on the velocities (the model of
// Bayesian polishing, Zivanov, Nakane & Scheres 2019, IUCrJ 6:5-17), the mathematics of
// jobs/polish.
//
// Unknowns: the displacement d_pf (pixels of the movie, x and y) of particle p in frame f from its
// initial track (motion correction's global shifts and local model). They are written as
//   d_pf = o_p + sum_{g < f} v_gp,   v_g = L c_g (for x and for y separately)
// with o_p a free offset per particle and v_g the velocities of all the particles between frames g
// and g + 1. The prior: the velocities of one frame interval are jointly Gaussian over the
// particles, v_g ~ N(0, s_vel^2 K), K_pq = exp(-|r_p - r_q| / s_div) (exponential kernel of the
// particles' distance, as RELION's default), independent between intervals and axes, plus a
// Gaussian penalty on the accelerations v_{g+1} - v_g of every particle with variance s_acc^2.
// With K = U diag(lambda) U^T and L = s_vel U diag(sqrt(lambda)) the prior terms are
//   1/2 sum_g |c_g|^2  +  (s_vel^2 / (2 s_acc^2)) sum_g sum_b lambda_b (c_{g+1,b} - c_{g,b})^2
// (L^T L is diagonal). Eigenvectors with lambda_b < 1e-9 max(lambda) are dropped (their
// velocities are forced to zero; they carry no prior mass).
// The data term: for each particle and frame, a map of the log-likelihood of d (up to a constant)
// on the integer grid |dx|, |dy| <= R, interpolated by Catmull-Rom cubic convolution (continuous
// gradient); beyond the grid the map's value at its edge and no gradient (the prior pulls back).
// Optionally a Gaussian prior on each particle's mean displacement over the frames, m_p = (1/F) sum_f
// d_pf ~ N(0, s_off^2) per axis: the particle's position was refined from the movie's average, so the
// track's mean stays near it unless the data say otherwise (offset_prior_sigma: see below).
// The objective -sum log-likelihood + prior is minimised by L-BFGS from d = 0.
// All sums are over particles in a fixed order, so the result does not depend on the threads.
#pragma once
#include <array>
#include <vector>

#include "regula/core/parallel.hpp"

namespace regula {

// A (2R+1) x (2R+1) map of values over displacements (dx, dy) in [-R, R]^2, x fastest.
struct ShiftMap {
  int range = 0;
  std::vector<float> value;
  int size() const { return 2 * range + 1; }
  float at(int dx, int dy) const { return value[size_t((dy + range) * size() + dx + range)]; }
  // Cubic-convolution interpolation at (x, y) and its gradient.
  double interpolate(double x, double y, double* gx, double* gy) const;
};

struct MotionPrior {
  double sigma_vel = 0;  // px per frame
  double sigma_div = 0;  // px
  double sigma_acc = 0;  // px per frame (<= 0: no acceleration term)
  double sigma_off = 0;  // px: prior s.d. of a track's mean displacement per axis (<= 0: none)
};

struct VelocityBasis {
  int particles = 0;
  std::vector<double> L;       // particles x basis, row-major: s_vel U sqrt(lambda)
  std::vector<double> lambda;  // kept eigenvalues (of K)
  int size() const { return int(lambda.size()); }
};

// The kernel's basis for particles at `x`, `y` (px).
VelocityBasis velocity_basis(const std::vector<double>& x, const std::vector<double>& y, const MotionPrior& prior);

struct MotionFitOptions {
  int max_iterations = 300;
  double tolerance = 1e-7;  // relative change of the objective to stop
};

struct MotionFitResult {
  std::vector<std::array<double, 2>> d;  // [p * frames + f]: displacement from the initial track
  double objective = 0, data_term = 0;
  int iterations = 0;
};

// The s.d. per axis of the particles' displacement o from their initial tracks, estimated from the
// data by expectation-maximisation as RELION estimates its offsets prior: with one constant o per
// particle and the log-likelihood sum_f maps[p * frames + f](o) on the grid, the prior N(0, s^2 I) is
// iterated s^2 <- mean_p E[|o|^2 | data, s] / 2 (the posterior over the grid exactly) to convergence.
// Returns s (px), at least 0.05 px.
double offset_prior_sigma(const std::vector<ShiftMap>& maps, int particles, int frames);

// maps[p * frames + f]: the log-likelihood map of particle p in frame f.
MotionFitResult fit_particle_motion(const std::vector<ShiftMap>& maps, int particles, int frames,
                                    const VelocityBasis& basis, const MotionPrior& prior,
                                    const MotionFitOptions& opt, ThreadPool& pool);

}  // namespace regula

// Internal to the class2d job: the model state carried from one iteration to the next (exactly
// what a checkpoint holds), and the writers of the iteration files (class2d_output.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/jobs/class2d.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/model/particles.hpp"

namespace regula::class2d_detail {

// Everything an iteration needs besides the options and the particle images. A run continued
// from a checkpoint of iteration N (classes from the MRC stack, the rest from state.bin in binary)
// has bit-for-bit the state of the uninterrupted run after iteration N.
struct State {
  int iteration = 0;                // last completed iteration (0 = initial classes)
  int current_shells = 0;           // frequency limit (Fourier pixels) for the next E-step
  int n = 0;                        // box, px
  std::vector<Image> classes;       // K, n x n
  std::vector<double> fraction;     // K class prior fractions
  std::vector<std::vector<double>> sigma2;  // per optics group, shells 0..n/2 (|X|^2 per component,
                                            // unnormalised FFT)
  // Per particle: RELION's norm correction (rlnNormCorrection): the image is multiplied by
  // avg_norm / norm[i] before anything else (--norm), from the input's rlnNormCorrection or 1.
  std::vector<double> norm;
  double avg_norm = 1;              // rlnNormCorrectionAverage: the mean of norm
  // Per particle group (ml3d::particle_groups: rlnGroupName, else micrograph): RELION's scale
  // correction (rlnGroupScaleCorrection, --scale) multiplying the CTF. Empty: all 1.
  std::vector<double> group_scale;
  // Per class, shells 0..n/2: the last M-step's SSNR (RELION's data_vs_prior_class); the scale
  // correction takes only shells where it exceeds 3. Empty before the first M-step.
  std::vector<std::vector<double>> ssnr;
  // Per particle, Å: the current origin (rlnOriginX/YAngst), the centre of the next translation
  // search (RELION: the offsets found so far). Empty in a checkpoint of before they were kept.
  std::vector<double> origin_x, origin_y;
  double sigma2_offset = 0;         // Å^2: variance of the Gaussian prior on origins (about 0)
  // Largest value seen so far of |CTF factor| (at least 1) and of a particle image's L1 norm (as the
  // E-step sees it) times that factor: the bounds of the exact class sums (BackProjector::
  // start_exact). 0 in a checkpoint of before they were kept (recomputed from the images).
  double ctf_max = 0, x_bound = 0;
};

// What an iteration produced, for the output files (not carried to the next iteration).
struct IterationReport {
  int used_shells = 0;              // limit used in the E-step
  int coarse_shells = 0;            // limit of its coarse pass
  double resolution_A = 0;          // from the SSNR of the new classes
  std::vector<std::vector<double>> ssnr, tau2;  // per class, shells 0..n/2
  std::vector<double> class_resolution_A;       // per class (rlnEstimatedResolution)
  std::vector<int> particle_class;              // 1-based; empty for iteration 0
  std::vector<double> psi, origin_x, origin_y, pmax, log_likelihood;
  // Per particle (_regulaSignalZ): how clearly the image holds its class, the matched-filter statistic of
  // the E-step's whitened likelihood, sum w Re(X* s C A) / sigma2 over sqrt(sum w |s C A|^2 / sigma2)
  // (posterior-weighted over its poses). At a fixed pose N(0, 1) for an image of noise alone (raised by
  // the pose search to about the largest of its poses' values, 2-4), about the class's whitened norm for
  // a member (select --auto compares each particle with its class's median).
  std::vector<double> signal_z;
  std::vector<int> n_significant;
  double log_likelihood_sum = 0, average_pmax = 0;
};

struct Files {
  std::string classes, model, data, optimiser, state, png;
};
Files iteration_files(const std::string& root, int iteration);

// Writes all files of an iteration (optimiser.star last); `groups` are the particle groups of the
// scale correction (model_groups). `input_star` is stored (absolute) so
// that --continue re-reads the particles.
Files write_iteration(const Class2DOptions& opt, const std::string& input_star, const ParticleTable& table,
                      const ml3d::Groups& groups, double angpix, const State& st, const IterationReport& rep);

// Reads a checkpoint: options (except --o, --iter, --j, which the caller keeps from the command
// line), the input STAR path and the state.
void read_checkpoint(const std::string& optimiser_star, Class2DOptions& opt, std::string& input_star, State& st,
                     size_t n_particles_expected_or_0);

// PNG gallery: classes sorted by decreasing particle count, each with its count underneath.
std::string class_gallery_png(const std::vector<Image>& classes, const std::vector<int>& counts);

}  // namespace regula::class2d_detail

// Reference-free 2D classification by regularised likelihood (RELION's 2D classification,
// Scheres 2012), with the E-step as matrix products (docs/estep.md, docs/class2d.md).
//
// Model per particle i (Fourier pixels k within the current frequency limit, centred transforms):
//   X_i(k) phase_t(k) = s_i C_i(k) R_psi(A_c)(k) + noise,  noise variance sigma2_g(shell(k))
// per component, g the optics group of i; A_c the class average of class c, R_psi its rotation
// by psi (Projector2D::project_psi), phase_t the phase factor moving the particle by t pixels,
// s_i the scale correction of i's particle group (RELION's --scale); X_i is the image multiplied by
// RELION's norm correction avg_norm / norm_i (--norm; see docs/class2d.md). Full marginalisation
// over (class, psi, translation); class priors = class fractions; uniform psi and translation
// priors. M-step: CTF-corrected class averages A = sum w C X / sigma2 / (sum w C^2 / sigma2
// + 1 / (T tau2)), tau2 the power spectrum of the current class (RELION's tau2_class), T the
// tau2_fudge; sigma2 from the posterior-weighted residuals (and |X|^2 beyond the limit).
//
// Units: pixel sizes in Å/px; offsets rlnOriginX/YAngst in Å (searched in pixels: --offset_range
// and --offset_step are in pixels, as RELION); angles in degrees; frequencies in Fourier pixels
// (shells) of the box; sigma2 and tau2 in the units of our unnormalised FFT (|X|^2 per
// component), written to model.star divided by n^4 (RELION's normalised-FFT units).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/jobs/class_selection.hpp"

namespace regula {

struct Class2DOptions {
  std::string input;              // --i: particles STAR file
  std::string out_root;           // --o: output root (ROOT_itNNN_*)
  int classes = 0;                // --K (with --ref: their number when not given)
  std::string reference;          // --ref: MRC stack (or image) of the initial classes, instead of random-
                                  // subset averages (RELION's --ref); the particles' box, pixel size and scale
  int iterations = 25;            // --iter: last iteration number
  bool iterations_given = false;  // --iter on the command line (with --continue, else the checkpoint's)
  double tau2_fudge = 2;          // --tau2_fudge (T)
  double particle_diameter = 0;   // --particle_diameter, Å (0: box - 2 * mask edge)
  bool ctf = false;               // --ctf: CTF-correct
  bool zero_mask = false;         // --zero_mask: fill the particle's solvent with zeros (else, as RELION,
                                  // with noise of the current noise spectrum, seeded per particle)
  bool flatten_solvent = false;   // --flatten_solvent: mask class averages with the circular mask
  double psi_step = 6;            // --psi_step, degrees
  double offset_range = 5;        // --offset_range, pixels
  double offset_step = 1;         // --offset_step, pixels
  double offset_sigma = 10;       // --offset: initial standard deviation (Å) of the Gaussian prior on the
                                  // particles' origins (about the box centre), re-estimated each iteration
                                  // (at least sqrt(2) Å, as RELION); the search is centred on the origins
                                  // found in the previous iteration
  int oversampling = 1;           // --oversampling o: the finer pass over the children of the significant
                                  // coarse poses has 2^o in-plane angles per coarse angle and 4^o translations
                                  // per coarse translation (RELION's adaptive oversampling); 0: coarse only
  int threads = 1;                // --j
  uint64_t seed = 1;              // --seed: random initial classes
  std::string continue_from;      // --continue: ROOT_itNNN_optimiser.star
  double angpix = 0;              // --angpix: pixel size (Å) when the STAR file has none
  bool norm = true;               // --norm / --no_norm: RELION's per-particle norm correction (rlnNormCorrection)
  bool scale = true;              // --scale / --no_scale: RELION's per-group scale correction (rlnGroupScaleCorrection)
  double ini_high = 25;           // --ini_high: initial frequency limit, Å (at least box/8 shells)
  int incr_size = 10;             // --incr_size: shells added above the SSNR >= 1 resolution
  bool center_classes = true;     // --center_classes / --no_center_classes: centre of mass to the origin
  int reseed_until = 12;          // --reseed_until N: up to iteration N an (almost) empty class, or one of
                                  // two classes showing the same view, takes half of the largest class
                                  // (0: never). Fixed, not a fraction of --iter, so that a run stopped
                                  // early and continued equals an uninterrupted one.
  double reseed_empty = 0.25;     // --reseed_empty F: "almost empty" is a posterior mass below F times
                                  // the mean class mass
  int batch_size = 128;           // particles per E-step batch (memory grows with it; results
                                  // depend on it at float rounding, never on --j)
  double mask_edge = 5;           // soft edge of the circular masks, px

  // "" when valid, else a message naming the option and the violated constraint.
  std::string validate() const;
};

struct Class2DIterationStats {
  int iteration = 0;
  double resolution_A = 0;  // rlnCurrentResolution
  int current_shells = 0;   // frequency limit used in this iteration (Fourier pixels)
  double log_likelihood = 0;
  double average_pmax = 0;
  double seconds = 0;
  double estep_flops = 0;   // SGEMM flops of the coarse score pass
  double fine_flops = 0;    // flops of the finer pass's scores (this process's particles)
};

struct Class2DResult {
  int last_iteration = 0;
  std::vector<Image> classes;          // K class averages, n x n
  std::vector<double> class_fraction;  // K
  std::vector<int> particle_class;     // per particle, 1-based (0 = not assigned)
  std::vector<double> particle_psi;    // degrees
  std::vector<double> particle_origin_x, particle_origin_y;  // Å (rlnOriginX/YAngst)
  // Sum over poses of the dense posterior weights of each particle in the last iteration
  // (1 up to float rounding; 0 for a particle with no finite likelihood).
  std::vector<double> posterior_sum;
  std::vector<Class2DIterationStats> stats;
  std::string data_star, model_star, optimiser_star, classes_mrcs, gallery_png;  // last iteration
};

// Runs (or continues) the classification and writes the files of every iteration:
// ROOT_itNNN_{classes.mrcs, model.star, data.star, optimiser.star, state.bin, classes.png}.
// InputError for bad options or inputs.
Class2DResult run_class2d(const Class2DOptions& opt);

// Writes the particles of `classes` (1-based class numbers) or of classes with at least
// `min_count` particles from a class2d data.star (3.1 form, all columns kept). Returns the
// number of particles written. InputError when the file has no rlnClassNumber.
struct SelectOptions {
  std::string input;            // --i: ROOT_itNNN_data.star
  std::string output;           // --o
  std::vector<int> classes;     // --classes
  long min_count = -1;          // --min_count (-1 = unused)
  bool automatic = false;       // --auto: jobs/class_selection.hpp's score, with
  double auto_min_contrast = AutoSelectOptions{}.min_contrast;  // --auto_min_contrast
  double auto_max_contrast = AutoSelectOptions{}.max_contrast;  // --auto_max_contrast
  double auto_max_edge = AutoSelectOptions{}.max_edge;          // --auto_max_edge
  double auto_particle_sd = AutoSelectOptions{}.particle_sd;    // --auto_particle_sd
  double particle_diameter = 0;                                 // --particle_diameter (Å; 0: the optimiser's)
  bool auto_no_image_tests = false;                                    // --auto_no_image_tests
  bool auto_step = false;                                       // --auto_step
  int threads = 1;                                              // --j
  AutoSelectOptions auto_options() const {
    return {auto_min_contrast, auto_max_contrast, auto_max_edge, particle_diameter, auto_particle_sd, !auto_no_image_tests,
            auto_step, threads};
  }
  std::string validate() const;
};
size_t select_classes(const SelectOptions& opt);

}  // namespace regula

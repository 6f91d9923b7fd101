// 3D classification by regularised likelihood (RELION's relion_refine --K K with a 3D reference),
// docs/class3d.md.
//
// Model: as refine3d (jobs/refine3d.hpp) with K class maps V_c and class fractions; full
// marginalisation over class, orientation and translation; per class the MAP reconstruction with
// tau2_c = the power spectrum of the current class map times T (--tau2_fudge). No half sets: the
// resolution of a class is where its SSNR (mean data weight x tau2) drops below 1.
// Units: angles in degrees; offsets in Å (searched in pixels); resolutions in Å.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

// Mini-batch iterations (initial_model's; docs/initial_model.md): the first `iterations` iterations each search a random subset of the particles (its size and the step eta on
// a schedule) and reconstruct from forgetting sums S <- (1 - eta) S + s_subset, scaled down to at
// most the data set's worth of particles; the noise spectra and class fractions move by eta too.
struct MiniBatchSchedule {
  int iterations = 0;                      // 0: none (full-batch EM from the first iteration)
  long ini_subset = 200, fin_subset = 1000;  // subset sizes of the initial and final phase
  double ini_frac = 0.3, fin_frac = 0.2;   // fractions of the mini-batch iterations in those phases
  double ini_step = 0.9, step = 0.5;       // eta in the initial phase, and in the final phase
  // The regularisation parameter T of the initial phase (RELION 4/5's --tau2_fudge_scheme "D-step": T / D),
  // rising to --tau2_fudge by RELION's sigmoid early in the middle phase; <= 0: --tau2_fudge throughout.
  double ini_tau2_fudge = 0;
  int write_every = 10;                    // iteration files every so many mini-batch iterations
};

// T in mini-batch iteration `it` (0-based) of the schedule, `fudge` the job's --tau2_fudge.
double batch_tau2_fudge(const MiniBatchSchedule& b, int it, double fudge);

struct Class3DOptions {
  std::string input;                // --i
  std::string out_root;             // --o
  std::string reference;            // --ref
  int classes = 0;                  // --K
  int iterations = 25;              // --iter
  bool iterations_given = false;    // --iter on the command line (with --continue, else the checkpoint's)
  double tau2_fudge = 4;            // --tau2_fudge (T)
  int pad = 2;                      // --pad: oversampling of the Fourier lattices (1, 2 or 3)
  double ini_high = 40;             // --ini_high, Å
  bool firstiter_cc = false;        // --firstiter_cc
  std::string sym = "C1";           // --sym
  double particle_diameter = 0;     // --particle_diameter, Å
  bool ctf = false;                 // --ctf
  bool flatten_solvent = false;     // --flatten_solvent
  std::string solvent_mask;         // --solvent_mask: mask for the class maps (focused classification) instead of the sphere
  bool zero_mask = false;           // --zero_mask: particle solvent set to 0 (else noise of the noise spectrum, as RELION)
  int healpix_order = 2;            // --healpix_order (fixed: no auto-sampling in classification)
  double offset_range = 5;          // --offset_range, px
  double offset_step = 1;           // --offset_step, px
  bool skip_align = false;          // --skip_align: classes only, poses from the STAR file
  double sigma_ang = 0;             // --sigma_ang, degrees: local searches around the input poses (0: global)
  int threads = 1;                  // --j
  uint64_t seed = 1;                // --seed: random initial subsets
  std::string continue_from;        // --continue ROOT_itNNN_optimiser.star
  double angpix = 0;                // --angpix
  bool norm = true;                 // --norm: per-particle noise normalisation (rlnNormCorrection)
  bool scale = true;                // --scale: per-group intensity-scale correction
  int incr_size = 10;               // shells added above the best class resolution
  // RELION's prior (docs/class3d.md): tau2 half the power of the map as the projector sees it, the first
  // limit the --ini_high shell + incr_size with no prior beyond the reference's band, the next limit at
  // least 5 shells + incr_size. Not an option of the command: initial_model sets it false and keeps the
  // schedule it was measured with (tau2 the whole power, the last value held beyond the band, limits
  // from the --ini_high shell; docs/initial_model.md): its EM from a sphere has no RELION counterpart,
  // and on its acceptance set RELION's prior gave a worse map.
  bool relion_prior = true;
  double mask_edge = 5;             // px
  double adaptive_fraction = 0.999; // --adaptive_fraction
  long max_significants = -1;       // --maxsig (-1: no bound)
  double strict_highres_exp = -1;   // --strict_highres_exp, Å: no E-step (nor map) beyond it (<= 0: none)
  int oversampling = 1;             // --oversampling (0, 1 or 2)
  double perturb = 0;               // --perturb: random moves of the sampling grids (RELION's default is 0.5;
                                    // here 0: it cost 2-5% of the classification, docs/class3d.md)
  // Mini-batch iterations (initial_model's; not an option of class3d): MiniBatchSchedule.
  MiniBatchSchedule batches;
  bool staged = true;               // --staged / --random_subsets: for K > 1, consensus iterations, then
                                    // classification at fixed poses, then the full search (else
                                    // RELION's random subsets from iteration 1)

  std::string validate() const;
};

struct Class3DResult {
  int last_iteration = 0;
  std::vector<double> class_fraction;
  std::vector<double> class_resolution_A;
  std::vector<int> particle_class;   // 1-based
  std::vector<std::string> class_maps;
  std::string data_star, model_star, optimiser_star, png;
};

// `job` names the job in the checkpoints (regulaJob in ROOT_itNNN_optimiser.star) and in messages:
// "class3d", or a job built on class3d (initial_model); --continue accepts only that job's checkpoints.
Class3DResult run_class3d(const Class3DOptions& opt, const std::string& job = "class3d");

}  // namespace regula

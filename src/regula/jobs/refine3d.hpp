// 3D auto-refinement with gold-standard FSC (RELION's relion_refine --auto_refine
// --split_random_halves), docs/refine3d.md.
//
// Model per particle i of half h: X_i(k) phase_t(k) = s_i C_i(k) Proj_A(V_h)(k) + noise, noise
// variance sigma2_g(shell) per optics group g; marginalisation over orientations A (HEALPix
// directions x in-plane angles) and translations t, with a Gaussian prior on the offsets and, in
// local searches, on the angular distance from the previous pose. M-step: V_h = MAP reconstruction
// with tau2 = SSNR / (mean data weight), SSNR = FSC / (1 - FSC) from the two unregularised halves.
// Each half is refined from its own particles only; the halves are joined below
// --low_resol_join_halves.
//
// Units: angles in degrees; offsets rlnOriginX/YAngst in Å, searched in pixels (--offset_range,
// --offset_step in pixels as RELION's command line); frequencies in Fourier pixels of the box;
// resolutions in Å.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

struct Refine3DOptions {
  std::string input;                // --i: particles STAR
  std::string out_root;             // --o
  std::string reference;            // --ref: initial map
  double ini_high = 40;             // --ini_high, Å: low-pass of the reference and first frequency limit
  bool firstiter_cc = false;        // --firstiter_cc: cross-correlation, hard assignment in iteration 1
  std::string sym = "C1";           // --sym
  double particle_diameter = 0;     // --particle_diameter, Å (0: box - 2 * mask edge)
  bool ctf = false;                 // --ctf
  bool flatten_solvent = false;     // --flatten_solvent: mask the references with a soft sphere
  bool zero_mask = false;           // --zero_mask: particle solvent set to 0 (else noise of the noise spectrum, as RELION)
  std::string solvent_mask;         // --solvent_mask: mask for the references instead of the sphere
  bool solvent_correct_fsc = false; // --solvent_correct_fsc: gold-standard FSC of the halves under the
                                    // solvent mask, corrected by phase randomisation (needs --solvent_mask)
  int healpix_order = 2;            // --healpix_order: initial angular sampling
  int auto_local_healpix_order = 4; // --auto_local_healpix_order: local searches from this order
  double offset_range = 5;          // --offset_range, px
  double offset_step = 1;           // --offset_step, px
  double low_resol_join_halves = 40;  // --low_resol_join_halves, Å
  int threads = 1;                  // --j
  uint64_t seed = 1;                // --seed: random half sets
  std::string continue_from;        // --continue ROOT_itNNN_optimiser.star
  double angpix = 0;                // --angpix when the STAR file has none
  bool norm = true;                 // --norm: per-particle noise normalisation (RELION's rlnNormCorrection)
  bool scale = true;                // --scale: per-group scale correction (rlnGroupScaleCorrection)
  int max_iterations = 50;          // --iter: safety limit on the number of iterations
  bool iterations_given = false;    // --iter on the command line (with --continue, else the checkpoint's)
  double mask_edge = 5;             // soft edge of the masks, px
  int max_healpix_order = 8;        // finest order the auto-sampling may reach (RELION: none)
  int pad = 2;                      // --pad: oversampling of the Fourier lattices (1 or 2)
  int oversampling = 1;             // --oversampling: finer pass 2^o finer (0, 1 or 2)
  double adaptive_fraction = 0.999; // --adaptive_fraction: posterior mass of the significant poses
  long max_significants = -1;       // --maxsig: at most this many significant coarse poses (-1: no bound)
  double tau2_fudge = 1;            // --tau2_fudge: multiplies the SSNR of the references' prior
  double perturb = 0.5;             // --perturb: RELION's random perturbation of the sampling grids, as a
                                    // fraction of their steps (0: none)
  bool pose_mean = true;            // --pose_mean / --pose_map: write the posterior mean pose (else the
                                    // maximum, as RELION)
  int stop_after = 0;               // stop after this iteration (0 = run to convergence); for tests

  std::string validate() const;
};

struct Refine3DIterationStats {
  int iteration = 0;
  int healpix_order = 0;
  double offset_range_px = 0, offset_step_px = 0;
  int current_shells = 0;
  double resolution_A = 0;   // gold-standard FSC 0.143
  double angular_change_deg = 0, offset_change_A = 0;
  double average_pmax = 0;
  double acc_rot_deg = 0, acc_trans_A = 0;  // RELION's estimated accuracies (999: not estimated)
  size_t significance_bound = 0;            // particles whose coarse significant set reached --maxsig
  double seconds = 0;
};

struct Refine3DResult {
  bool converged = false;
  int last_iteration = 0;
  double resolution_A = 0;           // final gold-standard resolution (FSC 0.143 of the unfil halves)
  std::vector<double> fsc;           // final FSC per shell 0..n/2
  std::vector<double> rot, tilt, psi, origin_x, origin_y;  // per particle (degrees, Å)
  std::vector<int> random_subset;
  std::vector<Refine3DIterationStats> stats;
  std::string map, half1_unfil, half2_unfil, data_star, model_star, optimiser_star, angdist_bild, angdist_png;
};

// Runs (or continues) the refinement; writes the files of every iteration and the final files.
// InputError for bad options or inputs.
Refine3DResult run_refine3d(const Refine3DOptions& opt);

}  // namespace regula

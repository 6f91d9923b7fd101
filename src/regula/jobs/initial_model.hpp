// De novo initial model (RELION's relion_refine --denovo_3dref / cryoSPARC's ab initio), docs/initial_model.md.
//
// Method (Regula's): full expectation-maximisation over (class, orientation, translation) with
// frequency marching, started from a featureless soft sphere of the particle's diameter (K > 1:
// the same sphere for every class and random particle subsets in the first iteration); this is
// `regula class3d` with global searches on the HEALPix grid, run for --iter iterations from a 50 Å
// limit that grows with the SSNR-based resolution; all but the last --grad_em_iters of them on random
// subsets of the particles with forgetting sums (a stochastic EM, Class3DOptions::MiniBatches).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

struct InitialModelOptions {
  std::string input;              // --i
  std::string out_root;           // --o: ROOT_initial_model.mrc, ROOT_data.star (+ ROOT_classNNN.mrc for K > 1)
  int classes = 1;                // --K
  std::string sym = "C1";         // --sym: searched in C1; the result is then aligned to the group's axes
  double particle_diameter = 0;   // --particle_diameter, Å (0: box - 10 px)
  bool ctf = false;               // --ctf
  int iterations = 200;           // --iter: all iterations, the mini-batch ones first (RELION 4/5: 200)
  bool iterations_given = false;  // --iter on the command line (with --continue, else the checkpoint's)
  // The mini-batch schedule (RELION's option names; docs/initial_model.md): the last --grad_em_iters
  // iterations are full-batch EM (>= --iter: no mini-batches), the others search random subsets of
  // --grad_ini_subset growing to --grad_fin_subset particles (-1: RELION's defaults from the data set's
  // size), the step eta from --grad_ini_stepsize to --grad_stepsize, over phases of --grad_ini_frac,
  // the rest, --grad_fin_frac of the mini-batch iterations.
  int grad_em_iters = 5;          // --grad_em_iters
  long grad_ini_subset = -1;      // --grad_ini_subset
  long grad_fin_subset = -1;      // --grad_fin_subset
  double grad_ini_frac = 0.3;     // --grad_ini_frac
  double grad_fin_frac = 0.2;     // --grad_fin_frac
  double grad_ini_stepsize = 0.9; // --grad_ini_stepsize
  double grad_stepsize = 0.5;     // --grad_stepsize
  int grad_write_iter = 10;       // --grad_write_iter: iteration files every so many mini-batch iterations
  // --strict_highres_exp, Å: no E-step (nor map) beyond it in any iteration (<= 0: none). An initial model
  // is used low-passed (refinement starts from it at 40-60 Å); RELION 3's SGD ended at 15 Å, cryoSPARC's
  // ab initio at 12 Å.
  double strict_highres_exp = 15;
  double ini_high = 50;           // --ini_high, Å: first frequency limit
  int healpix_order = 2;          // --healpix_order
  double offset_range = 4;        // --offset_range, px
  double offset_step = 2;         // --offset_step, px
  double tau2_fudge = 4;          // --tau2_fudge
  // --tau2_fudge_scheme (RELION 4/5's): "plain" (T throughout) or "D-step": T / D in the mini-batches' initial
  // phase, rising to T early in the middle phase. RELION's default for a 3D initial model is "T-step" (T = 1 at
  // first); Regula's is "plain", which found the structure more often (docs/initial_model.md).
  std::string tau2_fudge_scheme = "plain";
  // The initial phase's T that --tau2_fudge_scheme gives (0: T throughout); the scheme's error, if any.
  double initial_tau2_fudge(std::string* error = nullptr) const;
  // --maxsig: at most this many significant coarse poses per particle (-1: no bound). From a featureless
  // start the posteriors are flat for the first iterations, and the fine pass over all their poses
  // dominates the run; the bound is logged per iteration when it binds.
  long max_significants = 20;
  int threads = 1;                // --j
  uint64_t seed = 1;              // --seed
  std::string continue_from;      // --continue ROOT_em_itNNN_optimiser.star
  double angpix = 0;              // --angpix

  std::string validate() const;
};

struct InitialModelResult {
  std::string map, data_star;
  std::vector<std::string> class_maps;
  std::vector<double> class_fraction;
  double symmetry_correlation = 0;  // correlation of the map with its symmetrised self (sym != C1)
};

InitialModelResult run_initial_model(const InitialModelOptions& opt);

// out(x) = map(R^T (x - c) + c), c = n/2, trilinear, zero outside: the map turned by R about its centre.
Volume rotate_map(const Volume& map, const Mat3& R);

// The rotation R that puts the symmetry axes of `map` on the group's axes (as relion_align_symmetry):
// rotate_map(map, R) is then as close as the search finds to its symmetrised
// self; `corr_out` receives that correlation. Exposed for tests.
Mat3 align_symmetry(const Volume& map, const SymmetryGroup& sym, double& corr_out, int threads);

}  // namespace regula

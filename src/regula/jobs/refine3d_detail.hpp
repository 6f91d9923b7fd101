// Internal to refine3d: the state carried between iterations (exactly what a checkpoint holds)
// and the writers of the iteration and final files (refine3d_output.cpp).
#pragma once
#include <array>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/jobs/refine3d.hpp"
#include "regula/model/particles.hpp"

namespace regula::refine3d_detail {

struct State {
  int iteration = 0;              // last completed iteration (0 = initial)
  int order = 2;                  // HEALPix order of the next iteration
  double offset_range = 5, offset_step = 1;  // px, next iteration (coarse)
  int local = 0;                  // local angular searches (RELION's orientational prior on)
  int current_shells = 0;         // frequency limit of the next iteration's E-step
  // RELION's auto-sampling and convergence (ml_optimiser.cpp updateAngularSampling, checkConvergence):
  int res_shell = 0;              // current resolution: last shell before the FSC drops below 0.5
  int nr_iter_wo_resol_gain = 0, nr_iter_wo_large_changes = 0;
  double smallest_change_ang = 999, smallest_change_off = 999;  // degrees, Å
  double current_change_ang = 0, current_change_off = 0;        // of the last iteration
  double acc_rot = 999, acc_trans = 999;  // estimated accuracies, degrees and Å
  int fine_enough = 0;            // the angular sampling is fine enough for the estimated accuracy
  int converged = 0;              // the next iteration is the final one
  double average_pmax = 0;        // of the last iteration
  int final_done = 0;             // 1 after the final (joined, full-resolution) iteration
  int n = 0;
  double sigma2_offset = 0;       // px^2, per component
  double avg_norm = 1;            // RELION's average norm correction
  double x_l1_max = 0;            // largest L1 norm of a particle image (bounds of the exact sums)
  std::vector<std::vector<std::vector<double>>> sigma2;  // [half][optics group][shell], |X|^2 per component
  std::vector<double> group_scale;                       // per group (RELION's scale correction)
  ml3d::ParticleValues p;                                 // per particle: poses, offsets in Å, norm...
  std::vector<int> half;                                  // 1 or 2
  std::vector<double> fsc;        // last gold-standard FSC per shell
  std::array<Volume, 2> maps;     // references of the next iteration
};

struct IterationReport {
  int used_shells = 0;
  double resolution_A = 0;
  std::vector<double> fsc, ssnr;           // per shell
  std::array<std::vector<double>, 2> tau2;
  double average_pmax = 0, loglik_sum = 0;
  double angular_change = 0, offset_change = 0;
  size_t significance_bound = 0;           // particles whose coarse set reached --maxsig
  // This process's E-step: wall time, SGEMM flops and the time in SGEMMs summed over the threads.
  double estep_seconds = 0, estep_sgemm_flops = 0, estep_sgemm_seconds = 0;
  // Wall time of the other parts: the setup before the E-step (projectors, coarse slices), the
  // symmetrisation of the back-projectors and the reconstructions of the M-step.
  double setup_seconds = 0, symmetrise_seconds = 0, reconstruct_seconds = 0;
};

struct Files {
  std::string half1, half2, model, data, optimiser, state, bild;
};
Files iteration_files(const std::string& root, int iteration);

// Writes the files of an iteration; the optimiser file last (a complete checkpoint).
Files write_iteration(const Refine3DOptions& opt, const std::string& input_star, const ParticleTable& table,
                      double angpix, const State& st, const IterationReport& rep);
// Reads a checkpoint: options (except --o, --j, --iter kept from the caller), input STAR, state
// (maps from the half maps it names).
void read_checkpoint(const std::string& optimiser_star, Refine3DOptions& opt, std::string& input_star, State& st);

// Particle table with the current poses and per-particle values (RELION's columns).
ParticleTable data_table(const ParticleTable& table, const State& st);
// group_pixel: each optics group's pixel size (its noise spectrum's resolutions; empty: angpix).
void write_model(const std::string& path, const Refine3DOptions& opt, double angpix, const State& st,
                 const IterationReport& rep, const std::vector<double>& group_pixel);
std::vector<double> group_pixel_sizes(const ParticleTable& table);


// Angular distribution: BILD (RELION's cylinders per HEALPix order-`order` pixel, length and colour
// by count) and a PNG (tilt vs rot histogram).
std::string angular_distribution_bild(const std::vector<double>& rot, const std::vector<double>& tilt, int n,
                                      double angpix, double particle_radius_px);
std::string angular_distribution_png(const std::vector<double>& rot, const std::vector<double>& tilt);

}  // namespace regula::refine3d_detail

// The first noise spectrum of a particle set, before any pose is known (RELION's
// calculateSumOfPowerSpectraAndAverageImage and setSigmaNoiseEstimatesAndSetAverageImage).
//
// Per group of particles (an optics group, or a half set and optics group), per shell s:
//   sigma2(s) = 1/2 mean |X_i(k)|^2 - 1/2 |mean_i X_i(k)|^2     (means over the group's images i
//                                                                 and the shell's Fourier pixels k)
// The second term is the power of the group's average image: what the unaligned images have in
// common (the particle's low-resolution blob and its CTF) is signal, not noise. Without it the
// first estimate is too large at low resolution, and the first iteration's posteriors come out
// nearly flat (measured: <Pmax> 2.6e-6 for 200 particles at SNR 0.1). Where the difference is not
// positive, the previous shell's value is used, else the next positive one, as RELION does.
//
// Units as mstep/model_update.hpp: |X|^2 of the unnormalised FFT, per complex component.
// The sums are exact (ExactSum for the power, fixed point for the image), so the result does not
// depend on the order in which images are added: any number of threads gives the same bits.
// add() may be called from several threads at once. Memory: one n x n fixed-point image (16 bytes
// per pixel) per group.
#pragma once
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "regula/core/exact_sum.hpp"
#include "regula/core/grid.hpp"

namespace regula::mstep {

class FirstNoiseEstimate {
 public:
  FirstNoiseEstimate(int n, size_t groups);
  // Groups of different box sizes (optics groups of different rlnImageSize): box[g] px for group g.
  explicit FirstNoiseEstimate(const std::vector<int>& box);
  ~FirstNoiseEstimate();
  // `img`: a particle image of group `group` (its box), as the E-step will see its noise (unmasked,
  // or masked with zeros under --zero_mask).
  void add(size_t group, const Image& img);
  size_t count(size_t group) const;
  // sigma2 per group, shells 0..n/2 of the group's box (shell 0 is 0: the mean is not modelled). A group without
  // images gets `empty_value` in every shell. `subtract_average` false: half the images' mean power
  // only (class2d: see docs/class2d.md).
  std::vector<std::vector<double>> sigma2(double empty_value = 1.0, bool subtract_average = true) const;

 private:
  struct Group;
  std::vector<std::unique_ptr<Group>> g_;
};

}  // namespace regula::mstep

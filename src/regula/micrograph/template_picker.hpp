// Template picking (relion_autopick --ref of RELION 3.1.3: the same options, figure of merit,
// threshold and peak rules).
//
// References: 2D images (class averages, or projections of a map made by the job) at the
// micrograph's pixel size (resampled as RELION when --angpix_ref differs: Fourier re-sized to
// 2 round(n/2 * angpix_ref / angpix) and, when enlarged, multiplied by n / new_n), contrast
// inverted with `invert`, multiplied by the particle mask (radius R = round(diameter / 2 / angpix)
// - shrink_mask px, pixels with r^2 < R^2). Each is held as its exact Fourier transform on the
// micrograph's Fourier grid oversampled twice (RELION's padded projector), up to the low-pass
// frequency, and rotated by bilinear interpolation there (in-plane angles psi = i * 360 / round(360 / ang)).
//
// Figure of merit (RELION's "fraction of the expected probability ratio"), per reference A (with
// the micrograph's CTF, `ctf`), in-plane angle and position r, on the prepared micrograph X
// (picking.hpp: mean 0, standard deviation 1) low-passed to the working grid:
//   CC(r)    = sum_x A(x) X(x + r) / P,            P = number of pixels in the particle mask
//   mu(r), sigma(r): mean and standard deviation of X over the ring between the mask and the
//            reference's box around r (Fourier-cropped to the working grid as RELION's)
//   a1, a2   = sums of A and A^2 over the mask divided by P + 1 (RELION's normalisation)
//   d(r)     = (-2 CC(r) + 2 mu(r) a1) / sigma(r) + a2
//   FOM(r)   = (exp(-d / 2) - 1) / (E - 1),  E = exp(a2 / 2)
// i.e. the gain in likelihood of "reference here" over "no reference" relative to the gain a
// perfect, noise-free match would give. RELION adds a draw of white noise to E's exponent (so its
// FOM scale varies by a few percent from run to run); Regula uses its expectation. a1 and a2 come
// from the CTF-filtered reference sampled on the working grid (RELION samples it at full
// resolution; the means over the mask differ by well under 1%). The best FOM over in-plane angles
// is kept per reference (its angle is the pick's rlnAnglePsi).
//
// Peaks (per reference, then across references): pixels with FOM >= threshold whose four
// neighbours are not larger (and, at full size, also above the threshold), at least
// skip_side + box/2 pixels from the edges, and, when set, with sigma(r) <= max_stddev_noise
// (carbon, ice and contamination have a high local variance) and mu(r) >= min_avg_noise (dark
// areas); peaks closer than R to each other form clusters, from which the best peak is taken, then
// the best of those farther than min_distance from it, and so on; after all references, the same
// pruning again, and finally every peak with another peak closer than min_distance is dropped.
#pragma once
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/micrograph/picking.hpp"

namespace regula {

struct TemplatePickOptions {
  double angpix = 1;              // Å per micrograph pixel
  double angpix_ref = -1;         // Å per reference pixel (<= 0: the micrograph's)
  double particle_diameter = -1;  // Å (--particle_diameter); <= 0: from the references, as RELION
  int shrink_mask = 2;            // --shrink_particle_mask (px)
  double psi_step = 5;            // --ang (degrees)
  double lowpass = 20;            // Å; <= 0: none
  double highpass = -1;           // Å; <= 0: none
  double shrink = 0;              // --shrink
  bool optimise_size = true;
  bool invert = false;            // --invert: the micrograph's contrast is inverted w.r.t. the references
  bool ctf = false;               // --ctf: apply each micrograph's CTF to the references
  bool ctf_intact_first_peak = false;
  double threshold = 0.05;        // --threshold (fraction of the expected probability ratio)
  double min_distance = 100;      // Å (--min_distance); <= 0: half the reference box
  double max_stddev_noise = 1.1;  // <= 0: no limit
  double min_avg_noise = -999;    // <= -900: no limit
  int skip_side = 0;              // px
  double outlier_z = 8;

  std::string validate() const;
};

// The references prepared once for a micrograph size (shared by all micrographs of that size).
class TemplateReferences {
 public:
  // `refs`: the 2D references (square, same size), at angpix_ref (or the micrograph's).
  TemplateReferences(const std::vector<Grid<float>>& refs, const TemplatePickOptions& opt, int mic_nx, int mic_ny,
                     int nthreads = 1);
  ~TemplateReferences();
  TemplateReferences(const TemplateReferences&) = delete;
  TemplateReferences& operator=(const TemplateReferences&) = delete;

  int count() const;
  int box() const;                 // reference box at the micrograph's pixel size
  double particle_diameter() const;  // Å (given or estimated)
  double min_distance() const;     // Å
  const PickingGrid& grid() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

struct TemplatePickResult {
  std::vector<Pick> picks;
  long peaks = 0;  // peaks found before pruning (all references)
};

// Picks one micrograph (its size must be the one the references were prepared for). `ctf` is used
// with opt.ctf; `noise_seed` seeds the padding of non-square micrographs.
TemplatePickResult pick_templates(const Grid<float>& micrograph, const TemplateReferences& refs,
                                  const TemplatePickOptions& opt, const CtfParams& ctf, uint64_t noise_seed,
                                  int nthreads = 1);

// Projections of a map (cubic, origin n/2) for template picking, as RELION's --ref map.mrc: the
// directions of HEALPix order `healpix_order` in the asymmetric unit of `symmetry` (psi 0),
// low-passed to `lowpass` Å (<= 0: none) with pixel size `angpix_ref`.
std::vector<Grid<float>> project_for_picking(const Grid<float>& map, double angpix_ref, double lowpass,
                                             int healpix_order, const std::string& symmetry, int nthreads = 1);

}  // namespace regula

// Automatic selection of 2D classes (`regula select --auto`): a documented score computed from the
// class averages of a class2d iteration, Regula's or RELION's (ROOT_itNNN_data.star with its
// model.star, optimiser.star and classes.mrcs beside it).
//
// For each class holding particles, its average A (rlnReferenceImage of data_model_classes) inside
// the particle circle (radius rlnParticleDiameter / 2 of the optimiser file, or
// --particle_diameter, over rlnPixelSize of the model), with A's mean inside the circle removed:
//   contrast    RMS of A inside the circle, divided by the reference contrast: the median of the
//               classes' contrasts, each class counted once per particle (so the classes holding
//               most particles set the scale: good particles should be the majority of a set);
//   edge ratio  RMS of A in the outer ring (0.7 R to R) over its RMS in the inner disc (r < 0.5 R):
//               a centred particle, smaller than the circle the user chose for it, is dense at the
//               centre and faint at the rim; a carbon edge or a large aggregate crosses the rim.
// A class is kept when its contrast is within [min_contrast, max_contrast] and its edge ratio at most
// max_edge. Empty ice averages to nothing (contrast near 0); ice crystals and other contamination
// are much denser than protein (contrast several times the median); edges and aggregates cross the
// rim. Defaults 0.5, 2.0 and 1.0 (measured on simulated junk sets of two structures: particle
// classes between 0.74 and 1.41 in contrast and 0.31 and 0.78 in edge ratio; docs/class2d.md).
// Good classes of unusual density (a view much denser than the others, beyond max_contrast times the
// median) would be lost: check the table it prints.
//
// Then the particles of each kept class of at least kScreenMinParticles (screen_particles): junk that
// class2d put among the particles differs from its class mates. Against the class's median m and robust
// spread d (1.4826 x the median absolute deviation), with t = particle_sd, a particle is rejected when
//   _regulaSignalZ < max(m - t d, t)     the image holds much less of the class than its mates, or does not
//                                        show it at t standard deviations at all (empty ice: 0-4, the fit of
//                                        its poses to noise, where members have the class's whitened norm;
//                                        Regula's class2d writes it; the statistic is a z-score of the
//                                        class's signal, so t is also its significance floor), or
//   rlnNormCorrection > m + t d          it has much more residual power than its mates (a neighbour's
//                                        density, contamination; RELION and Regula write it); only
//                                        without the image tests, whose band power measures the same
//                                        excess against the particle's own micrograph, or
//   step statistic - m > t d_step        a straight or sharp boundary much stronger than its mates' (carbon
//                                        edges, contamination); only with `step` (--auto_step): on crowded
//                                        picks a neighbour clipped by the disc is such a boundary too (the
//                                        quickstart's 70S picks: 89 of 880 true particles flagged), or
//   band power - m > t d_power           much more low-resolution power than its mates (aggregates,
//                                        neighbours, contamination): the image tests (ImageScreenStatistics,
//                                        computed from the images, so for RELION's classifications too; the
//                                        band power as log(power / the median power of the particle's
//                                        micrograph), averaged over the band's shells); d_step and d_power
//                                        are the robust spreads of every screened particle's deviation from
//                                        its class's median (a class that is half edges has a spread of its
//                                        own that hides them).
// A test whose column is absent (RELION's class2d has no _regulaSignalZ) is skipped, with a message;
// `image_tests` false (--auto_no_image_tests) skips the image tests and the reading of images.
// particle_sd 2.5 by default (measured on the junk sets of docs/class2d.md); 0 turns the screen off.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"

#include "regula/model/particles.hpp"

namespace regula {

struct AutoSelectOptions {
  double min_contrast = 0.5;      // --auto_min_contrast
  double max_contrast = 2.0;      // --auto_max_contrast
  double max_edge = 1.0;          // --auto_max_edge
  double particle_diameter = 0;   // --particle_diameter, Å (0: the optimiser file's)
  double particle_sd = 2.5;       // --auto_particle_sd (0: classes only)
  bool image_tests = true;        // the band power test (it reads the images); --auto_no_image_tests turns it off
  bool step = false;              // --auto_step: also the step test (carbon edges; flags particles with neighbours)
  int threads = 1;                // --j (the step statistic)
  std::string validate() const;
};

struct ClassScore {
  int number = 0;            // 1-based class number
  long particles = 0;
  double contrast = 0;       // RMS inside the circle
  double contrast_ratio = 0; // over the reference contrast
  double edge_ratio = 0;     // outer ring over inner disc (infinite for a flat centre)
  bool kept = false;
  long screened_out = 0;     // particles of a kept class rejected by screen_particles
};

// Two statistics of one particle image for the particle screen (docs/class2d.md, "Automatic class
// selection"), from the image binned by the integer factor box / kScreenBox (so about kScreenBox pixels
// across whatever the box):
// * the step statistic: inside the disc of radius n/2 - 1, its mean there removed, the image is projected
//   onto `directions` directions (180° / directions apart; each pixel into the unit bin nearest its
//   coordinate along the direction); each profile (bins of more than 4 pixels) gets the two-means step
//   fit of largest z = |mean left - mean right| / (sd sqrt(1/n_left + 1/n_right)), sd the binned image's
//   own standard deviation in the disc, n the pixels on either side (at least 4 bins left, 3 right); the
//   statistic is the largest z over directions. Integrating along a straight edge gives it the
//   signal-to-noise ratio a single pixel lacks: carbon edges and contamination stand out.
// * the band power: |F|^2 of the whole binned image averaged over each Fourier shell (shell radius
//   rounded) whose frequency is within [2, 10] / diameter, the particle's low-resolution shape, where a
//   particle's power dominates the noise. The caller compares it with the median over the image's
//   micrograph (same noise, same dose) and the class mates: extra density (a neighbour, an aggregate)
//   raises it.
inline constexpr int kScreenBox = 64;
class ImageScreenStatistics {
 public:
  // `pixel`: Å/px of the images; `diameter`: the particle's, Å.
  ImageScreenStatistics(int box, double pixel, double diameter, int directions = 24);
  struct Work {  // scratch, one per thread
    Image binned;
    std::vector<double> profile;
  };
  int band_size() const { return band_hi_ - band_lo_ + 1; }  // 0: the band holds no shell of this box
  // The step statistic; the band's shell powers into power[0, band_size()). InputError for an image of
  // another size.
  double operator()(const Image& image, Work& work, float* power) const;

 private:
  int box_, bin_, n_, nbins_, band_lo_ = 1, band_hi_ = 0;
  std::vector<int> disc_;                     // binned pixels inside the disc
  std::vector<std::vector<uint16_t>> bins_;   // per direction, each disc pixel's profile bin
  std::vector<std::vector<double>> counts_;   // per direction, pixels per bin
};

// Classes smaller than this are not screened (too few particles for a median and a spread).
inline constexpr long kScreenMinParticles = 20;

// The scores of every class of `table` (the particles of data_star, read by the caller), from the
// class averages of the iteration of `data_star`. InputError naming the file for a data file that is
// not ROOT_itNNN_data.star, missing model/optimiser/class files, no pixel size or diameter.
std::vector<ClassScore> score_classes(const std::string& data_star, const ParticleTable& table,
                                      const AutoSelectOptions& opt);

// The particles of kept classes that pass the screen above (`keep`, indices into `table`); counts each
// class's rejected particles in scores[k].screened_out. Logs a skipped test (its column absent). With the
// image tests, every particle's step statistic and band power (the mean over the band's shells of
// log(power / its micrograph's median power)); empty otherwise.
struct ScreenResult {
  std::vector<size_t> keep;
  std::vector<double> step, band_power;
};
ScreenResult screen_particles(const std::string& data_star, const ParticleTable& table,
                              std::vector<ClassScore>& scores, const AutoSelectOptions& opt);

// The class table as STAR (block class_scores: rlnClassNumber, rlnReferenceImage-free Regula labels
// _regulaClassParticles, _regulaClassContrast, _regulaClassContrastRatio, _regulaClassEdgeRatio,
// _regulaClassSelected, _regulaClassParticlesScreenedOut), written atomically.
void write_class_scores(const std::string& path, const std::vector<ClassScore>& scores);

}  // namespace regula

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
// spread d (1.4826 x the median absolute deviation), a particle is rejected when
//   _regulaSignalZ < m - particle_sd d   the image holds much less of the class than its mates (empty
//                                        ice: 2-4, the best fit of its poses to noise, where members have
//                                        the class's whitened norm; Regula's class2d writes it), or
//   rlnNormCorrection > m + particle_sd d  it has much more residual power than its mates (a neighbour's
//                                        density, contamination, an edge; RELION and Regula write it).
// A test whose column is absent (RELION's class2d has no _regulaSignalZ) is skipped, with a message.
// particle_sd 2.5 by default (measured on the junk sets of docs/class2d.md: 0.5-3% of the particles
// lost, 6-11 points more junk rejected); 0 turns the screen off.
#pragma once
#include <string>
#include <vector>

#include "regula/model/particles.hpp"

namespace regula {

struct AutoSelectOptions {
  double min_contrast = 0.5;      // --auto_min_contrast
  double max_contrast = 2.0;      // --auto_max_contrast
  double max_edge = 1.0;          // --auto_max_edge
  double particle_diameter = 0;   // --particle_diameter, Å (0: the optimiser file's)
  double particle_sd = 2.5;       // --auto_particle_sd (0: classes only)
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

// Classes smaller than this are not screened (too few particles for a median and a spread).
inline constexpr long kScreenMinParticles = 20;

// The scores of every class of `table` (the particles of data_star, read by the caller), from the
// class averages of the iteration of `data_star`. InputError naming the file for a data file that is
// not ROOT_itNNN_data.star, missing model/optimiser/class files, no pixel size or diameter.
std::vector<ClassScore> score_classes(const std::string& data_star, const ParticleTable& table,
                                      const AutoSelectOptions& opt);

// The particles of kept classes that pass the screen above (indices into `table`); counts each class's
// rejected particles in scores[k].screened_out. Logs a skipped test (its column absent).
std::vector<size_t> screen_particles(const std::string& data_star, const ParticleTable& table,
                                     std::vector<ClassScore>& scores, const AutoSelectOptions& opt);

// The class table as STAR (block class_scores: rlnClassNumber, rlnReferenceImage-free Regula labels
// _regulaClassParticles, _regulaClassContrast, _regulaClassContrastRatio, _regulaClassEdgeRatio,
// _regulaClassSelected, _regulaClassParticlesScreenedOut), written atomically.
void write_class_scores(const std::string& path, const std::vector<ClassScore>& scores);

}  // namespace regula

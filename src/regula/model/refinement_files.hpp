// The outputs of a refinement or classification read back for the tools that follow it
// (particle_subtract, focused classification): RELION 3.1's ROOT_itNNN_optimiser.star and the
// model STAR file(s) it names, or Regula's refine3d/class3d files of the same names.
//
// From data_optimiser_general: the particle STAR file (rlnExperimentalDataStarFile), the model
// file (rlnModelStarFile) and, for gold-standard refinements (rlnDoSplitRandomHalves 1), the
// second half's model (rlnModelStarFile2; Regula's refine3d instead names the half-2 map in
// regulaHalf2Map), and the corrections the refinement applied: rlnDoCorrectCtf,
// rlnDoCorrectNorm, rlnDoCorrectScale, rlnCtfDataArePhaseFlipped, rlnDoIgnoreCtfUntilFirstPeak
// (absent keys read as 0, except rlnDoCorrectCtf, which Regula always writes). A multi-body
// refinement names rlnBodyStarFile.
//
// From each model file: data_model_general (rlnOriginalImageSize, rlnCurrentImageSize,
// rlnPixelSize, rlnPaddingFactor, rlnFourierSpaceInterpolator, rlnNormCorrectionAverage,
// rlnReferenceDimensionality, rlnDataDimensionality), the maps of data_model_classes
// (rlnReferenceImage, one per class) and the scale of each group of data_model_groups
// (rlnGroupNumber, rlnGroupName, rlnGroupScaleCorrection). Missing optional values take
// RELION's defaults (current size = original size, padding 2, linear interpolation, norm 1,
// scale 1). Paths inside the files are used as written (relative to the current directory, as
// RELION resolves them).
#pragma once
#include <string>
#include <vector>

namespace regula {

struct ModelFile {
  std::string path;
  int original_size = 0;        // rlnOriginalImageSize, px
  int current_size = 0;         // rlnCurrentImageSize, px (Fourier window of the last iteration)
  double pixel_size = 0;        // rlnPixelSize, Å
  double padding = 2;           // rlnPaddingFactor
  int interpolator = 1;         // rlnFourierSpaceInterpolator: 0 nearest neighbour, 1 linear
  double norm_average = 1;      // rlnNormCorrectionAverage
  int reference_dim = 3;        // rlnReferenceDimensionality
  int data_dim = 2;             // rlnDataDimensionality
  std::vector<std::string> references;   // rlnReferenceImage per class
  std::vector<std::string> group_names;  // data_model_groups, in group-number order
  std::vector<double> group_scale;       // rlnGroupScaleCorrection, same order
};

struct RefinementFiles {
  std::string optimiser;       // the file read
  std::string data_star;       // rlnExperimentalDataStarFile
  bool split_halves = false;   // rlnDoSplitRandomHalves
  bool ctf = false;            // rlnDoCorrectCtf
  bool norm = false;           // rlnDoCorrectNorm
  bool scale = false;          // rlnDoCorrectScale
  bool phase_flipped = false;  // rlnCtfDataArePhaseFlipped
  bool intact_first_peak = false;  // rlnDoIgnoreCtfUntilFirstPeak
  std::string body_star;       // rlnBodyStarFile ("" when not a multi-body refinement)
  // models[0]: rlnModelStarFile (half 1 when split); models[1]: the second half's model (only
  // when split). Regula's refine3d optimiser names one model file; the half-2 model is then a
  // copy of it with regulaHalf2Map as its reference.
  std::vector<ModelFile> models;
};

// Reads the optimiser file and its model file(s). InputError naming the file and key for a
// missing file, block or required value.
RefinementFiles read_refinement_files(const std::string& optimiser_star);
ModelFile read_model_file(const std::string& model_star);

}  // namespace regula

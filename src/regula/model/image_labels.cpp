#include "regula/model/image_labels.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/model/particles.hpp"

namespace regula {

namespace {

using U = LabelUse;

// Modelled first (optics, then per particle), then no effect, then refused.
constexpr ImageLabel kLabels[] = {
    // ---- modelled: optics groups
    {"rlnOpticsGroup", U::Modelled, "optics group number of a particle"},
    {"rlnOpticsGroupName", U::Modelled, "optics group name"},
    {"rlnVoltage", U::Modelled, "acceleration voltage (kV), in the CTF"},
    {"rlnSphericalAberration", U::Modelled, "Cs (mm), in the CTF"},
    {"rlnAmplitudeContrast", U::Modelled, "amplitude contrast, in the CTF"},
    {"rlnImagePixelSize", U::Modelled, "pixel size of the particle images (Å)"},
    {"rlnImageSize", U::Modelled, "box size of the particle images (px)"},
    {"rlnImageDimensionality", U::Modelled, "2 (2D images); 3 is refused"},
    {"rlnMagnification", U::Modelled, "with rlnDetectorPixelSize: the pixel size of RELION 3.0 files"},
    {"rlnDetectorPixelSize", U::Modelled, "with rlnMagnification: the pixel size of RELION 3.0 files"},
    {"rlnCtfDataAreCtfPremultiplied", U::Modelled, "images already multiplied by their CTF"},
    {"rlnCtfDataArePhaseFlipped", U::Modelled, "images already multiplied by the sign of their CTF"},
    {"rlnBeamTiltX", U::Modelled, "beam tilt along x (mrad), a phase on the image"},
    {"rlnBeamTiltY", U::Modelled, "beam tilt along y (mrad), a phase on the image"},
    {"rlnOddZernike", U::Modelled, "antisymmetric aberrations (Zernike coefficients), a phase on the image"},
    {"rlnEvenZernike", U::Modelled, "symmetric aberrations (Zernike coefficients), in the CTF"},
    {"rlnMagMat00", U::Modelled, "anisotropic magnification matrix, element (0,0)"},
    {"rlnMagMat01", U::Modelled, "anisotropic magnification matrix, element (0,1)"},
    {"rlnMagMat10", U::Modelled, "anisotropic magnification matrix, element (1,0)"},
    {"rlnMagMat11", U::Modelled, "anisotropic magnification matrix, element (1,1)"},
    {"rlnMtfFileName", U::Modelled,
     "detector MTF; RELION corrects only differences between groups: one file for all groups has no "
     "effect, different files are refused"},
    {"rlnMicrographOriginalPixelSize", U::Modelled, "pixel size of the movies (the MTF's frequency unit)"},
    // ---- modelled: particles
    {"rlnImageName", U::Modelled, "particle image (N@stack)"},
    {"rlnDefocusU", U::Modelled, "defocus U (Å), in the CTF"},
    {"rlnDefocusV", U::Modelled, "defocus V (Å), in the CTF"},
    {"rlnDefocusAngle", U::Modelled, "astigmatism angle (degrees), in the CTF"},
    {"rlnPhaseShift", U::Modelled, "phase plate shift (degrees), in the CTF"},
    {"rlnCtfBfactor", U::Modelled, "CTF B-factor (Å²), envelope of the CTF"},
    {"rlnCtfScalefactor", U::Modelled, "CTF scale factor"},
    {"rlnAngleRot", U::Modelled, "pose: first Euler angle (degrees)"},
    {"rlnAngleTilt", U::Modelled, "pose: second Euler angle (degrees)"},
    {"rlnAnglePsi", U::Modelled, "pose: third Euler angle (degrees)"},
    {"rlnOriginX", U::Modelled, "origin offset x (px, RELION 3.0)"},
    {"rlnOriginY", U::Modelled, "origin offset y (px, RELION 3.0)"},
    {"rlnOriginXAngst", U::Modelled, "origin offset x (Å)"},
    {"rlnOriginYAngst", U::Modelled, "origin offset y (Å)"},
    {"rlnOriginZ", U::Modelled, "origin offset z (px) of 3D data: 0 only"},
    {"rlnOriginZAngst", U::Modelled, "origin offset z (Å) of 3D data: 0 only"},
    // ---- no effect on the image (names, bookkeeping, estimates, priors)
    {"rlnCtfMaxResolution", U::NoEffect, "CTF fit resolution estimate"},
    {"rlnCtfFigureOfMerit", U::NoEffect, "CTF fit score"},
    {"rlnCtfAstigmatism", U::NoEffect, "|U - V| (redundant with the defoci)"},
    {"rlnCtfValidationScore", U::NoEffect, "CTF fit score"},
    {"rlnCtfIceRingDensity", U::NoEffect, "ice ring power of the micrograph"},
    {"rlnCtfPowerSpectrum", U::NoEffect, "power spectrum file of the CTF fit"},
    {"rlnCtfValue", U::NoEffect, "not used by RELION's single-particle programs"},
    {"rlnImageOriginalName", U::NoEffect, "name of the image before preprocessing"},
    {"rlnImageId", U::NoEffect, "image number"},
    {"rlnImageWeight", U::NoEffect, "not used by RELION's single-particle programs"},
    {"rlnImageSizeX", U::NoEffect, "image size (px); the images' own size is used"},
    {"rlnImageSizeY", U::NoEffect, "image size (px); the images' own size is used"},
    {"rlnImageSizeZ", U::NoEffect, "image size (px); the images' own size is used"},
    {"rlnReconstructImageName", U::NoEffect, "image for RELION's --reconstruct_images option (not in Regula)"},
    {"rlnMicrographPixelSize", U::NoEffect, "pixel size of the micrographs (particles use rlnImagePixelSize)"},
    {"rlnMagnificationCorrection", U::NoEffect, "not used by RELION 3.1-5"},
    {"rlnBeamTiltClass", U::NoEffect, "RELION 3.0 beam-tilt class (a group name)"},
    {"rlnOriginXPrior", U::NoEffect, "prior on the origin (refinement, not the image)"},
    {"rlnOriginYPrior", U::NoEffect, "prior on the origin (refinement, not the image)"},
    {"rlnOriginZPrior", U::NoEffect, "prior on the origin (refinement, not the image)"},
    {"rlnOriginXPriorAngst", U::NoEffect, "prior on the origin (refinement, not the image)"},
    {"rlnOriginYPriorAngst", U::NoEffect, "prior on the origin (refinement, not the image)"},
    {"rlnOriginZPriorAngst", U::NoEffect, "prior on the origin (refinement, not the image)"},
    {"rlnOpticsGroupNrParticles", U::NoEffect, "particle count of an optics group"},
    {"rlnOpticsGroupNumber", U::NoEffect, "optics group number in model files"},
    {"rlnOriginalParticleName", U::NoEffect, "name of the particle before subtraction or re-extraction"},
    {"rlnOriginalImageSize", U::NoEffect, "box size in model files"},
    {"rlnChromaticAberration", U::NoEffect, "Cc (mm); not used by RELION's programs"},
    {"rlnZernikeMoments", U::NoEffect, "class-ranker image features (not aberrations)"},
    {"rlnTomoName", U::NoEffect, "tomogram name"},
    {"rlnTomoParticleName", U::NoEffect, "particle name"},
    {"rlnTomoParticleId", U::NoEffect, "particle number"},
    // ---- refused: they change the image model and no command models them
    {"rlnCtfImage", U::Refused, "a 3D CTF volume per particle (subtomograms): 3D data are not supported"},
    {"rlnCtfDataAreCtfCorrected", U::Refused, "images already corrected for their CTF: not supported"},
    {"rlnCtfBfactorPerElectronDose", U::Refused, "dose-dependent B-factors of tilt series: not supported"},
    {"rlnTomoVisibleFrames", U::Refused, "tilt images of a pseudo-subtomogram: tomography is not supported"},
    {"rlnTomoSubtomogramBinning", U::Refused, "binning of pseudo-subtomograms: tomography is not supported"},
    {"rlnTomoTiltSeriesPixelSize", U::Refused, "tilt-series pixel size: tomography is not supported"},
    {"rlnTomoSubtomogramRot", U::Refused, "subtomogram orientation (part of the pose): tomography is not supported"},
    {"rlnTomoSubtomogramTilt", U::Refused, "subtomogram orientation (part of the pose): tomography is not supported"},
    {"rlnTomoSubtomogramPsi", U::Refused, "subtomogram orientation (part of the pose): tomography is not supported"},
};

constexpr std::string_view kImagePrefixes[] = {
    "rlnCtf",       "rlnBeamTilt", "rlnMag",       "rlnImage", "rlnDefocus", "rlnPhase", "rlnVoltage",
    "rlnSpherical", "rlnAmplitude", "rlnMtf",      "rlnOrigin", "rlnDetector", "rlnOptics", "rlnTomo"};

std::string_view strip(std::string_view name) {
  return !name.empty() && name.front() == '_' ? name.substr(1) : name;
}

// Labels that belong in data_optics of a RELION 3.1 file. RELION reads the optics ones from there
// only (the CTF ones, voltage, Cs and Q0, from a particle first). In data_particles they are
// accepted when every particle's value is its optics group's (a redundant copy, as some converters
// write), and refused otherwise: Regula does not model per-particle optics.
double group_value(const OpticsGroup& g, std::string_view label) {
  if (label == "rlnVoltage") return g.voltage;
  if (label == "rlnSphericalAberration") return g.cs;
  if (label == "rlnAmplitudeContrast") return g.amplitude_contrast;
  if (label == "rlnImagePixelSize") return g.pixel_size;
  if (label == "rlnImageSize") return g.image_size;
  if (label == "rlnImageDimensionality") return g.dimensionality;
  if (label == "rlnCtfDataAreCtfPremultiplied") return g.ctf_premultiplied;
  if (label == "rlnCtfDataArePhaseFlipped") return g.ctf_phase_flipped;
  if (label == "rlnBeamTiltX") return g.beam_tilt_x;
  if (label == "rlnBeamTiltY") return g.beam_tilt_y;
  if (label == "rlnMagMat00") return g.mag_matrix[0];
  if (label == "rlnMagMat01") return g.mag_matrix[1];
  if (label == "rlnMagMat10") return g.mag_matrix[2];
  if (label == "rlnMagMat11") return g.mag_matrix[3];
  return NAN;
}

bool optics_only(std::string_view label) {
  return !std::isnan(group_value(OpticsGroup{}, label)) || label == "rlnOddZernike" || label == "rlnEvenZernike" ||
         label == "rlnMtfFileName" || label == "rlnMagnification" || label == "rlnDetectorPixelSize";
}

bool close(double a, double b) { return std::abs(a - b) <= 1e-6 * std::max({1.0, std::abs(a), std::abs(b)}); }

// "" when particle row r's value of optics label `lab` is its group's, else what differs.
std::string differs_from_group(const ParticleTable& t, const star::Table& b, int c, size_t r) {
  const std::string& lab = b.label(c);
  const OpticsGroup& g = t.optics[size_t(t.optics_index[r])];
  const double gv = group_value(g, lab);
  if (!std::isnan(gv)) {
    if (!b.is_number(r, c)) return fmt::format("'{}' is not a number", b.value(r, c));
    return close(b.number(r, c), gv) ? "" : fmt::format("{} here, {} in data_optics", b.value(r, c), gv);
  }
  if (lab == "rlnMagnification" || lab == "rlnDetectorPixelSize") {
    const int cm = b.column("rlnMagnification"), cd = b.column("rlnDetectorPixelSize");
    if (cm < 0 || cd < 0 || !b.is_number(r, cm) || !b.is_number(r, cd) || !(b.number(r, cm) > 0))
      return "rlnMagnification and rlnDetectorPixelSize do not give a pixel size";
    const double px = b.number(r, cd) * 1e4 / b.number(r, cm);
    return close(px, g.pixel_size) ? "" : fmt::format("a pixel size of {} Å here, {} Å in data_optics", px, g.pixel_size);
  }
  if (lab == "rlnMtfFileName") {  // one file for every particle (RELION ignores it here)
    const star::Block* ob = t.document().find("optics");
    const int co = ob ? ob->column("rlnMtfFileName") : -1;
    const std::string_view first = co >= 0 ? ob->value(0, co) : b.value(0, c);
    return b.value(r, c) == first ? "" : fmt::format("'{}' here, '{}' elsewhere", b.value(r, c), first);
  }
  // rlnOddZernike, rlnEvenZernike
  const std::vector<double>& gz = lab == "rlnOddZernike" ? g.odd_zernike : g.even_zernike;
  std::string text = "[";
  for (size_t k = 0; k < gz.size(); ++k) text += fmt::format("{}{}", k ? "," : "", gz[k]);
  text += "]";
  std::string_view v = b.value(r, c);
  return v == text || (gz.empty() && (v == "[]" || v.empty())) ? "" : fmt::format("{} here, {} in data_optics", v, text);
}

void check_block(const ParticleTable& t, const star::Table& b, std::string_view block, bool particles) {
  const std::string& src = t.source();
  for (int c = 0; c < int(b.columns()); ++c) {
    const std::string& lab = b.label(c);
    const ImageLabel* info = find_image_label(lab);
    if (!info) {
      if (looks_like_image_label(lab))
        input_error("{}: data_{} has _{}, a label Regula does not know that would change how the particle "
                    "images are formed; it is not modelled, so the data cannot be used (remove the column if "
                    "it does not matter)",
                    src, block, lab);
      continue;
    }
    if (info->use == LabelUse::Refused)
      input_error("{}: data_{} has _{} ({}); it is not modelled, so the data cannot be used", src, block, lab,
                  info->meaning);
    if (info->use != LabelUse::Modelled) continue;
    // (A RELION 3.0 file's per-particle optics columns became optics groups on reading.)
    if (particles && optics_only(lab))
      for (size_t r = 0; r < b.rows(); ++r)
        if (std::string d = differs_from_group(t, b, c, r); !d.empty())
          input_error("{}: data_particles has _{} ({}) with a value other than its optics group's ({}): "
                      "RELION 3.1 files give it per optics group in data_optics, and per-particle values are "
                      "not modelled",
                      b.where(r), lab, info->meaning, d);
    if (lab == "rlnImageDimensionality") {
      for (size_t r = 0; r < b.rows(); ++r)
        if (b.integer(r, c) != 2)
          input_error("{}: _rlnImageDimensionality is {}: only 2D particle images are supported", b.where(r),
                      b.value(r, c));
    } else if (lab == "rlnOriginZ" || lab == "rlnOriginZAngst") {
      for (size_t r = 0; r < b.rows(); ++r)
        if (b.number(r, c) != 0)
          input_error("{}: _{} is {}: 3D origins (subtomograms) are not supported", b.where(r), lab,
                      b.value(r, c));
    } else if (lab == "rlnMtfFileName") {
      for (size_t r = 1; r < b.rows(); ++r)
        if (b.value(r, c) != b.value(0, c))
          input_error("{}: _rlnMtfFileName differs between optics groups ('{}' and '{}'): RELION then corrects "
                      "each group for its own MTF, which Regula does not model",
                      b.where(r), b.value(0, c), b.value(r, c));
    }
  }
}

}  // namespace

std::span<const ImageLabel> image_labels() { return kLabels; }

const ImageLabel* find_image_label(std::string_view name) {
  name = strip(name);
  for (const ImageLabel& l : kLabels)
    if (l.name == name) return &l;
  return nullptr;
}

bool looks_like_image_label(std::string_view name) {
  name = strip(name);
  if (name.find("Zernike") != std::string_view::npos || name.find("Aberration") != std::string_view::npos)
    return true;
  return std::any_of(std::begin(kImagePrefixes), std::end(kImagePrefixes),
                     [&](std::string_view p) { return name.starts_with(p); });
}

void check_image_labels(const ParticleTable& t) {
  if (const star::Block* ob = t.document().find("optics")) check_block(t, *ob, "optics", false);
  check_block(t, t.particles_block(), t.particles_block().name, true);
}

}  // namespace regula

// The STAR labels of data_optics and data_particles that bear on how a particle
// image is formed, and what Regula does with each: the one place this list is
// kept (docs/formats.md shows it as a table).
//
// Every column of those two blocks is one of:
//   * modelled   read into the image model (model/particles.hpp, imaging/optics_model.hpp);
//                some are modelled only for some values (rlnImageDimensionality 2,
//                rlnOriginZAngst 0, one rlnMtfFileName for every group): other values
//                are refused by check_image_labels();
//   * no effect  known, and the image does not depend on it (names, coordinates, figures of
//                merit, priors, class numbers, groups...);
//   * refused    changes the image model in a way Regula does not model: check_image_labels()
//                throws InputError naming the label and the file;
//   * unknown    not in the list: refused when its name looks like an image-model label
//                (looks_like_image_label: rlnCtf*, rlnBeamTilt*, rlnMag*, *Zernike*,
//                rlnImage*, ...), accepted otherwise (other programs' bookkeeping columns).
//
// Labels are compared without the leading underscore.
#pragma once
#include <span>
#include <string_view>

namespace regula {

class ParticleTable;

enum class LabelUse { Modelled, NoEffect, Refused };

struct ImageLabel {
  std::string_view name;     // "rlnBeamTiltX"
  LabelUse use;
  std::string_view meaning;  // one line: what it is and, for refused labels, why
};

// The whole list, in the order docs/formats.md shows it.
std::span<const ImageLabel> image_labels();
// The entry for `name` ("rlnX" or "_rlnX"), or nullptr when unknown.
const ImageLabel* find_image_label(std::string_view name);
// True for a name that is not in the list but looks like a label that changes the image
// model (prefixes rlnCtf, rlnBeamTilt, rlnMag, rlnImage, rlnDefocus, rlnPhase, rlnVoltage,
// rlnSpherical, rlnAmplitude, rlnMtf, rlnOrigin, rlnDetector, rlnOptics, rlnTomo, or
// "Zernike" / "Aberration" anywhere).
bool looks_like_image_label(std::string_view name);

// Checks every column of data_optics and data_particles of `table` against the list:
// InputError "<file>: data_<block> has _<label> (<meaning>): <why>" for a refused or an
// unknown image-model label, and for modelled labels with a value Regula does not model
// (rlnImageDimensionality other than 2, a non-zero rlnOriginZ/rlnOriginZAngst, optics
// groups with different rlnMtfFileName, optics labels in data_particles of a RELION 3.1
// file). Called by imaging/optics_model.hpp for every command that forms particle images.
void check_image_labels(const ParticleTable& table);

}  // namespace regula

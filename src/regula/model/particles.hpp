// A typed view over RELION particle tables (STAR "data_optics" + "data_particles").
//
// ParticleTable keeps the whole STAR Document (so unknown columns and blocks
// survive a round trip) plus columnar typed vectors for the fields the engine
// uses. Particle i is row i of the particles block.
//
// Conventions (RELION 3.1):
//  * Pixel sizes in Å/px (rlnImagePixelSize of the optics group); 0 = unknown
//    (the caller may supply one, e.g. --angpix, through ParticleReadOptions).
//  * Origins rlnOriginXAngst/YAngst in Å (the shift that centres the particle).
//  * Angles rot/tilt/psi in degrees, RELION's ZYZ convention (sampling/euler.hpp).
//  * Defocus U/V in Å, defocus angle and phase shift in degrees, voltage in kV,
//    Cs in mm, B-factor in Å².
//
// RELION 3.0 files (no data_optics; per-particle rlnVoltage, rlnSphericalAberration,
// rlnAmplitudeContrast, rlnMagnification + rlnDetectorPixelSize (µm): pixel size
// = DetPix * 1e4 / Mag Å; rlnOriginX/Y in pixels) are converted on read: optics
// groups from rlnOpticsGroup if present, else one per distinct (voltage, Cs, AC,
// pixel size); origins become Å. The 3.1 form is what write() produces.
// A 3.1 file with both rlnOriginX and rlnOriginXAngst uses the Å columns; one
// with only rlnOriginX (pixels) is converted with its optics group's pixel size
// (InputError if that is unknown and an origin is non-zero).
//
// CTF values (rlnDefocusU/V/Angle, rlnPhaseShift, rlnCtfBfactor, rlnCtfScalefactor) are read per
// particle, else from the particle's optics group when data_optics has the column, else the
// default (as RELION's CTF reader): 0, except rlnDefocusV = rlnDefocusU and rlnCtfScalefactor = 1.
// RELION 3.0 files with rlnBeamTiltX/Y per particle get optics groups that differ in them too.
//
// Which labels are read, ignored or refused: model/image_labels.hpp.
//
// Image names are "N@stack.mrcs" (N 1-based) or "file.mrc" (the whole file).
// Relative stack paths are resolved like RELION does: against the current
// working directory (at read time), NOT the directory of the STAR file.
#pragma once
#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/io/star.hpp"

namespace regula {

namespace mrc {
class StackReader;
}

// One row of data_optics. The aberration fields are read as written; what they mean for the
// image (signs, units, matrix orientation) is imaging/optics_model.hpp.
struct OpticsGroup {
  int number = 1;                   // rlnOpticsGroup (1-based as in the file)
  std::string name;                 // rlnOpticsGroupName
  double pixel_size = 0;            // Å/px of the particle images; 0 = unknown
  int image_size = 0;               // box size in px (rlnImageSize); 0 = unknown
  double voltage = 0;               // kV (rlnVoltage); 0 = absent from the file
  double cs = 0;                    // mm (rlnSphericalAberration)
  double amplitude_contrast = 0;    // fraction (rlnAmplitudeContrast)
  int dimensionality = 2;           // rlnImageDimensionality (2 or 3)
  bool ctf_premultiplied = false;   // rlnCtfDataAreCtfPremultiplied: images are CTF x signal + CTF x noise
  bool ctf_phase_flipped = false;   // rlnCtfDataArePhaseFlipped: images are sign(CTF) x (signal + noise)
  double beam_tilt_x = 0, beam_tilt_y = 0;  // mrad (rlnBeamTiltX, rlnBeamTiltY)
  std::vector<double> odd_zernike;   // rlnOddZernike "[c0,c1,...]" (radians; empty = none)
  std::vector<double> even_zernike;  // rlnEvenZernike
  std::array<double, 4> mag_matrix{1, 0, 0, 1};  // rlnMagMat00, 01, 10, 11 (identity when absent)

  bool has_aberrations() const;  // beam tilt, odd or even Zernikes other than zero
  bool has_anisotropic_magnification() const { return mag_matrix != std::array<double, 4>{1, 0, 0, 1}; }
};

struct ImageRef {
  long index = 0;    // 1-based image number N of "N@path"; 0 = the whole file
  std::string path;  // stack path (resolved, when returned by ParticleTable::image)
};

// Splits "N@path" (N a positive integer) or "path". `where` prefixes error
// messages (e.g. "run.star:12"); InputError for "0@x", "@x", "12@" or "".
ImageRef parse_image_name(std::string_view name, std::string_view where = {});
// The absolute, lexically normalised path of a stack name as RELION resolves
// it: absolute names unchanged, relative names against `base_dir` (empty = the
// current working directory).
std::string resolve_image_path(std::string_view path, const std::string& base_dir = {});

struct Particle {
  size_t row = 0;            // row in the particles block (0-based)
  ImageRef image;            // resolved path
  std::string micrograph;    // rlnMicrographName ("" if absent)
  double defocus_u = 0, defocus_v = 0;  // Å
  double defocus_angle = 0;  // degrees
  double phase_shift = 0;    // degrees
  double ctf_bfactor = 0;    // Å²
  double ctf_scale = 1;
  double rot = 0, tilt = 0, psi = 0;    // degrees
  double origin_x = 0, origin_y = 0;    // Å
  int class_number = 0;      // rlnClassNumber (0 = absent)
  int random_subset = 0;     // 1 or 2 (0 = unassigned)
  int optics_index = 0;      // 0-based index into ParticleTable::optics
};

struct ParticleReadOptions {
  // Pixel size (Å) for optics groups whose pixel size the file does not give.
  double angpix = 0;
  // Directory that relative image names are resolved against ("" = current directory).
  std::string image_base;
};

class ParticleTable {
 public:
  static ParticleTable read(const std::string& path, const ParticleReadOptions& opt = {});
  // From a parsed document (takes ownership; `doc.source` names it in messages).
  static ParticleTable from_document(star::Document doc, const ParticleReadOptions& opt = {});

  // Writes the typed columns back into the document (3.1 form) and writes it atomically.
  void write(const std::string& path);
  // Writes the typed columns back into the document and returns it.
  const star::Document& sync();

  size_t size() const { return rot.size(); }
  Particle particle(size_t i) const;
  ImageRef image(size_t i) const;          // resolved path
  std::string_view image_name(size_t i) const;  // text of rlnImageName
  void set_image(size_t i, long index, const std::string& stack);  // writes rlnImageName
  const OpticsGroup& optics_of(size_t i) const { return optics[size_t(optics_index[i])]; }
  // Keeps particles `keep` (in that order) in the typed columns and the document.
  void select(const std::vector<size_t>& keep);

  // "<file>:<line> (particle row R)" for messages about particle i.
  std::string where(size_t i) const;
  const std::string& source() const { return doc_.source; }
  // Refuses a table without rlnAngleRot/Tilt/Psi (RELION would read absent angles as zeros):
  // InputError naming `file` (the name the user gave), the label and `why` the poses are needed.
  void require_angles(const std::string& file, const std::string& why) const;
  // True when the file was RELION 3.0 (no optics block) and was converted.
  bool converted_from_30() const { return converted_; }

  const star::Document& document() const { return doc_; }
  star::Block& particles_block() { return doc_.blocks[particles_]; }
  const star::Block& particles_block() const { return doc_.blocks[particles_]; }

  std::vector<OpticsGroup> optics;
  // One value per particle (columnar):
  std::vector<double> defocus_u, defocus_v, defocus_angle, phase_shift, ctf_bfactor, ctf_scale;
  std::vector<double> rot, tilt, psi, origin_x, origin_y;  // degrees, Å
  std::vector<int> class_number, random_subset, optics_index;
  std::vector<long> image_index;        // N of N@stack (0 = whole file)
  std::vector<uint32_t> image_stack;    // index into stacks
  std::vector<std::string> stacks;      // stack names as written in the file
  std::vector<std::string> stacks_resolved;  // same, resolved (absolute)
  std::vector<uint32_t> micrograph;     // index into micrographs
  std::vector<std::string> micrographs;

 private:
  void load_optics_31(const ParticleReadOptions& opt);
  void convert_30(const ParticleReadOptions& opt);
  void load_columns(const ParticleReadOptions& opt);
  void load_images(const ParticleReadOptions& opt);
  void sync_optics();

  star::Document doc_;
  size_t particles_ = 0;
  bool converted_ = false;
  std::vector<std::string> present_;  // typed labels present in the input
  std::vector<std::string> from_optics_;  // per-particle labels filled from data_optics (not written back)
};

// Lazy access to particle images: opens mrc::StackReaders on demand and keeps
// the most recently used ones open (at most `max_open`).
class ParticleImages {
 public:
  explicit ParticleImages(const ParticleTable& table, size_t max_open = 64);
  ~ParticleImages();
  ParticleImages(const ParticleImages&) = delete;
  ParticleImages& operator=(const ParticleImages&) = delete;

  // Image of particle i (a 2D image; the whole file for names without "N@").
  // InputError naming the STAR file, line and row and the stack when the stack
  // is missing or too short. Not thread-safe.
  Grid<float> read(size_t i);

 private:
  mrc::StackReader& open(size_t i);
  const ParticleTable& table_;
  size_t max_open_;
  std::list<uint32_t> lru_;  // stack indices, most recent first
  std::unordered_map<uint32_t, std::pair<std::unique_ptr<mrc::StackReader>, std::list<uint32_t>::iterator>>
      open_;
};

}  // namespace regula

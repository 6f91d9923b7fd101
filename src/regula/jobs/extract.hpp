// Particle extraction: `regula extract`, RELION's Extract job (relion_preprocess --extract of
// RELION 3.1.3, plus RELION 4's --coord_list and --float16).
//
// Inputs: --i, the micrographs (a STAR file such as CtfFind's micrographs_ctf.star or MotionCorr's
// corrected_micrographs.star, a wildcard or a list; the pixel size from rlnMicrographPixelSize of
// the optics group or --angpix), and the coordinates: --coord_dir DIR --coord_suffix _autopick.star
// (RELION 3.1; jobs/coordinates.hpp), --coord_list autopick.star (RELION 4/5), or
// --reextract_data_star run_data.star (re-extraction of refined particles, matched to micrographs
// by rlnMicrographName).
//
// Each particle (micrograph/extract.hpp): the --extract_size box at its coordinate (+ --extract_bias_x/y
// px), RELION's edge handling for boxes partly outside (edge pixels repeated), then --scale,
// --window, --norm (background outside --bg_radius px of the final box, ramp removal unless
// --no_ramp, --white_dust/--black_dust), --invert_contrast. A box entirely outside its micrograph
// is skipped with a message (relion_preprocess stops the whole job with an error there).
//
// Re-extraction (--reextract_data_star): every column of the particle rows is kept; with
// --recenter the refined origins (rlnOriginXAngst/YAngst, minus the projection of --recenter_x/y/z
// px of the reference at the particle's angles) are folded into the coordinates: coordinate -=
// round(origin in micrograph pixels), and the sub-pixel remainder stays as the new origin (Å), as
// RELION; --reset_offsets sets the origins to 0. The CTF stays the particles' own unless
// --keep_ctfs_micrographs.
//
// Outputs in --o DIR/ (RELION's names): per micrograph DIR/<name without Type/jobNNN/ and
// extension>.mrcs (float32, or float16 with --float16) and _extract.star (its particles), and
// DIR/particles.star: data_optics (the micrographs' optics groups with rlnImagePixelSize (micrograph
// pixel size x extract_size / scale), rlnImageSize and rlnImageDimensionality, without
// rlnMicrographPixelSize) and data_particles (the coordinate columns, rlnImageName "N@stack",
// rlnMicrographName, rlnOpticsGroup and the micrograph's CTF: rlnCtfMaxResolution,
// rlnCtfFigureOfMerit, rlnDefocusU/V, rlnDefocusAngle, rlnCtfBfactor, rlnCtfScalefactor,
// rlnPhaseShift, and beam tilt when given). --only_do_unfinished (and `regula run --job DIR
// --continue`) keeps micrographs whose _extract.star exists. A missing or unreadable micrograph or
// coordinate file is skipped with a message. Under mpirun the micrographs are split over the ranks
// and rank 0 joins particles.star.
// Not done: CTF pre-multiplication and phase flipping (--premultiply_ctf, --phase_flip), helical
// segments, 3D sub-tomograms.
#pragma once
#include <cstdint>
#include <string>

namespace regula {

struct ExtractOptions {
  std::string input;          // --i
  std::string out_dir;        // --o
  std::string coord_dir;      // --coord_dir ("" : next to the micrographs)
  std::string coord_suffix;   // --coord_suffix
  std::string coord_list;     // --coord_list
  std::string reextract;      // --reextract_data_star
  bool recenter = false;      // --recenter
  double recenter_x = 0, recenter_y = 0, recenter_z = 0;  // px of the reference
  double ref_angpix = -1;     // --ref_angpix (Å; <= 0: the particles' pixel size)
  bool reset_offsets = false; // --reset_offsets
  bool keep_ctfs_micrographs = false;
  int extract_size = -1;      // --extract_size (px, even)
  int scale = -1;             // --scale (px, even)
  int window = -1;            // --window (px, even)
  bool norm = false;          // --norm
  double bg_radius = -1;      // --bg_radius (px of the final box; < 0 with --norm: 75% of its half, as RELION's GUI)
  bool no_ramp = false;       // --no_ramp
  double white_dust = -1, black_dust = -1;  // sigmas
  bool invert_contrast = false;
  bool float16 = false;       // --float16 (MRC mode 12)
  int bias_x = 0, bias_y = 0; // --extract_bias_x/y (px added to the coordinates)
  bool only_unfinished = false;
  double angpix = -1;         // --angpix (Å) when the input has no rlnMicrographPixelSize
  uint64_t seed = 1;          // --random_seed (dust removal)
  int threads = 1;            // --j

  std::string validate() const;
  int final_box() const;      // box of the written images
};

struct ExtractResult {
  std::string star;           // DIR/particles.star
  long particles = 0;         // in particles.star
  int micrographs = 0;        // with particles
  int done = 0, skipped = 0, failed = 0;
  long outside = 0;           // particles skipped because their box is outside the micrograph
};

ExtractResult extract(const ExtractOptions& opt);

}  // namespace regula

// Particle picking: `regula autopick`, RELION's AutoPick job (relion_autopick of RELION 3.1.3).
//
// Two methods, RELION's:
//  * --LoG: Laplacian-of-Gaussian blob detection between --LoG_diam_min and --LoG_diam_max Å, no
//    reference needed (micrograph/log_picker.hpp: RELION's filters, figure of merit, threshold of
//    --LoG_adjust_threshold standard deviations above the mean, --LoG_upper_threshold);
//  * --ref: template matching (micrograph/template_picker.hpp) with 2D references - an MRC stack
//    (e.g. Class2D's run_itNNN_classes.mrcs, optionally only --select_classes 1,4,...), or a STAR
//    file of images (rlnReferenceImage or rlnImageName, as Select's class_averages.star) - or a 3D
//    map projected at HEALPix order --healpix_order with --sym (the projections are written to
//    DIR/reference_projections.mrcs); with --ctf each micrograph's CTF is applied to the references.
//
// Input (--i): micrographs_ctf.star of a CtfFind job (the CTF is needed for --ctf and
// --LoG_use_ctf), corrected_micrographs.star, a wildcard or a list (then --angpix). All micrographs
// must have one pixel size (and, for templates, one size), as RELION's.
//
// Outputs in --o DIR/ (RELION's names): per micrograph DIR/<name without Type/jobNNN/ and
// extension>_<pickname>.star (data_: rlnCoordinateX/Y in pixels, rlnAutopickFigureOfMerit,
// rlnClassNumber (reference, 1-based; 0 for LoG) and rlnAnglePsi), DIR/<pickname>.star
// (data_coordinate_files: rlnMicrographName, rlnMicrographCoordinates; RELION 4/5),
// DIR/coords_suffix_<pickname>.star (the input's name, RELION 3.1's coordinates node) and
// DIR/summary.star (picks and mean figure of merit per micrograph). --only_do_unfinished (and
// `regula run --job DIR --continue`) keeps micrographs whose pick file exists. A missing or
// unreadable micrograph is skipped with a message. Under mpirun the micrographs are split over the
// ranks; rank 0 writes the lists.
//
// Defaults are those of RELION's GUI (--lowpass 20, --shrink 0, --ang 5, --threshold 0.05,
// --min_distance 100, --max_stddev_noise 1.1); relion_autopick's own command-line defaults differ.
// Not done: helical segments and amyloids (--helix, --amyloid), Gaussian-blob references
// (--ref gauss), Topaz, writing and reading FOM maps, GPUs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

struct AutopickOptions {
  std::string input;               // --i
  std::string out_dir;             // --o
  std::string pickname = "autopick";  // --pickname
  double angpix = -1;              // --angpix (Å) when the input has no rlnMicrographPixelSize
  // Laplacian of Gaussian
  bool log = false;                // --LoG
  double log_diam_min = -1, log_diam_max = -1;  // Å
  double log_neighbour = 100;      // --LoG_neighbour (percent)
  bool log_invert = false;         // --Log_invert: the particles are white
  double log_adjust_threshold = 0; // standard deviations
  double log_upper_threshold = 999;  // standard deviations
  int log_max_search = 5;          // --Log_max_search
  bool log_use_ctf = false;        // --LoG_use_ctf
  // Templates
  std::string ref;                 // --ref (stack, STAR file of images, or 3D map)
  std::vector<int> select_classes; // --select_classes (1-based images of a --ref stack)
  double angpix_ref = -1;          // Å
  double particle_diameter = -1;   // Å (<= 0: from the references)
  int shrink_particle_mask = 2;    // px
  double psi_step = 5;             // --ang (degrees)
  bool invert = false;             // --invert
  bool ctf = false;                // --ctf
  bool ctf_intact_first_peak = false;
  double threshold = 0.05;
  double min_distance = 100;       // Å (<= 0: half the reference box)
  double max_stddev_noise = 1.1;   // <= 0: none
  double min_avg_noise = -999;     // <= -900: none
  int healpix_order = 1;           // 3D reference
  std::string sym = "C1";
  // Both
  double lowpass = 20;             // Å (<= 0: none)
  double highpass = -1;            // Å (templates)
  double shrink = 0;               // --shrink
  bool skip_optimise_scale = false;
  double outlier_removal_zscore = 8;
  int skip_side = 0;               // px
  bool only_unfinished = false;    // --only_do_unfinished
  uint64_t seed = 1;               // --random_seed
  int threads = 1;                 // --j

  std::string validate() const;
};

struct AutopickResult {
  std::string list_star;           // DIR/<pickname>.star
  long picks = 0;                  // over the micrographs picked now
  int done = 0, skipped = 0, failed = 0;
  std::vector<std::string> pick_files;  // per micrograph (input order; "" where none)
};

AutopickResult autopick(const AutopickOptions& opt);

}  // namespace regula

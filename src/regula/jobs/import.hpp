// regula import: files from outside a project brought in as RELION's Import job (relion_import)
// writes them.
//
//   movies / micrographs: the files a wildcard matches (sorted by name, as glob(3)), listed in
//     `movies.star` (data_optics + data_movies: rlnMicrographMovieName, rlnOpticsGroup) or
//     `micrographs.star` (data_micrographs: rlnMicrographName, with rlnMicrographPixelSize in
//     data_optics), one optics group from the options, columns as relion_import 3.1 writes them
//     (rlnMtfFileName only with an MTF, rlnBeamTiltX/Y only with a beam tilt). With --continue the
//     files not yet in an existing output are added (a watch over a growing folder), in the optics
//     group of that name, or a new one.
//   coordinates: the coordinate files copied into the output directory under their own relative
//     path, and RELION 3.1's `coords_suffix<SUFFIX>` file naming the micrographs they belong to.
//   halfmaps: an unfiltered half map whose name holds "half1" and its "half2" partner, copied.
//   particles: a particle STAR file (RELION 3.0 files converted to the 3.1 form with optics groups),
//     checked and written to the output, optionally with a new optics group name.
//   other: any file (a map, a mask, 2D references) copied.
// Files are referred to by the names the wildcard gives (relative names stay relative to the
// project), as RELION does; nothing is moved. Outputs are written atomically.
#pragma once
#include <string>
#include <vector>

namespace regula {

struct ImportOptions {
  std::string kind = "movies";           // movies, micrographs, coordinates, halfmaps, particles, other
  std::string input;                    // --i: a wildcard (movies, micrographs, coordinates) or a file
  std::string out_dir = "Import/";      // --odir
  std::string out_file;                 // --ofile ("": movies.star, micrographs.star, particles.star,
                                        // coords_suffix_autopick.star, the input's name)
  std::string optics_group_name = "opticsGroup1";
  std::string optics_group_mtf;         // MTF STAR file of the detector ("": none)
  double angpix = 1.0;                  // Å/px of the movies or micrographs as imported
  double voltage = 300;                 // kV
  double cs = 2.7;                      // mm
  double q0 = 0.1;                      // amplitude contrast
  double beamtilt_x = 0;                // mrad
  double beamtilt_y = 0;                // mrad
  std::string particles_optics_group_name;  // particles: the new name of the (single) optics group
  bool continue_run = false;            // movies / micrographs: add new files to an existing output
};

struct ImportResult {
  std::string output;              // the STAR file (or, for halfmaps and other, the first copy)
  std::vector<std::string> files;  // every file written
  size_t items = 0;                // rows of the output list (movies, micrographs, particles) or files copied
  size_t new_items = 0;            // of those, new in this run
  int optics_group = 0;            // movies / micrographs: the group the new files went into
};

// Throws InputError with the file and what was expected (no match, unknown extension, an optics
// group of the same name with other values, a particle file without images...).
ImportResult run_import(const ImportOptions& o);

}  // namespace regula

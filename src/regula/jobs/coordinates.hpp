// Particle coordinate files, as relion_preprocess --extract reads them and relion_autopick writes
// them.
//
//  * STAR (".star"): the first block with _rlnCoordinateX and _rlnCoordinateY (pixels of the
//    micrograph); every other column (rlnAutopickFigureOfMerit, rlnClassNumber, rlnAnglePsi...) is
//    kept and travels on into particles.star, as RELION's.
//  * EMAN ".box": "x y w h" per line (box corner and size, integers): the centre is x + w/2,
//    y + h/2 (integer division, as RELION).
//  * anything else: plain text with at least two integers "x y" per line (a first line without two
//    numbers is a header and skipped, as RELION).
// Errors: InputError naming the file and line.
//
// Where the coordinates of a micrograph are (RELION 3.1, --coord_dir + --coord_suffix):
// <coord_dir>/<micrograph name without "<Type>/jobNNN/" and without extension><suffix>
// (jobs/micrograph_set.hpp's pipeline_output_name); with an empty coord_dir, next to the micrograph.
// RELION 4/5 (--coord_list): a STAR file whose data_coordinate_files block pairs
// rlnMicrographName with rlnMicrographCoordinates (autopick.star).
#pragma once
#include <map>
#include <string>

#include "regula/io/star.hpp"

namespace regula {

// The coordinates of one micrograph as a loop with (at least) rlnCoordinateX/Y.
star::Block read_coordinates(const std::string& path);

// The coordinate file of a micrograph for --coord_dir/--coord_suffix.
std::string coordinate_file_name(const std::string& micrograph, const std::string& coord_dir,
                                 const std::string& suffix);

// micrograph name -> coordinate file, from a RELION 4 coordinate list (data_coordinate_files).
std::map<std::string, std::string> read_coordinate_list(const std::string& path);

}  // namespace regula

// regula import: movies, micrographs, coordinates, half maps, particles or any file brought into a
// project as relion_import does (jobs/import.hpp).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/import.hpp"

namespace regula::cli {

void add_import(CLI::App& app) {
  auto opt = std::make_shared<ImportOptions>();
  auto kinds = std::make_shared<std::array<bool, 6>>();
  auto* s = app.add_subcommand(
      "import",
      "Import movies or micrographs (by wildcard, with their optics group), coordinates, half maps, particles or\n"
      "any other file, as relion_import: movies.star / micrographs.star with data_optics as RELION writes them;\n"
      "--continue adds the files not yet listed (for a folder that fills while the microscope collects)");
  s->add_flag("--do_movies", (*kinds)[0], "Import movies (--i \"Movies/*.tiff\")");
  s->add_flag("--do_micrographs", (*kinds)[1], "Import micrographs (--i \"Micrographs/*.mrc\")");
  s->add_flag("--do_coordinates", (*kinds)[2],
              "Import coordinate files (--i \"Coords/*_pick.star\", --ofile coords_suffix_pick.star)");
  s->add_flag("--do_halfmaps", (*kinds)[3], "Import two unfiltered half maps (--i the one with 'half1')");
  s->add_flag("--do_particles", (*kinds)[4], "Import a particle STAR file (RELION 3.0 files converted to 3.1)");
  s->add_flag("--do_other", (*kinds)[5], "Import any other file (a map, a mask, references)");
  s->add_option("--i", opt->input, "Input file or wildcard (quote it)")->required();
  s->add_option("--odir,--o", opt->out_dir, "Output directory")->capture_default_str();
  s->add_option("--ofile", opt->out_file,
                "Output file name (default: movies.star, micrographs.star, coords_suffix_autopick.star, "
                "particles.star, or the input's name)");
  s->add_option("--optics_group_name", opt->optics_group_name, "Name of the optics group")->capture_default_str();
  s->add_option("--optics_group_mtf", opt->optics_group_mtf, "MTF STAR file of the optics group's detector");
  s->add_option("--angpix", opt->angpix, "Pixel size (Å)")->capture_default_str();
  s->add_option("--kV", opt->voltage, "Voltage (kV)")->capture_default_str();
  s->add_option("--Cs", opt->cs, "Spherical aberration (mm)")->capture_default_str();
  s->add_option("--Q0", opt->q0, "Amplitude contrast")->capture_default_str();
  s->add_option("--beamtilt_x", opt->beamtilt_x, "Beam tilt X (mrad)")->capture_default_str();
  s->add_option("--beamtilt_y", opt->beamtilt_y, "Beam tilt Y (mrad)")->capture_default_str();
  s->add_option("--particles_optics_group_name", opt->particles_optics_group_name,
                "Particles: new name of their optics group");
  s->add_flag("--continue", opt->continue_run, "Movies or micrographs: add the new files to the existing list");
  s->callback([opt, kinds] {
    static const char* kNames[] = {"movies", "micrographs", "coordinates", "halfmaps", "particles", "other"};
    int n = 0;
    for (size_t k = 0; k < kinds->size(); ++k)
      if ((*kinds)[k]) opt->kind = kNames[k], ++n;
    if (n != 1)
      throw InputError("import: give exactly one of --do_movies, --do_micrographs, --do_coordinates, --do_halfmaps, "
                       "--do_particles, --do_other");
    run_import(*opt);
  });
}

}  // namespace regula::cli

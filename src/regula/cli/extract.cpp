// regula extract: particle extraction from micrographs (RELION's Extract job, relion_preprocess --extract).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/extract.hpp"

namespace regula::cli {

void add_extract(CLI::App& app) {
  auto o = std::make_shared<ExtractOptions>();
  auto* s = app.add_subcommand("extract",
      "Extract particles from micrographs at picked or refined coordinates, as RELION's Extract job "
      "(relion_preprocess --extract)");
  s->add_option("--i", o->input, "Micrographs: a STAR file (micrographs_ctf.star, with the CTF), a wildcard or a list")
      ->required();
  s->add_option("--o", o->out_dir, "Output directory (particles.star, per-micrograph stacks)")->required();
  s->add_option("--coord_dir", o->coord_dir, "Directory of the coordinate files (default: next to the micrographs)");
  s->add_option("--coord_suffix", o->coord_suffix, "Suffix of the coordinate files, e.g. _autopick.star or .box");
  s->add_option("--coord_list", o->coord_list, "RELION 4 list of coordinate files (autopick.star, data_coordinate_files)");
  s->add_option("--reextract_data_star", o->reextract, "Re-extract the particles of a refinement (run_data.star)");
  s->add_flag("--recenter", o->recenter, "With --reextract_data_star: fold the refined origins into the coordinates");
  s->add_option("--recenter_x", o->recenter_x, "Re-centre on this X of the reference (px)")->capture_default_str();
  s->add_option("--recenter_y", o->recenter_y, "Re-centre on this Y of the reference (px)")->capture_default_str();
  s->add_option("--recenter_z", o->recenter_z, "Re-centre on this Z of the reference (px)")->capture_default_str();
  s->add_option("--ref_angpix", o->ref_angpix, "Pixel size of the reference for --recenter_x/y/z (Å; default the particles')");
  s->add_flag("--reset_offsets", o->reset_offsets, "With --reextract_data_star: set the origins to zero");
  s->add_flag("--keep_ctfs_micrographs", o->keep_ctfs_micrographs,
              "With --reextract_data_star: take the CTF from the micrographs, not the particles");
  s->add_option("--extract_size", o->extract_size, "Box size to extract (px, even)")->required();
  s->add_option("--scale", o->scale, "Re-scale the particles to this box (px, even; Fourier cropping/padding)");
  s->add_option("--window", o->window, "Re-window the particles to this box (px, even)");
  s->add_flag("--norm", o->norm, "Normalise: background mean 0, standard deviation 1");
  s->add_option("--bg_radius", o->bg_radius,
                "Background radius (px of the final box; default with --norm: 75% of the half box, as RELION's GUI)");
  s->add_flag("--no_ramp", o->no_ramp, "With --norm: subtract the background mean only, no fitted plane");
  s->add_option("--white_dust", o->white_dust, "With --norm: replace pixels this many sigma above the background")
      ->capture_default_str();
  s->add_option("--black_dust", o->black_dust, "With --norm: replace pixels this many sigma below the background")
      ->capture_default_str();
  s->add_flag("--invert_contrast", o->invert_contrast, "Invert the contrast (black particles become white)");
  s->add_flag("--float16", o->float16, "Write the stacks in half precision (MRC mode 12)");
  s->add_option("--extract_bias_x", o->bias_x, "Add this many pixels to the X coordinates")->capture_default_str();
  s->add_option("--extract_bias_y", o->bias_y, "Add this many pixels to the Y coordinates")->capture_default_str();
  s->add_flag("--only_do_unfinished", o->only_unfinished, "Skip micrographs whose _extract.star exists");
  s->add_option("--angpix", o->angpix, "Micrograph pixel size (Å) when the input has no rlnMicrographPixelSize");
  s->add_option("--random_seed", o->seed, "Seed of the dust replacement noise")->capture_default_str();
  s->add_option("--j", o->threads, "Threads (results do not depend on it)")->capture_default_str();
  auto refuse = refuse_options(s, {"--premultiply_ctf", "--phase_flip", "--ctf_intact_first_peak", "--helix",
                                   "--helical_outer_diameter", "--helical_nr_asu", "--helical_rise",
                                   "--helical_tubes", "--helical_cut_into_segments", "--extract_movies",
                                   "--first_movie_frame", "--last_movie_frame", "--avg_movie_frames",
                                   "--tomo", "--operate_on"},
                               "see docs/extract.md");
  s->callback([o, refuse] {
    refuse();
    extract(*o);
  });
}

}  // namespace regula::cli

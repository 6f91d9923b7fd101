// regula autopick: particle picking (RELION's AutoPick job): Laplacian of Gaussian or templates.
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/jobs/autopick.hpp"

namespace regula::cli {

void add_autopick(CLI::App& app) {
  auto o = std::make_shared<AutopickOptions>();
  auto* s = app.add_subcommand("autopick",
      "Pick particles in micrographs by Laplacian-of-Gaussian blob detection (--LoG) or template matching (--ref), "
      "as RELION's AutoPick job (relion_autopick)");
  s->add_option("--i", o->input, "Micrographs: a STAR file (micrographs_ctf.star), a wildcard or a list")->required();
  s->add_option("--o,--odir", o->out_dir, "Output directory")->required();
  s->add_option("--pickname", o->pickname, "Name of the coordinate files: <micrograph>_<pickname>.star")
      ->capture_default_str();
  s->add_option("--angpix", o->angpix, "Micrograph pixel size (Å) when the input has no rlnMicrographPixelSize");
  auto* g = "Laplacian of Gaussian";
  s->add_flag("--LoG", o->log, "Laplacian-of-Gaussian picking (no reference)")->group(g);
  s->add_option("--LoG_diam_min", o->log_diam_min, "Smallest particle diameter (Å)")->group(g);
  s->add_option("--LoG_diam_max", o->log_diam_max, "Largest particle diameter (Å)")->group(g);
  s->add_option("--LoG_neighbour", o->log_neighbour,
                "Clear (detected + smallest diameter) x this percent / 2 around each pick")->capture_default_str()->group(g);
  s->add_flag("--Log_invert,--LoG_invert", o->log_invert, "The particles are white (default: black)")->group(g);
  s->add_option("--LoG_adjust_threshold", o->log_adjust_threshold,
                "Threshold in standard deviations above the mean figure of merit (positive: fewer picks)")
      ->capture_default_str()->group(g);
  s->add_option("--LoG_upper_threshold", o->log_upper_threshold,
                "Reject picks this many standard deviations above the mean (ice, carbon)")->capture_default_str()->group(g);
  s->add_option("--Log_max_search,--LoG_max_search", o->log_max_search,
                "Diameters searched up to this many times the range")->capture_default_str()->group(g);
  s->add_flag("--LoG_use_ctf", o->log_use_ctf, "Divide by the CTF up to its first peak")->group(g);
  auto* t = "Templates";
  s->add_option("--ref", o->ref, "References: an MRC stack (run_itNNN_classes.mrcs), a STAR file of images, or a 3D map")
      ->group(t);
  s->add_option("--select_classes", o->select_classes, "Only these images (1-based) of a --ref stack, e.g. 1,4,7")
      ->delimiter(',')->group(t);
  s->add_option("--angpix_ref", o->angpix_ref, "Pixel size of the references (Å; default the micrographs')")->group(t);
  s->add_option("--particle_diameter", o->particle_diameter, "Mask diameter (Å; default from the references)")->group(t);
  s->add_option("--shrink_particle_mask", o->shrink_particle_mask, "Shrink the mask by this many pixels")
      ->capture_default_str()->group(t);
  s->add_option("--ang", o->psi_step, "In-plane angular step (degrees)")->capture_default_str()->group(t);
  s->add_flag("--invert", o->invert, "The micrographs' contrast is inverted w.r.t. the references")->group(t);
  s->add_flag("--ctf", o->ctf, "Apply each micrograph's CTF to the references")->group(t);
  s->add_flag("--ctf_intact_first_peak", o->ctf_intact_first_peak, "Leave the CTF at 1 before its first peak")->group(t);
  s->add_option("--threshold", o->threshold, "Figure-of-merit threshold (fraction of the expected probability ratio)")
      ->capture_default_str()->group(t);
  s->add_option("--min_distance", o->min_distance, "Minimum distance between picks (Å; <= 0: half the box)")
      ->capture_default_str()->group(t);
  s->add_option("--max_stddev_noise", o->max_stddev_noise,
                "No picks where the local standard deviation exceeds this (carbon, ice; <= 0: off)")
      ->capture_default_str()->group(t);
  s->add_option("--min_avg_noise", o->min_avg_noise, "No picks where the local mean is below this (dark areas; -999: off)")
      ->capture_default_str()->group(t);
  s->add_option("--healpix_order", o->healpix_order, "3D reference: HEALPix order of the projections (1: 30 degrees)")
      ->capture_default_str()->group(t);
  s->add_option("--sym", o->sym, "3D reference: symmetry")->capture_default_str()->group(t);
  s->add_option("--lowpass", o->lowpass, "Low-pass (Å): the working resolution (<= 0: none)")->capture_default_str();
  s->add_option("--highpass", o->highpass, "Templates: high-pass the micrographs (Å; <= 0: none)")->capture_default_str();
  s->add_option("--shrink", o->shrink, "Working size: 0 from --lowpass, a fraction, or a size in px")
      ->capture_default_str();
  s->add_flag("--skip_optimise_scale", o->skip_optimise_scale, "Keep the exact working size (no FFT-friendly rounding)");
  s->add_option("--outlier_removal_zscore", o->outlier_removal_zscore, "Pixels this many sigma from the mean are reset")
      ->capture_default_str();
  s->add_option("--skip_side", o->skip_side, "Keep this many more pixels from the edges")->capture_default_str();
  s->add_flag("--only_do_unfinished", o->only_unfinished, "Skip micrographs that already have a pick file");
  s->add_option("--random_seed", o->seed, "Seed (noise in the padding of non-square micrographs)")->capture_default_str();
  s->add_option("--j", o->threads, "Threads (results do not depend on it)")->capture_default_str();
  auto refuse = refuse_options(s, {"--helix", "--amyloid", "--helical_tube_outer_diameter", "--helical_tube_length_min",
                                   "--helical_tube_kappa_max", "--write_fom_maps", "--read_fom_maps", "--gauss_max",
                                   "--gpu", "--topaz_extract", "--topaz_train", "--fn_topaz_exec"},
                               "see docs/autopick.md");
  s->callback([o, refuse] {
    refuse();
    if (o->ref == "gauss") throw InputError("--ref gauss: Gaussian-blob references are not implemented yet");
    autopick(*o);
  });
}

}  // namespace regula::cli

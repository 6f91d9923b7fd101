// regula motioncorr: beam-induced motion correction (RELION's MotionCorr job, its own implementation).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/jobs/motioncorr.hpp"

namespace regula::cli {

void add_motioncorr(CLI::App& app) {
  auto o = std::make_shared<MotioncorrOptions>();
  auto own = std::make_shared<bool>(false), mc2 = std::make_shared<bool>(false), noeb = std::make_shared<bool>(false);
  auto* s = app.add_subcommand("motioncorr",
      "Correct beam-induced motion of movies (global and local), dose-weight and sum them, as RELION's MotionCorr job");
  s->add_option("--i", o->input, "Movies: a STAR file (as RELION's Import writes), a wildcard or a list")->required();
  s->add_option("--o", o->out_dir, "Output directory")->required();
  s->add_option("--first_frame_sum", o->first_frame, "First frame used (1-based)")->capture_default_str();
  s->add_option("--last_frame_sum", o->last_frame, "Last frame used (<= 0: the last)")->capture_default_str();
  s->add_option("--bin_factor", o->bin_factor, "Binning by Fourier cropping")->capture_default_str();
  s->add_option("--bfactor", o->bfactor, "B-factor for alignment, pixel^2")->capture_default_str();
  s->add_option("--gainref", o->gainref, "Gain reference (MRC or TIFF), multiplied into the frames");
  s->add_option("--gain_rot", o->gain_rot, "Rotate the gain reference this many times 90 degrees clockwise")
      ->capture_default_str();
  s->add_option("--gain_flip", o->gain_flip, "Flip the gain reference: 1 upside down, 2 left-right")
      ->capture_default_str();
  s->add_option("--defect_file", o->defect_file, "Defects: MotionCor2's text (x y w h) or a map (non-zero = bad)");
  s->add_option("--patch_x", o->patch_x, "Patches along x (local motion when both are above 2)")->capture_default_str();
  s->add_option("--patch_y", o->patch_y, "Patches along y")->capture_default_str();
  s->add_option("--group_frames", o->group_frames, "Frames summed before patch alignment")->capture_default_str();
  s->add_flag("--dose_weighting", o->dose_weighting, "Dose-weight the sum (Grant & Grigorieff 2015)");
  s->add_option("--angpix", o->angpix, "Pixel size of the movies, Å, when the STAR file has none");
  s->add_option("--voltage", o->voltage, "Voltage, kV, when the STAR file has none");
  s->add_option("--dose_per_frame", o->dose_per_frame, "Exposure per frame, e/Å²")->capture_default_str();
  s->add_option("--preexposure", o->preexposure, "Exposure before the first frame, e/Å²")->capture_default_str();
  s->add_flag("--save_noDW", o->save_noDW, "Also write the sum without dose weighting (ROOT_noDW.mrc)");
  s->add_flag("--skip_defect", o->skip_defect, "Do not look for hot pixels");
  s->add_option("--contrast_window", o->contrast_window,
                 "With local motion (--patch_x/y > 2): align the whole frames again with regions of more than the "
                 "median contrast in windows of this size (Å) weighted down to it, so that the global shifts follow "
                 "the field's mean motion rather than a carbon edge's or an aggregate's (0: not)")
      ->capture_default_str();
  s->add_option("--max_iter", o->max_iter, "Largest number of alignment iterations")->capture_default_str();
  s->add_option("--grouping_for_ps", o->grouping_for_ps, "Sum amplitude spectra of groups of this many frames "
                "(ROOT_PS.mrc for ctffind --use_given_ps); <= 0: none")->capture_default_str();
  s->add_option("--ps_size", o->ps_size, "Size of the power spectrum, px")->capture_default_str();
  s->add_flag("--only_do_unfinished", o->only_unfinished, "Skip movies whose outputs exist");
  s->add_option("--dose_motionstats_cutoff", o->dose_motionstats_cutoff,
                "Exposure (e/Å²) dividing early from late motion in rlnAccumMotionEarly/Late")->capture_default_str();
  s->add_flag("--use_own", *own, "RELION's choice of its own implementation: Regula always uses its own");
  s->add_flag("--use_motioncor2", *mc2, "Refused: Regula does not run MotionCor2");
  s->add_flag("--no_early_binning", *noeb, "Refused: binning is always done before alignment");
  s->add_option("--seed", o->seed, "Random seed (hot-pixel replacement)")->capture_default_str();
  s->add_option("--j", o->threads, "Threads per movie")->capture_default_str();
  s->callback([o, mc2, noeb] {
    if (*mc2) throw InputError("motioncorr: --use_motioncor2: Regula has its own motion correction only");
    if (*noeb) throw InputError("motioncorr: --no_early_binning is not supported (binning precedes alignment)");
    motioncorr(*o);
  });
}

}  // namespace regula::cli

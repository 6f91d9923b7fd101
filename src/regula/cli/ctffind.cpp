// regula ctffind: CTF estimation of micrographs (RELION's CtfFind job, our own estimator).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/jobs/ctffind.hpp"

namespace regula::cli {

void add_ctffind(CLI::App& app) {
  auto o = std::make_shared<CtffindOptions>();
  auto phase = std::make_shared<bool>(false);
  auto* s = app.add_subcommand("ctffind",
      "Estimate the CTF (defocus, astigmatism) of micrographs, as RELION's CtfFind job, with our own estimator");
  s->add_option("--i", o->input, "Micrographs: a STAR file (e.g. corrected_micrographs.star), a wildcard or a list")
      ->required();
  s->add_option("--o", o->out_dir, "Output directory")->required();
  s->add_option("--Box", o->box, "Tile size for the spectrum, px")->capture_default_str();
  s->add_option("--ResMin", o->res_min, "Lowest resolution fitted, Å")->capture_default_str();
  s->add_option("--ResMax", o->res_max, "Highest resolution fitted, Å")->capture_default_str();
  s->add_option("--dFMin", o->df_min, "Smallest defocus searched, Å")->capture_default_str();
  s->add_option("--dFMax", o->df_max, "Largest defocus searched, Å")->capture_default_str();
  s->add_option("--FStep", o->df_step, "Defocus step of the search, Å")->capture_default_str();
  s->add_option("--dAst", o->astigmatism, "Expected astigmatism, Å (astigmatism up to 3x this is searched; 0: up to 3000 Å)")
      ->capture_default_str();
  s->add_flag("--use_given_ps", o->use_given_ps, "Fit the spectra of rlnCtfPowerSpectrum (motion correction's _PS.mrc)");
  s->add_flag("--use_noDW", o->use_noDW, "Fit rlnMicrographNameNoDW instead of rlnMicrographName");
  s->add_flag("--only_do_unfinished", o->only_unfinished, "Skip micrographs that already have a result");
  s->add_option("--CS", o->cs, "Spherical aberration, mm, when the STAR file has none");
  s->add_option("--HT", o->voltage, "Voltage, kV, when the STAR file has none");
  s->add_option("--AmpCnst", o->amplitude_contrast, "Amplitude contrast, when the STAR file has none");
  s->add_option("--angpix", o->angpix, "Micrograph pixel size, Å, when the STAR file has none");
  s->add_flag("--do_phaseshift", *phase, "Refused: phase-plate phase shifts are not estimated yet");
  s->add_option("--j", o->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->callback([o, phase] {
    if (*phase) throw InputError("ctffind: --do_phaseshift: phase-plate phase shifts are not estimated yet");
    ctffind(*o);
  });
}

}  // namespace regula::cli

// regula ctf_refine: per-particle defocus, beam tilt, odd and even aberrations and anisotropic
// magnification from a refinement (relion_ctf_refine).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/ctf_refine.hpp"

namespace regula::cli {

void add_ctf_refine(CLI::App& app) {
  auto opt = std::make_shared<CtfRefineOptions>();
  auto* s = app.add_subcommand(
      "ctf_refine",
      "Refine the CTF of refined particles against the half maps (as relion_ctf_refine): anisotropic\n"
      "magnification, beam tilt and odd aberrations, even aberrations, per-particle defocus, B-factors and\n"
      "scales, in that order;\n"
      "writes OUT/particles_ctf_refine.star and PNG images of the fitted phases");
  s->add_option("--i", opt->particles, "Particles with refined poses and half sets (run_data.star)");
  s->add_option("--o", opt->out_dir, "Output directory");
  add_half_map_options(s, *opt);
  s->add_flag("--fit_defocus", opt->fit_defocus, "Refine defocus (and astigmatism, see --fit_mode)");
  s->add_option("--fit_mode", opt->fit_mode,
                "Five letters for phase shift, defocus, astigmatism, Cs, B-factor: p (per particle), m (per\n"
                "micrograph) or f (fixed); supported: phase shift, defocus, astigmatism and B-factor (and scale) f,\n"
                "m or p (defocus not f; not p with a per-micrograph defocus), Cs f")
      ->capture_default_str();
  s->add_option("--kmin_defocus", opt->kmin_defocus, "Lowest resolution used for the defocus, Å")->capture_default_str();
  s->add_option("--bf_range", opt->defocus_range, "Width of the defocus scan around the input value, Å")
      ->capture_default_str();
  s->add_flag("--fit_bfacs", opt->fit_bfacs,
              "Refine the CTF envelope: B-factor and scale (rlnCtfBfactor, rlnCtfScalefactor) per particle");
  s->add_flag("--bfac_per_mg", opt->bfac_per_mg, "With --fit_bfacs: one B-factor and scale per micrograph");
  s->add_option("--bfac_min_B", opt->bfac_min_B, "Lowest B-factor allowed, Å²")->capture_default_str();
  s->add_option("--bfac_max_B", opt->bfac_max_B, "Highest B-factor allowed, Å²")->capture_default_str();
  s->add_option("--bfac_min_scale", opt->bfac_min_scale, "Lowest scale allowed (outliers stop there)")
      ->capture_default_str();
  s->add_option("--kmin_bfac", opt->kmin_bfac, "Lowest resolution used for the B-factors, Å")
      ->capture_default_str();
  s->add_flag("--fit_beamtilt", opt->fit_beamtilt, "Refine the beam tilt (and odd aberrations) per optics group");
  s->add_option("--kmin_tilt", opt->kmin_tilt, "Lowest resolution used for the beam tilt, Å")->capture_default_str();
  s->add_option("--odd_aberr_max_n", opt->odd_aberr_max_n,
                "Highest order of odd Zernike terms (0: beam tilt only; 3, 5...: rlnOddZernike too)")
      ->capture_default_str();
  s->add_flag("--fit_aberr", opt->fit_aberr, "Refine even (symmetric) aberrations per optics group (rlnEvenZernike)");
  s->add_option("--kmin_aberr", opt->kmin_aberr, "Lowest resolution used for the even aberrations, Å")
      ->capture_default_str();
  s->add_option("--even_aberr_max_n", opt->even_aberr_max_n, "Highest order of even Zernike terms")
      ->capture_default_str();
  s->add_flag("--fit_aniso", opt->fit_aniso, "Refine the anisotropic magnification per optics group (rlnMagMat)");
  s->add_option("--kmin_mag", opt->kmin_mag, "Lowest resolution used for the magnification, Å")->capture_default_str();
  s->add_flag("--keep_astig", opt->keep_astig,
              "After a magnification fit, keep the defoci as they are (default: re-express them so that each CTF\n"
              "in image pixels is unchanged, as RELION)");
  s->add_option("--mag_iter", opt->mag_iterations, "Linearised magnification fits (each one pass over the particles)")
      ->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->add_flag("--only_do_unfinished", opt->only_do_unfinished,
              "Do nothing if OUT/particles_ctf_refine.star exists (the fits are global over the micrographs, so\n"
              "an unfinished job runs again from the start)");
  s->callback([opt] { ctf_refine(*opt); });
}

}  // namespace regula::cli

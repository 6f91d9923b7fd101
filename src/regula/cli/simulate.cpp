// regula simulate: a ground-truth particle data set from one or two maps.
#include "regula/cli/commands.hpp"
#include "regula/jobs/simulate.hpp"

namespace regula::cli {

void add_simulate(CLI::App& app) {
  auto opt = std::make_shared<SimulateOptions>();
  auto* s = app.add_subcommand("simulate",
      "Simulate particles (projections with CTF, shifts and noise) with ground truth");
  s->add_option("--i", opt->map, "Map (MRC) to project")->required();
  s->add_option("--o", opt->out_dir, "Output directory (particles.mrcs, particles.star, truth.star)")->required();
  s->add_option("--n", opt->n, "Number of particles")->required();
  s->add_option("--angpix", opt->angpix, "Pixel size in Å (default: from the map header)");
  s->add_option("--box", opt->box, "Pad or crop the map (about its centre) to this box size, px");
  s->add_option("--snr", opt->snr, "Signal-to-noise ratio (variance of the CTF-modulated projection / noise variance)")
      ->capture_default_str();
  s->add_option("--defocus_min", opt->defocus_min, "Smallest defocus, Å (underfocus positive)")->capture_default_str();
  s->add_option("--defocus_max", opt->defocus_max, "Largest defocus, Å")->capture_default_str();
  s->add_option("--voltage", opt->voltage, "Voltage, kV")->capture_default_str();
  s->add_option("--cs", opt->cs, "Spherical aberration, mm")->capture_default_str();
  s->add_option("--Q0", opt->amplitude_contrast, "Amplitude contrast")->capture_default_str();
  s->add_flag("!--no_ctf", opt->ctf, "Do not apply a CTF");
  s->add_option("--max_shift", opt->max_shift, "Largest random shift, px (uniform in a disc)")->capture_default_str();
  s->add_option("--views", opt->views, "Draw every particle from one of V fixed viewing directions (random psi); "
                "rlnClassNumber in truth.star is the view");
  s->add_option("--i2", opt->map2, "Second map (heterogeneity); rlnClassNumber 2 in truth.star");
  s->add_option("--frac2", opt->frac2, "Fraction of particles from --i2")->capture_default_str();
  s->add_option("--bg_radius", opt->bg_radius, "Background radius for normalisation, px (default 0.75 * box/2)");
  s->add_option("--beamtilt_x", opt->beamtilt_x, "Beam tilt along x, mrad (rlnBeamTiltX of every optics group)");
  s->add_option("--beamtilt_y", opt->beamtilt_y, "Beam tilt along y, mrad (rlnBeamTiltY)");
  s->add_option("--odd_zernike", opt->odd_zernike,
                "Antisymmetric aberrations: Zernike coefficients c0,c1,... in RELION's order (rlnOddZernike)")
      ->delimiter(',');
  s->add_option("--even_zernike", opt->even_zernike,
                "Symmetric aberrations: Zernike coefficients c0,c1,... in RELION's order (rlnEvenZernike)")
      ->delimiter(',');
  s->add_option("--mag", opt->mag, "Anisotropic magnification matrix m00,m01,m10,m11 (rlnMagMat00..11)")
      ->delimiter(',')
      ->expected(4);
  s->add_flag("--premultiply", opt->premultiply,
              "Multiply the (noisy) images by their CTF (rlnCtfDataAreCtfPremultiplied 1)");
  s->add_option("--og2_fraction", opt->og2_fraction,
                "Fraction of the particles in a second optics group (see --og2_angpix, --og2_box)")
      ->capture_default_str();
  s->add_option("--og2_angpix", opt->og2_angpix, "Pixel size of optics group 2, Å (default: as group 1)");
  s->add_option("--og2_box", opt->og2_box, "Box size of optics group 2, px (default: as group 1)");
  s->add_option("--micrographs", opt->micrographs,
                "Particles in this many micrographs sharing a defocus and astigmatism (0: each particle its own)")
      ->capture_default_str();
  s->add_option("--noise_spread", opt->noise_spread,
                "With --micrographs: noise level per micrograph varying by this max/min ratio (ice thickness)")
      ->capture_default_str();
  s->add_option("--noise_bfactor", opt->noise_bfactor,
                "Coloured noise: amplitude falling as exp(-B s^2/4) with spatial frequency s, per-pixel variance kept "
                "(B in Å^2; 0: white)")
      ->capture_default_str();
  s->add_option("--junk_fraction", opt->junk_fraction,
                "Share of junk images: empty ice, carbon edges, aggregates, contamination (and --junk_map); "
                "truth.star's rlnRegulaTruthKind says which")
      ->capture_default_str();
  s->add_option("--junk_map", opt->junk_map, "With --junk_fraction: a map whose projections are wrong particles");
  s->add_option("--defocus_spread", opt->defocus_spread,
                "With --micrographs: particle heights in the ice, uniform over this range, Å")
      ->capture_default_str();
  s->add_option("--seed", opt->seed, "Random seed")->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { simulate(*opt); });
}

}  // namespace regula::cli

// regula reconstruct: a map from particles with known poses (relion_reconstruct).
#include "regula/cli/commands.hpp"
#include "regula/jobs/reconstruct.hpp"

namespace regula::cli {

void add_reconstruct(CLI::App& app) {
  auto opt = std::make_shared<ReconstructJobOptions>();
  auto* s = app.add_subcommand("reconstruct",
      "Reconstruct a map from particles with known poses (as relion_reconstruct)");
  s->add_option("--i", opt->star, "Particle STAR file (images, rot/tilt/psi, origins in Å, CTF)")->required();
  s->add_option("--o", opt->out_map, "Output map (MRC)")->required();
  s->add_flag("--ctf", opt->ctf, "CTF correction: images times CTF, weights CTF^2 (and aberrations corrected)");
  s->add_flag("--ctf_phase_flipped", opt->ctf_phase_flipped,
              "The images have been phase-flipped (as rlnCtfDataArePhaseFlipped for every optics group)");
  s->add_option("--newbox", opt->newbox, "Box size of the map, px (default: the first particle's)");
  s->add_option("--sym", opt->sym, "Point-group symmetry (C<n>, D<n>, T, O, I, I1-I4)")->capture_default_str();
  s->add_option("--maxres", opt->maxres, "Highest resolution used, Å (default: Nyquist)");
  s->add_option("--angpix", opt->angpix, "Pixel size of the map, Å (default: the first optics group's), and of groups the STAR file gives none");
  s->add_option("--pad", opt->pad, "Fourier padding factor")->capture_default_str();
  s->add_option("--iter", opt->gridding_iterations, "Iterative gridding iterations (0: plain division)")
      ->capture_default_str();
  s->add_option("--blob_r", opt->blob_r, "Gridding blob radius, Fourier px of the original box (as RELION)")
      ->capture_default_str();
  s->add_option("--blob_m", opt->blob_m, "Gridding blob order (as RELION)")->capture_default_str();
  s->add_option("--blob_a", opt->blob_a, "Gridding blob alpha (as RELION)")->capture_default_str();
  s->add_option("--j", opt->threads, "Threads")->capture_default_str();
  s->callback([opt] { reconstruct(*opt); });
}

}  // namespace regula::cli

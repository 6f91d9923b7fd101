// regula simulate_movies: ground-truth movies (particles, junk, ice, CTF, drift, dose, counts).
#include <memory>

#include "regula/cli/commands.hpp"
#include "regula/jobs/simulate_movies.hpp"

namespace regula::cli {

void add_simulate_movies(CLI::App& app) {
  auto o = std::make_shared<SimulateMoviesOptions>();
  auto size = std::make_shared<int>(0);
  auto* s = app.add_subcommand("simulate_movies",
      "Simulate movies with ground truth (particles at known positions and poses, junk, ice, CTF, drift, damage, "
      "Poisson counts) and a movies.star as RELION's Import writes it");
  s->add_option("--i", o->maps, "Particle map(s) (MRC), one per particle type, at --angpix")->required();
  s->add_option("--fractions", o->fractions, "Relative abundance of each map (default: equal)");
  s->add_option("--o", o->out_dir, "Output directory")->required();
  s->add_option("--n", o->movies, "Number of movies")->capture_default_str();
  s->add_option("--size", *size, "Movie width and height, px (default 2048)");
  s->add_option("--size_y", o->ny, "Movie height, px (default: --size)");
  s->add_option("--angpix", o->angpix, "Pixel size, Å")->capture_default_str();
  s->add_option("--frames", o->frames, "Frames per movie")->capture_default_str();
  s->add_option("--dose_per_frame", o->dose_per_frame, "Exposure per frame, e/Å²")->capture_default_str();
  s->add_option("--preexposure", o->preexposure, "Exposure before the first frame, e/Å²")->capture_default_str();
  s->add_option("--voltage", o->voltage, "Voltage, kV (100, 200 or 300)")->capture_default_str();
  s->add_option("--cs", o->cs, "Spherical aberration, mm")->capture_default_str();
  s->add_option("--Q0", o->amplitude_contrast, "Amplitude contrast")->capture_default_str();
  s->add_option("--bfactor", o->bfactor, "CTF envelope B-factor, Å²")->capture_default_str();
  s->add_option("--defocus_min", o->defocus_min, "Smallest mean defocus, Å")->capture_default_str();
  s->add_option("--defocus_max", o->defocus_max, "Largest mean defocus, Å")->capture_default_str();
  s->add_option("--astigmatism_max", o->astigmatism_max, "Largest |U - V|, Å")->capture_default_str();
  s->add_option("--particles", o->particles, "Particles per micrograph")->capture_default_str();
  s->add_option("--ice_rms", o->ice_rms, "Amorphous ice: rms phase per pixel, rad")->capture_default_str();
  s->add_option("--aggregates", o->aggregates, "Aggregates per micrograph")->capture_default_str();
  s->add_option("--ice_crystals", o->ice_crystals, "Ice crystals per micrograph")->capture_default_str();
  s->add_option("--carbon", o->carbon, "Probability of a carbon edge in a micrograph")->capture_default_str();
  s->add_option("--drift_min", o->drift_min, "Smallest total global drift, px")->capture_default_str();
  s->add_option("--drift_max", o->drift_max, "Largest total global drift, px")->capture_default_str();
  s->add_option("--local_max", o->local_max, "Largest local deformation at the last frame, px")->capture_default_str();
  s->add_flag("--gain", o->gain, "Per-pixel detector efficiency in [0.85, 1.15]; writes gain.mrc (its inverse)");
  s->add_option("--gain_rot", o->gain_rot, "Store gain.mrc so that RELION's --gain_rot with this value recovers it")
      ->capture_default_str();
  s->add_option("--gain_flip", o->gain_flip, "Store gain.mrc so that RELION's --gain_flip with this value recovers it")
      ->capture_default_str();
  s->add_option("--hot_pixels", o->hot_pixels, "Hot pixels of the detector (the same in every movie)")
      ->capture_default_str();
  s->add_option("--format", o->format, "mrc or tiff")->capture_default_str();
  s->add_option("--mode", o->mode, "MRC mode of the frames: 0, 1, 2, 6 or 12")->capture_default_str();
  s->add_option("--tiff_bits", o->tiff_bits, "TIFF samples: 8 or 16 (unsigned counts) or 32 (float)")
      ->capture_default_str();
  s->add_flag("--lzw,!--no_lzw", o->lzw, "LZW compression of TIFF frames (default on)");
  s->add_flag("--ideal,!--no_ideal", o->ideal, "Write Truth/movie_NNN_ideal.mrc (default on)");
  s->add_flag("!--no_damage", o->damage, "No radiation damage (for tests of the motion alone)");
  s->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  s->add_option("--j", o->threads, "Threads (results do not depend on it)")->capture_default_str();
  s->callback([o, size, s] {
    if (*size > 0) {
      o->nx = *size;
      if (s->count("--size_y") == 0) o->ny = *size;
    }
    simulate_movies(*o);
  });
}

}  // namespace regula::cli

// The `regula` command is a table of subcommands, one file each. Each file
// defines a register function that adds its CLI11 subcommand and a callback.
// Callbacks throw regula::Error / InputError; main() turns those into a one-line
// message and exit status 1.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "regula/core/error.hpp"

namespace regula::cli {

struct Command {
  const char* name;
  void (*add)(CLI::App& app);
};

// RELION options a command does not implement yet: parsed (hidden from --help, with or without a
// value) so that using one gives a message naming it rather than being ignored. Call the returned
// function first in the subcommand's callback.
inline std::function<void()> refuse_options(CLI::App* s, const std::vector<std::string>& names,
                                            const std::string& note) {
  std::vector<std::pair<std::string, CLI::Option*>> opts;
  for (const auto& n : names) opts.emplace_back(n, s->add_option(n)->expected(0, 1)->group(""));
  return [opts, note] {
    for (const auto& [name, o] : opts)
      if (o->count() > 0) throw InputError(name + ": not implemented yet (" + note + ")");
  };
}

// The half-map options of the correction jobs (ctf_refine, polish), RELION's names, for options
// with the fields postprocess, half1, half2, mask, angpix_ref and pad.
template <class JobOptions>
void add_half_map_options(CLI::App* s, JobOptions& o) {
  s->add_option("--f", o.postprocess, "Postprocess STAR file: half maps and mask from its data_general");
  s->add_option("--m1", o.half1, "Unfiltered half map 1");
  s->add_option("--m2", o.half2, "Unfiltered half map 2");
  s->add_option("--mask", o.mask, "Mask multiplied into both half maps (values in [0, 1])");
  s->add_option("--angpix_ref", o.angpix_ref, "Pixel size of the maps, Å (<= 0: from the header)")
      ->capture_default_str();
  s->add_option("--pad", o.pad, "Fourier padding of the projections")->capture_default_str();
}

// Each subcommand file implements one of these.
void add_info(CLI::App& app);
void add_import(CLI::App& app);
void add_star_handler(CLI::App& app);
void add_simulate(CLI::App& app);
void add_class2d(CLI::App& app);
void add_select(CLI::App& app);
void add_pipeline(CLI::App& app);
void add_project(CLI::App& app);
void add_reconstruct(CLI::App& app);
void add_preprocess(CLI::App& app);
void add_mask(CLI::App& app);
void add_fsc(CLI::App& app);
void add_convert(CLI::App& app);
void add_refine3d(CLI::App& app);
void add_class3d(CLI::App& app);
void add_postprocess(CLI::App& app);
void add_serve(CLI::App& app);
void add_initial_model(CLI::App& app);
void add_symmetry_expand(CLI::App& app);
void add_flex_analyse(CLI::App& app);
void add_particle_subtract(CLI::App& app);
void add_ctf_refine(CLI::App& app);
void add_polish(CLI::App& app);
void add_locres(CLI::App& app);
void add_simulate_movies(CLI::App& app);
void add_motioncorr(CLI::App& app);
void add_ctffind(CLI::App& app);
void add_autopick(CLI::App& app);
void add_extract(CLI::App& app);

}  // namespace regula::cli

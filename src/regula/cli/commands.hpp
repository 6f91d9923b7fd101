// The `regula` command is a table of subcommands, one file each. Each file
// defines a register function that adds its CLI11 subcommand and a callback.
// Callbacks throw regula::Error / InputError; main() turns those into a one-line
// message and exit status 1.
#pragma once
#include <CLI/CLI.hpp>

namespace regula::cli {

struct Command {
  const char* name;
  void (*add)(CLI::App& app);
};

// Each subcommand file implements one of these.
void add_info(CLI::App& app);
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
void add_simulate_movies(CLI::App& app);
void add_motioncorr(CLI::App& app);
void add_ctffind(CLI::App& app);
void add_autopick(CLI::App& app);
void add_extract(CLI::App& app);

}  // namespace regula::cli

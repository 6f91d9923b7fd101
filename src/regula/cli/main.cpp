// Entry point of the `regula` command: subcommands in a table, errors to exit codes.
#include <cstdio>
#include <exception>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/core/log.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/version.hpp"

namespace {

const regula::cli::Command kCommands[] = {
    {"info", regula::cli::add_info},
    {"star_handler", regula::cli::add_star_handler},
    {"simulate", regula::cli::add_simulate},
    {"project", regula::cli::add_project},
    {"reconstruct", regula::cli::add_reconstruct},
    {"preprocess", regula::cli::add_preprocess},
    {"mask", regula::cli::add_mask},
    {"fsc", regula::cli::add_fsc},
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Regula: cryo-EM single-particle analysis by regularised likelihood"};
  app.require_subcommand(0, 1);
  app.fallthrough();  // global flags such as --quiet may follow the subcommand
  app.set_version_flag("--version", std::string("regula ") + regula::kVersion);
  bool quiet = false;
  app.add_flag("--quiet", quiet, "Only print errors (no progress bars or info)");
  for (const auto& c : kCommands) c.add(app);
  app.parse_complete_callback([&] {
    regula::set_verbosity(quiet ? 0 : 1);
    regula::ProgressSink::set_quiet(quiet);
  });
  try {
    app.parse(argc, argv);
    if (app.get_subcommands().empty()) {
      std::fputs(app.help().c_str(), stdout);
      return 0;
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;
  } catch (const regula::Error& e) {
    std::fprintf(stderr, "regula: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "regula: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "regula: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

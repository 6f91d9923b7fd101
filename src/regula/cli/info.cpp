// regula info FILE...: a summary of MRC/MRCS and STAR files.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace regula::cli {
namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_star(const std::string& path) { return ends_with(path, ".star"); }

}  // namespace

void add_info(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "Print a summary of MRC/MRCS files (header, statistics) and STAR files (blocks, columns, rows)");
  auto files = std::make_shared<std::vector<std::string>>();
  sub->add_option("files", *files, "MRC/MRCS/MAP/CCP4/ST or STAR files")->required();
  sub->callback([files] {
    int failures = 0;
    for (const auto& f : *files) {
      try {
        std::string text = is_star(f) ? star::describe(star::read(f)) : mrc::describe(f);
        std::fputs(text.c_str(), stdout);
        if (!text.empty() && text.back() != '\n') std::fputc('\n', stdout);
        std::fputc('\n', stdout);
        std::fflush(stdout);
      } catch (const InputError& e) {
        // Go on with the other files; report every failure, then exit 1.
        if (files->size() == 1) throw;
        std::fprintf(stderr, "regula: error: %s\n", e.what());
        ++failures;
      }
    }
    if (failures) input_error("info: {} of {} files could not be read", failures, files->size());
  });
}

}  // namespace regula::cli

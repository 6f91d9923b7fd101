#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"

namespace regula::cli {
void add_info(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "Print a summary of MRC and STAR files");
  auto files = std::make_shared<std::vector<std::string>>();
  sub->add_option("files", *files, "MRC/MRCS or STAR files")->required();
  sub->callback([files] { input_error("info: not implemented yet"); });
}
}  // namespace regula::cli

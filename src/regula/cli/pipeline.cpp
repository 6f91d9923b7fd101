// regula pipeline: the jobs of a project with their status, inputs and outputs.
#include <cstdio>

#include "regula/cli/commands.hpp"
#include "regula/pipeline/job.hpp"
#include "regula/pipeline/pipeline.hpp"

namespace regula::cli {

void add_pipeline(CLI::App& app) {
  auto* s = app.add_subcommand("pipeline",
      "List the jobs of the project (default_pipeline.star in the current directory, or --project DIR) "
      "with their type, status, inputs and outputs");
  s->callback([] {
    namespace pl = regula::pipeline;
    const auto jobs = pl::list_jobs(".");
    if (jobs.empty()) {
      std::puts("no jobs (no default_pipeline.star here; run commands with --project DIR)");
      return;
    }
    for (const auto& j : jobs) {
      std::printf("%-24s %-10s %s\n", j.name.c_str(), pl::status_name(j.state.status), j.alias.c_str());
      if (!j.state.detail.empty()) std::printf("    note: %s\n", j.state.detail.c_str());
      for (const auto& f : j.inputs) std::printf("    in:  %s\n", f.c_str());
      for (const auto& f : j.outputs) std::printf("    out: %s\n", f.c_str());
    }
  });
}

}  // namespace regula::cli

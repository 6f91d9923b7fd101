// regula pipeline: the jobs of a project with their status, inputs and outputs.
#include <cstdio>
#include <map>

#include <fmt/format.h>

#include "regula/cli/commands.hpp"
#include "regula/core/error.hpp"
#include "regula/pipeline/job.hpp"
#include "regula/pipeline/pipeline.hpp"

namespace regula::cli {

void add_pipeline(CLI::App& app) {
  auto* s = app.add_subcommand("pipeline",
      "List the jobs of the project (default_pipeline.star in the current directory, or --project DIR) "
      "with their type, status, inputs and outputs");
  s->callback([] {
    namespace pl = regula::pipeline;
    pl::Record r = pl::read_record(".");
    if (r.processes.empty()) {
      std::puts("no jobs (no default_pipeline.star here; run commands with --project DIR)");
      return;
    }
    std::multimap<std::string, std::string> in, out;
    for (auto& e : r.inputs) in.emplace(e.to, e.from);
    for (auto& e : r.outputs) out.emplace(e.from, e.to);
    for (auto& p : r.processes) {
      // The record says running until the job writes its end: its directory tells more
      // (an exit marker, or a process that is gone without one).
      pl::JobState state{p.status, ""};
      if (p.status == pl::Status::Running) state = pl::job_state(p.name);
      std::printf("%-24s %-10s %s\n", p.name.c_str(), pl::status_name(state.status),
                  p.alias == "None" ? "" : p.alias.c_str());
      if (!state.detail.empty()) std::printf("    note: %s\n", state.detail.c_str());
      auto [ib, ie] = in.equal_range(p.name);
      for (auto it = ib; it != ie; ++it) std::printf("    in:  %s\n", it->second.c_str());
      auto [ob, oe] = out.equal_range(p.name);
      for (auto it = ob; it != oe; ++it) std::printf("    out: %s\n", it->second.c_str());
    }
  });
}

}  // namespace regula::cli

// regula serve: the web page over the job directories of a project (read-only).
#include <cstdio>
#include <memory>

#include <spdlog/spdlog.h>

#include "regula/cli/commands.hpp"
#include "regula/serve/server.hpp"

namespace regula::cli {

void add_serve(CLI::App& app) {
  auto opt = std::make_shared<serve::ServeOptions>();
  auto* s = app.add_subcommand("serve", "Web page to watch the jobs of a project (classes, maps, FSC curves)");
  s->add_option("--dir", opt->project, "Project directory (default: the current directory, or --project)");
  s->add_option("--port", opt->port, "Port (0: any free port)")->capture_default_str();
  s->add_option("--host", opt->host, "Address to listen on (127.0.0.1: this machine only)")->capture_default_str();
  s->callback([opt] {
    serve::Server server(*opt);
    const int port = server.bind();
    // The address on stdout (also with --quiet), for people and for scripts that wait for it.
    std::printf("regula serve: http://%s:%d/ (project %s; Ctrl-C stops)\n", opt->host.c_str(), port,
                server.project().c_str());
    std::fflush(stdout);
    server.listen();
  });
}

}  // namespace regula::cli

// The project layer (docs/pipeline.md) in Python: the jobs of a project with their status, as `regula
// pipeline` lists them, and a workflow run as the command line runs it (`regula --project P workflow --i
// FILE`, a child process: each step of a workflow is a child process of its runner anyway).
#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "common.hpp"
#include "regula/core/error.hpp"
#include "regula/pipeline/job.hpp"
#include "regula/pipeline/pipeline.hpp"
#include "regula/pipeline/workflow.hpp"

#ifndef REGULA_CLI_PATH
#define REGULA_CLI_PATH ""
#endif

namespace regula::python {
namespace fs = std::filesystem;

namespace {

py::list jobs_of(const std::string& project) {
  namespace pl = regula::pipeline;
  std::error_code ec;
  if (!fs::is_directory(project, ec)) input_error("{}: no such project directory", project);
  py::list jobs;
  for (const auto& j : pl::list_jobs(project)) {
    py::dict d;
    d["job"] = j.name;
    d["alias"] = j.alias;
    d["status"] = std::string(pl::status_name(j.state.status));
    d["detail"] = j.state.detail;
    d["inputs"] = j.inputs;
    d["outputs"] = j.outputs;
    // The command line (jobs made by Regula; RELION's own jobs have none).
    std::string command;
    std::vector<std::string> args;
    if (fs::exists(fs::path(project) / j.name / "command.json")) {
      const auto job = pl::Job::open((fs::path(project) / j.name).string());
      command = job.type().command;
      args = job.args();
    }
    d["command"] = command;
    d["args"] = args;
    jobs.append(d);
  }
  return jobs;
}

// The regula executable: the argument, else $REGULA_EXE, else the one built with this module, else PATH's.
std::string regula_exe(const py::object& given) {
  if (!given.is_none()) return py::str(given);
  if (const char* e = std::getenv("REGULA_EXE"); e && *e) return e;
  if (std::string built = REGULA_CLI_PATH; !built.empty() && fs::exists(built)) return built;
  py::object found = py::module_::import("shutil").attr("which")("regula");
  if (found.is_none())
    input_error("workflow: no regula executable (pass regula='/path/to/regula' or set REGULA_EXE)");
  return py::str(found);
}

}  // namespace

void bind_project(py::module_& m) {
  m.def("project_jobs", &jobs_of, py::arg("project"),
        "The jobs of a project (default_pipeline.star), oldest first, as `regula pipeline` lists them: dicts of\n"
        "job ('Class2D/job003/'), alias, status (running, finished, failed, aborted, scheduled), detail (why a job\n"
        "without an exit marker counts as failed, or that it is queued), inputs, outputs, command and args (jobs\n"
        "made by Regula).",
        "list of dict(job, alias, status, detail, inputs, outputs, command, args)");
  m.def(
      "workflow",
      [](const std::string& project, const std::string& file, const py::object& regula, const py::dict& queue,
         bool quiet, double watch, double watch_idle, long watch_class2d) {
        // regula [--quiet] --project P [--queue ...] workflow --i FILE, its output on this process's streams.
        std::vector<std::string> cmd{regula_exe(regula)};
        if (quiet) cmd.push_back("--quiet");
        cmd.insert(cmd.end(), {"--project", project});
        for (auto [k, v] : queue) {
          const std::string key = py::str(k);
          static const char* kKnown[] = {"queue", "qsub", "qsubscript", "nr_mpi", "min_dedicated", "qsub_extra1",
                                         "qsub_extra2", "qsub_extra3", "qsub_extra4"};
          if (std::find(std::begin(kKnown), std::end(kKnown), key) == std::end(kKnown))
            input_error("workflow: queue option '{}' unknown (queue, qsub, qsubscript, nr_mpi, min_dedicated, "
                        "qsub_extra1..4)", key);
          cmd.insert(cmd.end(), {"--" + key, std::string(py::str(v))});
        }
        cmd.insert(cmd.end(), {"workflow", "--i", file});
        if (watch > 0) cmd.insert(cmd.end(), {"--watch", fmt::format("{}", watch), "--watch_idle", fmt::format("{}", watch_idle)});
        else if (watch < 0) input_error("workflow: watch={}: expected seconds > 0 (0: no watching)", watch);
        if (watch_class2d > 0) {
          if (!(watch > 0)) input_error("workflow: watch_class2d={}: only with watch=SECONDS", watch_class2d);
          cmd.insert(cmd.end(), {"--watch_class2d", std::to_string(watch_class2d)});
        } else if (watch_class2d < 0) {
          input_error("workflow: watch_class2d={}: expected a number of particles >= 1 (0: none)", watch_class2d);
        }
        // Its output (stdout and stderr, merged) passed on line by line to sys.stderr, as the jobs' logs are.
        py::module_ subprocess = py::module_::import("subprocess");
        py::object proc = subprocess.attr("Popen")(cmd, py::arg("stdout") = subprocess.attr("PIPE"),
                                                   py::arg("stderr") = subprocess.attr("STDOUT"),
                                                   py::arg("text") = true);
        py::object out = py::module_::import("sys").attr("stderr");
        std::string last;  // the runner's own message names the failed step, its job and its log
        for (py::handle line : proc.attr("stdout")) {
          out.attr("write")(line);
          const std::string text = py::str(line);
          if (text.find("error") != std::string::npos) last = text;
        }
        const int status = proc.attr("wait")().cast<int>();
        if (status != 0) {
          while (!last.empty() && (last.back() == '\n' || last.back() == ' ')) last.pop_back();
          if (last.empty()) last = "workflow: regula ended with status " + std::to_string(status);
          throw Error(last);
        }
        return jobs_of(project);
      },
      py::arg("project"), py::arg("file"), py::arg("regula") = py::none(), py::arg("queue") = py::dict(),
      py::arg("quiet") = false, py::arg("watch") = 0.0, py::arg("watch_idle") = 600.0, py::arg("watch_class2d") = 0,
      "Runs a workflow file (docs/pipeline.md#workflows) in a project, as `regula --project PROJECT workflow --i\n"
      "FILE` (FILE relative to the project; the project is made when it does not exist): the steps in order, each\n"
      "a job, the finished ones skipped and a failed or killed one resumed when run again. queue={'queue': 'cpu',\n"
      "'qsubscript': 'slurm.sh', ...} submits each step to a cluster queue; watch=S, watch_idle=S as --watch and\n"
      "--watch_idle (the front steps follow new movies), watch_class2d=N as --watch_class2d (a live 2D\n"
      "classification every N new particles). regula= the executable (default:\n"
      "$REGULA_EXE, the one built with this module, or PATH's). Raises regula.Error with the runner's message when\n"
      "a step fails. Returns project_jobs(project).",
      "list of dict (project_jobs)");
  m.def(
      "stop_watching", [](const std::string& project) { regula::pipeline::request_stop_watching(project); },
      py::arg("project"),
      "Tells the workflow runner watching PROJECT (workflow(..., watch=S)) to look once more for new files, then\n"
      "run the rest of its workflow, as `regula --project PROJECT workflow --stop_watching` (it writes\n"
      "PROJECT/STOP_WATCHING, which the runner removes). Raises regula.Error when PROJECT is not a project.",
      "None");
}

}  // namespace regula::python

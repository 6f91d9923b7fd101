// A workflow: jobs of a project listed in a text file and run in order, each as a job of the project
// (`<Type>/jobNNN/` with the step's name as its alias), resumable after a crash
// (docs/pipeline.md#workflows). The file:
//
//   # a comment (from # at the start of a line, or after white space)
//   sim:  simulate --i map.mrc --o sim --n 2000 --seed 1
//   c2d:  class2d --i {sim}particles.star --o run --K 10 --iter 25 --ctf --j 2
//
// One step per line (a line ending in a backslash continues on the next): a name (letters, digits, _ and -,
// unique), a colon, a subcommand that runs as a job, its arguments (split at white space; '...' or
// "..." keep spaces). {NAME} in an argument is replaced by the job directory of the earlier step NAME
// ("Simulate/job001/"). --project and --alias are the runner's.
//
// Running it again does what is left: a step whose job (the project's job with the step's alias)
// has finished is skipped; one that failed, was aborted or was killed (no exit marker and its
// process gone) is resumed with `regula run --job DIR --continue` when it can be (pipeline/job.hpp's
// continuation: iterative jobs with an optimiser file, per-micrograph jobs, imports of movies or
// micrographs), otherwise run again from its start; a step whose job is still running on this host
// (an earlier runner was killed, its job was not) is waited for; a step without a job gets a new one. A finished step whose recorded arguments differ from the file's is an error (give
// the step another name to run it again).
#pragma once
#include <string>
#include <vector>

namespace regula::pipeline {

struct WorkflowStep {
  std::string name, command;
  std::vector<std::string> args;  // as written ({NAME} not yet replaced)
  int line = 0;                   // 1-based, of the step's first line
};

// Reads and checks a workflow file; errors name the file and line.
std::vector<WorkflowStep> read_workflow(const std::string& path);

// Runs the steps in the project that is the current directory; each job is a child process
// `exe [global...] --project . ...` whose output goes to this process's. Returns when every step has
// finished; throws (naming the step and its job directory) when one fails or is still running.
// With `queue` (the queue options, e.g. {"--queue", "cpu", "--qsubscript", "/abs/slurm.sh"}) each step
// is submitted to the queue instead (`exe [global...] QUEUE... --project . ...` returns once it is
// submitted) and the runner follows the job's markers until it has ended; a step whose job is queued or
// running elsewhere is then waited for rather than an error.
//
// Watching (`interval` > 0; RELION's on-the-fly processing, cryoSPARC Live): the first step must import
// movies or micrographs; it and the per-micrograph steps right after it (motioncorr, ctffind, autopick,
// extract) run, then every `interval` seconds the import job adds the new files (`run --job DIR
// --continue`) and, when there were some, those steps continue on them; after `idle` seconds without new
// files the watching ends and the remaining steps run once on everything.
struct WatchOptions {
  double interval = 0;  // --watch: seconds between looks (0: no watching)
  double idle = 600;    // --watch_idle: seconds without new files that end the watching
  // --watch_class2d N: while watching, the workflow's first class2d step after the per-micrograph steps
  // runs again as the job of alias <name>_live on the particles so far whenever N more have been
  // extracted since its last run (0: not run while watching); the step itself runs once at the end.
  long class2d_every = 0;
};
// The stop signal of a watching runner: this file in the project directory (made by
// `regula --project DIR workflow --stop_watching`, request_stop_watching). The runner looks for it while it
// waits between looks; then it looks for new files once more, lets the watched steps go on with them,
// removes the file and runs the rest of the workflow. One left from an earlier session is removed when
// watching starts.
inline constexpr const char* kStopWatching = "STOP_WATCHING";
void request_stop_watching(const std::string& project);

void run_workflow(const std::vector<WorkflowStep>& steps, const std::string& exe,
                  const std::vector<std::string>& global, const std::vector<std::string>& queue = {},
                  const WatchOptions& watch = {});

}  // namespace regula::pipeline

// Job directories inside a project, as RELION keeps them: `<Type>/jobNNN/` holding
// the command line (note.txt, command.json), the parameters (job.star), the log
// (run.out), the progress file (progress.jsonl), the outputs and a status marker
// (REGULA_JOB_RUNNING while it runs, holding the process's identity (process.hpp);
// RELION_JOB_EXIT_SUCCESS / _FAILURE / _ABORTED at the end, the names RELION's GUI
// looks for). Each job is a process of the pipeline record (pipeline.hpp) with its
// input and output nodes.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "regula/pipeline/pipeline.hpp"

namespace regula::pipeline {

// How a subcommand appears in a project.
struct JobType {
  std::string_view command;   // "class2d"
  std::string_view dir_name;  // "Class2D"
  int relion_type;            // RELION process type code (99: no RELION equivalent)
  bool output_is_directory;   // --o names a directory (simulate) rather than a root name
  std::string_view default_output = {};  // --o when the command line has none ("": --o is required)
};
// The job type of a subcommand, or nullptr when it does not run as a job (info...).
const JobType* job_type(std::string_view command);

struct JobOption {
  std::string name;   // without dashes
  std::string value;  // "" for flags
};

// The iteration number N of a file name containing "_itNNN_", or -1.
int iteration_of(const std::string& name);
// Removes option `name` from a command line: "--name value" and "--name=value".
void erase_option(std::vector<std::string>& args, const std::string& name);

class Job {
 public:
  // Creates the next `<Type>/jobNNN/` under the current directory (the project),
  // writes note.txt, command.json and job.star, and registers the process as
  // running with its input nodes. `args` are the subcommand's arguments.
  static Job create(const JobType& type, const std::vector<std::string>& args, const std::string& alias);
  // Re-opens an existing job directory (regula run --job DIR).
  static Job open(const std::string& job_dir);

  const std::string& dir() const { return dir_; }  // "Class2D/job003/"
  const JobType& type() const { return *type_; }
  const std::vector<std::string>& args() const { return args_; }
  std::vector<std::string>& mutable_args() { return args_; }
  // The arguments with --o pointing inside the job directory.
  std::vector<std::string> rewritten_args() const;
  // Records a new command line for the job (note.txt, command.json, job.star): what `regula run --job`
  // runs from then on.
  void set_args(std::vector<std::string> args);
  // Marks the job running (again) in the record and on disk.
  void mark_running();
  // Submitted to a queue, not started: REGULA_JOB_QUEUED (holding `submitted`, what the submit
  // command said) replaces the running marker, so readers do not take the submitting process's end
  // for the job's; the job's own `regula run` marks it running when it starts.
  void mark_queued(const std::string& submitted);
  // Final status: writes the marker, registers output nodes and edges.
  void finish(Status status);

 private:
  std::string dir_;
  const JobType* type_ = nullptr;
  std::vector<std::string> args_;
};

// The status of a job read from its directory: the exit marker's; else Running, or Failed
// when REGULA_JOB_RUNNING names a process of this host that no longer exists (killed
// with SIGKILL, or the machine restarted). A job of another host, or with no marker,
// stays Running (it cannot be known). Symbolic links are never followed.
struct JobState {
  Status status = Status::Running;
  std::string detail;  // why a job without an exit marker counts as failed ("" otherwise)
  bool alive = false;  // running, and its recorded process is seen alive on this host
};
JobState job_state(const std::string& job_dir);

// A job of a project as the record lists it (default_pipeline.star), with the state its directory tells
// while the record says running (an exit marker, a process gone without one, queued).
struct JobListing {
  std::string name;   // "Class2D/job003/"
  std::string alias;  // "Class2D/first/", "" for none
  JobState state;
  std::vector<std::string> inputs, outputs;  // the files of its input and output edges, in the record's order
};
// The jobs of the project in `project_dir`, oldest first (none without a record).
std::vector<JobListing> list_jobs(const std::string& project_dir);

// Jobs that resume micrograph by micrograph (`run --job DIR --continue` adds --only_do_unfinished):
// motioncorr, ctffind, autopick, extract.
bool resumes_per_micrograph(std::string_view command);
// Whether import arguments import movies or micrographs: a list that --continue adds new files to.
bool imports_a_list(const std::vector<std::string>& import_args);

// How a job goes on from where it stopped (`run --job DIR --continue`, a workflow's failed step): its
// recorded arguments with what resumes it, or why it cannot (it can only run again from its start).
// An iterative job continues from its last ROOT_itNNN_optimiser.star (--continue FILE), a per-micrograph
// job or polishing keeps its finished micrographs (--only_do_unfinished), an import of movies or micrographs adds the
// files not yet listed (--continue, as relion_import).
struct Continuation {
  std::vector<std::string> args;  // the arguments that continue the job (empty when it cannot)
  std::string cannot;             // why it cannot be continued ("" when it can)
};
Continuation continuation(const Job& job);

// Input files named by the usual options (--i, --ref, --mask, ...) that exist.
std::vector<std::string> input_files(const std::vector<std::string>& args);
// The node type RELION would give an output file of a job of `command` ("" when the job is not
// known, e.g. for an input file), or -1 to leave it out. As RELION's post-processing job, every
// map of a postprocess job is a final map (OUT.mrc and OUT_masked.mrc: not masks) and its STAR
// file the post-processing node; of a local-resolution job (locres, or postprocess --locres)
// OUT_locres.mrc is a local-resolution map (12), OUT_locres_filtered.mrc a final map and the FSC
// STAR file no node (as RELION's LocalRes job).
int output_node_type(const std::string& path, std::string_view command = {});

}  // namespace regula::pipeline

// Submitting a job of a project to a cluster queue, as RELION does: a submission script made from a
// template by replacing RELION's variables, handed to the queue's submit command (SLURM's sbatch by
// default); the job itself runs later as `regula --project P run --job <Type>/jobNNN/`, which writes
// its markers, so its status is followed as any other job's.
//
// Template variables (RELION 3.1's): XXXcommandXXX (the command that runs the job), XXXqueueXXX,
// XXXmpinodesXXX (MPI processes: --nr_mpi, 1 by default; the template starts them, e.g.
// `mpirun -n XXXmpinodesXXX XXXcommandXXX`, as RELION's templates do), XXXthreadsXXX
// (the job's --j, 1 when absent), XXXcoresXXX (mpinodes x threads), XXXdedicatedXXX (minimum cores
// per node), XXXnodesXXX (ceil(cores / dedicated)), XXXnameXXX (the job directory), XXXoutfileXXX and
// XXXerrfileXXX (the queue's own stdout and stderr: <job>/run_queue.out and .err; the job's log is
// <job>/run.out as always), XXXextra1XXX..XXXextra4XXX.
#pragma once
#include <array>
#include <string>
#include <vector>

namespace regula::pipeline {

class Job;

struct QueueOptions {
  std::string queue;           // --queue: the queue (partition) name
  std::string qsub = "sbatch";  // --qsub: the submit command (run by /bin/sh with the script's path appended)
  std::string script;          // --qsubscript: the template
  int min_dedicated = 1;       // --min_dedicated: cores per node at least
  int nr_mpi = 1;              // --nr_mpi: MPI processes (XXXmpinodesXXX)
  std::array<std::string, 4> extra;  // --qsub_extra1..4
};

// Whether a command splits its work over MPI ranks (refine3d, class2d, class3d, initial_model,
// reconstruct, motioncorr, ctffind, autopick, extract, ctf_refine, polish); the others would run whole
// on every rank, so they are refused under mpirun and get XXXmpinodesXXX 1 in a queue's script.
bool splits_over_ranks(const std::string& command);
// Those commands, in the order of the message that names them ("refine3d, class2d, ...").
std::string commands_splitting_over_ranks();

struct QueueVariables {
  std::string command, queue, name, outfile, errfile;
  int mpinodes = 1, threads = 1, dedicated = 1;
  std::array<std::string, 4> extra;
};

// The template with every variable replaced; InputError naming `template_name` for an XXX...XXX
// variable it does not know (a typo would otherwise reach the queue).
std::string fill_queue_template(const std::string& text, const QueueVariables& v, const std::string& template_name);

// `s` as one word of a /bin/sh command line: as it is when no character of it is special to the shell,
// else in single quotes (a quote inside as '\'').
std::string shell_quote(const std::string& s);

// Writes <job>/run_submit.script from the template, runs `qsub script` in the project directory and
// marks the job queued with what it printed. A submit command that fails (exit status not 0) marks
// the job failed and throws InputError with its output. `command` is XXXcommandXXX. Returns the
// submit command's output.
std::string submit_job(Job& job, const QueueOptions& q, const std::string& command);

}  // namespace regula::pipeline

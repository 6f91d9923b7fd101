// Entry point of the `regula` command: subcommands in a table, errors to exit
// codes, and (with --project) each run as a job directory of a pipeline.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "regula/cli/commands.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/log.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/version.hpp"
#include "regula/pipeline/job.hpp"
#include "regula/pipeline/queue.hpp"
#include "regula/pipeline/workflow.hpp"

namespace {

const regula::cli::Command kCommands[] = {
    {"info", regula::cli::add_info},
    {"star_handler", regula::cli::add_star_handler},
    {"simulate", regula::cli::add_simulate},
    {"simulate_movies", regula::cli::add_simulate_movies},
    {"ctffind", regula::cli::add_ctffind},
    {"motioncorr", regula::cli::add_motioncorr},
    {"autopick", regula::cli::add_autopick},
    {"extract", regula::cli::add_extract},
    {"class2d", regula::cli::add_class2d},
    {"refine3d", regula::cli::add_refine3d},
    {"class3d", regula::cli::add_class3d},
    {"postprocess", regula::cli::add_postprocess},
    {"serve", regula::cli::add_serve},
    {"initial_model", regula::cli::add_initial_model},
    {"select", regula::cli::add_select},
    {"project", regula::cli::add_project},
    {"reconstruct", regula::cli::add_reconstruct},
    {"preprocess", regula::cli::add_preprocess},
    {"mask", regula::cli::add_mask},
    {"fsc", regula::cli::add_fsc},
    {"convert", regula::cli::add_convert},
    {"symmetry_expand", regula::cli::add_symmetry_expand},
    {"flex_analyse", regula::cli::add_flex_analyse},
    {"import", regula::cli::add_import},
    {"particle_subtract", regula::cli::add_particle_subtract},
    {"ctf_refine", regula::cli::add_ctf_refine},
    {"polish", regula::cli::add_polish},
    {"locres", regula::cli::add_locres},
    {"pipeline", regula::cli::add_pipeline},
};

bool is_command(const std::string& s) {
  return std::any_of(std::begin(kCommands), std::end(kCommands), [&](const auto& c) { return s == c.name; });
}

// Under mpirun with more than one rank: the commands that split their work over the ranks (the others
// would run whole on every rank, writing the same files) are let through; the rest are refused.
void check_splits_over_ranks(const std::string& command) {
  if (regula::mpi::size() < 2) return;
  if (!regula::pipeline::splits_over_ranks(command))
    regula::input_error("{} does not split its work over MPI ranks (under mpirun every rank would run all of it): run "
                        "it without mpirun (these do: {})",
                        command, regula::pipeline::commands_splitting_over_ranks());
}

// Removes "--name VALUE" or "--name=VALUE" from args and returns VALUE.
std::optional<std::string> take_option(std::vector<std::string>& args, const std::string& name) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == name && i + 1 < args.size()) {
      std::string v = args[i + 1];
      args.erase(args.begin() + long(i), args.begin() + long(i) + 2);
      return v;
    }
    if (args[i].rfind(name + "=", 0) == 0) {
      std::string v = args[i].substr(name.size() + 1);
      args.erase(args.begin() + long(i));
      return v;
    }
  }
  return std::nullopt;
}

bool take_flag(std::vector<std::string>& args, const std::string& name) {
  auto it = std::find(args.begin(), args.end(), name);
  if (it == args.end()) return false;
  args.erase(it);
  return true;
}

// Parses and runs one command line (without argv[0]). Throws on errors.
int run_cli(std::vector<std::string> args) {
  CLI::App app{"Regula: cryo-EM single-particle analysis by regularised likelihood.\n"
               "Global options: --project DIR (run the command as a job of the project in DIR, as RELION's\n"
               "<Type>/jobNNN/ directories with default_pipeline.star), --alias NAME, --quiet."};
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
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments reversed
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    throw regula::InputError(e.what());
  }
  if (app.get_subcommands().empty()) std::fputs(app.help().c_str(), stdout);
  return 0;
}

int report(const std::exception& e) {
  std::fprintf(stderr, "regula: error: %s\n", e.what());
  // Under mpirun an error on one rank (a bad image in its share) would leave the others waiting in a
  // collective: stop them all (mpirun then exits with status 1).
  if (regula::mpi::size() > 1) {
    std::fflush(stderr);
    regula::mpi::abort_all(1);
  }
  return 1;
}

// Runs `args` (subcommand first) as the job `job`, recording its status.
int run_job(regula::pipeline::Job& job, const std::vector<std::string>& global) {
  namespace pl = regula::pipeline;
  std::vector<std::string> full = global;
  full.push_back(std::string(job.type().command));
  for (auto& a : job.rewritten_args()) full.push_back(a);
  // Under mpirun rank 0 keeps the job's log, progress and status.
  const bool records = regula::mpi::rank() == 0;
  if (records) {
    regula::add_log_file(job.dir() + "run.out");
    regula::ProgressSink::set_json_path(job.dir() + "progress.jsonl");
  }
  regula::install_cancel_handlers();
  if (std::find(global.begin(), global.end(), "--quiet") == global.end())
    spdlog::info("job {}: regula {}", job.dir(), fmt::join(full, " "));
  try {
    run_cli(full);
    regula::mpi::barrier();  // every rank's share done before the job is marked finished
    if (records) job.finish(pl::Status::Succeeded);
    spdlog::info("job {}: finished", job.dir());
    return 0;
  } catch (const regula::Cancelled& e) {
    job.finish(pl::Status::Aborted);  // any rank (the pipeline's update is under its lock)
    return report(e);
  } catch (const std::exception& e) {
    job.finish(pl::Status::Failed);  // any rank: the others are stopped after it (report)
    return report(e);
  }
}

void check_queue_script(const regula::pipeline::QueueOptions& queue) {
  if (queue.script.empty()) regula::input_error("--queue needs --qsubscript, the submission script template");
  if (!std::filesystem::is_regular_file(queue.script))
    regula::input_error("--qsubscript {}: no such file", queue.script);
}

// Submits `regula --project <this project> [global] tail...` for the job (pipeline/queue.hpp).
int submit_to_queue(regula::pipeline::Job& job, const regula::pipeline::QueueOptions& queue,
                    const std::vector<std::string>& global, const std::vector<std::string>& tail) {
  std::vector<std::string> cmd{std::filesystem::read_symlink("/proc/self/exe").string(), "--project",
                               std::filesystem::current_path().string()};
  cmd.insert(cmd.end(), global.begin(), global.end());
  cmd.insert(cmd.end(), tail.begin(), tail.end());
  std::string command;
  for (auto& c : cmd) command += (command.empty() ? "" : " ") + regula::pipeline::shell_quote(c);
  const std::string said = regula::pipeline::submit_job(job, queue, command);
  std::printf("%s: submitted (%s)%s%s\n", job.dir().c_str(), queue.qsub.c_str(), said.empty() ? "" : ": ",
              said.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  regula::mpi::init_if_launched(&argc, &argv);
  std::vector<std::string> args(argv + 1, argv + argc);
  // Under mpirun only rank 0 talks; every rank runs the same command on its share of the data.
  if (regula::mpi::rank() > 0 && std::find(args.begin(), args.end(), "--quiet") == args.end())
    args.insert(args.begin(), "--quiet");
  try {
    auto project = take_option(args, "--project");
    // Under mpirun a project's job is run by every rank; rank 0 alone keeps the project's records
    // (creates the job, writes its log, status and the pipeline), the others open the job it made.
    const bool mpi_job = project && regula::mpi::size() > 1;
    auto alias = take_option(args, "--alias").value_or("");
    if (auto sub = std::find_if(args.begin(), args.end(), is_command); sub != args.end())
      check_splits_over_ranks(*sub);
    // Submission to a cluster queue (pipeline/queue.hpp), RELION's options.
    regula::pipeline::QueueOptions queue;
    std::vector<std::string> queue_args;  // the same options, for a workflow's steps
    auto queue_option = [&](const std::string& name) {
      auto v = take_option(args, name);
      if (v) queue_args.insert(queue_args.end(), {name, *v});
      return v;
    };
    if (auto v = queue_option("--queue")) queue.queue = *v;
    if (auto v = queue_option("--qsub")) queue.qsub = *v;
    if (auto v = queue_option("--qsubscript")) queue.script = *v;
    if (auto v = queue_option("--nr_mpi")) {
      try {
        queue.nr_mpi = std::stoi(*v);
      } catch (const std::exception&) {
        regula::input_error("--nr_mpi {}: expected an integer", *v);
      }
    }
    if (queue.nr_mpi != 1 && queue.script.empty())
      regula::input_error("--nr_mpi {}: the MPI processes of a job submitted to a queue (with --queue and "
                          "--qsubscript); to run a job under MPI here, start it with mpirun -np N",
                          queue.nr_mpi);
    if (auto v = queue_option("--min_dedicated")) {
      try {
        queue.min_dedicated = std::stoi(*v);
      } catch (const std::exception&) {
        regula::input_error("--min_dedicated {}: expected an integer", *v);
      }
    }
    for (int k = 0; k < 4; ++k)
      if (auto v = queue_option(fmt::format("--qsub_extra{}", k + 1))) queue.extra[size_t(k)] = *v;
    const bool submit = !queue_args.empty();
    if (submit && !project)
      regula::input_error("--queue, --qsub, --qsubscript: a job is submitted to a queue as a job of a project "
                          "(add --project DIR)");
    if (submit && !queue.script.empty() && !std::filesystem::path(queue.script).is_absolute()) {
      queue.script = std::filesystem::absolute(queue.script).string();  // before changing into the project
      for (size_t i = 0; i + 1 < queue_args.size(); i += 2)
        if (queue_args[i] == "--qsubscript") queue_args[i + 1] = queue.script;
    }
    if (project) {
      // Only a command that runs as a job makes its project; the others (serve, pipeline,
      // run, info...) read an existing one, so a mistyped directory is an error, not a new
      // empty project.
      const auto sub = std::find_if(args.begin(), args.end(), is_command);
      const bool help = std::find(args.begin(), args.end(), "--help") != args.end() ||
                        std::find(args.begin(), args.end(), "-h") != args.end();
      const bool workflow = !args.empty() && std::find(args.begin(), args.end(), "workflow") != args.end() &&
                            std::find_if(args.begin(), args.end(), is_command) == args.end() &&
                            std::find(args.begin(), args.end(), "--stop_watching") == args.end();
      const bool makes_job = ((sub != args.end() && regula::pipeline::job_type(*sub)) || workflow) && !help;
      namespace fs = std::filesystem;
      std::error_code ec;
      const auto kind = fs::status(*project, ec).type();
      if (kind == fs::file_type::not_found && makes_job) {
        // A workflow's file is checked before its new project is made (a mistyped or malformed file
        // leaves no empty project behind); it is read relative to the project directory.
        if (workflow && !help)
          if (auto it = std::find(args.begin(), args.end(), "--i"); it != args.end() && it + 1 != args.end()) {
            const fs::path f = fs::path(*(it + 1)).is_absolute() ? fs::path(*(it + 1)) : fs::path(*project) / *(it + 1);
            (void)regula::pipeline::read_workflow(f.string());
          }
        if (regula::mpi::rank() == 0) fs::create_directories(*project);
        regula::mpi::barrier();
      } else if (!help) {
        if (kind == fs::file_type::not_found)
          regula::input_error("--project {}: no such directory (only a command run as a job creates its project)",
                              *project);
        if (ec) regula::input_error("--project {}: {}", *project, ec.message());
        if (kind != fs::file_type::directory) regula::input_error("--project {}: not a directory", *project);
      }
      if (fs::is_directory(*project, ec)) fs::current_path(*project);
    }
    // Global flags stay in front of the subcommand.
    std::vector<std::string> global;
    if (take_flag(args, "--quiet")) global.push_back("--quiet");
    if (mpi_job && submit)
      regula::input_error("--queue under mpirun: submit the job without mpirun (the queue's script starts mpirun)");

    // regula run --job DIR [--continue]: re-run (or continue) a job of the project.
    if (!args.empty() && args[0] == "run") {
      std::vector<std::string> rest(args.begin() + 1, args.end());
      bool help = take_flag(rest, "--help") || take_flag(rest, "-h");
      auto dir = take_option(rest, "--job");
      bool cont = take_flag(rest, "--continue");
      if (help || !dir) {
        std::puts("Usage: regula [--project DIR] run --job <Type>/jobNNN/ [--continue]\n"
                  "Re-runs a job of the project with its recorded command line; with --continue it resumes\n"
                  "from the job's last *_optimiser.star (iterative jobs), or keeps the finished micrographs\n"
                  "(motioncorr, ctffind, autopick, extract: --only_do_unfinished), or adds the new files (import\n"
                  "of movies or micrographs: --continue).");
        return help ? 0 : 1;
      }
      if (!rest.empty()) regula::input_error("run: unexpected argument '{}'", rest[0]);
      auto job = regula::pipeline::Job::open(*dir);
      if (!submit) check_splits_over_ranks(std::string(job.type().command));
      if (submit) {
        const auto state = regula::pipeline::job_state(job.dir());
        if (state.status == regula::pipeline::Status::Running)
          regula::input_error("run --job {} --queue: the job is {}; it can be submitted again when it has ended",
                              job.dir(), state.detail.empty() ? "running" : state.detail);
      }
      // A job that cannot be continued is refused here, before it runs or is submitted.
      const auto continued = cont ? regula::pipeline::continuation(job) : regula::pipeline::Continuation{};
      if (!continued.cannot.empty()) regula::input_error("run: {}", continued.cannot);
      if (submit) {
        // Submitted again: the queue runs `regula --project P run --job DIR [--continue]`, which continues
        // the job as below (the resume point is found when the job starts).
        check_queue_script(queue);
        std::vector<std::string> tail{"run", "--job", job.dir()};
        if (cont) tail.push_back("--continue");
        return submit_to_queue(job, queue, global, tail);
      }
      if (cont) job.mutable_args() = continued.args;
      regula::mpi::barrier();  // every rank has read the job before rank 0 marks it running
      if (regula::mpi::rank() == 0) job.mark_running();
      return run_job(job, global);
    }

    // regula workflow --i FILE: the steps of a workflow file as jobs of the project (pipeline/workflow.hpp).
    if (!args.empty() && args[0] == "workflow") {
      std::vector<std::string> rest(args.begin() + 1, args.end());
      bool help = take_flag(rest, "--help") || take_flag(rest, "-h");
      auto file = take_option(rest, "--i");
      if (take_flag(rest, "--stop_watching")) {
        if (!rest.empty() || file) regula::input_error("workflow --stop_watching: no other option (got '{}')",
                                                       file ? "--i" : rest[0]);
        // (with --project the current directory is the project's by now)
        regula::pipeline::request_stop_watching(".");
        std::printf("%s written: the workflow runner watching this project looks once more for new files, then "
                    "runs the rest of its workflow\n", regula::pipeline::kStopWatching);
        return 0;
      }
      regula::pipeline::WatchOptions watch;
      auto seconds = [&](const char* name, double& to) {
        if (auto v = take_option(rest, name)) {
          try {
            size_t used = 0;
            to = std::stod(*v, &used);
            if (used != v->size() || !(to > 0)) throw std::invalid_argument(*v);
          } catch (const std::exception&) {
            regula::input_error("workflow {} {}: expected seconds > 0", name, *v);
          }
          return true;
        }
        return false;
      };
      seconds("--watch", watch.interval);
      if (seconds("--watch_idle", watch.idle) && watch.interval <= 0)
        regula::input_error("workflow --watch_idle: only with --watch SECONDS");
      if (auto v = take_option(rest, "--watch_class2d")) {
        try {
          size_t used = 0;
          watch.class2d_every = std::stol(*v, &used);
          if (used != v->size() || watch.class2d_every < 1) throw std::invalid_argument(*v);
        } catch (const std::exception&) {
          regula::input_error("workflow --watch_class2d {}: expected a number of particles >= 1", *v);
        }
        if (watch.interval <= 0) regula::input_error("workflow --watch_class2d: only with --watch SECONDS");
      }
      if (help || !file) {
        std::puts("Usage: regula [--project DIR] workflow --i FILE [--watch SECONDS [--watch_idle SECONDS]\n"
                  "       [--watch_class2d N]]\n"
                  "       regula [--project DIR] workflow --stop_watching\n"
                  "Runs the steps of a workflow file (lines 'NAME: SUBCOMMAND ARGS...', {NAME} standing for the job\n"
                  "directory of an earlier step) as jobs of the project, in order, each with its name as alias.\n"
                  "Run again, it skips the finished steps and resumes a failed or killed one (docs/pipeline.md).\n"
                  "FILE is read relative to the project directory.\n"
                  "--watch S: the first step imports movies or micrographs; every S seconds it adds the new files\n"
                  "and the per-micrograph steps after it (motioncorr, ctffind, autopick, extract) go on with them;\n"
                  "after --watch_idle seconds (600) without new files, the rest of the workflow runs once.\n"
                  "--watch_class2d N: while watching, the first class2d step after them runs (as the job <name>_live)\n"
                  "on the particles so far whenever N more have been extracted.\n"
                  "--stop_watching: tells the runner watching the project to look once more, then run the rest\n"
                  "(it writes DIR/STOP_WATCHING, which the runner removes).");
        return help ? 0 : 1;
      }
      if (!rest.empty()) regula::input_error("workflow: unexpected argument '{}'", rest[0]);
      if (mpi_job)
        regula::input_error("workflow under mpirun: run the workflow without mpirun (its steps are jobs; a job "
                            "runs under mpirun as `mpirun -np N regula --project DIR run --job DIR`)");
      if (submit) check_queue_script(queue);
      regula::set_verbosity(std::find(global.begin(), global.end(), "--quiet") == global.end() ? 1 : 0);
      const auto steps = regula::pipeline::read_workflow(*file);
      regula::pipeline::run_workflow(steps, std::filesystem::read_symlink("/proc/self/exe").string(), global,
                                     queue_args, watch);
      return 0;
    }
    // A subcommand that runs as a job when a project is given.
    auto sub = std::find_if(args.begin(), args.end(), is_command);
    bool help = std::find(args.begin(), args.end(), "--help") != args.end() ||
                std::find(args.begin(), args.end(), "-h") != args.end();
    if (project && sub != args.end() && !help) {
      if (const auto* type = regula::pipeline::job_type(*sub)) {
        std::vector<std::string> before(args.begin(), sub), after(sub + 1, args.end());
        for (auto& b : before) global.push_back(b);
        if (submit) check_queue_script(queue);
        auto make_job = [&] {
          if (!mpi_job) return regula::pipeline::Job::create(*type, after, alias);
          // Rank 0 creates the job; the others open it by the directory it sends.
          std::string dir;
          if (regula::mpi::rank() == 0) dir = regula::pipeline::Job::create(*type, after, alias).dir();
          uint64_t size = dir.size();
          regula::mpi::bcast(&size, sizeof size, 0);
          dir.resize(size_t(size));
          regula::mpi::bcast(dir.data(), size_t(size), 0);
          return regula::pipeline::Job::open(dir);
        };
        auto job = make_job();
        // Submitted: the job runs where the queue puts it as `regula --project P run --job DIR`.
        if (submit) return submit_to_queue(job, queue, global, {"run", "--job", job.dir()});
        return run_job(job, global);
      }
    }
    if (mpi_job)
      regula::input_error("--project under mpirun: only a job runs there (a subcommand that runs as a job, or run "
                          "--job DIR)");
    std::vector<std::string> full = global;
    full.insert(full.end(), args.begin(), args.end());
    return run_cli(full);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "regula: error: out of memory\n");
    if (regula::mpi::size() > 1) regula::mpi::abort_all(1);
    return 1;
  } catch (const std::exception& e) {
    return report(e);
  }
}

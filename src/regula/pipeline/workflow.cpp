#include "regula/pipeline/workflow.hpp"

#include <cctype>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <glob.h>
#include <sys/wait.h>
#include <unistd.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/io/star.hpp"
#include "regula/pipeline/job.hpp"
#include "regula/pipeline/pipeline.hpp"

namespace regula::pipeline {

namespace {

bool valid_name(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  return true;
}

// Splits at white space; '...' and "..." keep spaces (the quotes are removed).
std::vector<std::string> split_words(const std::string& text, const std::string& where) {
  std::vector<std::string> out;
  std::string cur;
  bool in_word = false;
  char quote = 0;
  for (char c : text) {
    if (quote) {
      if (c == quote) quote = 0;
      else cur += c;
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      if (in_word) out.push_back(cur);
      cur.clear();
      in_word = false;
    } else {
      cur += c;
      in_word = true;
    }
  }
  if (quote) input_error("{}: a quote ({}) is not closed", where, quote);
  if (in_word) out.push_back(cur);
  return out;
}

// {NAME} replaced by the job directory of step NAME.
std::string expand(const std::string& arg, const std::map<std::string, std::string>& dirs, const std::string& where) {
  std::string out;
  for (size_t i = 0; i < arg.size();) {
    if (arg[i] != '{') {
      out += arg[i++];
      continue;
    }
    const size_t end = arg.find('}', i);
    if (end == std::string::npos) input_error("{}: '{{' without '}}' in '{}'", where, arg);
    const std::string name = arg.substr(i + 1, end - i - 1);
    auto it = dirs.find(name);
    if (it == dirs.end()) input_error("{}: {{{}}} names no earlier step", where, name);
    out += it->second;
    i = end + 1;
  }
  return out;
}

// Runs `cmd` as a child process (same output streams) and returns its exit status (128 + signal
// when a signal ended it).
int spawn_and_wait(const std::vector<std::string>& cmd) {
  std::vector<char*> argv;
  for (const auto& c : cmd) argv.push_back(const_cast<char*>(c.c_str()));
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) runtime_error("workflow: fork failed");
  if (pid == 0) {
    execv(argv[0], argv.data());
    std::fprintf(stderr, "regula: error: workflow: cannot run %s\n", argv[0]);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// How messages name a step.
std::string step_where(const WorkflowStep& s) { return fmt::format("step '{}' (line {})", s.name, s.line); }

// The alias of a step's job: "Class2D/c2d/".
std::string step_alias(const WorkflowStep& s) { return fmt::format("{}/{}/", job_type(s.command)->dir_name, s.name); }

// The arguments that run a job of the project again: `run --job DIR`, with --continue to resume it.
std::vector<std::string> run_again(const std::string& dir, bool resume) {
  std::vector<std::string> args{"run", "--job", dir};
  if (resume) args.push_back("--continue");
  return args;
}

// The classes of the last iteration written in a class2d job's directory (`*_itNNN_classes.mrcs`, the
// largest NNN), or "".
std::string last_classes(const std::string& dir) {
  std::string best;
  int best_it = -1;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const int it = iteration_of(name);
    if (it > best_it && name.ends_with("_classes.mrcs")) {
      best_it = it;
      best = e.path().string();
    }
  }
  return best;
}

const Process* step_job(const Record& r, const std::string& alias) {
  const Process* found = nullptr;
  for (const auto& p : r.processes)
    if (p.alias == alias) found = &p;  // the newest of that alias
  return found;
}

}  // namespace

std::vector<WorkflowStep> read_workflow(const std::string& path) {
  std::ifstream in(path);
  if (!in) input_error("{}: cannot read the workflow file", path);
  std::vector<WorkflowStep> steps;
  std::set<std::string> names;
  std::string line, text;
  int number = 0, first = 0;
  auto finish = [&] {
    const std::string where = fmt::format("{}, line {}", path, first);
    const size_t colon = text.find(':');
    if (colon == std::string::npos) input_error("{}: expected 'NAME: SUBCOMMAND ARGS...'", where);
    WorkflowStep s;
    s.line = first;
    s.name = text.substr(0, colon);
    s.name.erase(0, s.name.find_first_not_of(" \t"));
    s.name.erase(s.name.find_last_not_of(" \t") + 1);
    if (!valid_name(s.name)) input_error("{}: step name '{}': use letters, digits, _ and -", where, s.name);
    if (!names.insert(s.name).second) input_error("{}: a second step named '{}'", where, s.name);
    std::vector<std::string> words = split_words(text.substr(colon + 1), where);
    if (words.empty()) input_error("{}: step '{}' has no subcommand", where, s.name);
    s.command = words[0];
    if (!job_type(s.command))
      input_error("{}: '{}' is not a subcommand that runs as a job", where, s.command);
    s.args.assign(words.begin() + 1, words.end());
    for (const auto& a : s.args) {
      if (a == "--project" || a.rfind("--project=", 0) == 0 || a == "--alias" || a.rfind("--alias=", 0) == 0)
        input_error("{}: {} is set by the workflow (the step's name is its alias)", where, a.substr(0, a.find('=')));
      // Check the references now: each must name an earlier step.
      std::map<std::string, std::string> known;
      for (const auto& st : steps) known[st.name] = "";
      expand(a, known, where);
    }
    steps.push_back(std::move(s));
    text.clear();
  };
  bool continued = false;
  while (std::getline(in, line)) {
    ++number;
    // Comments: # at the start or after white space (a # inside a word, e.g. a file name, stays).
    for (size_t i = 0; i < line.size(); ++i)
      if (line[i] == '#' && (i == 0 || std::isspace(static_cast<unsigned char>(line[i - 1])))) {
        line.resize(i);
        break;
      }
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    const bool more = !line.empty() && line.back() == '\\';
    if (more) line.pop_back();
    if (!continued) {
      if (line.find_first_not_of(" \t") == std::string::npos) {
        if (more) input_error("{}, line {}: a continuation (\\) of nothing", path, number);
        continue;
      }
      first = number;
    }
    text += " " + line;
    continued = more;
    if (!more) finish();
  }
  if (continued) input_error("{}, line {}: the file ends after a continuation (\\)", path, number);
  if (steps.empty()) input_error("{}: no steps (expected lines 'NAME: SUBCOMMAND ARGS...')", path);
  return steps;
}

namespace {

// Waits while the job has no exit marker and is running on this host or (queued) is in the queue's
// hands; returns its state then.
JobState wait_for_end(const std::string& dir, bool queued) {
  JobState state = job_state(dir);
  auto waiting = [&] { return state.status == Status::Running && (state.alive || queued); };
  for (int polls = 0; waiting(); ++polls) {
    // Each second for a minute, then every 5 s: a queue may take hours to start a job.
    std::this_thread::sleep_for(std::chrono::seconds(polls < 60 ? 1 : 5));
    state = job_state(dir);
  }
  return state;
}

// The import step of a watched workflow: its list of movies or micrographs (the job's output node of that type).
std::string import_list(const std::string& job_dir) {
  const Record r = read_record(".");
  for (const auto& e : r.outputs)
    if (e.from == job_dir)
      for (const auto& n : r.nodes)
        if (n.name == e.to && (n.type == kNodeMovies || n.type == kNodeMics)) return n.name;
  runtime_error("workflow --watch: {} wrote no list of movies or micrographs", job_dir);
}

std::string value_of(const std::vector<std::string>& args, const std::string& name) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == name) return args[i + 1];
  return "";
}

size_t glob_count(const std::string& pattern) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  const size_t n = rc == 0 ? g.gl_pathc : 0;
  globfree(&g);
  return n;
}

std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Sleeps `seconds` in slices of at most 0.2 s; returns true as soon as the stop signal is there, and
// removes it (a signal is taken once).
bool sleep_unless_stopped(double seconds) {
  const auto start = Clock::now();
  for (;;) {
    std::error_code ec;
    if (std::filesystem::remove(kStopWatching, ec)) return true;
    const double left = seconds - seconds_since(start);
    if (left <= 0) return false;
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(left, 0.2)));
  }
}

}  // namespace

void request_stop_watching(const std::string& project) {
  if (!std::filesystem::is_regular_file(std::filesystem::path(project) / "default_pipeline.star"))
    input_error("workflow --stop_watching: {} is not a project (no default_pipeline.star)", project);
  write_file_atomic((std::filesystem::path(project) / kStopWatching).string(), "stop watching\n");
}

void run_workflow(const std::vector<WorkflowStep>& steps, const std::string& exe,
                  const std::vector<std::string>& global, const std::vector<std::string>& queue,
                  const WatchOptions& watch) {
  const bool queued = !queue.empty();
  std::map<std::string, std::string> dirs;
  // The steps that follow new files when watching: the import step and the per-micrograph jobs after it.
  size_t front = 0;
  if (watch.interval > 0) {
    const auto& first = steps.front();
    const std::vector<std::string>& a = first.args;
    if (first.command != "import" || !imports_a_list(a))
      input_error("workflow --watch: the first step ('{}', line {}) must import movies or micrographs (import "
                  "--do_movies or --do_micrographs), the files it watches for", first.name, first.line);
    if (watch.idle <= 0) input_error("--watch_idle {}: expected seconds > 0", watch.idle);
    std::error_code ec;
    if (std::filesystem::remove(kStopWatching, ec))
      spdlog::info("workflow: an earlier {} removed (a stop signal applies to the runner it finds running)",
                   kStopWatching);
    front = 1;
    while (front < steps.size() && resumes_per_micrograph(steps[front].command)) ++front;
    if (watch.class2d_every > 0 &&
        std::none_of(steps.begin() + long(front), steps.end(), [](const WorkflowStep& s) { return s.command == "class2d"; }))
      input_error("workflow --watch_class2d: no class2d step after the per-micrograph steps (the live 2D "
                  "classification runs the first one on the particles so far)");
    // Files may not be there yet: wait for the first (import refuses a wildcard that matches nothing).
    const std::string pattern = value_of(a, "--i");
    const auto start = Clock::now();
    if (glob_count(pattern) == 0) {
      spdlog::info("workflow: watching for {} (nothing there yet)", pattern);
      while (glob_count(pattern) == 0) {
        if (seconds_since(start) >= watch.idle)
          input_error("workflow --watch: nothing matched {} in {} s (--watch_idle)", pattern, watch.idle);
        if (sleep_unless_stopped(watch.interval))
          input_error("workflow --watch: stopped ({}) before anything matched {}", kStopWatching, pattern);
      }
    }
  }
  // Runs `regula [global] [queue] --project . TAIL...` for step s (a new job, or `run --job DIR [--continue]`)
  // and, when the job went to a queue, waits for its end. Returns the job's directory; throws, naming the
  // step, its job and its logs, when it fails.
  auto launch = [&](const WorkflowStep& s, const std::vector<std::string>& tail) {
    std::vector<std::string> cmd{exe};
    cmd.insert(cmd.end(), global.begin(), global.end());
    cmd.insert(cmd.end(), queue.begin(), queue.end());
    cmd.insert(cmd.end(), {"--project", "."});
    cmd.insert(cmd.end(), tail.begin(), tail.end());
    const int status = spawn_and_wait(cmd);
    const Record after = read_record(".");
    const Process* p = step_job(after, step_alias(s));
    const std::string dir = p ? p->name : std::string("(no job made)");
    const std::string where = step_where(s);
    if (status != 0)
      runtime_error("{}: {} {} with status {}{}; fix the cause and run the workflow again to go on", where, dir,
                    queued ? "could not be submitted: the submission ended" : "ended", status,
                    p ? fmt::format(" (its log: {}run.out)", dir) : "");
    if (!p) runtime_error("{}: the job left no record under the alias {}", where, step_alias(s));
    if (queued) {
      spdlog::info("workflow: {} submitted ({}); waiting for it to end", s.name, dir);
      const JobState state = wait_for_end(dir, true);
      if (state.status != Status::Succeeded)
        runtime_error("{}: {} {}{}; its log: {}run.out, the queue's: {}run_queue.out and .err; fix the cause and run "
                      "the workflow again to go on", where, dir, status_name(state.status),
                      state.detail.empty() ? "" : " (" + state.detail + ")", dir, dir);
    }
    return dir;
  };
  auto run_step = [&](const WorkflowStep& s) {
    const std::string where = step_where(s);
    std::vector<std::string> args;
    for (const auto& a : s.args) args.push_back(expand(a, dirs, where));
    const Record before = read_record(".");
    if (const Process* p = step_job(before, step_alias(s))) {
      JobState state = p->status == Status::Running ? job_state(p->name) : JobState{p->status, ""};
      if (state.status == Status::Running && (state.alive || queued)) {
        // The job outlived an earlier runner (only the runner was killed), or is in the queue's hands:
        // wait for its end.
        spdlog::info("workflow: {} is still {} ({}); waiting for it to end", s.name,
                     state.detail.empty() ? "running" : state.detail, p->name);
        state = wait_for_end(p->name, queued);
      }
      const Job job = Job::open(p->name);
      if (job.args() != args || job.type().command != s.command)
        input_error("{}: its job {} was made with other arguments ({} {}); give the step another name to run it "
                    "again", where, p->name, job.type().command, fmt::join(job.args(), " "));
      if (state.status == Status::Succeeded) {
        spdlog::info("workflow: {} finished already ({})", s.name, p->name);
        dirs[s.name] = p->name;
        return;
      }
      if (state.status == Status::Running)
        input_error("{}: its job {} is still running{}; start the workflow again when it has ended", where, p->name,
                    state.detail.empty() ? "" : " (" + state.detail + ")");
      // Failed, aborted or killed: resume where it can, else from its start.
      const bool resume = continuation(job).cannot.empty();
      spdlog::info("workflow: {} {} ({}{})", resume ? "resuming" : "running again", p->name, status_name(state.status),
                   state.detail.empty() ? "" : ": " + state.detail);
      dirs[s.name] = launch(s, run_again(p->name, resume));
    } else {
      spdlog::info("workflow: {}: regula {} {}", s.name, s.command, fmt::join(args, " "));
      std::vector<std::string> tail{"--alias", s.name, s.command};
      tail.insert(tail.end(), args.begin(), args.end());
      dirs[s.name] = launch(s, tail);
    }
  };
  // Live 2D classification while watching (--watch_class2d N): the first class2d step after the front,
  // as the job <name>_live, on the particles extracted so far, again whenever N more have come; from
  // the second run on it starts from the classes the previous run ended with (class2d --ref, copied to
  // live_start_classes.mrcs in the job, --reseed_until 0 to keep every class), so that the classes and
  // their numbers go on from batch to batch (cryoSPARC Live's streaming 2D classification).
  long live_particles = 0;
  auto live_class2d = [&] {
    if (watch.class2d_every <= 0) return;
    const auto it = std::find_if(steps.begin() + long(front), steps.end(),
                                 [](const WorkflowStep& s) { return s.command == "class2d"; });
    WorkflowStep live = *it;
    live.name += "_live";
    const std::string where = step_where(*it);
    std::vector<std::string> args;
    for (const auto& a : it->args) args.push_back(expand(a, dirs, where));
    const std::string input = value_of(args, "--i");
    if (input.empty() || !std::filesystem::exists(input)) return;  // nothing extracted yet
    const star::Document doc = star::read(input);
    const star::Block* b = doc.find("particles");
    const long n = b ? long(b->rows()) : 0;
    if (n < live_particles + watch.class2d_every) return;
    spdlog::info("workflow: live 2D classification of {} particles ({})", n, live.name);
    if (const Process* p = step_job(read_record("."), step_alias(live))) {
      const std::string dir = p->name, last = last_classes(dir);
      if (!last.empty()) {
        const std::string start = dir + "live_start_classes.mrcs";
        write_file_atomic(start, read_file(last));
        Job job = Job::open(dir);
        std::vector<std::string> a = job.args();  // the step's own --ref / --reseed_until replaced
        erase_option(a, "--ref");
        erase_option(a, "--reseed_until");
        a.insert(a.end(), {"--ref", start, "--reseed_until", "0"});
        job.set_args(std::move(a));
      }
      launch(live, run_again(dir, false));
    } else {
      std::vector<std::string> tail{"--alias", live.name, live.command};
      tail.insert(tail.end(), args.begin(), args.end());
      launch(live, tail);
    }
    live_particles = n;
  };
  for (size_t i = 0; i < front; ++i) run_step(steps[i]);
  if (front > 0) {
    live_class2d();
    // Watching: each --watch seconds the import job adds what is new (import --continue); when it did, the
    // per-micrograph jobs after it continue on the new files (--only_do_unfinished). Ends after --watch_idle
    // seconds without new files; then the rest of the workflow runs once, on everything.
    const std::string list = import_list(dirs[steps[0].name]);
    auto last_new = Clock::now();
    spdlog::info("workflow: watching for new files every {} s (steps {} to {}); ends after {} s without any, "
                 "or at `regula --project . workflow --stop_watching`",
                 watch.interval, steps[0].name, steps[front - 1].name, watch.idle);
    bool stopped = false;
    while (!stopped && seconds_since(last_new) < watch.idle) {
      // On the stop signal one last look, so that what arrived since the previous one is processed too.
      stopped = sleep_unless_stopped(watch.interval);
      if (stopped)
        spdlog::info("workflow: stop signal ({}): a last look for new files, then the rest of the workflow",
                     kStopWatching);
      const std::string before = file_text(list);
      launch(steps[0], run_again(dirs[steps[0].name], true));
      if (file_text(list) == before) continue;
      last_new = Clock::now();
      spdlog::info("workflow: new files in {}; {} to {} go on with them", list, steps[std::min<size_t>(1, front - 1)].name,
                   steps[front - 1].name);
      for (size_t i = 1; i < front; ++i) launch(steps[i], run_again(dirs[steps[i].name], true));
      live_class2d();
    }
    if (!stopped) spdlog::info("workflow: no new files for {} s: watching ends", watch.idle);
  }
  for (size_t i = front; i < steps.size(); ++i) run_step(steps[i]);
  spdlog::info("workflow: all {} steps finished", steps.size());
}

}  // namespace regula::pipeline

#include "regula/pipeline/queue.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <sys/wait.h>

#include <fmt/format.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/pipeline/job.hpp"

namespace regula::pipeline {
namespace fs = std::filesystem;

std::string fill_queue_template(const std::string& text, const QueueVariables& v, const std::string& template_name) {
  const int cores = v.mpinodes * v.threads;
  const int nodes = (cores + std::max(1, v.dedicated) - 1) / std::max(1, v.dedicated);
  const std::pair<const char*, std::string> vars[] = {
      {"command", v.command},   {"queue", v.queue},
      {"mpinodes", std::to_string(v.mpinodes)}, {"threads", std::to_string(v.threads)},
      {"cores", std::to_string(cores)},         {"dedicated", std::to_string(v.dedicated)},
      {"nodes", std::to_string(nodes)},         {"name", v.name},
      {"outfile", v.outfile},   {"errfile", v.errfile},
      {"extra1", v.extra[0]},   {"extra2", v.extra[1]},
      {"extra3", v.extra[2]},   {"extra4", v.extra[3]}};
  std::string out;
  size_t pos = 0;
  static const std::regex var("XXX([A-Za-z0-9_]+)XXX");
  for (std::sregex_iterator it(text.begin(), text.end(), var), end; it != end; ++it) {
    const std::smatch& m = *it;
    out.append(text, pos, size_t(m.position(0)) - pos);
    const std::string name = m[1].str();
    const std::string* value = nullptr;
    for (auto& [k, val] : vars)
      if (name == k) value = &val;
    if (!value) {
      const size_t line = size_t(std::count(text.begin(), text.begin() + m.position(0), '\n')) + 1;
      input_error("{}:{}: unknown variable XXX{}XXX (known: XXXcommandXXX, XXXqueueXXX, XXXmpinodesXXX, "
                  "XXXthreadsXXX, XXXcoresXXX, XXXdedicatedXXX, XXXnodesXXX, XXXnameXXX, XXXoutfileXXX, "
                  "XXXerrfileXXX, XXXextra1XXX..XXXextra4XXX)", template_name, line, name);
    }
    out += *value;
    pos = size_t(m.position(0) + m.length(0));
  }
  out.append(text, pos, std::string::npos);
  return out;
}

namespace {

int threads_of(const std::vector<std::string>& args) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "--j") {
      try {
        return std::max(1, std::stoi(args[i + 1]));
      } catch (const std::exception&) {
        return 1;
      }
    }
  return 1;
}

}  // namespace

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_of(" \t\n'\"$`\\;&|<>()*?[]#~") == std::string::npos) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

namespace {
constexpr const char* kSplit[] = {"refine3d", "class2d",  "class3d", "initial_model", "reconstruct", "motioncorr",
                                  "ctffind",  "autopick", "extract", "ctf_refine",    "polish"};
}

bool splits_over_ranks(const std::string& command) {
  return std::any_of(std::begin(kSplit), std::end(kSplit), [&](const char* c) { return command == c; });
}

std::string commands_splitting_over_ranks() {
  std::string s;
  for (const char* c : kSplit) s += (s.empty() ? "" : ", ") + std::string(c);
  return s;
}

std::string submit_job(Job& job, const QueueOptions& q, const std::string& command) {
  if (q.script.empty()) input_error("--queue needs --qsubscript, the submission script template");
  if (q.min_dedicated < 1) input_error("--min_dedicated {}: expected at least 1", q.min_dedicated);
  if (q.nr_mpi < 1) input_error("--nr_mpi {}: expected at least 1", q.nr_mpi);
  const std::string text = read_file(q.script);
  QueueVariables v;
  v.command = command;
  v.queue = q.queue;
  v.name = job.dir();
  v.outfile = job.dir() + "run_queue.out";
  v.errfile = job.dir() + "run_queue.err";
  v.threads = threads_of(job.args());
  v.dedicated = q.min_dedicated;
  v.mpinodes = splits_over_ranks(std::string(job.type().command)) ? q.nr_mpi : 1;
  v.extra = q.extra;
  std::string script;
  try {
    script = fill_queue_template(text, v, q.script);
  } catch (...) {
    job.finish(Status::Failed);
    throw;
  }
  const std::string path = job.dir() + "run_submit.script";
  write_file_atomic(path, script);
  fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
  // Queued before the submit command runs: the job may start (and replace the marker) before it returns.
  job.mark_queued("submitted with " + q.qsub);
  const std::string cmd = q.qsub + " " + shell_quote(path) + " 2>&1";
  std::string said;
  int status = -1;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) said.append(buf, n);
    status = ::pclose(p);
  }
  while (!said.empty() && (said.back() == '\n' || said.back() == ' ')) said.pop_back();
  const bool ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!ok) {
    job.finish(Status::Failed);
    input_error("{}: the submit command '{}' failed (status {}): {}", job.dir(), q.qsub,
                status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1, said.empty() ? "no output" : said);
  }
  // What the queue said (its job id), unless the job has started already (its own markers then).
  const fs::path queued = fs::path(job.dir()) / "REGULA_JOB_QUEUED";
  if (!said.empty() && fs::exists(queued) && !fs::exists(fs::path(job.dir()) / "REGULA_JOB_RUNNING")) {
    std::string line = said;
    std::replace(line.begin(), line.end(), '\n', ' ');
    write_file_atomic(queued.string(), line + "\n");
  }
  return said;
}

}  // namespace regula::pipeline

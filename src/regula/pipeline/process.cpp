#include "regula/pipeline/process.hpp"

#include <cerrno>
#include <climits>
#include <fstream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

namespace regula::pipeline {

namespace {

std::string first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

struct ProcStat {
  char state = '?';
  unsigned long long start_time = 0;
};

// State (field 3) and start time (field 22) of /proc/PID/stat. The command name (field 2)
// is in parentheses and may itself contain spaces and parentheses: fields are counted
// after the last ')'.
std::optional<ProcStat> read_proc_stat(long pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(text.substr(close + 1));
  ProcStat s;
  std::string field;
  for (int n = 3; n <= 22 && rest >> field; ++n) {
    if (n == 3) s.state = field.empty() ? '?' : field[0];
    if (n == 22) {
      try {
        s.start_time = std::stoull(field);
      } catch (const std::exception&) {
        return std::nullopt;
      }
      return s;
    }
  }
  return std::nullopt;
}

}  // namespace

ProcessIdentity current_process() {
  ProcessIdentity p;
  p.pid = long(::getpid());
  p.host = host_name();
  if (auto s = read_proc_stat(p.pid)) p.start_time = s->start_time;
  p.boot_id = first_line("/proc/sys/kernel/random/boot_id");
  return p;
}

Liveness liveness(const ProcessIdentity& p) {
  if (p.pid <= 0 || p.pid > INT_MAX || p.host.empty() || p.host != host_name()) return Liveness::Unknown;
  const std::string boot = first_line("/proc/sys/kernel/random/boot_id");
  if (!p.boot_id.empty() && !boot.empty() && p.boot_id != boot) return Liveness::Gone;  // restarted since
  if (::kill(pid_t(p.pid), 0) != 0 && errno == ESRCH) return Liveness::Gone;
  auto s = read_proc_stat(p.pid);
  if (!s) return Liveness::Unknown;  // exists, but /proc hides it (hidepid): cannot compare
  if (s->state == 'Z' || s->state == 'X') return Liveness::Gone;  // exited, not yet reaped
  if (p.start_time != 0 && s->start_time != p.start_time) return Liveness::Gone;  // pid reused
  return p.start_time != 0 ? Liveness::Alive : Liveness::Unknown;
}

std::string to_json(const ProcessIdentity& p) {
  return nlohmann::json{{"pid", p.pid}, {"host", p.host}, {"start_time", p.start_time}, {"boot_id", p.boot_id}}.dump();
}

std::optional<ProcessIdentity> parse_process_identity(std::string_view text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  ProcessIdentity p;
  try {
    p.pid = j.at("pid").get<long>();
    p.host = j.at("host").get<std::string>();
    p.start_time = j.value("start_time", 0ULL);
    p.boot_id = j.value("boot_id", std::string());
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
  return p;
}

}  // namespace regula::pipeline

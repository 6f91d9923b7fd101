// Which process runs a job, recorded so that a later reader on the same host can tell
// whether it still exists: a job killed with SIGKILL (or a machine that restarted)
// leaves no exit marker, and its process id may since belong to another process.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace regula::pipeline {

struct ProcessIdentity {
  long pid = 0;
  std::string host;                   // gethostname()
  unsigned long long start_time = 0;  // field 22 of /proc/PID/stat: clock ticks after boot
  std::string boot_id;                // /proc/sys/kernel/random/boot_id ("" when unknown)
};

// This process.
ProcessIdentity current_process();

enum class Liveness {
  Alive,    // the same process (pid and start time) is still there
  Gone,     // on this host and it no longer exists (or its pid now belongs to another process,
            // or the machine restarted since)
  Unknown,  // another host, or not enough recorded to tell
};
Liveness liveness(const ProcessIdentity& p);

// One-line JSON object {"pid", "host", "start_time", "boot_id"} and back
// (nullopt for anything else, e.g. the bare process id older versions wrote).
std::string to_json(const ProcessIdentity& p);
std::optional<ProcessIdentity> parse_process_identity(std::string_view text);

}  // namespace regula::pipeline

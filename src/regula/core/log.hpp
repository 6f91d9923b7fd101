// Logging through spdlog to stderr. Library code logs; it never prints directly.
#pragma once
#include <string>

#include <spdlog/spdlog.h>

namespace regula {

// Verbosity: 0 = errors only (--quiet), 1 = info (default), 2 = debug.
void set_verbosity(int level);
int verbosity();
// Also write every log line to `path` (appending), e.g. a job's run.out.
void add_log_file(const std::string& path);

}  // namespace regula

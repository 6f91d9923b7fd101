// Logging through spdlog to stderr. Library code logs; it never prints directly.
//
// Every log line goes to stderr in every program linked with the library (the command line, the
// Python module, the tests), whether or not set_verbosity() is called: log.cpp replaces spdlog's
// default logger, which writes to stdout, before main() (or when the Python module is loaded).
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

// Defined in log.cpp; the linker is told to keep it (CMakeLists.txt, --undefined) so that log.cpp,
// which installs the stderr logger before main(), is part of every program linked with regula_core.
extern "C" void regula_log_anchor();

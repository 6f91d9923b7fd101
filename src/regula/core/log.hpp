// Logging through spdlog to stderr. Library code logs; it never prints directly.
#pragma once
#include <spdlog/spdlog.h>

namespace regula {

// Verbosity: 0 = errors only (--quiet), 1 = info (default), 2 = debug.
void set_verbosity(int level);
int verbosity();

}  // namespace regula

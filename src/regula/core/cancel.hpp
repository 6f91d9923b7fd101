// Cooperative cancellation. The command-line process installs handlers for
// SIGINT and SIGTERM that only set a flag; iterative jobs call
// check_cancelled() at safe points (after an iteration's files are complete),
// which throws Cancelled so the job stops with a consistent last iteration and
// the caller marks it aborted.
#pragma once
#include <atomic>

#include "regula/core/error.hpp"

namespace regula {

class Cancelled : public Error {
 public:
  Cancelled() : Error("stopped by a signal (SIGINT/SIGTERM) after the last complete step") {}
};

// Install SIGINT/SIGTERM handlers that request cancellation (idempotent).
void install_cancel_handlers();
bool cancel_requested();
void request_cancel();  // for tests and the Python module
void reset_cancel();
inline void check_cancelled() {
  if (cancel_requested()) throw Cancelled();
}

}  // namespace regula

#include "regula/core/cancel.hpp"

#include <csignal>

namespace regula {
namespace {
volatile std::sig_atomic_t g_cancel = 0;
extern "C" void on_signal(int) { g_cancel = 1; }
}  // namespace

void install_cancel_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}
bool cancel_requested() { return g_cancel != 0; }
void request_cancel() { g_cancel = 1; }
void reset_cancel() { g_cancel = 0; }

}  // namespace regula

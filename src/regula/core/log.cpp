#include "regula/core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace regula {
namespace {
int g_level = 1;

// Makes the "regula" logger (stderr, coloured on a terminal) spdlog's default logger, once.
// spdlog's own default logger writes to stdout, where log lines would mix with a command's
// output or a Python program's; so this runs before main() in every program linked with
// regula_core (CMakeLists.txt makes the linker keep this file through regula_log_anchor), and
// again, doing nothing, from the functions below.
void install_logger() {
  static const bool installed = [] {
    auto logger = std::make_shared<spdlog::logger>("regula", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    logger->set_pattern("%^[%H:%M:%S %l]%$ %v");
    spdlog::set_default_logger(logger);  // replaces (and unregisters) spdlog's stdout logger
    spdlog::set_level(spdlog::level::info);
    return true;
  }();
  (void)installed;
}

const bool g_installed_before_main = (install_logger(), true);
}  // namespace

void set_verbosity(int level) {
  install_logger();
  g_level = level;
  spdlog::set_level(level <= 0 ? spdlog::level::err
                    : level == 1 ? spdlog::level::info
                                 : spdlog::level::debug);
}
int verbosity() { return g_level; }

void add_log_file(const std::string& path) {
  install_logger();
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S %l] %v");
  sink->set_level(spdlog::level::info);
  spdlog::default_logger()->sinks().push_back(sink);
  spdlog::default_logger()->flush_on(spdlog::level::info);
}

}  // namespace regula

extern "C" void regula_log_anchor() { (void)regula::g_installed_before_main; }

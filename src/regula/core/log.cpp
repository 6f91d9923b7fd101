#include "regula/core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace regula {
namespace {
int g_level = 1;
struct Init {
  Init() {
    auto logger = spdlog::stderr_color_mt("regula");
    logger->set_pattern("%^[%H:%M:%S %l]%$ %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::info);
  }
};
}  // namespace

void set_verbosity(int level) {
  static Init init;
  g_level = level;
  spdlog::set_level(level <= 0 ? spdlog::level::err
                    : level == 1 ? spdlog::level::info
                                 : spdlog::level::debug);
}
int verbosity() { return g_level; }

void add_log_file(const std::string& path) {
  set_verbosity(g_level);  // make sure the logger exists
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S %l] %v");
  sink->set_level(spdlog::level::info);
  spdlog::default_logger()->sinks().push_back(sink);
  spdlog::default_logger()->flush_on(spdlog::level::info);
}

}  // namespace regula

#include "regula/core/log.hpp"

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

}  // namespace regula

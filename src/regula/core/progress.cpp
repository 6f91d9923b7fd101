#include "regula/core/progress.hpp"

#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

namespace regula {
namespace {
// Recursive: a callback called from emit() may emit events or install a callback itself.
std::recursive_mutex g_mu;
bool g_quiet = false;
std::string g_json;
ProgressCallback g_cb;

std::string hms(double s) {
  if (s < 0) return "--:--";
  int t = int(s + 0.5);
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{:02}:{:02}", t / 60, t % 60);
}
}  // namespace

void ProgressSink::set_quiet(bool q) { std::lock_guard lk(g_mu); g_quiet = q; }
void ProgressSink::set_json_path(const std::string& p) { std::lock_guard lk(g_mu); g_json = p; }
ProgressCallback ProgressSink::set_callback(ProgressCallback cb) {
  std::lock_guard lk(g_mu);
  std::swap(g_cb, cb);
  return cb;
}
ProgressCallback ProgressSink::callback() {
  std::lock_guard lk(g_mu);
  return g_cb;
}

void ProgressSink::emit(const ProgressEvent& e, bool final) {
  std::lock_guard lk(g_mu);
  // A copy: the callback may replace g_cb while it runs.
  if (const ProgressCallback cb = g_cb) cb(e);
  if (!g_json.empty()) {
    nlohmann::json j{{"task", e.task}, {"done", e.done}, {"total", e.total},
                     {"elapsed", e.elapsed_s}, {"eta", e.eta_s}, {"final", final},
                     {"time", double(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch()).count()) / 1000.0}};
    std::ofstream out(g_json, std::ios::app);
    out << j.dump() << '\n';
  }
  if (!g_quiet && ::isatty(2)) {
    int width = 30;
    double frac = e.total > 0 ? e.done / e.total : 0;
    int filled = int(frac * width + 0.5);
    std::string bar(size_t(filled), '#');
    bar.resize(size_t(width), '.');
    std::fprintf(stderr, "\r%-40.40s [%s] %5.1f%% %s ETA %s%s", e.task.c_str(), bar.c_str(),
                 100 * frac, hms(e.elapsed_s).c_str(), hms(e.eta_s).c_str(), final ? "\n" : "");
    std::fflush(stderr);
  }
}

Progress::Progress(std::string task, double total)
    : task_(std::move(task)), total_(total), start_(std::chrono::steady_clock::now()), last_(start_) {
  report(false);
}
Progress::~Progress() { finish(); }

void Progress::advance(double units) {
  std::lock_guard lk(mu_);
  done_ += units;
  auto now = std::chrono::steady_clock::now();
  if (now - last_ > std::chrono::milliseconds(200)) {
    last_ = now;
    report(false);
  }
}
void Progress::set(double done) {
  std::lock_guard lk(mu_);
  done_ = done;
  report(false);
}
void Progress::finish() {
  std::lock_guard lk(mu_);
  if (finished_) return;
  finished_ = true;
  done_ = total_;
  report(true);
}

void Progress::report(bool final) {
  ProgressEvent e;
  e.task = task_;
  e.done = done_;
  e.total = total_;
  e.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  e.eta_s = (done_ > 0 && total_ > done_) ? e.elapsed_s * (total_ - done_) / done_ : (final ? 0 : -1);
  ProgressSink::emit(e, final);
}

}  // namespace regula

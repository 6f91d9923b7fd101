// Progress reporting for long steps. A Progress is given a total, advanced as
// work completes, and reports to (a) an optional callback (Python, tests),
// (b) a bar with ETA on stderr when it is a terminal and not quiet, and
// (c) an optional JSON-lines file that the web page follows.
#pragma once
#include <chrono>
#include <functional>
#include <mutex>
#include <string>

namespace regula {

struct ProgressEvent {
  std::string task;     // e.g. "iteration 3/25: E-step"
  double done = 0;      // units done
  double total = 0;     // units in all
  double elapsed_s = 0;
  double eta_s = -1;    // -1 when unknown
};

class ProgressSink {
 public:
  // Global settings for the command-line process.
  static void set_quiet(bool q);
  static void set_json_path(const std::string& path);  // "" = none
  static void set_callback(std::function<void(const ProgressEvent&)> cb);
  static void emit(const ProgressEvent& e, bool final);
};

class Progress {
 public:
  Progress(std::string task, double total);
  ~Progress();
  void advance(double units = 1);
  void set(double done);
  void finish();

 private:
  void report(bool final);
  std::string task_;
  double total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
  bool finished_ = false;
  std::mutex mu_;
};

}  // namespace regula

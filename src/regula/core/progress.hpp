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

using ProgressCallback = std::function<void(const ProgressEvent&)>;

class ProgressSink {
 public:
  // Global settings for the command-line process.
  static void set_quiet(bool q);
  static void set_json_path(const std::string& path);  // "" = none
  // Installs the process-wide callback (an empty one: none) and returns the one it replaces, so
  // that a caller can put it back (ScopedProgressCallback does).
  static ProgressCallback set_callback(ProgressCallback cb);
  // The current callback (empty when none is installed).
  static ProgressCallback callback();
  // Calls the callback (one event at a time; a callback may itself emit or install callbacks),
  // appends to the JSON file and draws the bar.
  static void emit(const ProgressEvent& e, bool final);
};

// Installs a callback for its lifetime and then restores the one it replaced: nested guards
// (a job run inside another's callback, the Python module inside a program that has its own
// callback) and consecutive ones each leave the previous callback in place. Guards must end in the
// reverse order of their creation, as scopes do.
class ScopedProgressCallback {
 public:
  explicit ScopedProgressCallback(ProgressCallback cb) : previous_(ProgressSink::set_callback(std::move(cb))) {}
  ~ScopedProgressCallback() { ProgressSink::set_callback(std::move(previous_)); }
  ScopedProgressCallback(const ScopedProgressCallback&) = delete;
  ScopedProgressCallback& operator=(const ScopedProgressCallback&) = delete;

 private:
  ProgressCallback previous_;
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

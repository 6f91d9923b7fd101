// Binary checkpoint files of the iterative jobs (ROOT_itNNN_state.bin): an 8-byte magic, then
// 64-bit integers, doubles and vectors (size first), native byte order. Exact: a continued run
// restores the state bit for bit.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/io/star.hpp"

namespace regula::state_io {

// Binary state: a header of integers and doubles, then the vectors (sizes first).
class Writer {
 public:
  void i(int64_t v) { buf_.append(reinterpret_cast<const char*>(&v), 8); }
  void d(double v) { buf_.append(reinterpret_cast<const char*>(&v), 8); }
  void vd(const std::vector<double>& v) {
    i(int64_t(v.size()));
    buf_.append(reinterpret_cast<const char*>(v.data()), v.size() * 8);
  }
  void vi(const std::vector<int>& v) {
    i(int64_t(v.size()));
    for (int x : v) i(x);
  }
  std::string buf_;
};

class Reader {
 public:
  Reader(std::string path, std::string job) : path_(std::move(path)), job_(std::move(job)), b_(read_file(path_)) {}
  void need(size_t n) {
    if (pos_ + n > b_.size())
      input_error("{}: truncated {} state file (byte offset {}, need {} more bytes)", path_, job_, pos_, n);
  }
  int64_t i() {
    need(8);
    int64_t v;
    std::memcpy(&v, b_.data() + pos_, 8);
    pos_ += 8;
    return v;
  }
  double d() {
    need(8);
    double v;
    std::memcpy(&v, b_.data() + pos_, 8);
    pos_ += 8;
    return v;
  }
  size_t count() {
    int64_t c = i();
    if (c < 0 || uint64_t(c) > (b_.size() - pos_) / 8)
      input_error("{}: implausible vector size {} at byte offset {}", path_, c, pos_ - 8);
    return size_t(c);
  }
  std::vector<double> vd() {
    size_t c = count();
    std::vector<double> v(c);
    if (c) std::memcpy(v.data(), b_.data() + pos_, c * 8);
    pos_ += c * 8;
    return v;
  }
  std::vector<int> vi() {
    size_t c = count();
    std::vector<int> v(c);
    for (auto& x : v) x = int(i());
    return v;
  }
  void bytes(void* out, size_t n) {
    need(n);
    if (n) std::memcpy(out, b_.data() + pos_, n);
    pos_ += n;
  }
  void magic(const char (&m)[8]) {
    need(8);
    if (std::memcmp(b_.data(), m, 8) != 0)
      input_error("{}: not a Regula {} state file (byte offset 0: expected '{}')", path_, job_, std::string(m, 8));
    pos_ = 8;
  }
  void end() {
    if (pos_ != b_.size()) input_error("{}: {} unexpected bytes at the end of the state file", path_, b_.size() - pos_);
  }

 private:
  std::string path_, job_, b_;
  size_t pos_ = 0;
};


// The key-value pairs of a ROOT_itNNN_optimiser.star (data_optimiser_general), with messages naming
// the file, the key and the job the checkpoint should come from.
class OptimiserFile {
 public:
  OptimiserFile(const std::string& path, std::string job)
      : path_(path), job_(std::move(job)), doc_(star::read(path)), o_(&doc_.require("optimiser_general")) {}
  std::string get(const std::string& key) const {
    const std::string_view v = o_->get(key);
    if (v.empty())
      input_error("{}: data_optimiser_general has no _{} (not a Regula {} checkpoint?)", path_, key, job_);
    return std::string(v);
  }
  bool has(const std::string& key) const { return !o_->get(key).empty(); }
  double number(const std::string& key) const {
    const std::string v = get(key);
    try {
      size_t used = 0;
      const double d = std::stod(v, &used);
      if (used != v.size()) throw std::invalid_argument(v);
      return d;
    } catch (const std::exception&) {
      input_error("{}: _{}: expected a number, got '{}'", path_, key, v);
    }
  }

 private:
  std::string path_, job_;
  star::Document doc_;
  const star::Block* o_;
};

}  // namespace regula::state_io

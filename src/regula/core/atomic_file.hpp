// Writing files without ever leaving a partial one: write to a temporary name
// in the same directory, then rename over the destination on commit(). If the
// writer is destroyed without commit() (an exception), the temporary is removed.
#pragma once
#include <cstdio>
#include <string>
#include <string_view>

namespace regula {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  FILE* handle() { return f_; }
  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Flush, close and rename to the final path. Throws regula::Error on failure.
  void commit();
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  FILE* f_ = nullptr;
  bool committed_ = false;
};

// Write a whole string to `path` atomically.
void write_file_atomic(const std::string& path, std::string_view contents);
// Read a whole file; throws InputError naming the file if it is missing.
std::string read_file(const std::string& path);

}  // namespace regula

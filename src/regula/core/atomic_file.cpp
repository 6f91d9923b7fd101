#include "regula/core/atomic_file.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include "regula/core/error.hpp"

namespace regula {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  std::filesystem::path p(path_);
  tmp_ = (p.parent_path() / ("." + p.filename().string() + ".tmp" + std::to_string(::getpid())))
             .string();
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) runtime_error("{}: cannot open for writing: {}", tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n)
    runtime_error("{}: write failed: {}", path_, std::strerror(errno));
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0) runtime_error("{}: write failed: {}", path_, std::strerror(errno));
  int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) runtime_error("{}: close failed: {}", path_, std::strerror(errno));
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    runtime_error("{}: cannot rename from {}: {}", path_, tmp_, std::strerror(errno));
  committed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) input_error("{}: file not found", path);
  if (std::filesystem::is_directory(path, ec)) input_error("{}: is a directory, expected a file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) input_error("{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace regula

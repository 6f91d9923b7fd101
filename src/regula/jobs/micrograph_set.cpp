#include "regula/jobs/micrograph_set.hpp"

#include <cctype>
#include <filesystem>
#include <fstream>

#include <glob.h>

#include <spdlog/spdlog.h>

#include "regula/core/cancel.hpp"
#include "regula/core/error.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"

namespace regula {
namespace fs = std::filesystem;

double MicrographSet::optics_value(int g, const std::string& label, double fallback, const std::string& option) const {
  const int c = optics.column(label);
  if (c < 0) {
    if (fallback >= 0) return fallback;
    input_error("{}: the optics table has no _{} and {} was not given", source, label, option);
  }
  const int gc = optics.column("rlnOpticsGroup");
  for (size_t r = 0; r < optics.rows(); ++r)
    if (gc < 0 ? r == 0 : optics.integer(r, gc) == g) return optics.number(r, c);
  input_error("{}: no optics group {} in data_optics", source, g);
}

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t g{};
  std::vector<std::string> out;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  return out;
}

MicrographSet read_micrograph_set(const std::string& input, const std::string& block, const std::string& name_label) {
  MicrographSet s;
  s.source = input;
  s.name_label = name_label;
  const bool is_star = input.size() > 5 && input.compare(input.size() - 5, 5, ".star") == 0;
  if (is_star) {
    star::Document d = star::read(input);
    const star::Block* b = d.find(block);
    if (!b) {
      // RELION 3.0: one unnamed block.
      for (auto& blk : d.blocks)
        if (blk.has(name_label)) b = &blk;
    }
    if (!b) input_error("{}: no data_{} block with _{}", input, block, name_label);
    s.rows = *b;
    const int c = s.rows.column(name_label);
    if (c < 0)
      input_error("{}: data_{} has no _{}{}", input, block, name_label,
                  name_label == "rlnMicrographMovieName" ? " (were the files imported as movies?)" : "");
    const int gc = s.rows.column("rlnOpticsGroup");
    for (size_t r = 0; r < s.rows.rows(); ++r) {
      s.names.emplace_back(s.rows.value(r, c));
      s.groups.push_back(gc < 0 ? 1 : int(s.rows.integer(r, gc)));
    }
    if (const star::Block* o = d.find("optics")) s.optics = *o;
  } else {
    std::vector<std::string> files;
    if (input.find_first_of("*?[") != std::string::npos) {
      files = glob_files(input);
      if (files.empty()) input_error("--i {}: no file matches", input);
    } else if (fs::exists(input) && !fs::is_directory(input)) {
      const std::string ext = fs::path(input).extension().string();
      if (ext == ".mrc" || ext == ".mrcs" || ext == ".tif" || ext == ".tiff") {
        files.push_back(input);
      } else {
        std::ifstream f(input);
        std::string line;
        size_t ln = 0;
        while (std::getline(f, line)) {
          ++ln;
          const auto a = line.find_first_not_of(" \t\r");
          if (a == std::string::npos || line[a] == '#') continue;
          const auto z = line.find_last_not_of(" \t\r");
          files.push_back(line.substr(a, z - a + 1));
        }
        if (files.empty()) input_error("{}: the list names no files", input);
      }
    } else {
      input_error("--i {}: no such file (expected a STAR file, a wildcard or a list of files)", input);
    }
    s.rows = star::Block(block, true);
    std::vector<std::string> names;
    for (auto& f : files) {
      s.rows.add_row();
      names.push_back(f);
      s.names.push_back(f);
      s.groups.push_back(1);
    }
    s.rows.set_column(name_label, names);
    s.rows.set_column("rlnOpticsGroup", s.groups);
    s.optics = star::Block("optics", true);
    s.optics.add_row();
    s.optics.set_column("rlnOpticsGroupName", std::vector<std::string>{"opticsGroup1"});
    s.optics.set_column("rlnOpticsGroup", std::vector<int>{1});
  }
  return s;
}

std::string pipeline_output_name(const std::string& input, const std::string& out_dir) {
  std::string post = fs::path(input).lexically_normal().string();
  // "<Type>/jobNNN/rest": drop the first two components.
  const auto s1 = post.find('/');
  if (s1 != std::string::npos) {
    const auto s2 = post.find('/', s1 + 1);
    if (s2 != std::string::npos && s2 - s1 - 1 >= 4 && post.compare(s1 + 1, 3, "job") == 0) {
      bool digits = true;
      for (size_t i = s1 + 4; i < s2; ++i) digits = digits && std::isdigit((unsigned char)post[i]);
      if (digits) post = post.substr(s2 + 1);
    }
  }
  while (post.rfind("../", 0) == 0) post = post.substr(3);
  if (!post.empty() && post[0] == '/') post = post.substr(1);
  return out_dir + post;
}

std::string without_extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path;
  return path.substr(0, dot);
}

BatchOutcome run_micrograph_batch(size_t count, int threads, const std::string& job, const std::string& what,
                                  const std::function<std::string(size_t)>& name,
                                  const std::function<void(size_t, int)>& work) {
  Progress progress(job + ": " + what, double(count));
  std::vector<std::string> errors(count);
  auto one = [&](size_t k, int thread) {
    try {
      work(k, thread);
    } catch (const Cancelled&) {
      throw;
    } catch (const std::exception& e) {
      errors[k] = e.what();
      if (errors[k].empty()) errors[k] = "unknown error";
    }
    progress.advance();
    check_cancelled();
  };
  if (threads <= 1) {
    for (size_t k = 0; k < count; ++k) one(k, 0);
  } else {
    ThreadPool pool(threads);
    pool.parallel_for(0, count, one);
  }
  BatchOutcome out;
  out.ok.assign(count, 0);
  for (size_t k = 0; k < count; ++k) {
    if (errors[k].empty()) {
      out.ok[k] = 1;
      ++out.done;
    } else {
      spdlog::error("{}: skipping {}: {}", job, name(k), errors[k]);
      ++out.failed;
    }
  }
  progress.finish();
  mpi::barrier();
  return out;
}

}  // namespace regula

#include "regula/jobs/coordinates.hpp"

#include <charconv>
#include <fstream>
#include <sstream>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/jobs/micrograph_set.hpp"

namespace regula {
namespace {

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// Parses an integer token completely ("12", "-3"); RELION reads the numbers of text files as integers.
bool parse_int(const std::string& t, long& v) {
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  return ec == std::errc() && p == t.data() + t.size();
}

star::Block text_coordinates(const std::string& path, bool box) {
  std::ifstream f(path);
  if (!f) input_error("{}: cannot open the coordinate file", path);
  std::vector<double> xs, ys;
  std::string line;
  size_t ln = 0;
  while (std::getline(f, line)) {
    ++ln;
    std::istringstream is(line);
    std::vector<std::string> w;
    for (std::string t; is >> t;) w.push_back(t);
    if (w.empty()) continue;
    if (box) {
      long v[4];
      if (w.size() < 4) input_error("{}:{}: expected 'x y width height' (EMAN .box), got '{}'", path, ln, line);
      for (int k = 0; k < 4; ++k)
        if (!parse_int(w[size_t(k)], v[k]))
          input_error("{}:{}: expected integers 'x y width height' (EMAN .box), got '{}'", path, ln, line);
      xs.push_back(double(v[0] + v[2] / 2));
      ys.push_back(double(v[1] + v[3] / 2));
    } else {
      long x, y;
      const bool ok = w.size() >= 2 && parse_int(w[0], x) && parse_int(w[1], y);
      if (!ok) {
        if (xs.empty() && ln == 1) continue;  // a header line
        input_error("{}:{}: expected two integers 'x y', got '{}'", path, ln, line);
      }
      xs.push_back(double(x));
      ys.push_back(double(y));
    }
  }
  star::Block b("", true);
  for (size_t i = 0; i < xs.size(); ++i) b.add_row();
  b.set_column("rlnCoordinateX", xs);
  b.set_column("rlnCoordinateY", ys);
  return b;
}

}  // namespace

star::Block read_coordinates(const std::string& path) {
  if (ends_with(path, ".star")) {
    star::Document d = star::read(path);
    for (auto& b : d.blocks)
      if (b.has("rlnCoordinateX") && b.has("rlnCoordinateY")) return b;
    // An empty pick list (a micrograph without picks) is a block without a loop.
    for (auto& b : d.blocks)
      if (b.rows() == 0) {
        star::Block e("", true);
        e.set_column("rlnCoordinateX", std::vector<double>{});
        e.set_column("rlnCoordinateY", std::vector<double>{});
        return e;
      }
    input_error("{}: no block with _rlnCoordinateX and _rlnCoordinateY", path);
  }
  return text_coordinates(path, ends_with(path, ".box"));
}

std::string coordinate_file_name(const std::string& micrograph, const std::string& coord_dir,
                                 const std::string& suffix) {
  if (coord_dir.empty()) return without_extension(micrograph) + suffix;
  std::string dir = coord_dir;
  if (dir.back() != '/') dir += '/';
  return without_extension(pipeline_output_name(micrograph, dir)) + suffix;
}

std::map<std::string, std::string> read_coordinate_list(const std::string& path) {
  star::Document d = star::read(path);
  const star::Block* b = d.find("coordinate_files");
  if (!b)
    for (auto& blk : d.blocks)
      if (blk.has("rlnMicrographCoordinates")) b = &blk;
  if (!b) input_error("{}: no data_coordinate_files block (expected a RELION 4 coordinate list such as autopick.star)", path);
  const int cm = b->require_column("rlnMicrographName");
  const int cc = b->require_column("rlnMicrographCoordinates");
  std::map<std::string, std::string> out;
  for (size_t r = 0; r < b->rows(); ++r) out[std::string(b->value(r, cm))] = std::string(b->value(r, cc));
  return out;
}

}  // namespace regula

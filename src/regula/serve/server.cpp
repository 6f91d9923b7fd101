#include "regula/serve/server.hpp"

#include <httplib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "regula/core/error.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/coordinates.hpp"
#include "regula/micrograph/preview.hpp"
#include "regula/model/particles.hpp"
#include "regula/pipeline/job.hpp"
#include "regula/pipeline/pipeline.hpp"

namespace regula::serve {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// An HTTP error carried to the handler wrapper.
struct HttpError : std::runtime_error {
  int status;
  HttpError(int s, const std::string& m) : std::runtime_error(m), status(s) {}
};

void json_reply(httplib::Response& res, const json& j, int status = 200) {
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

// A grey image (one byte per pixel, rows top to bottom) as PNG bytes.
std::string encode_png_grey(const std::vector<uint8_t>& grey, int width, int height) {
  std::vector<uint8_t> rgb(grey.size() * 3);
  for (size_t k = 0; k < grey.size(); ++k) rgb[3 * k] = rgb[3 * k + 1] = rgb[3 * k + 2] = grey[k];
  return encode_png_rgb(rgb, width, height);
}

std::string mime_of(const std::string& path) {
  auto ends = [&](const char* e) {
    const std::string s(e);
    return path.size() >= s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0;
  };
  if (ends(".png")) return "image/png";
  if (ends(".star") || ends(".txt") || ends(".out") || ends(".jsonl") || ends(".bild")) return "text/plain";
  if (ends(".json")) return "application/json";
  return "application/octet-stream";
}

// An integer parameter (the whole value, else 400); `fallback` when absent.
long int_param(const httplib::Request& req, const char* name, long fallback) {
  if (!req.has_param(name)) return fallback;
  const std::string v = req.get_param_value(name);
  long out = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size()) throw HttpError(400, fmt::format("bad parameter {}: '{}'", name, v));
  return out;
}

// A finite number parameter (the whole value, else 400); `fallback` when absent.
double number_param(const httplib::Request& req, const char* name, double fallback) {
  if (!req.has_param(name)) return fallback;
  const std::string v = req.get_param_value(name);
  char* end = nullptr;
  const double out = v.empty() ? 0.0 : std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(out))
    throw HttpError(400, fmt::format("bad parameter {}: '{}'", name, v));
  return out;
}

// A number among a job's options (job.star), or `fallback` when absent or not a number.
double option_number(const std::map<std::string, std::string>& o, const char* name, double fallback) {
  const auto it = o.find(name);
  if (it == o.end()) return fallback;
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  return end != it->second.c_str() && std::isfinite(v) ? v : fallback;
}

bool is_job_name(const std::string& s) { return s.size() > 3 && s.rfind("job", 0) == 0 &&
                                                std::all_of(s.begin() + 3, s.end(), ::isdigit); }

}  // namespace

struct Server::Impl {
  ServeOptions opt;
  fs::path root;  // canonical project directory
  httplib::Server http;
  int port = 0;

  // A path inside the project (canonical, symbolic links resolved) or HttpError 403/404.
  fs::path inside(const std::string& rel) const {
    if (rel.find('\0') != std::string::npos) throw HttpError(400, "bad path");
    std::error_code ec;
    fs::path p = fs::weakly_canonical(root / fs::path(rel), ec);
    if (ec) throw HttpError(404, "no such file: " + rel);
    const std::string ps = p.string(), rs = root.string();
    if (ps != rs && ps.rfind(rs + "/", 0) != 0) throw HttpError(403, "outside the project: " + rel);
    if (!fs::exists(p)) throw HttpError(404, "no such file: " + rel);
    return p;
  }

  // A job directory given as ?dir=Type/jobNNN/.
  fs::path job_dir(const httplib::Request& req) const {
    if (!req.has_param("dir")) throw HttpError(400, "missing parameter dir");
    fs::path p = inside(req.get_param_value("dir"));
    if (!fs::is_directory(p) || !is_job_name(p.filename().string()))
      throw HttpError(404, "not a job directory: " + req.get_param_value("dir"));
    return p;
  }

  std::string rel(const fs::path& p) const { return fs::relative(p, root).string(); }

  static std::string status_of(const pipeline::JobState& s) { return pipeline::status_name(s.status); }

  static json last_progress(const fs::path& d) {
    std::ifstream f(d / "progress.jsonl");
    std::string line, last;
    while (std::getline(f, line))
      if (!line.empty()) last = line;
    if (last.empty()) return nullptr;
    json j = json::parse(last, nullptr, false);
    return j.is_discarded() ? json(nullptr) : j;
  }

  static double mtime(const fs::path& p) {
    std::error_code ec;
    auto t = fs::last_write_time(p, ec);
    if (ec) return 0;
    return double(std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::file_clock::to_sys(t).time_since_epoch()).count());
  }

  json jobs() const {
    json out = json::array();
    std::vector<fs::path> dirs;
    for (const auto& t : fs::directory_iterator(root)) {
      if (!t.is_directory()) continue;
      for (const auto& j : fs::directory_iterator(t.path()))
        if (j.is_directory() && is_job_name(j.path().filename().string())) dirs.push_back(j.path());
    }
    std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
      return a.filename().string() < b.filename().string();
    });
    for (const auto& d : dirs) {
      const pipeline::JobState state = pipeline::job_state(d.string());
      json j;
      j["dir"] = rel(d) + "/";
      j["type"] = d.parent_path().filename().string();
      j["status"] = status_of(state);
      if (!state.detail.empty()) j["detail"] = state.detail;
      j["progress"] = last_progress(d);
      j["start"] = mtime(d / "note.txt");
      const char* marker = state.status == pipeline::Status::Succeeded ? "RELION_JOB_EXIT_SUCCESS"
                           : state.status == pipeline::Status::Aborted ? "RELION_JOB_EXIT_ABORTED"
                                                                       : "RELION_JOB_EXIT_FAILURE";
      // A job that died without an exit marker ended when it last wrote its log or progress.
      j["end"] = state.status == pipeline::Status::Running ? 0.0
                 : state.detail.empty() ? mtime(d / marker)
                                        : std::max(mtime(d / "run.out"), mtime(d / "progress.jsonl"));
      out.push_back(j);
    }
    return out;
  }

  // Iteration numbers of ROOT_itNNN_<suffix> files in a job directory, ascending, and the root.
  static std::vector<std::pair<int, fs::path>> iterations(const fs::path& d, const std::string& suffix) {
    // Names ROOT_itNNN_<suffix> (NNN three digits).
    std::vector<std::pair<int, fs::path>> out;
    const std::string tail = "_" + suffix;
    for (const auto& e : fs::directory_iterator(d)) {
      if (e.is_symlink()) continue;  // never follow links (they may point out of the project)
      const std::string name = e.path().filename().string();
      if (name.size() < tail.size() + 6 || name.compare(name.size() - tail.size(), tail.size(), tail) != 0) continue;
      const size_t p = name.size() - tail.size() - 6;  // "_itNNN"
      if (name.compare(p, 3, "_it") != 0) continue;
      const std::string digits = name.substr(p + 3, 3);
      if (!std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
      out.push_back({std::stoi(digits), e.path()});
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  json job(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    json j;
    j["dir"] = rel(d) + "/";
    j["type"] = d.parent_path().filename().string();
    const pipeline::JobState state = pipeline::job_state(d.string());
    j["status"] = status_of(state);
    if (!state.detail.empty()) j["detail"] = state.detail;
    json files = json::array();
    // The newest change of a result (not of the log, progress or notes): the page redraws the job's view when
    // it moves (ns since the epoch).
    std::error_code ec;
    long long modified = 0;
    for (const auto& e : fs::directory_iterator(d)) {
      if (!e.is_regular_file() || e.is_symlink()) continue;
      const std::string name = e.path().filename().string();
      files.push_back(name);
      if (name == "progress.jsonl" || name == "note.txt" || name.rfind("run.", 0) == 0 || name.rfind("run_queue.", 0) == 0)
        continue;
      const auto t = fs::last_write_time(e.path(), ec);
      if (!ec)
        modified = std::max<long long>(modified, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                     std::chrono::file_clock::to_sys(t).time_since_epoch()).count());
    }
    std::sort(files.begin(), files.end());
    j["files"] = files;
    j["modified"] = std::to_string(modified);
    json its = json::array();
    for (const auto& [it, p] : iterations(d, "model.star")) its.push_back(it);
    j["iterations"] = its;
    return j;
  }

  static const star::Block& block(const star::Document& doc, const std::string& name, const fs::path& p) {
    const star::Block* b = doc.find(name);
    if (!b) throw HttpError(422, fmt::format("{}: no data_{} block", p.filename().string(), name));
    return *b;
  }

  json class2d(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    auto its = iterations(d, "model.star");
    if (its.empty()) throw HttpError(404, "no iterations yet");
    int it = req.has_param("iter") ? std::stoi(req.get_param_value("iter")) : its.back().first;
    auto found = std::find_if(its.begin(), its.end(), [&](auto& x) { return x.first == it; });
    if (found == its.end()) throw HttpError(404, fmt::format("no iteration {}", it));
    star::Document model = star::read(found->second.string());
    const star::Block& cl = block(model, "model_classes", found->second);
    const auto frac = cl.numbers(cl.require_column("rlnClassDistribution"));
    const auto resA = cl.numbers(cl.require_column("rlnEstimatedResolution"));
    // Counts per class of every iteration (rlnClassNumber of ROOT_itNNN_data.star).
    json counts_over = json::array();
    std::vector<int> counts(frac.size(), 0);
    for (const auto& [i, p] : iterations(d, "data.star")) {
      star::Document data = star::read(p.string());
      const star::Block* pb = data.find("particles");
      if (!pb || !pb->has("rlnClassNumber")) continue;
      std::vector<int> c(frac.size(), 0);
      const int col = pb->column("rlnClassNumber");
      for (size_t r = 0; r < pb->rows(); ++r) {
        const long k = pb->integer(r, col);
        if (k >= 1 && size_t(k) <= c.size()) c[size_t(k - 1)] += 1;
      }
      counts_over.push_back({{"iteration", i}, {"counts", c}});
      if (i == it) counts = c;
    }
    json classes = json::array();
    for (size_t k = 0; k < frac.size(); ++k)
      classes.push_back({{"class", k + 1}, {"fraction", frac[k]}, {"resolution", resA[k]}, {"count", counts[k]}});
    json its_j = json::array();
    for (auto& x : its) its_j.push_back(x.first);
    return {{"iteration", it}, {"iterations", its_j}, {"classes", classes}, {"counts_over_iterations", counts_over}};
  }

  std::string class_image(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    const int it = std::stoi(req.get_param_value("iter"));
    const int k = std::stoi(req.get_param_value("k"));
    auto its = iterations(d, "classes.mrcs");
    auto found = std::find_if(its.begin(), its.end(), [&](auto& x) { return x.first == it; });
    if (found == its.end()) throw HttpError(404, fmt::format("no classes for iteration {}", it));
    mrc::StackReader r(found->second.string());
    if (k < 1 || k > r.count()) throw HttpError(404, fmt::format("no class {}", k));
    Image img = r.read(k - 1);
    const int n = img.nx();
    auto [mn, mx] = std::minmax_element(img.begin(), img.end());
    const double lo = *mn, span = *mx > *mn ? double(*mx - *mn) : 1.0;
    std::vector<uint8_t> grey(size_t(n) * size_t(img.ny()));
    for (int y = 0; y < img.ny(); ++y)
      for (int x = 0; x < n; ++x)
        grey[size_t(y) * size_t(n) + size_t(x)] =
            uint8_t(std::clamp((img(x, img.ny() - 1 - y) - lo) / span * 255.0 + 0.5, 0.0, 255.0));
    return encode_png_grey(grey, n, img.ny());
  }

  std::string map(const httplib::Request& req, int& box, double& apix) const {
    const fs::path d = job_dir(req);
    if (!req.has_param("file")) throw HttpError(400, "missing parameter file");
    const fs::path f = inside(rel(d) + "/" + req.get_param_value("file"));
    const int want = req.has_param("size") ? std::clamp(std::stoi(req.get_param_value("size")), 8, 128) : 64;
    mrc::Header h;
    Volume v = mrc::read(f.string(), &h);
    if (v.nz() < 2 || v.nx() != v.ny() || v.nx() != v.nz()) throw HttpError(422, f.filename().string() + ": not a cubic map");
    const int n = v.nx(), step = (n + want - 1) / want, m = n / step;
    // positive=1 (a local-resolution map, 0 where undefined): the mean of the positive voxels only.
    const bool positive = req.has_param("positive") && req.get_param_value("positive") == "1";
    std::vector<float> out(size_t(m) * size_t(m) * size_t(m), 0.0f);
    for (int z = 0; z < m; ++z)
      for (int y = 0; y < m; ++y)
        for (int x = 0; x < m; ++x) {
          double s = 0;
          int count = 0;
          for (int c = 0; c < step; ++c)
            for (int b = 0; b < step; ++b)
              for (int a = 0; a < step; ++a) {
                const float val = v(x * step + a, y * step + b, z * step + c);
                if (positive && !(val > 0)) continue;
                s += val;
                ++count;
              }
          out[(size_t(z) * size_t(m) + size_t(y)) * size_t(m) + size_t(x)] = count ? float(s / count) : 0.0f;
        }
    box = m;
    apix = h.pixel_size() * step;
    return std::string(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float));
  }

  json fsc(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    json j;
    // Post-processing: OUT.star with data_fsc and data_guinier.
    fs::path pp;
    for (const auto& e : fs::directory_iterator(d)) {
      if (e.is_symlink()) continue;  // never follow links (they may point out of the project)
      const std::string n = e.path().filename().string();
      if (n.size() > 5 && n.compare(n.size() - 5, 5, ".star") == 0 && n.find("_it") == std::string::npos) {
        star::Document doc = star::read(e.path().string());
        if (doc.find("fsc") && doc.find("general")) pp = e.path();
      }
    }
    if (!pp.empty()) {
      star::Document doc = star::read(pp.string());
      const star::Block& f = block(doc, "fsc", pp);
      j["resolution"] = f.numbers(f.require_column("rlnResolution"));
      json curves;
      for (const char* c : {"rlnFourierShellCorrelationCorrected", "rlnFourierShellCorrelationUnmaskedMaps",
                            "rlnFourierShellCorrelationMaskedMaps",
                            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"})
        if (f.has(c)) curves[c] = f.numbers(f.column(c));
      j["curves"] = curves;
      const star::Block& g = block(doc, "general", pp);
      j["final_resolution"] = std::stod(std::string(g.get("rlnFinalResolution", "0")));
      j["bfactor"] = std::stod(std::string(g.get("rlnBfactorUsedForSharpening", "0")));
      if (const star::Block* gb = doc.find("guinier")) {
        json guinier;
        for (int c = 0; c < int(gb->columns()); ++c) guinier[gb->label(c)] = gb->numbers(c);
        j["guinier"] = guinier;
      }
      j["source"] = rel(pp);
      return j;
    }
    // Refinement: the final ROOT_model.star, else the newest iteration's.
    fs::path model;
    for (const auto& e : fs::directory_iterator(d)) {
      if (e.is_symlink()) continue;  // never follow links (they may point out of the project)
      const std::string n = e.path().filename().string();
      if (n.size() > 10 && n.compare(n.size() - 10, 10, "model.star") == 0 && n.find("_it") == std::string::npos)
        model = e.path();
    }
    if (model.empty()) {
      auto its = iterations(d, "model.star");
      if (its.empty()) throw HttpError(404, "no FSC in this job yet");
      model = its.back().second;
    }
    star::Document doc = star::read(model.string());
    const star::Block& c = block(doc, "model_class_1", model);
    if (!c.has("rlnGoldStandardFsc")) throw HttpError(404, "no gold-standard FSC in " + rel(model));
    j["resolution"] = c.numbers(c.require_column("rlnResolution"));
    j["curves"] = {{"rlnGoldStandardFsc", c.numbers(c.column("rlnGoldStandardFsc"))}};
    const star::Block& g = block(doc, "model_general", model);
    j["final_resolution"] = std::stod(std::string(g.get("rlnCurrentResolution", "0")));
    j["source"] = rel(model);
    return j;
  }

  json iteration_resolutions(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    json out = json::array();
    for (const auto& [it, p] : iterations(d, "model.star")) {
      star::Document doc = star::read(p.string());
      const star::Block* g = doc.find("model_general");
      if (!g) continue;
      out.push_back({{"iteration", it}, {"resolution", std::stod(std::string(g->get("rlnCurrentResolution", "0")))}});
    }
    return out;
  }

  // ---------------- picks: AutoPick (coordinate list) and Extract (particles.star) jobs ----------------

  // The options of a job as its job.star records them (name without dashes -> value, "Yes" for flags);
  // empty when there is none or it cannot be read (the options only choose the circle diameter).
  static std::map<std::string, std::string> job_options(const fs::path& d) {
    std::map<std::string, std::string> out;
    const fs::path f = d / "job.star";
    if (fs::is_symlink(f) || !fs::is_regular_file(f)) return out;
    try {
      const star::Document doc = star::read(f.string());
      if (const star::Block* b = doc.find("joboptions_values")) {
        const int n = b->column("rlnJobOptionVariable"), v = b->column("rlnJobOptionValue");
        for (size_t r = 0; n >= 0 && v >= 0 && r < b->rows(); ++r)
          out[std::string(b->value(r, n))] = std::string(b->value(r, v));
      }
    } catch (const std::exception&) {
      out.clear();  // a malformed job.star: the default diameter
    }
    return out;
  }

  // The micrographs of a job with their picks: an AutoPick job's coordinate list (<pickname>.star,
  // data_coordinate_files: rlnMicrographName, rlnMicrographCoordinates, in its order) or an Extract
  // job's particles.star (rows grouped by rlnMicrographName, in order of first appearance).
  struct PickSet {
    std::string kind;  // "autopick" or "extract"
    fs::path list;
    struct Micrograph {
      std::string name, coordinates;  // as written (relative to the project); coordinates "" for extract
      std::vector<size_t> rows;       // extract: the rows of `particles`
    };
    std::vector<Micrograph> micrographs;
    star::Document particles;  // extract
    std::map<std::string, std::string> options;
  };

  PickSet pick_set(const fs::path& d) const {
    PickSet s;
    s.options = job_options(d);
    std::string pickname = s.options.count("pickname") ? s.options.at("pickname") : "autopick";
    if (pickname.empty() || pickname.find('/') != std::string::npos) pickname = "autopick";
    const fs::path list = d / (pickname + ".star"), parts = d / "particles.star";
    if (!fs::is_symlink(list) && fs::is_regular_file(list)) {
      s.kind = "autopick";
      s.list = list;
      const star::Document doc = star::read(list.string());
      const star::Block& b = block(doc, "coordinate_files", list);
      const int m = b.require_column("rlnMicrographName"), c = b.require_column("rlnMicrographCoordinates");
      for (size_t r = 0; r < b.rows(); ++r)
        s.micrographs.push_back({std::string(b.value(r, m)), std::string(b.value(r, c)), {}});
      return s;
    }
    if (!fs::is_symlink(parts) && fs::is_regular_file(parts)) {
      s.kind = "extract";
      s.list = parts;
      s.particles = star::read(parts.string());
      const star::Block& b = block(s.particles, "particles", parts);
      const int m = b.require_column("rlnMicrographName");
      b.require_column("rlnCoordinateX");
      b.require_column("rlnCoordinateY");
      std::map<std::string, size_t> index;
      for (size_t r = 0; r < b.rows(); ++r) {
        const std::string name(b.value(r, m));
        auto [it, fresh] = index.emplace(name, s.micrographs.size());
        if (fresh) s.micrographs.push_back({name, "", {}});
        s.micrographs[it->second].rows.push_back(r);
      }
      return s;
    }
    throw HttpError(404, fmt::format("no picks in this job (neither {}.star nor particles.star)", pickname));
  }

  // The picks of micrograph i: x, y (micrograph pixels) and the figure of merit when there is one.
  struct Picks {
    std::vector<double> x, y, fom;
  };
  Picks picks_of(const PickSet& s, size_t i) const {
    Picks p;
    const auto take = [&](const star::Table& b, const std::vector<size_t>& rows) {
      const int cx = b.require_column("rlnCoordinateX"), cy = b.require_column("rlnCoordinateY");
      const int cf = b.column("rlnAutopickFigureOfMerit");
      for (size_t r : rows) {
        p.x.push_back(b.number(r, cx));
        p.y.push_back(b.number(r, cy));
        if (cf >= 0) p.fom.push_back(b.number(r, cf));
      }
    };
    const PickSet::Micrograph& m = s.micrographs[i];
    if (s.kind == "extract") {
      take(s.particles.require("particles"), m.rows);
    } else {
      const fs::path f = inside(m.coordinates);
      if (!fs::is_regular_file(f)) throw HttpError(404, "not a file: " + m.coordinates);
      const star::Block b = read_coordinates(f.string());
      std::vector<size_t> rows(b.rows());
      for (size_t r = 0; r < rows.size(); ++r) rows[r] = r;
      take(b, rows);
    }
    return p;
  }

  // ?mic=I: an index into the job's micrographs (400 when malformed or missing, 404 when out of range).
  static size_t micrograph_index(const httplib::Request& req, const PickSet& s) {
    if (!req.has_param("mic")) throw HttpError(400, "missing parameter mic");
    const long i = int_param(req, "mic", 0);
    if (i < 0 || size_t(i) >= s.micrographs.size())
      throw HttpError(404, fmt::format("no micrograph {} (the job has {})", i, s.micrographs.size()));
    return size_t(i);
  }

  // The diameter (Å) of the circles drawn around picks and where it comes from (the job's options).
  static std::pair<double, std::string> pick_diameter(const PickSet& s, double angpix) {
    const auto& o = s.options;
    if (const double d = option_number(o, "particle_diameter", -1); d > 0) return {d, "--particle_diameter"};
    const double lo = option_number(o, "LoG_diam_min", -1), hi = option_number(o, "LoG_diam_max", -1);
    if (lo > 0 && hi >= lo) return {(lo + hi) / 2, "the mean of --LoG_diam_min and --LoG_diam_max"};
    const double box = option_number(o, "extract_size", -1);
    if (s.kind == "extract" && box > 0 && angpix > 0) {
      // --bg_radius is in pixels of the final box (after --scale and --window); RELION's GUI default is
      // 75% of its half.
      const double scale = option_number(o, "scale", -1), window = option_number(o, "window", -1);
      const double factor = scale > 0 ? box / scale : 1.0;
      const double final_box = window > 0 ? window : scale > 0 ? scale : box;
      const double bg = option_number(o, "bg_radius", -1);
      if (bg > 0) return {2 * bg * factor * angpix, "twice --bg_radius"};
      return {0.75 * final_box * factor * angpix, "75% of the extracted box"};
    }
    return {200.0, "a default (no diameter among the job's options)"};
  }

  json picks(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    const PickSet s = pick_set(d);
    if (req.has_param("mic")) {
      const size_t i = micrograph_index(req, s);
      const Picks p = picks_of(s, i);
      json j{{"index", i}, {"micrograph", s.micrographs[i].name}, {"x", p.x}, {"y", p.y}};
      if (!p.fom.empty()) j["fom"] = p.fom;
      return j;
    }
    json mics = json::array();
    long total = 0;
    std::vector<double> foms;
    double angpix = option_number(s.options, "angpix", 0);
    for (size_t i = 0; i < s.micrographs.size(); ++i) {
      const PickSet::Micrograph& m = s.micrographs[i];
      json e{{"index", i}, {"micrograph", m.name}, {"count", nullptr}};
      if (!m.coordinates.empty()) e["coordinates"] = m.coordinates;
      // One unreadable micrograph or coordinate file is reported on its row, not for the job.
      try {
        const Picks p = picks_of(s, i);
        const long n = long(p.x.size());
        e["count"] = n;
        total += n;
        foms.insert(foms.end(), p.fom.begin(), p.fom.end());
      } catch (const std::exception& ex) {
        e["error"] = ex.what();
      }
      try {
        const fs::path f = inside(m.name);
        if (!fs::is_regular_file(f)) throw HttpError(404, "not a file: " + m.name);
        const mrc::Header h = mrc::read_header(f.string());
        e["width"] = h.size_x();
        e["height"] = h.size_y();
        e["pixel_size"] = h.pixel_size();
        if (!(angpix > 0)) angpix = h.pixel_size();
      } catch (const std::exception& ex) {
        e["micrograph_error"] = ex.what();
      }
      mics.push_back(e);
    }
    const auto [diameter, from] = pick_diameter(s, angpix);
    json out{{"kind", s.kind}, {"source", rel(s.list)}, {"micrographs", mics}, {"total", total},
             {"pixel_size", angpix}, {"diameter", diameter}, {"diameter_from", from}};
    if (!foms.empty()) out["fom"] = fom_histogram(foms, 40);
    return out;
  }

  // The figures of merit of all picks: their range and a histogram of `bins` equal bins over it (the
  // last bin closed; one bin when all are equal).
  static json fom_histogram(const std::vector<double>& v, int bins) {
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    const double a = *lo, b = *hi;
    if (!(b > a)) bins = 1;
    std::vector<long> counts(size_t(bins), 0);
    for (double x : v) {
      const int k = b > a ? int((x - a) / (b - a) * bins) : 0;
      counts[size_t(std::clamp(k, 0, bins - 1))] += 1;
    }
    return {{"min", a}, {"max", b}, {"counts", counts}};
  }

  // A sample of an Extract job's particles as one PNG: n images (at most 100) taken at even steps through
  // particles.star, each scaled from its mean - 3 sd (black) to mean + 3 sd (white), side by side in rows
  // (row 0 of an image at the top, as the micrograph preview), 2 px of white between them.
  std::string particles(const httplib::Request& req, httplib::Response& res) const {
    const fs::path d = job_dir(req);
    const PickSet s = pick_set(d);
    if (s.kind != "extract") throw HttpError(404, "no particles in this job (it has no particles.star)");
    const star::Table& b = s.particles.require("particles");
    const int col = b.require_column("rlnImageName");
    const long want = int_param(req, "n", 48);
    if (want < 1 || want > 100) throw HttpError(400, "bad parameter n: 1 to 100 particles");
    const size_t n = std::min(size_t(want), b.rows());
    if (n == 0) throw HttpError(404, "particles.star has no particles");
    std::vector<Grid<float>> imgs;
    std::map<std::string, std::unique_ptr<mrc::StackReader>> stacks;
    for (size_t k = 0; k < n; ++k) {
      const size_t r = k * b.rows() / n;
      const ImageRef ref = parse_image_name(b.value(r, col), rel(s.list));
      const std::string path = inside(ref.path).string();
      auto& st = stacks[path];
      if (!st) st = std::make_unique<mrc::StackReader>(path);
      const long idx = ref.index > 0 ? ref.index - 1 : 0;
      if (idx >= st->count()) throw HttpError(422, fmt::format("{}: no image {} in {}", rel(s.list), ref.index, ref.path));
      Grid<float> g(st->nx(), st->ny());
      st->read_into(int(idx), g.data());
      if (!imgs.empty() && (g.nx() != imgs[0].nx() || g.ny() != imgs[0].ny()))
        throw HttpError(422, fmt::format("{}: particles of different sizes ({} and {} px)", rel(s.list), imgs[0].nx(), g.nx()));
      imgs.push_back(std::move(g));
    }
    const int w = imgs[0].nx(), h = imgs[0].ny(), gap = 2;
    const int cols = int(std::ceil(std::sqrt(double(n)))), rows = int((n + size_t(cols) - 1) / size_t(cols));
    const int W = cols * w + (cols - 1) * gap, H = rows * h + (rows - 1) * gap;
    std::vector<uint8_t> grey(size_t(W) * size_t(H), 255);
    for (size_t k = 0; k < n; ++k) {
      const Grid<float>& g = imgs[k];
      double m = 0, m2 = 0;
      for (float v : g) {
        m += v;
        m2 += double(v) * v;
      }
      m /= double(g.size());
      const double sd = std::sqrt(std::max(0.0, m2 / double(g.size()) - m * m));
      const double lo = m - 3 * sd, span = sd > 0 ? 6 * sd : 1.0;
      const int x0 = int(k % size_t(cols)) * (w + gap), y0 = int(k / size_t(cols)) * (h + gap);
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
          grey[size_t(y0 + y) * size_t(W) + size_t(x0 + x)] =
              uint8_t(std::clamp((g(x, y) - lo) / span * 255.0 + 0.5, 0.0, 255.0));
    }
    res.set_header("X-Particles", std::to_string(n));
    res.set_header("X-Columns", std::to_string(cols));
    res.set_header("X-Box", std::to_string(w));
    return encode_png_grey(grey, W, H);
  }

  // The project's jobs as a graph (default_pipeline.star): each recorded job with its alias, type and
  // status, and an edge from job A to job B for each file A wrote that B read.
  json graph() const {
    const auto listed = pipeline::list_jobs(root.string());
    std::map<std::string, std::string> producer;  // file -> the job that wrote it
    for (const auto& j : listed)
      for (const auto& f : j.outputs) producer[f] = j.name;
    json jobs = json::array(), edges = json::array();
    for (const auto& j : listed) {
      const std::string type = fs::path(j.name).parent_path().parent_path().string();
      jobs.push_back({{"dir", j.name}, {"alias", j.alias},
                      {"type", type.empty() ? fs::path(j.name).parent_path().string() : type},
                      {"status", status_of(j.state)}});
      for (const auto& f : j.inputs) {
        const auto it = producer.find(f);
        if (it != producer.end() && it->second != j.name) edges.push_back({{"from", it->second}, {"to", j.name}, {"file", f}});
      }
    }
    return {{"jobs", jobs}, {"edges", edges}};
  }

  // A MotionCorr or CtfFind job's micrographs: its corrected_micrographs.star or micrographs_ctf.star.
  struct MicList {
    fs::path list;
    star::Document doc;
    std::vector<std::string> names;
  };
  MicList mic_list(const fs::path& d) const {
    MicList m;
    for (const char* f : {"micrographs_ctf.star", "corrected_micrographs.star"}) {
      const fs::path p = d / f;
      if (!fs::is_symlink(p) && fs::is_regular_file(p)) {
        m.list = p;
        break;
      }
    }
    if (m.list.empty()) throw HttpError(404, "no micrographs in this job (neither micrographs_ctf.star nor corrected_micrographs.star)");
    m.doc = star::read(m.list.string());
    const star::Block& b = block(m.doc, "micrographs", m.list);
    const int c = b.require_column("rlnMicrographName");
    for (size_t r = 0; r < b.rows(); ++r) m.names.emplace_back(b.value(r, c));
    return m;
  }

  // A file of the project named in a list, "" unless it exists inside the project as a regular file.
  std::string existing(const std::string& name) const {
    try {
      const fs::path f = inside(name);
      return fs::is_regular_file(f) ? rel(f) : "";
    } catch (const HttpError&) {
      return "";
    }
  }

  // /api/mics?dir=D: per micrograph the motion (rlnAccumMotionTotal/Early/Late) and CTF values the list has, and
  // the diagnostic pictures the job wrote (motioncorr ROOT_shifts.png, ctffind ROOT.png); with &mic=I also the
  // whole-frame trajectory of micrograph I from its metadata STAR file (data_global_shift, px).
  json mics(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    const MicList m = mic_list(d);
    const star::Block& b = *m.doc.find("micrographs");
    static const std::pair<const char*, const char*> kValues[] = {
        {"rlnAccumMotionTotal", "motion_total"}, {"rlnAccumMotionEarly", "motion_early"},
        {"rlnAccumMotionLate", "motion_late"},   {"rlnDefocusU", "defocus_u"},
        {"rlnDefocusV", "defocus_v"},            {"rlnDefocusAngle", "defocus_angle"},
        {"rlnCtfAstigmatism", "astigmatism"},    {"rlnCtfFigureOfMerit", "ctf_fom"},
        {"rlnCtfMaxResolution", "ctf_max_resolution"}};
    auto row = [&](size_t r) {
      json e{{"index", r}, {"micrograph", m.names[r]}};
      for (const auto& [label, key] : kValues)
        if (const int c = b.column(label); c >= 0 && b.is_number(r, c)) e[key] = b.number(r, c);
      const std::string stem = fs::path(m.names[r]).replace_extension().string();
      if (std::string f = existing(stem + "_shifts.png"); !f.empty()) e["shifts_png"] = f;
      if (const int c = b.column("rlnCtfImage"); c >= 0) {
        std::string ctf(b.value(r, c));
        if (const size_t colon = ctf.rfind(':'); colon != std::string::npos) ctf.resize(colon);  // "X.ctf:mrc"
        if (std::string f = existing(fs::path(ctf).replace_extension(".png").string()); !f.empty()) e["ctf_png"] = f;
      }
      if (const int c = b.column("rlnMicrographMetadata"); c >= 0) e["metadata"] = std::string(b.value(r, c));
      return e;
    };
    if (req.has_param("mic")) {
      const long i = int_param(req, "mic", 0);
      if (i < 0 || size_t(i) >= m.names.size())
        throw HttpError(404, fmt::format("no micrograph {} (the job has {})", i, m.names.size()));
      json e = row(size_t(i));
      if (e.contains("metadata")) {
        const fs::path f = inside(e["metadata"].get<std::string>());
        if (!fs::is_regular_file(f)) throw HttpError(404, "not a file: " + e["metadata"].get<std::string>());
        const star::Document md = star::read(f.string());
        if (const star::Block* g = md.find("global_shift")) {
          const int cx = g->require_column("rlnMicrographShiftX"), cy = g->require_column("rlnMicrographShiftY");
          const int cf = g->column("rlnMicrographFrameNumber");
          std::vector<double> x, y, frame;
          for (size_t r = 0; r < g->rows(); ++r) {
            x.push_back(g->number(r, cx));
            y.push_back(g->number(r, cy));
            frame.push_back(cf >= 0 ? g->number(r, cf) : double(r + 1));
          }
          e["shift_x"] = x;
          e["shift_y"] = y;
          e["frame"] = frame;
        }
      }
      return e;
    }
    json rows = json::array();
    for (size_t r = 0; r < m.names.size(); ++r) rows.push_back(row(r));
    return {{"source", rel(m.list)}, {"micrographs", rows}};
  }

  // /api/selection?dir=D: a Select job on a classification's ROOT_itNNN_data.star (its --i): per class of
  // that iteration the particles in the input and in the job's output (--o), whether it was kept, and
  // select --auto's scores (OUT_class_scores.star) when there are some.
  json selection(const httplib::Request& req) const {
    const fs::path d = job_dir(req);
    const auto o = job_options(d);
    const auto in_opt = o.find("i"), out_opt = o.find("o");
    if (in_opt == o.end() || out_opt == o.end()) throw HttpError(404, "not a selection (no --i and --o among the job's options)");
    const fs::path in = inside(in_opt->second);
    const std::string name = in.filename().string();
    const size_t at = name.rfind("_it");
    if (at == std::string::npos || name.size() != at + 16 || name.compare(at + 6, 10, "_data.star") != 0 ||
        !std::all_of(name.begin() + long(at) + 3, name.begin() + long(at) + 6, ::isdigit) ||
        !is_job_name(in.parent_path().filename().string()))
      throw HttpError(404, "the input is not a classification's ROOT_itNNN_data.star: " + in_opt->second);
    const int iteration = std::stoi(name.substr(at + 3, 3));
    auto counts = [&](const fs::path& f) {
      const star::Document doc = star::read(f.string());
      const star::Block& b = block(doc, "particles", f);
      const int c = b.require_column("rlnClassNumber");
      std::map<long, long> n;
      for (size_t r = 0; r < b.rows(); ++r) n[b.integer(r, c)] += 1;
      return n;
    };
    const std::map<long, long> before = counts(in);
    const fs::path out = d / fs::path(out_opt->second).filename();
    if (fs::is_symlink(out) || !fs::is_regular_file(out)) throw HttpError(404, "no output yet: " + rel(out));
    const std::map<long, long> after = counts(out);
    std::map<long, json> scores;
    const fs::path sf = d / (fs::path(out_opt->second).stem().string() + "_class_scores.star");
    if (!fs::is_symlink(sf) && fs::is_regular_file(sf)) {
      const star::Document doc = star::read(sf.string());
      const star::Block& b = block(doc, "class_scores", sf);
      const int ck = b.require_column("rlnClassNumber");
      for (size_t r = 0; r < b.rows(); ++r) {
        json e;
        for (const auto& [label, key] : {std::pair{"regulaClassContrastRatio", "contrast_ratio"},
                                         std::pair{"regulaClassEdgeRatio", "edge_ratio"}})
          if (const int c = b.column(label); c >= 0) e[key] = b.number(r, c);
        scores[b.integer(r, ck)] = e;
      }
    }
    long K = before.empty() ? 0 : before.rbegin()->first;
    json classes = json::array();
    long total = 0, kept_total = 0;
    for (long k = 1; k <= K; ++k) {
      const long n = before.count(k) ? before.at(k) : 0, kept = after.count(k) ? after.at(k) : 0;
      json e{{"class", k}, {"count", n}, {"kept_count", kept}, {"kept", kept > 0}};
      if (scores.count(k)) e.update(scores.at(k));
      classes.push_back(e);
      total += n;
      kept_total += kept;
    }
    return {{"classification", rel(in.parent_path()) + "/"}, {"iteration", iteration}, {"auto", !scores.empty()},
            {"classes", classes}, {"total", total}, {"kept", kept_total}, {"output", rel(out)}};
  }

  // Micrograph I of the job as a PNG of at most size x size pixels (micrograph/preview.hpp): binned,
  // low-pass filtered at `lowpass` Å, contrast-stretched between the 1st and 99th percentiles.
  std::string micrograph(const httplib::Request& req, httplib::Response& res) const {
    const fs::path d = job_dir(req);
    // A picking job's micrographs, else a MotionCorr or CtfFind job's.
    PickSet s;
    try {
      s = pick_set(d);
    } catch (const HttpError& e) {
      if (e.status != 404) throw;
      MicList m = mic_list(d);
      s.kind = "micrographs";
      s.options = job_options(d);
      for (auto& n : m.names) s.micrographs.push_back({n, "", {}});
    }
    const size_t i = micrograph_index(req, s);
    PreviewOptions o;
    o.max_size = int(std::clamp(int_param(req, "size", 1024), 64L, 2048L));
    o.lowpass = number_param(req, "lowpass", 20);
    if (o.lowpass < 0) throw HttpError(400, "bad parameter lowpass: must be >= 0 (Å; 0: none)");
    const fs::path f = inside(s.micrographs[i].name);
    if (!fs::is_regular_file(f)) throw HttpError(404, "not a file: " + s.micrographs[i].name);
    mrc::StackReader r(f.string());
    if (r.count() != 1) throw HttpError(422, fmt::format("{}: {} sections, not a micrograph", s.micrographs[i].name, r.count()));
    Grid<float> mic(r.nx(), r.ny());
    r.read_into(0, mic.data());
    o.angpix = r.header().pixel_size() > 0 ? r.header().pixel_size() : option_number(s.options, "angpix", 0);
    const Preview p = micrograph_preview(mic, o);
    res.set_header("X-Micrograph-Width", std::to_string(mic.nx()));
    res.set_header("X-Micrograph-Height", std::to_string(mic.ny()));
    res.set_header("X-Bin", std::to_string(p.bin));
    res.set_header("X-Pixel-Size", fmt::format("{}", o.angpix));
    return encode_png_grey(p.grey, p.width, p.height);
  }

  // Wraps a handler: HttpError -> its status, InputError (a malformed file) -> 422, others -> 500.
  template <class F>
  httplib::Server::Handler guard(F f) {
    return [f](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const HttpError& e) {
        json_reply(res, {{"error", e.what()}}, e.status);
      } catch (const InputError& e) {
        json_reply(res, {{"error", e.what()}}, 422);
      } catch (const std::invalid_argument& e) {
        json_reply(res, {{"error", std::string("bad parameter: ") + e.what()}}, 400);
      } catch (const std::exception& e) {
        json_reply(res, {{"error", e.what()}}, 500);
      }
    };
  }

  void routes() {
    http.Get("/api/jobs", guard([this](const httplib::Request&, httplib::Response& res) { json_reply(res, jobs()); }));
    http.Get("/api/job", guard([this](const httplib::Request& q, httplib::Response& res) { json_reply(res, job(q)); }));
    http.Get("/api/class2d",
             guard([this](const httplib::Request& q, httplib::Response& res) { json_reply(res, class2d(q)); }));
    http.Get("/api/class_image", guard([this](const httplib::Request& q, httplib::Response& res) {
               res.set_content(class_image(q), "image/png");
             }));
    http.Get("/api/map", guard([this](const httplib::Request& q, httplib::Response& res) {
               int box = 0;
               double apix = 0;
               std::string data = map(q, box, apix);
               res.set_header("X-Box-Size", std::to_string(box));
               res.set_header("X-Pixel-Size", fmt::format("{}", apix));
               res.set_content(std::move(data), "application/octet-stream");
             }));
    http.Get("/api/graph", guard([this](const httplib::Request&, httplib::Response& res) { json_reply(res, graph()); }));
    http.Get("/api/selection", guard([this](const httplib::Request& q, httplib::Response& res) {
               json_reply(res, selection(q));
             }));
    http.Get("/api/mics", guard([this](const httplib::Request& q, httplib::Response& res) { json_reply(res, mics(q)); }));
    http.Get("/api/picks", guard([this](const httplib::Request& q, httplib::Response& res) { json_reply(res, picks(q)); }));
    http.Get("/api/micrograph", guard([this](const httplib::Request& q, httplib::Response& res) {
               std::string png = micrograph(q, res);
               res.set_content(std::move(png), "image/png");
             }));
    http.Get("/api/particles", guard([this](const httplib::Request& q, httplib::Response& res) {
               std::string png = particles(q, res);
               res.set_content(std::move(png), "image/png");
             }));
    http.Get("/api/fsc", guard([this](const httplib::Request& q, httplib::Response& res) { json_reply(res, fsc(q)); }));
    http.Get("/api/iterations", guard([this](const httplib::Request& q, httplib::Response& res) {
               json_reply(res, iteration_resolutions(q));
             }));
    http.Get(R"(/files/(.+))", guard([this](const httplib::Request& q, httplib::Response& res) {
               const fs::path p = inside(q.matches[1].str());
               if (!fs::is_regular_file(p)) throw HttpError(404, "not a file");
               std::ifstream f(p, std::ios::binary);
               std::stringstream ss;
               ss << f.rdbuf();
               res.set_header("Content-Disposition", "attachment; filename=\"" + p.filename().string() + "\"");
               res.set_content(ss.str(), mime_of(p.string()));
             }));
    http.Get(R"(/(.*))", guard([](const httplib::Request& q, httplib::Response& res) {
               std::string path = q.matches[1].str();
               if (path.empty()) path = "index.html";
               const Asset* a = find_asset(path);
               if (!a) throw HttpError(404, "no such page: /" + path);
               res.set_content(std::string(reinterpret_cast<const char*>(a->data), a->size), a->mime);
             }));
  }
};

Server::Server(ServeOptions opt) : impl_(std::make_unique<Impl>()) {
  impl_->opt = std::move(opt);
  // Never creates the directory: a mistyped one is an error, not an empty project.
  std::error_code ec;
  const std::string& dir = impl_->opt.project;
  const auto kind = fs::status(dir, ec).type();
  if (kind == fs::file_type::not_found) input_error("{}: no such project directory", dir);
  if (ec) input_error("{}: cannot open the project directory: {}", dir, ec.message());
  if (kind != fs::file_type::directory) input_error("{}: not a directory (expected a project directory)", dir);
  impl_->root = fs::canonical(dir, ec);
  if (ec) input_error("{}: cannot open the project directory: {}", dir, ec.message());
  impl_->routes();
}

Server::~Server() = default;

int Server::bind() {
  Impl& m = *impl_;
  if (m.opt.port == 0) m.port = m.http.bind_to_any_port(m.opt.host);
  else m.port = m.http.bind_to_port(m.opt.host, m.opt.port) ? m.opt.port : -1;
  if (m.port < 0) input_error("--port {}: cannot listen on {}:{} (in use?)", m.opt.port, m.opt.host, m.opt.port);
  return m.port;
}

std::string Server::project() const { return impl_->root.string(); }

void Server::listen() { impl_->http.listen_after_bind(); }
void Server::stop() { impl_->http.stop(); }

}  // namespace regula::serve

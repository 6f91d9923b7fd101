#include "regula/model/particles.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>
#include <tuple>

#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/io/mrc.hpp"

namespace regula {

namespace fs = std::filesystem;

namespace {

struct DoubleField {
  const char* label;
  std::vector<double> ParticleTable::*member;
  double fallback;
  bool ctf;  // a CTF value: read from data_optics when the particles do not have it (as RELION)
  std::vector<double> ParticleTable::*same_as = nullptr;  // fallback: this column (defocus V = U)
};

// Loaded in this order (defocus U before V).
const DoubleField kDoubleFields[] = {
    {"rlnDefocusU", &ParticleTable::defocus_u, 0.0, true},
    {"rlnDefocusV", &ParticleTable::defocus_v, 0.0, true, &ParticleTable::defocus_u},
    {"rlnDefocusAngle", &ParticleTable::defocus_angle, 0.0, true},
    {"rlnPhaseShift", &ParticleTable::phase_shift, 0.0, true},
    {"rlnCtfBfactor", &ParticleTable::ctf_bfactor, 0.0, true},
    {"rlnCtfScalefactor", &ParticleTable::ctf_scale, 1.0, true},
    {"rlnAngleRot", &ParticleTable::rot, 0.0, false},
    {"rlnAngleTilt", &ParticleTable::tilt, 0.0, false},
    {"rlnAnglePsi", &ParticleTable::psi, 0.0, false},
};

struct IntField {
  const char* label;
  std::vector<int> ParticleTable::*member;
};

const IntField kIntFields[] = {
    {"rlnClassNumber", &ParticleTable::class_number},
    {"rlnRandomSubset", &ParticleTable::random_subset},
};

// RELION 3.0 per-particle optics columns, moved to data_optics on conversion.
const char* const k30OpticsLabels[] = {"rlnVoltage",           "rlnSphericalAberration",
                                       "rlnAmplitudeContrast", "rlnMagnification",
                                       "rlnDetectorPixelSize", "rlnImagePixelSize",
                                       "rlnImageDimensionality", "rlnImageSize",
                                       "rlnBeamTiltX",         "rlnBeamTiltY"};

// "[c0,c1,...]" (RELION's vector text; brackets optional, no spaces inside a STAR value).
std::vector<double> parse_vector(const star::Table& t, size_t row, int col) {
  std::string_view v = t.value(row, col);
  if (!v.empty() && v.front() == '[') v.remove_prefix(1);
  if (!v.empty() && v.back() == ']') v.remove_suffix(1);
  std::vector<double> out;
  while (!v.empty()) {
    const size_t comma = v.find(',');
    std::string_view item = v.substr(0, comma);
    double x = 0;
    auto r = std::from_chars(item.data(), item.data() + item.size(), x);
    if (r.ec != std::errc() || r.ptr != item.data() + item.size() || !std::isfinite(x))
      input_error("{}: _{}: expected a list of numbers like [0.1,-0.2,0], got '{}'", t.where(row), t.label(col),
                  t.value(row, col));
    out.push_back(x);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return out;
}

std::string format_vector(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{}", i ? "," : "", v[i]);
  return s + "]";
}

double finite_number(const star::Table& t, size_t row, int col) {
  const double x = t.number(row, col);
  if (!std::isfinite(x)) input_error("{}: _{} must be a finite number, got '{}'", t.where(row), t.label(col), t.value(row, col));
  return x;
}

bool to_bool(const star::Table& t, size_t row, int col) {
  const long v = t.integer(row, col);
  if (v != 0 && v != 1) input_error("{}: _{} must be 0 or 1, got '{}'", t.where(row), t.label(col), t.value(row, col));
  return v == 1;
}

int to_int(const star::Table& t, size_t row, int col) {
  long v = t.integer(row, col);
  if (v < -2147483647L || v > 2147483647L)
    input_error("{}: _{}: integer {} out of range", t.where(row), t.label(col), v);
  return int(v);
}

// Interns strings of a column into (index per row, unique values).
void intern_column(const star::Table& t, int col, std::vector<uint32_t>& index,
                   std::vector<std::string>& unique) {
  size_t n = t.rows();
  index.assign(n, 0);
  unique.clear();
  if (col < 0) {
    unique.emplace_back();
    return;
  }
  std::unordered_map<std::string_view, uint32_t> seen;
  std::string_view last;
  uint32_t last_id = 0;
  bool have_last = false;
  for (size_t r = 0; r < n; ++r) {
    std::string_view v = t.value(r, col);
    if (have_last && v == last) {
      index[r] = last_id;
      continue;
    }
    auto [it, inserted] = seen.emplace(v, uint32_t(unique.size()));
    if (inserted) unique.emplace_back(v);
    index[r] = it->second;
    last = v;
    last_id = it->second;
    have_last = true;
  }
}

}  // namespace

bool OpticsGroup::has_aberrations() const {
  auto nonzero = [](const std::vector<double>& v) { return std::any_of(v.begin(), v.end(), [](double x) { return x != 0; }); };
  return beam_tilt_x != 0 || beam_tilt_y != 0 || nonzero(odd_zernike) || nonzero(even_zernike);
}

// ------------------------------------------------------------------ image names

ImageRef parse_image_name(std::string_view name, std::string_view where) {
  std::string at = where.empty() ? std::string() : std::string(where) + ": ";
  if (name.empty()) input_error("{}empty image name", at);
  ImageRef ref;
  size_t a = name.find('@');
  if (a == std::string_view::npos) {
    ref.path = std::string(name);
    return ref;
  }
  std::string_view num = name.substr(0, a);
  std::string_view path = name.substr(a + 1);
  bool digits = !num.empty() && std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits) input_error("{}image name '{}': expected N@stack with N a positive integer", at, name);
  long idx = 0;
  auto r = std::from_chars(num.data(), num.data() + num.size(), idx);
  if (r.ec != std::errc() || idx < 1 || idx > 2147483647L)
    input_error("{}image name '{}': image number must be from 1 to 2147483647", at, name);
  if (path.empty()) input_error("{}image name '{}': no stack file after '@'", at, name);
  ref.index = idx;
  ref.path = std::string(path);
  return ref;
}

std::string resolve_image_path(std::string_view path, const std::string& base_dir) {
  fs::path p{std::string(path)};
  if (p.is_absolute()) return p.lexically_normal().string();
  std::error_code ec;
  fs::path base = base_dir.empty() ? fs::current_path(ec) : fs::path(base_dir);
  if (base.is_relative()) base = fs::current_path(ec) / base;
  return (base / p).lexically_normal().string();
}

// ------------------------------------------------------------------ ParticleTable

ParticleTable ParticleTable::read(const std::string& path, const ParticleReadOptions& opt) {
  return from_document(star::read(path), opt);
}

ParticleTable ParticleTable::from_document(star::Document doc, const ParticleReadOptions& opt) {
  ParticleTable t;
  t.doc_ = std::move(doc);
  const std::string& src = t.doc_.source.empty() ? std::string("STAR document") : t.doc_.source;
  // The particles block: "particles", else the first loop with _rlnImageName.
  int pidx = -1;
  for (size_t b = 0; b < t.doc_.blocks.size(); ++b)
    if (t.doc_.blocks[b].name == "particles") pidx = int(b);
  if (pidx < 0)
    for (size_t b = 0; b < t.doc_.blocks.size(); ++b)
      if (t.doc_.blocks[b].is_loop() && t.doc_.blocks[b].has("rlnImageName")) {
        pidx = int(b);
        break;
      }
  if (pidx < 0) {
    std::string found;
    for (const auto& b : t.doc_.blocks) found += (found.empty() ? "data_" : ", data_") + b.name;
    input_error("{}: no particle table (block data_particles or a loop with _rlnImageName; found: {})",
                src, found.empty() ? "no blocks" : found);
  }
  t.particles_ = size_t(pidx);
  if (!t.particles_block().is_loop())
    input_error("{}: block data_{} is not a loop_", src, t.particles_block().name);

  const star::Block& pb = t.particles_block();
  for (const auto& f : kDoubleFields)
    if (pb.has(f.label)) t.present_.emplace_back(f.label);
  for (const auto& f : kIntFields)
    if (pb.has(f.label)) t.present_.emplace_back(f.label);
  if (pb.has("rlnOriginX") || pb.has("rlnOriginXAngst") || pb.has("rlnOriginY") ||
      pb.has("rlnOriginYAngst"))
    t.present_.emplace_back("origin");

  if (t.doc_.find("optics") != nullptr) t.load_optics_31(opt);
  else t.convert_30(opt);
  t.load_columns(opt);
  return t;
}

void ParticleTable::load_optics_31(const ParticleReadOptions& opt) {
  const star::Block& ob = *doc_.find("optics");
  const std::string& src = doc_.source;
  if (ob.rows() == 0 || ob.columns() == 0) input_error("{}: data_optics has no optics groups", src);
  int c_num = ob.column("rlnOpticsGroup"), c_name = ob.column("rlnOpticsGroupName");
  int c_pix = ob.column("rlnImagePixelSize"), c_size = ob.column("rlnImageSize");
  int c_mag = ob.column("rlnMagnification"), c_det = ob.column("rlnDetectorPixelSize");
  int c_volt = ob.column("rlnVoltage"), c_cs = ob.column("rlnSphericalAberration");
  int c_ac = ob.column("rlnAmplitudeContrast"), c_dim = ob.column("rlnImageDimensionality");
  int c_pre = ob.column("rlnCtfDataAreCtfPremultiplied"), c_flip = ob.column("rlnCtfDataArePhaseFlipped");
  int c_btx = ob.column("rlnBeamTiltX"), c_bty = ob.column("rlnBeamTiltY");
  int c_odd = ob.column("rlnOddZernike"), c_even = ob.column("rlnEvenZernike");
  const int c_mm[4] = {ob.column("rlnMagMat00"), ob.column("rlnMagMat01"), ob.column("rlnMagMat10"),
                        ob.column("rlnMagMat11")};
  optics.clear();
  for (size_t r = 0; r < ob.rows(); ++r) {
    OpticsGroup g;
    g.number = c_num >= 0 ? to_int(ob, r, c_num) : int(r + 1);
    g.name = c_name >= 0 ? std::string(ob.value(r, c_name)) : "opticsGroup" + std::to_string(g.number);
    if (c_pix >= 0) g.pixel_size = ob.number(r, c_pix);
    else if (c_mag >= 0 && c_det >= 0 && ob.number(r, c_mag) > 0)
      g.pixel_size = ob.number(r, c_det) * 1e4 / ob.number(r, c_mag);
    if (!(g.pixel_size > 0)) g.pixel_size = opt.angpix > 0 ? opt.angpix : 0.0;
    if (c_size >= 0) g.image_size = to_int(ob, r, c_size);
    if (c_volt >= 0) g.voltage = ob.number(r, c_volt);
    if (c_cs >= 0) g.cs = ob.number(r, c_cs);
    if (c_ac >= 0) g.amplitude_contrast = ob.number(r, c_ac);
    if (c_dim >= 0) g.dimensionality = to_int(ob, r, c_dim);
    if (c_pre >= 0) g.ctf_premultiplied = to_bool(ob, r, c_pre);
    if (c_flip >= 0) g.ctf_phase_flipped = to_bool(ob, r, c_flip);
    if (c_btx >= 0) g.beam_tilt_x = finite_number(ob, r, c_btx);
    if (c_bty >= 0) g.beam_tilt_y = finite_number(ob, r, c_bty);
    if (c_odd >= 0) g.odd_zernike = parse_vector(ob, r, c_odd);
    if (c_even >= 0) g.even_zernike = parse_vector(ob, r, c_even);
    // A missing element keeps its identity value (as RELION).
    for (int k = 0; k < 4; ++k)
      if (c_mm[k] >= 0) g.mag_matrix[size_t(k)] = finite_number(ob, r, c_mm[k]);
    for (const auto& o : optics)
      if (o.number == g.number)
        input_error("{}: optics group {} appears twice in data_optics", ob.where(r), g.number);
    optics.push_back(std::move(g));
  }
  // Particle -> optics group index.
  const star::Block& pb = particles_block();
  size_t n = pb.rows();
  optics_index.assign(n, 0);
  int c_og = pb.column("rlnOpticsGroup");
  if (c_og < 0) {
    if (optics.size() != 1)
      input_error("{}: data_particles has no _rlnOpticsGroup but data_optics has {} groups", src,
                  optics.size());
    return;
  }
  int last_num = optics[0].number, last_idx = 0;
  for (size_t r = 0; r < n; ++r) {
    int num = to_int(pb, r, c_og);
    if (num != last_num) {
      auto it = std::find_if(optics.begin(), optics.end(), [&](const OpticsGroup& g) { return g.number == num; });
      if (it == optics.end())
        input_error("{}: _rlnOpticsGroup {} is not in data_optics (particle row {})", pb.where(r),
                    num, r + 1);
      last_num = num;
      last_idx = int(it - optics.begin());
    }
    optics_index[r] = last_idx;
  }
}

void ParticleTable::convert_30(const ParticleReadOptions& opt) {
  converted_ = true;
  star::Block& pb = particles_block();
  size_t n = pb.rows();
  int c_volt = pb.column("rlnVoltage"), c_cs = pb.column("rlnSphericalAberration");
  int c_ac = pb.column("rlnAmplitudeContrast"), c_mag = pb.column("rlnMagnification");
  int c_det = pb.column("rlnDetectorPixelSize"), c_pix = pb.column("rlnImagePixelSize");
  int c_og = pb.column("rlnOpticsGroup"), c_dim = pb.column("rlnImageDimensionality");
  int c_size = pb.column("rlnImageSize");
  int c_btx = pb.column("rlnBeamTiltX"), c_bty = pb.column("rlnBeamTiltY");
  auto group_of_row = [&](size_t r) {
    OpticsGroup g;
    if (c_btx >= 0) g.beam_tilt_x = finite_number(pb, r, c_btx);
    if (c_bty >= 0) g.beam_tilt_y = finite_number(pb, r, c_bty);
    if (c_volt >= 0) g.voltage = pb.number(r, c_volt);
    if (c_cs >= 0) g.cs = pb.number(r, c_cs);
    if (c_ac >= 0) g.amplitude_contrast = pb.number(r, c_ac);
    if (c_pix >= 0) g.pixel_size = pb.number(r, c_pix);
    else if (c_mag >= 0 && c_det >= 0) {
      double mag = pb.number(r, c_mag);
      if (!(mag > 0)) input_error("{}: _rlnMagnification must be positive (particle row {})", pb.where(r), r + 1);
      g.pixel_size = pb.number(r, c_det) * 1e4 / mag;
    }
    if (!(g.pixel_size > 0)) g.pixel_size = opt.angpix > 0 ? opt.angpix : 0.0;
    if (c_dim >= 0) g.dimensionality = to_int(pb, r, c_dim);
    if (c_size >= 0) g.image_size = to_int(pb, r, c_size);
    if (!std::isfinite(g.voltage) || !std::isfinite(g.cs) || !std::isfinite(g.amplitude_contrast) ||
        !std::isfinite(g.pixel_size))
      input_error("{}: voltage, Cs, amplitude contrast and pixel size must be finite numbers "
                  "(particle row {})", pb.where(r), r + 1);
    return g;
  };
  optics.clear();
  optics_index.assign(n, 0);
  if (c_og >= 0) {
    std::map<int, int> index;
    for (size_t r = 0; r < n; ++r) {
      int num = to_int(pb, r, c_og);
      auto it = index.find(num);
      if (it == index.end()) {
        OpticsGroup g = group_of_row(r);
        g.number = num;
        it = index.emplace(num, int(optics.size())).first;
        optics.push_back(g);
      }
      optics_index[r] = it->second;
    }
  } else {
    using Key = std::tuple<double, double, double, double, int, int, double, double>;
    std::map<Key, int> index;
    for (size_t r = 0; r < n; ++r) {
      OpticsGroup g = group_of_row(r);
      Key k{g.voltage, g.cs, g.amplitude_contrast, g.pixel_size, g.dimensionality, g.image_size,
            g.beam_tilt_x, g.beam_tilt_y};
      auto it = index.find(k);
      if (it == index.end()) {
        g.number = int(optics.size()) + 1;
        it = index.emplace(k, int(optics.size())).first;
        optics.push_back(g);
      }
      optics_index[r] = it->second;
    }
  }
  if (optics.empty()) {  // no particles: one default group
    OpticsGroup g;
    g.pixel_size = opt.angpix > 0 ? opt.angpix : 0.0;
    optics.push_back(g);
  }
  for (auto& g : optics)
    if (g.name.empty()) g.name = "opticsGroup" + std::to_string(g.number);
  for (const char* lab : k30OpticsLabels) pb.remove_column(lab);
  pb.set_name("particles");
  pb.comments = {"# version 30001"};
  // The new optics block goes first.
  star::Block ob("optics", true);
  doc_.blocks.insert(doc_.blocks.begin() + long(particles_), std::move(ob));
  ++particles_;
  sync_optics();
}

// Runs independent tasks (the column conversions) on a two-thread pool for large
// tables; the error of the lowest-numbered failing task is rethrown, so the
// message does not depend on timing.
static void run_tasks(std::vector<std::function<void()>>& tasks, size_t rows) {
  std::vector<std::exception_ptr> errors(tasks.size());
  auto one = [&](size_t k, int) {
    try {
      tasks[k]();
    } catch (...) {
      errors[k] = std::current_exception();
    }
  };
  if (rows >= 100000 && std::thread::hardware_concurrency() >= 2) {
    ThreadPool pool(2);
    pool.parallel_for(0, tasks.size(), one);
  } else {
    for (size_t k = 0; k < tasks.size(); ++k) one(k, 0);
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void ParticleTable::load_columns(const ParticleReadOptions& opt) {
  const star::Block& pb = particles_block();
  size_t n = pb.rows();
  std::vector<std::function<void()>> tasks;
  tasks.emplace_back([&] { load_images(opt); });
  // CTF values missing from the particles: from data_optics if it has them (per group).
  const star::Block* ob = doc_.find("optics");
  for (const auto& f : kDoubleFields)
    if (f.ctf && !pb.has(f.label) && ob && ob->has(f.label)) {
      const int c = ob->column(f.label);
      std::vector<double> per_group(optics.size());
      for (size_t g = 0; g < optics.size() && g < ob->rows(); ++g) per_group[g] = finite_number(*ob, g, c);
      std::vector<double>& v = this->*f.member;
      v.resize(n);
      for (size_t r = 0; r < n; ++r) v[r] = per_group[size_t(optics_index[r])];
      from_optics_.emplace_back(f.label);
    }
  auto loaded = [&](const DoubleField& f) {
    return std::find(from_optics_.begin(), from_optics_.end(), f.label) != from_optics_.end();
  };
  for (const auto& f : kDoubleFields)
    if (!f.same_as && !loaded(f))
      tasks.emplace_back([&, f] {
        int c = pb.column(f.label);
        if (c >= 0) this->*f.member = pb.numbers(c);
        else (this->*f.member).assign(n, f.fallback);
      });
  for (const auto& f : kIntFields)
    tasks.emplace_back([&, f] {
      int c = pb.column(f.label);
      auto& v = this->*f.member;
      v.assign(n, 0);
      if (c >= 0)
        for (size_t r = 0; r < n; ++r) v[r] = to_int(pb, r, c);
    });
  // Origins in Å; pixels converted with the optics group's pixel size.
  static const char* const names[2][2] = {{"rlnOriginXAngst", "rlnOriginX"},
                                          {"rlnOriginYAngst", "rlnOriginY"}};
  std::vector<double>* out[2] = {&origin_x, &origin_y};
  for (int a = 0; a < 2; ++a)
    tasks.emplace_back([&, a] {
      int ca = pb.column(names[a][0]), cp = pb.column(names[a][1]);
      if (ca >= 0) {
        *out[a] = pb.numbers(ca);
      } else if (cp >= 0) {
        *out[a] = pb.numbers(cp);
        for (size_t r = 0; r < n; ++r) {
          double px = optics[size_t(optics_index[r])].pixel_size;
          if (!(px > 0) && (*out[a])[r] != 0)
            input_error("{}: _{} is in pixels but the pixel size of optics group {} is unknown "
                        "(give the pixel size, e.g. --angpix) (particle row {})",
                        pb.where(r), names[a][1], optics[size_t(optics_index[r])].number, r + 1);
          (*out[a])[r] *= px;
        }
      } else {
        out[a]->assign(n, 0.0);
      }
    });
  tasks.emplace_back([&] { intern_column(pb, pb.column("rlnMicrographName"), micrograph, micrographs); });
  run_tasks(tasks, n);
  // Columns whose default is another column (defocus V = U), after that one is loaded.
  for (const auto& f : kDoubleFields)
    if (f.same_as && !loaded(f)) {
      int c = pb.column(f.label);
      this->*f.member = c >= 0 ? pb.numbers(c) : this->*f.same_as;
    }
}

void ParticleTable::load_images(const ParticleReadOptions& opt) {
  const star::Block& pb = particles_block();
  size_t n = pb.rows();
  int c_img = pb.column("rlnImageName");
  image_index.assign(n, 0);
  image_stack.assign(n, 0);
  stacks.clear();
  if (c_img < 0) {
    stacks.emplace_back();
  } else {
    std::unordered_map<std::string_view, uint32_t> seen;
    std::string_view last_path;
    uint32_t last_id = 0;
    bool have_last = false;
    for (size_t r = 0; r < n; ++r) {
      std::string_view name = pb.value(r, c_img);
      std::string_view path = name;
      long idx = 0;
      size_t a = name.find('@');
      if (a != std::string_view::npos) {
        // Fast path for "N@path"; parse_image_name gives the error message.
        auto res = std::from_chars(name.data(), name.data() + a, idx);
        if (res.ec != std::errc() || res.ptr != name.data() + a || idx < 1 || a + 1 == name.size() ||
            idx > 2147483647L)
          parse_image_name(name, fmt::format("{} (particle row {})", pb.where(r), r + 1));
        path = name.substr(a + 1);
      } else if (name.empty()) {
        parse_image_name(name, fmt::format("{} (particle row {})", pb.where(r), r + 1));
      }
      image_index[r] = idx;
      if (!(have_last && path == last_path)) {
        auto [it, inserted] = seen.emplace(path, uint32_t(stacks.size()));
        if (inserted) stacks.emplace_back(path);
        last_path = path;
        last_id = it->second;
        have_last = true;
      }
      image_stack[r] = last_id;
    }
  }
  stacks_resolved.clear();
  stacks_resolved.reserve(stacks.size());
  for (const auto& s : stacks)
    stacks_resolved.push_back(s.empty() ? std::string() : resolve_image_path(s, opt.image_base));
  intern_column(pb, pb.column("rlnMicrographName"), micrograph, micrographs);
}

void ParticleTable::sync_optics() {
  star::Block* ob = doc_.find("optics");
  if (!ob) {
    doc_.blocks.insert(doc_.blocks.begin() + long(particles_), star::Block("optics", true));
    ++particles_;
    ob = doc_.find("optics");
  }
  size_t g = optics.size();
  if (ob->rows() > g) {
    std::vector<size_t> keep(g);
    for (size_t i = 0; i < g; ++i) keep[i] = i;
    ob->select_rows(keep);
  }
  while (ob->rows() < g) {
    size_t r = ob->add_row();
    if (r > 0)
      for (int c = 0; c < int(ob->columns()); ++c) ob->set_value(r, c, ob->value(0, c));
  }
  auto col_d = [&](const char* label, auto get, bool always) {
    std::vector<double> v(g);
    bool any = false;
    for (size_t i = 0; i < g; ++i) {
      v[i] = get(optics[i]);
      any = any || v[i] != 0;
    }
    if (always || any || ob->has(label)) ob->set_column(label, v);
  };
  auto col_i = [&](const char* label, auto get, bool always) {
    std::vector<int> v(g);
    bool any = false;
    for (size_t i = 0; i < g; ++i) {
      v[i] = get(optics[i]);
      any = any || v[i] != 0;
    }
    if (always || any || ob->has(label)) ob->set_column(label, v);
  };
  std::vector<std::string> names(g);
  for (size_t i = 0; i < g; ++i)
    names[i] = optics[i].name.empty() ? "opticsGroup" + std::to_string(optics[i].number) : optics[i].name;
  ob->set_column("rlnOpticsGroupName", names);
  col_i("rlnOpticsGroup", [](const OpticsGroup& o) { return o.number; }, true);
  col_d("rlnVoltage", [](const OpticsGroup& o) { return o.voltage; }, false);
  col_d("rlnSphericalAberration", [](const OpticsGroup& o) { return o.cs; }, false);
  col_d("rlnAmplitudeContrast", [](const OpticsGroup& o) { return o.amplitude_contrast; }, false);
  col_d("rlnImagePixelSize", [](const OpticsGroup& o) { return o.pixel_size; }, false);
  col_i("rlnImageSize", [](const OpticsGroup& o) { return o.image_size; }, false);
  col_i("rlnImageDimensionality", [](const OpticsGroup& o) { return o.dimensionality; }, true);
  col_i("rlnCtfDataAreCtfPremultiplied", [](const OpticsGroup& o) { return int(o.ctf_premultiplied); }, false);
  col_i("rlnCtfDataArePhaseFlipped", [](const OpticsGroup& o) { return int(o.ctf_phase_flipped); }, false);
  col_d("rlnBeamTiltX", [](const OpticsGroup& o) { return o.beam_tilt_x; }, false);
  col_d("rlnBeamTiltY", [](const OpticsGroup& o) { return o.beam_tilt_y; }, false);
  auto col_v = [&](const char* label, std::vector<double> OpticsGroup::*member) {
    std::vector<std::string> v(g);
    bool any = false;
    for (size_t i = 0; i < g; ++i) {
      v[i] = format_vector(optics[i].*member);
      any = any || !(optics[i].*member).empty();
    }
    if (any || ob->has(label)) ob->set_column(label, v);
  };
  col_v("rlnOddZernike", &OpticsGroup::odd_zernike);
  col_v("rlnEvenZernike", &OpticsGroup::even_zernike);
  const bool any_mag = std::any_of(optics.begin(), optics.end(),
                                   [](const OpticsGroup& o) { return o.has_anisotropic_magnification(); });
  static const char* const mag_labels[4] = {"rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"};
  for (size_t k = 0; k < 4; ++k)
    if (any_mag || ob->has(mag_labels[k])) {
      std::vector<double> v(g);
      for (size_t i = 0; i < g; ++i) v[i] = optics[i].mag_matrix[k];
      ob->set_column(mag_labels[k], v);
    }
}

const star::Document& ParticleTable::sync() {
  size_t n = size();
  star::Block& pb = particles_block();
  auto check = [&](size_t m, const char* what) {
    if (m != n || pb.rows() != n)
      runtime_error("ParticleTable: {} has {} values, rot has {}, the STAR table {} rows", what, m, n,
                    pb.rows());
  };
  for (const auto& f : kDoubleFields) check((this->*f.member).size(), f.label);
  for (const auto& f : kIntFields) check((this->*f.member).size(), f.label);
  check(origin_x.size(), "origin_x");
  check(origin_y.size(), "origin_y");
  check(optics_index.size(), "optics_index");
  for (int idx : optics_index)
    if (idx < 0 || size_t(idx) >= optics.size())
      runtime_error("ParticleTable: optics index {} but {} optics groups", idx, optics.size());
  auto present = [&](const char* label) {
    return std::find(present_.begin(), present_.end(), label) != present_.end();
  };
  sync_optics();
  for (const auto& f : kDoubleFields) {
    if (std::find(from_optics_.begin(), from_optics_.end(), f.label) != from_optics_.end()) continue;
    const auto& v = this->*f.member;
    bool any = false;
    for (size_t i = 0; i < v.size() && !any; ++i) any = v[i] != (f.same_as ? (this->*f.same_as)[i] : f.fallback);
    if (present(f.label) || any) pb.set_column(f.label, v);
  }
  bool any_origin = std::any_of(origin_x.begin(), origin_x.end(), [](double x) { return x != 0; }) ||
                    std::any_of(origin_y.begin(), origin_y.end(), [](double x) { return x != 0; });
  if (present("origin") || any_origin) {
    pb.set_column("rlnOriginXAngst", origin_x);
    pb.set_column("rlnOriginYAngst", origin_y);
  }
  pb.remove_column("rlnOriginX");
  pb.remove_column("rlnOriginY");
  for (const auto& f : kIntFields) {
    const auto& v = this->*f.member;
    bool any = std::any_of(v.begin(), v.end(), [](int x) { return x != 0; });
    if (present(f.label) || any) pb.set_column(f.label, v);
  }
  std::vector<int> groups(n);
  for (size_t i = 0; i < n; ++i) groups[i] = optics[size_t(optics_index[i])].number;
  pb.set_column("rlnOpticsGroup", groups);
  return doc_;
}

void ParticleTable::write(const std::string& path) {
  sync();
  star::write(path, doc_);
}

Particle ParticleTable::particle(size_t i) const {
  Particle p;
  p.row = i;
  p.image = image(i);
  p.micrograph = micrographs[micrograph[i]];
  p.defocus_u = defocus_u[i];
  p.defocus_v = defocus_v[i];
  p.defocus_angle = defocus_angle[i];
  p.phase_shift = phase_shift[i];
  p.ctf_bfactor = ctf_bfactor[i];
  p.ctf_scale = ctf_scale[i];
  p.rot = rot[i];
  p.tilt = tilt[i];
  p.psi = psi[i];
  p.origin_x = origin_x[i];
  p.origin_y = origin_y[i];
  p.class_number = class_number[i];
  p.random_subset = random_subset[i];
  p.optics_index = optics_index[i];
  return p;
}

ImageRef ParticleTable::image(size_t i) const {
  return ImageRef{image_index[i], stacks_resolved[image_stack[i]]};
}

std::string_view ParticleTable::image_name(size_t i) const {
  const star::Block& pb = particles_block();
  int c = pb.column("rlnImageName");
  return c < 0 ? std::string_view() : pb.value(i, c);
}

void ParticleTable::set_image(size_t i, long index, const std::string& stack) {
  star::Block& pb = particles_block();
  int c = pb.add_column("rlnImageName");
  pb.set_value(i, c, index > 0 ? fmt::format("{:06d}@{}", index, stack) : stack);
  image_index[i] = index;
  auto it = std::find(stacks.begin(), stacks.end(), stack);
  if (it == stacks.end()) {
    stacks.push_back(stack);
    stacks_resolved.push_back(resolve_image_path(stack));
    it = stacks.end() - 1;
  }
  image_stack[i] = uint32_t(it - stacks.begin());
}

void ParticleTable::select(const std::vector<size_t>& keep) {
  sync();
  particles_block().select_rows(keep);
  auto pick = [&](auto& v) {
    std::remove_reference_t<decltype(v)> out(keep.size());
    for (size_t i = 0; i < keep.size(); ++i) out[i] = v[keep[i]];
    v.swap(out);
  };
  for (const auto& f : kDoubleFields) pick(this->*f.member);
  for (const auto& f : kIntFields) pick(this->*f.member);
  pick(origin_x);
  pick(origin_y);
  pick(optics_index);
  pick(image_index);
  pick(image_stack);
  pick(micrograph);
}

void ParticleTable::require_angles(const std::string& file, const std::string& why) const {
  for (const char* label : {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"})
    if (!particles_block().has(label)) input_error("{}: the particles table has no _{} ({})", file, label, why);
}

std::string ParticleTable::where(size_t i) const {
  const star::Block& pb = particles_block();
  size_t line = pb.line(i);
  std::string file = doc_.source.empty() ? std::string("STAR document") : doc_.source;
  if (line) return fmt::format("{}:{} (particle row {})", file, line, i + 1);
  return fmt::format("{} (particle row {})", file, i + 1);
}

// ------------------------------------------------------------------ ParticleImages

ParticleImages::ParticleImages(const ParticleTable& table, size_t max_open)
    : table_(table), max_open_(std::max<size_t>(max_open, 1)) {}

ParticleImages::~ParticleImages() = default;

mrc::StackReader& ParticleImages::open(size_t i) {
  uint32_t s = table_.image_stack[i];
  auto it = open_.find(s);
  if (it != open_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.second);
    return *it->second.first;
  }
  const std::string& path = table_.stacks_resolved[s];
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    std::string hint;
    fs::path star_dir = fs::path(table_.source()).parent_path();
    const std::string& name = table_.stacks[s];
    if (fs::path(name).is_relative() && !star_dir.empty() && fs::exists(star_dir / name, ec))
      hint = fmt::format("; it exists relative to the STAR file's directory: relative image names are "
                         "resolved against the current directory, as RELION does, so run from {}",
                         star_dir.string());
    input_error("{}: image stack {} not found (resolved as {}){}", table_.where(i), name, path, hint);
  }
  if (open_.size() >= max_open_) {
    open_.erase(lru_.back());
    lru_.pop_back();
  }
  auto reader = std::make_unique<mrc::StackReader>(path);
  lru_.push_front(s);
  auto& slot = open_[s];
  slot.first = std::move(reader);
  slot.second = lru_.begin();
  return *slot.first;
}

Grid<float> ParticleImages::read(size_t i) {
  if (i >= table_.size()) runtime_error("ParticleImages: particle {} of {}", i, table_.size());
  uint32_t s = table_.image_stack[i];
  if (table_.stacks[s].empty()) input_error("{}: no _rlnImageName", table_.where(i));
  long idx = table_.image_index[i];
  if (idx == 0) {
    const std::string& path = table_.stacks_resolved[s];
    std::error_code ec;
    if (!fs::exists(path, ec))
      input_error("{}: image file {} not found (resolved as {})", table_.where(i), table_.stacks[s], path);
    return mrc::read(path);
  }
  mrc::StackReader& r = open(i);
  if (idx > r.count())
    input_error("{}: image {} requested but stack {} has {} images (particle row {} of {})",
                table_.where(i), idx, table_.stacks[s], r.count(), i + 1, table_.source());
  return r.read(int(idx - 1));
}

}  // namespace regula

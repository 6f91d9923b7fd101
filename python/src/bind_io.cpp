// Files: MRC (io/mrc.hpp), STAR (io/star.hpp) and particle tables (model/particles.hpp).
#include <charconv>
#include <cmath>

#include <fmt/format.h>

#include "common.hpp"
#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace regula::python {
namespace {

py::dict header_dict(const mrc::Header& h) {
  py::dict d;
  d["nx"] = h.size_x();
  d["ny"] = h.size_y();
  d["nz"] = h.size_z();
  d["mode"] = h.mode;
  d["pixel_size"] = h.pixel_size();  // Å along x (0 = unset)
  const auto v = h.voxel_size();
  d["voxel_size"] = py::make_tuple(v[0], v[1], v[2]);  // Å along x, y, z
  d["origin"] = py::make_tuple(h.origin[0], h.origin[1], h.origin[2]);  // Å
  d["start"] = py::make_tuple(h.nxstart, h.nystart, h.nzstart);
  d["cell"] = py::make_tuple(h.cell[0], h.cell[1], h.cell[2]);  // Å
  d["axes"] = py::make_tuple(h.file_axes[0], h.file_axes[1], h.file_axes[2]);  // MAPC, MAPR, MAPS as in the file
  d["ispg"] = h.ispg;
  d["is_stack"] = h.is_stack();
  d["is_volume"] = h.is_volume();
  d["dmin"] = h.dmin;
  d["dmax"] = h.dmax;
  d["dmean"] = h.dmean;
  d["rms"] = h.rms;
  d["extended_header_bytes"] = h.nsymbt;
  d["big_endian"] = h.big_endian;
  py::list labels;
  for (int i = 0; i < h.nlabl && i < 10; ++i) labels.append(h.labels[size_t(i)]);
  d["labels"] = labels;
  return d;
}

// A STAR value as the most specific Python/numpy type: int for integer text, float for other
// numbers, else str.
bool is_integer_text(std::string_view t) {
  if (t.empty()) return false;
  size_t i = (t[0] == '-' || t[0] == '+') ? 1 : 0;
  if (i == t.size()) return false;
  for (; i < t.size(); ++i)
    if (t[i] < '0' || t[i] > '9') return false;
  return t.size() < 19;
}

// Loops: {column: int64 array | float64 array | list of str}. Pairs: {key: int | float | str}.
py::dict table_dict(const star::Table& b) {
  py::dict cols;
  for (int c = 0; c < int(b.columns()); ++c) {
    bool numeric = b.rows() > 0, integer = b.rows() > 0;
    for (size_t r = 0; r < b.rows() && numeric; ++r) {
      numeric = b.is_number(r, c);
      integer = integer && is_integer_text(b.value(r, c));
    }
    py::str label(b.label(c));
    if (!b.is_loop()) {
      const std::string_view t = b.rows() ? b.value(0, c) : std::string_view{};
      if (integer) cols[label] = py::int_(std::stoll(std::string(t)));
      else if (numeric) cols[label] = py::float_(b.number(0, c));
      else cols[label] = py::str(std::string(t));
    } else if (integer) {
      std::vector<int64_t> v(b.rows());
      for (size_t r = 0; r < b.rows(); ++r) v[r] = std::stoll(std::string(b.value(r, c)));
      cols[label] = vec_to_numpy(std::move(v));
    } else if (numeric) {
      cols[label] = vec_to_numpy(b.numbers(c));
    } else {
      py::list l;
      for (size_t r = 0; r < b.rows(); ++r) l.append(py::str(std::string(b.value(r, c))));
      cols[label] = l;
    }
  }
  return cols;
}

py::dict read_star(const std::string& path) {
  star::Document doc;
  {
    py::gil_scoped_release release;
    doc = star::read(path);
  }
  py::dict out;
  for (const star::Block& b : doc.blocks) out[py::str(b.name)] = table_dict(b);
  return out;
}

std::string value_text(py::handle v) {
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  if (py::isinstance<py::bool_>(v)) return v.cast<bool>() ? "1" : "0";
  // Python and numpy integers (numpy integers have __index__).
  if (py::isinstance<py::int_>(v) || py::hasattr(v, "__index__")) return std::to_string(v.cast<long long>());
  const double d = v.cast<double>();
  // float32 values (numpy.float32) are written with the digits of the float, not of its double.
  if (py::isinstance(v, py::module_::import("numpy").attr("float32"))) return fmt::format("{}", float(d));
  return fmt::format("{}", d);
}

bool is_sequence(py::handle v) {
  return !py::isinstance<py::str>(v) && !py::isinstance<py::bytes>(v) && py::hasattr(v, "__len__") &&
         py::hasattr(v, "__iter__");
}

// blocks: {name: {column: values}} (dicts or anything with .items(), e.g. a pandas.DataFrame). A
// block whose values are all scalars is written as key-value pairs; otherwise every value is a
// sequence (a loop) and all have the same length.
void write_star(const std::string& path, const py::handle& blocks) {
  star::Document doc;
  for (auto item : blocks.attr("items")()) {
    py::tuple kv = item.cast<py::tuple>();
    const std::string name = py::str(kv[0]);
    std::vector<std::pair<std::string, py::object>> cols;
    for (auto c : kv[1].attr("items")()) {
      py::tuple ckv = c.cast<py::tuple>();
      cols.emplace_back(py::str(ckv[0]), ckv[1]);
    }
    size_t n_seq = 0;
    for (const auto& [label, v] : cols) n_seq += is_sequence(v) ? 1 : 0;
    if (n_seq != 0 && n_seq != cols.size())
      throw py::value_error("write_star: block '" + name +
                            "' mixes scalars (key-value pairs) and sequences (loop columns)");
    const bool loop = n_seq > 0;
    star::Block& b = doc.add_block(name, loop);
    if (!loop) {
      for (const auto& [label, v] : cols) b.set(label, value_text(v));
      continue;
    }
    const size_t rows = py::len(cols.front().second);
    for (size_t r = 0; r < rows; ++r) b.add_row();
    for (const auto& [label, v] : cols) {
      if (py::len(v) != rows)
        throw py::value_error(fmt::format("write_star: block '{}': column '{}' has {} values, column '{}' has {}",
                                          name, label, py::len(v), cols.front().first, rows));
      std::vector<std::string> vals;
      vals.reserve(rows);
      for (auto x : v) vals.push_back(value_text(x));
      b.set_column(label, vals);
    }
  }
  py::gil_scoped_release release;
  star::write(path, doc);
}

// A particle table (RELION 3.0 or 3.1 STAR file) with typed columns as numpy arrays (copies; set a
// column by assigning an array of the same length), images read lazily, select() and write().
class Particles {
 public:
  Particles(const std::string& path, double angpix) {
    ParticleReadOptions o;
    o.angpix = angpix;
    py::gil_scoped_release release;
    table_ = ParticleTable::read(path, o);
  }
  size_t size() const { return table_.size(); }
  ParticleTable& table() { return table_; }
  py::array_t<float> image(long i) {
    const long n = long(table_.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) throw py::index_error("particle index out of range");
    if (!images_) images_ = std::make_unique<ParticleImages>(table_);
    // The GIL stays held: ParticleImages is not thread-safe, and one image is a short read.
    return to_numpy(images_->read(size_t(i)));
  }
  void select(const std::vector<long>& keep) {
    std::vector<size_t> k;
    k.reserve(keep.size());
    for (long i : keep) {
      if (i < 0) i += long(table_.size());
      if (i < 0 || size_t(i) >= table_.size()) throw py::index_error("select: particle index out of range");
      k.push_back(size_t(i));
    }
    images_.reset();
    table_.select(k);
  }
  void write(const std::string& path) {
    py::gil_scoped_release release;
    table_.write(path);
  }

 private:
  ParticleTable table_;
  std::unique_ptr<ParticleImages> images_;
};

template <class T>
void column(py::class_<Particles>& c, const char* name, std::vector<T> ParticleTable::*member, const char* doc) {
  c.def_property(
      name, [member](Particles& p) { return vec_to_numpy(p.table().*member); },
      [member, name](Particles& p, const py::array_t<T, py::array::c_style | py::array::forcecast>& a) {
        std::vector<T>& v = p.table().*member;
        if (a.ndim() != 1 || size_t(a.shape(0)) != v.size())
          throw py::value_error(fmt::format("{}: expected {} values", name, v.size()));
        std::copy(a.data(), a.data() + v.size(), v.begin());
      },
      doc);
}

}  // namespace

void bind_io(py::module_& m) {
  // ---- MRC ----
  m.def("read_mrc", [](const std::string& path) {
    mrc::Header h;
    Grid<float> g;
    {
      py::gil_scoped_release release;
      g = mrc::read(path, &h);
    }
    return py::make_tuple(to_numpy(std::move(g)), header_dict(h));
  }, py::arg("path"),
        "read_mrc(path) -> (array, header): the map, image or stack as float32, shape (nz, ny, nx) or (ny, nx),\n"
        "and the header as a dict (nx, ny, nz, mode, pixel_size and voxel_size in Å, origin in Å, ...)");
  m.def("read_mrc_header", [](const std::string& path) { return header_dict(mrc::read_header(path)); },
        py::arg("path"), "The header of an MRC file as a dict (see read_mrc), without reading the data");
  m.def("write_mrc", [](const std::string& path, const py::array& data, double angpix, bool stack,
                        std::array<float, 3> origin, bool float16) {
    mrc::WriteOptions wo;
    wo.pixel_size = angpix;
    wo.is_stack = stack;
    wo.origin = origin;
    wo.mode = float16 ? mrc::Mode::Float16 : mrc::Mode::Float32;
    Grid<float> g = from_numpy(data, "data");
    py::gil_scoped_release release;
    mrc::write(path, g, wo);
  }, py::arg("path"), py::arg("data"), py::arg("angpix") = 1.0, py::arg("stack") = false,
        py::arg("origin") = std::array<float, 3>{0, 0, 0}, py::arg("float16") = false,
        "Write a float32 (or float16) MRC file atomically: angpix in Å (0 = unset), stack=True for an image\n"
        "stack (.mrcs; else a 3D array is a volume), origin (x, y, z) in Å");

  py::class_<mrc::StackReader>(m, "StackReader",
                               "Lazy reader of an image stack: len(s), s[i] (one image, one seek), s[a:b:c]")
      .def(py::init([](const std::string& path) {
             py::gil_scoped_release release;
             return std::make_unique<mrc::StackReader>(path);
           }), py::arg("path"))
      .def("__len__", &mrc::StackReader::count)
      .def("__getitem__", [](mrc::StackReader& r, long i) {
        if (i < 0) i += r.count();
        if (i < 0 || i >= r.count()) throw py::index_error("image index out of range");
        return to_numpy(r.read(int(i)));
      }, py::arg("index"))
      .def("__getitem__", [](mrc::StackReader& r, const py::slice& s) {
        size_t start = 0, stop = 0, step = 0, len = 0;
        if (!s.compute(size_t(r.count()), &start, &stop, &step, &len)) throw py::error_already_set();
        Grid<float> out(r.nx(), r.ny(), int(len));
        for (size_t k = 0; k < len; ++k) r.read_into(int(start + k * step), out.section(int(k)));
        return to_numpy(std::move(out), true);
      }, py::arg("slice"))
      .def_property_readonly("shape", [](const mrc::StackReader& r) { return py::make_tuple(r.count(), r.ny(), r.nx()); })
      .def_property_readonly("path", &mrc::StackReader::path)
      .def_property_readonly("header", [](const mrc::StackReader& r) { return header_dict(r.header()); });

  // ---- STAR ----
  m.def("read_star", &read_star, py::arg("path"),
        "read_star(path) -> {block: {column: values}}: loop columns as int64/float64 arrays (numbers) or lists of\n"
        "str; key-value blocks as {key: int | float | str}. pandas.DataFrame(t['particles']) works.");
  m.def("write_star", &write_star, py::arg("path"), py::arg("blocks"),
        "write_star(path, {block: {column: values}}): blocks of sequences (lists, arrays, a pandas.DataFrame) are\n"
        "loops; blocks of scalars are key-value pairs. Written atomically, '# version 30001' before each block.");

  // ---- particle tables ----
  py::class_<Particles> p(m, "Particles",
                          "Particles(path, angpix=0): a RELION particle STAR file (3.0 files converted to 3.1).\n"
                          "Typed columns as numpy arrays (Å, degrees); images read lazily with image(i).");
  p.def(py::init<const std::string&, double>(), py::arg("path"), py::arg("angpix") = 0.0)
      .def("__len__", &Particles::size)
      .def("image", &Particles::image, py::arg("index"), "Image of particle i (its stack read lazily)")
      .def("image_name", [](Particles& s, size_t i) {
        if (i >= s.size()) throw py::index_error("particle index out of range");
        return std::string(s.table().image_name(i));
      }, py::arg("index"), "rlnImageName of particle i as written in the file")
      .def("select", &Particles::select, py::arg("indices"), "Keep these particles (0-based, in this order)")
      .def("write", &Particles::write, py::arg("path"), "Write the table (3.1 form, every column kept) atomically")
      .def_property_readonly("optics", [](Particles& s) {
        py::list l;
        for (const OpticsGroup& g : s.table().optics) {
          py::dict d;
          d["number"] = g.number;
          d["name"] = g.name;
          d["pixel_size"] = g.pixel_size;
          d["image_size"] = g.image_size;
          d["voltage"] = g.voltage;
          d["cs"] = g.cs;
          d["amplitude_contrast"] = g.amplitude_contrast;
          d["dimensionality"] = g.dimensionality;
          l.append(d);
        }
        return l;
      }, "Optics groups as dicts (pixel_size in Å, voltage in kV, cs in mm)")
      .def_property_readonly("blocks", [](Particles& s) {
        py::dict out;
        for (const star::Block& b : s.table().sync().blocks) out[py::str(b.name)] = table_dict(b);
        return out;
      }, "All blocks of the (synchronised) document, as read_star returns them");
  column(p, "defocus_u", &ParticleTable::defocus_u, "Å");
  column(p, "defocus_v", &ParticleTable::defocus_v, "Å");
  column(p, "defocus_angle", &ParticleTable::defocus_angle, "degrees");
  column(p, "phase_shift", &ParticleTable::phase_shift, "degrees");
  column(p, "ctf_bfactor", &ParticleTable::ctf_bfactor, "Å^2");
  column(p, "ctf_scale", &ParticleTable::ctf_scale, "rlnCtfScalefactor");
  column(p, "rot", &ParticleTable::rot, "degrees");
  column(p, "tilt", &ParticleTable::tilt, "degrees");
  column(p, "psi", &ParticleTable::psi, "degrees");
  column(p, "origin_x", &ParticleTable::origin_x, "rlnOriginXAngst, Å");
  column(p, "origin_y", &ParticleTable::origin_y, "rlnOriginYAngst, Å");
  column(p, "class_number", &ParticleTable::class_number, "rlnClassNumber (0 = absent)");
  column(p, "random_subset", &ParticleTable::random_subset, "rlnRandomSubset (0 = unassigned)");
  column(p, "optics_index", &ParticleTable::optics_index, "0-based index into optics");
  column(p, "image_index", &ParticleTable::image_index, "N of N@stack (0 = whole file)");
}

}  // namespace regula::python

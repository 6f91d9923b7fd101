// The `regula` Python module: a thin pybind11 layer over the library (docs/python.md).
//
// Arrays are numpy arrays in C order with x fastest, as mrcfile returns them: a volume has shape
// (nz, ny, nx), an image (ny, nx). Arrays returned from the library own the library's buffer (no
// copy); arrays passed in are converted to float32 C-contiguous (a copy only when they are not).
// Jobs take keyword arguments named as the fields of the library's option structs (the same as the
// command line's options, e.g. refine3d(input=..., out_root=..., reference=..., ctf=True)); an
// unknown keyword is a TypeError. Every job accepts progress=callable(dict) and releases the GIL
// while it runs.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/class2d.hpp"
#include "regula/jobs/class3d.hpp"
#include "regula/jobs/mask.hpp"
#include "regula/jobs/postprocess.hpp"
#include "regula/jobs/reconstruct.hpp"
#include "regula/jobs/refine3d.hpp"
#include "regula/jobs/simulate.hpp"
#include "regula/sampling/euler.hpp"

namespace py = pybind11;
using namespace regula;

namespace {

// ---- arrays ----

// numpy view of a Grid that owns it (moved into a capsule).
py::array_t<float> to_numpy(Grid<float>&& g) {
  auto* owner = new Grid<float>(std::move(g));
  py::capsule free_it(owner, [](void* p) { delete static_cast<Grid<float>*>(p); });
  std::vector<py::ssize_t> shape, strides;
  const py::ssize_t nx = owner->nx(), ny = owner->ny(), nz = owner->nz();
  if (nz > 1) {
    shape = {nz, ny, nx};
    strides = {py::ssize_t(sizeof(float)) * nx * ny, py::ssize_t(sizeof(float)) * nx, sizeof(float)};
  } else {
    shape = {ny, nx};
    strides = {py::ssize_t(sizeof(float)) * nx, sizeof(float)};
  }
  return py::array_t<float>(shape, strides, owner->data(), free_it);
}

Grid<float> from_numpy(const py::array& a) {
  auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!f) throw py::type_error("expected an array of numbers");
  Grid<float> g;
  if (f.ndim() == 3) g = Grid<float>(int(f.shape(2)), int(f.shape(1)), int(f.shape(0)));
  else if (f.ndim() == 2) g = Grid<float>(int(f.shape(1)), int(f.shape(0)));
  else throw py::value_error("expected a 2D image (ny, nx) or a 3D volume (nz, ny, nx)");
  std::copy(f.data(), f.data() + g.size(), g.data());
  return g;
}

// ---- keyword arguments onto option structs ----

template <class T>
class Fields {
 public:
  using Member = std::variant<std::string T::*, double T::*, int T::*, long T::*, bool T::*, uint64_t T::*,
                              std::vector<int> T::*>;
  Fields& add(const char* name, Member m) {
    table_.emplace(name, m);
    return *this;
  }
  void apply(T& opt, const py::kwargs& kw) const {
    for (auto item : kw) {
      const std::string key = py::str(item.first);
      if (key == "progress") continue;
      auto it = table_.find(key);
      if (it == table_.end()) {
        std::string names;
        for (const auto& [k, v] : table_) names += (names.empty() ? "" : ", ") + k;
        throw py::type_error("unexpected keyword argument '" + key + "' (expected: " + names + ")");
      }
      std::visit([&](auto m) { opt.*m = item.second.cast<std::remove_reference_t<decltype(opt.*m)>>(); }, it->second);
    }
  }

 private:
  std::map<std::string, Member> table_;
};

// Runs a job without the GIL, with an optional progress callback (restored afterwards).
template <class F>
auto run_job(const py::kwargs& kw, F&& f) {
  std::function<void(const ProgressEvent&)> cb;
  if (kw.contains("progress") && !kw["progress"].is_none()) {
    py::function pyfn = kw["progress"].cast<py::function>();
    auto holder = std::make_shared<py::function>(pyfn);
    cb = [holder](const ProgressEvent& e) {
      py::gil_scoped_acquire gil;
      py::dict d;
      d["task"] = e.task;
      d["done"] = e.done;
      d["total"] = e.total;
      d["elapsed_s"] = e.elapsed_s;
      d["eta_s"] = e.eta_s;
      (*holder)(d);
    };
  }
  struct Restore {
    ~Restore() { ProgressSink::set_callback(nullptr); }
  } restore;
  ProgressSink::set_callback(cb);
  py::gil_scoped_release release;
  return f();
}

// ---- STAR ----

py::dict read_star(const std::string& path) {
  star::Document doc = star::read(path);
  py::dict out;
  for (const star::Block& b : doc.blocks) {
    py::dict cols;
    for (int c = 0; c < int(b.columns()); ++c) {
      bool numeric = true;
      for (size_t r = 0; r < b.rows() && numeric; ++r) numeric = b.is_number(r, c);
      if (numeric && b.rows() > 0) {
        py::array_t<double> a(py::ssize_t(b.rows()));
        auto v = a.mutable_unchecked<1>();
        for (size_t r = 0; r < b.rows(); ++r) v(py::ssize_t(r)) = b.number(r, c);
        cols[py::str(b.label(c))] = a;
      } else {
        py::list l;
        for (size_t r = 0; r < b.rows(); ++r) l.append(std::string(b.value(r, c)));
        cols[py::str(b.label(c))] = l;
      }
    }
    out[py::str(b.name)] = cols;
  }
  return out;
}

// blocks: {name: {column: sequence}} (all columns of a block the same length; a block whose columns
// all have length 1 and whose name is in `pairs` is written as key-value pairs).
void write_star(const std::string& path, const py::dict& blocks, const std::vector<std::string>& pairs) {
  star::Document doc;
  for (auto item : blocks) {
    const std::string name = py::str(item.first);
    const bool is_pairs = std::find(pairs.begin(), pairs.end(), name) != pairs.end();
    star::Block& b = doc.add_block(name, !is_pairs);
    py::dict cols = item.second.cast<py::dict>();
    py::ssize_t rows = -1;
    for (auto c : cols) {
      const py::ssize_t len = py::len(c.second);
      if (rows >= 0 && len != rows) throw py::value_error("block " + name + ": columns of different lengths");
      rows = len;
    }
    if (is_pairs && rows != 1) throw py::value_error("block " + name + ": pairs need one value per key");
    if (!is_pairs)
      for (py::ssize_t r = 0; r < rows; ++r) b.add_row();
    for (auto c : cols) {
      std::vector<std::string> vals;
      for (auto v : c.second) {
        if (py::isinstance<py::str>(v)) vals.push_back(v.cast<std::string>());
        else if (py::isinstance<py::int_>(v)) vals.push_back(std::to_string(v.cast<long long>()));
        else vals.push_back(fmt::format("{}", v.cast<double>()));
      }
      if (is_pairs) b.set(py::str(c.first).cast<std::string>(), vals.at(0));
      else b.set_column(py::str(c.first).cast<std::string>(), vals);
    }
  }
  star::write(path, doc);
}

py::dict header_dict(const mrc::Header& h) {
  py::dict d;
  d["nx"] = h.size_x();
  d["ny"] = h.size_y();
  d["nz"] = h.size_z();
  d["mode"] = h.mode;
  d["pixel_size"] = h.pixel_size();
  d["voxel_size"] = h.voxel_size();
  d["is_stack"] = h.is_stack();
  return d;
}

}  // namespace

PYBIND11_MODULE(regula, m) {
  m.doc() = "Regula: cryo-EM single-particle analysis by regularised likelihood (docs/python.md)";
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  static py::exception<InputError> input_error_type(m, "InputError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InputError& e) {
      input_error_type(e.what());
    } catch (const Error& e) {
      error(e.what());
    }
  });

  // ---- MRC ----
  m.def("read_mrc", [](const std::string& path) {
    mrc::Header h;
    Grid<float> g = mrc::read(path, &h);
    return py::make_tuple(to_numpy(std::move(g)), header_dict(h));
  }, py::arg("path"), "Map, image or stack as float32 (nz, ny, nx) and a header dict");
  m.def("write_mrc", [](const std::string& path, const py::array& a, double pixel_size, bool stack) {
    mrc::WriteOptions wo;
    wo.pixel_size = pixel_size;
    wo.is_stack = stack;
    mrc::write(path, from_numpy(a), wo);
  }, py::arg("path"), py::arg("data"), py::arg("pixel_size") = 1.0, py::arg("stack") = false,
        "Write float32 MRC (atomically)");
  py::class_<mrc::StackReader>(m, "StackReader", "Lazy reader of an image stack (one image per read)")
      .def(py::init<const std::string&>())
      .def("__len__", &mrc::StackReader::count)
      .def("__getitem__", [](mrc::StackReader& r, int i) {
        if (i < 0) i += r.count();
        if (i < 0 || i >= r.count()) throw py::index_error("image index out of range");
        return to_numpy(r.read(i));
      })
      .def_property_readonly("header", [](const mrc::StackReader& r) { return header_dict(r.header()); });

  // ---- STAR ----
  m.def("read_star", &read_star, py::arg("path"),
        "{block: {column: numpy array (numbers) or list of str}}; pandas.DataFrame(block) works");
  m.def("write_star", &write_star, py::arg("path"), py::arg("blocks"), py::arg("pairs") = std::vector<std::string>{},
        "Write {block: {column: values}}; blocks named in `pairs` as key-value pairs");

  // ---- imaging ----
  m.def("ctf", [](int n, double angpix, double defocus_u, double defocus_v, double defocus_angle, double voltage,
                  double cs, double amplitude_contrast, double phase_shift, double bfactor) {
    CtfParams p;
    p.defocus_u = defocus_u;
    p.defocus_v = defocus_v < 0 ? defocus_u : defocus_v;
    p.defocus_angle = defocus_angle;
    p.voltage_kv = voltage;
    p.cs_mm = cs;
    p.amplitude_contrast = amplitude_contrast;
    p.phase_shift = phase_shift;
    p.bfactor = bfactor;
    return to_numpy(Ctf(p).half_complex(n, angpix));
  }, py::arg("n"), py::arg("angpix"), py::arg("defocus_u"), py::arg("defocus_v") = -1.0, py::arg("defocus_angle") = 0.0,
        py::arg("voltage") = 300.0, py::arg("cs") = 2.7, py::arg("amplitude_contrast") = 0.1,
        py::arg("phase_shift") = 0.0, py::arg("bfactor") = 0.0,
        "RELION's CTF on the half-complex grid: shape (n, n//2+1), rows in FFT order (as numpy.fft.rfft2)");
  m.def("project", [](const py::array& map, double rot, double tilt, double psi, double shift_x, double shift_y) {
    Grid<float> v = from_numpy(map);
    Image img;
    {
      py::gil_scoped_release release;
      img = project_real(v, euler_to_matrix(rot, tilt, psi), shift_x, shift_y);
    }
    return to_numpy(std::move(img));
  }, py::arg("map"), py::arg("rot"), py::arg("tilt"), py::arg("psi"), py::arg("shift_x") = 0.0,
        py::arg("shift_y") = 0.0, "Projection of a map at RELION Euler angles (degrees), shifted by (x, y) px");
  m.def("fsc", [](const py::array& a, const py::array& b) { return fsc(from_numpy(a), from_numpy(b)); },
        py::arg("a"), py::arg("b"), "FSC per shell 0..n/2 (as RELION)");
  m.def("resolution_at", &resolution_at, py::arg("fsc"), py::arg("threshold"), py::arg("pixel_size"), py::arg("n"),
        py::arg("interpolate") = false, "Resolution (Å) where the FSC first drops below the threshold");

  // ---- jobs ----
  static const Fields<SimulateOptions> sim_fields = Fields<SimulateOptions>()
      .add("map", &SimulateOptions::map).add("out_dir", &SimulateOptions::out_dir).add("n", &SimulateOptions::n)
      .add("angpix", &SimulateOptions::angpix).add("box", &SimulateOptions::box).add("snr", &SimulateOptions::snr)
      .add("ctf", &SimulateOptions::ctf).add("defocus_min", &SimulateOptions::defocus_min)
      .add("defocus_max", &SimulateOptions::defocus_max).add("voltage", &SimulateOptions::voltage)
      .add("cs", &SimulateOptions::cs).add("amplitude_contrast", &SimulateOptions::amplitude_contrast)
      .add("max_shift", &SimulateOptions::max_shift).add("views", &SimulateOptions::views)
      .add("seed", &SimulateOptions::seed).add("threads", &SimulateOptions::threads);
  m.def("simulate", [](py::kwargs kw) {
    SimulateOptions o;
    sim_fields.apply(o, kw);
    SimulateResult r = run_job(kw, [&] { return simulate(o); });
    py::dict d;
    d["particles_star"] = r.particles_star;
    d["truth_star"] = r.truth_star;
    d["stack"] = r.stack;
    d["noise_sigma"] = r.noise_sigma;
    return d;
  }, "Simulated particles (SimulateOptions fields as keywords)");

  static const Fields<ReconstructJobOptions> rec_fields = Fields<ReconstructJobOptions>()
      .add("star", &ReconstructJobOptions::star).add("out_map", &ReconstructJobOptions::out_map)
      .add("ctf", &ReconstructJobOptions::ctf).add("sym", &ReconstructJobOptions::sym)
      .add("maxres", &ReconstructJobOptions::maxres).add("angpix", &ReconstructJobOptions::angpix)
      .add("pad", &ReconstructJobOptions::pad).add("threads", &ReconstructJobOptions::threads);
  m.def("reconstruct", [](py::kwargs kw) {
    ReconstructJobOptions o;
    rec_fields.apply(o, kw);
    ReconstructResult r = run_job(kw, [&] { return reconstruct(o); });
    auto [map, hdr] = std::pair{to_numpy(mrc::read(o.out_map)), r.angpix};
    py::dict d;
    d["map"] = map;
    d["angpix"] = hdr;
    d["particles"] = r.particles;
    return d;
  }, "Reconstruction from known poses (ReconstructJobOptions fields); returns the map too");

  static const Fields<MaskJobOptions> mask_fields = Fields<MaskJobOptions>()
      .add("map", &MaskJobOptions::map).add("out", &MaskJobOptions::out)
      .add("lowpass", &MaskJobOptions::lowpass).add("extend_px", &MaskJobOptions::extend_px)
      .add("soft_edge_px", &MaskJobOptions::soft_edge_px).add("angpix", &MaskJobOptions::angpix);
  m.def("mask", [](double ini_threshold, py::kwargs kw) {
    MaskJobOptions o;
    o.ini_threshold = ini_threshold;
    o.threshold_given = true;
    mask_fields.apply(o, kw);
    run_job(kw, [&] { return mask_create(o); });
    return to_numpy(mrc::read(o.out));
  }, py::arg("ini_threshold"), "Soft mask as relion_mask_create (MaskJobOptions fields); returns it");

  static const Fields<Class2DOptions> c2_fields = Fields<Class2DOptions>()
      .add("input", &Class2DOptions::input).add("out_root", &Class2DOptions::out_root)
      .add("classes", &Class2DOptions::classes).add("iterations", &Class2DOptions::iterations)
      .add("tau2_fudge", &Class2DOptions::tau2_fudge).add("particle_diameter", &Class2DOptions::particle_diameter)
      .add("ctf", &Class2DOptions::ctf).add("zero_mask", &Class2DOptions::zero_mask)
      .add("flatten_solvent", &Class2DOptions::flatten_solvent).add("psi_step", &Class2DOptions::psi_step)
      .add("offset_range", &Class2DOptions::offset_range).add("offset_step", &Class2DOptions::offset_step)
      .add("threads", &Class2DOptions::threads).add("seed", &Class2DOptions::seed)
      .add("continue_from", &Class2DOptions::continue_from).add("angpix", &Class2DOptions::angpix)
      .add("norm", &Class2DOptions::norm).add("ini_high", &Class2DOptions::ini_high);
  m.def("class2d", [](py::kwargs kw) {
    Class2DOptions o;
    c2_fields.apply(o, kw);
    Class2DResult r = run_job(kw, [&] { return run_class2d(o); });
    py::dict d;
    py::list classes;
    for (Image& c : r.classes) classes.append(to_numpy(std::move(c)));
    d["classes"] = classes;
    d["class_fraction"] = r.class_fraction;
    d["particle_class"] = r.particle_class;
    d["last_iteration"] = r.last_iteration;
    d["data_star"] = r.data_star;
    d["model_star"] = r.model_star;
    d["optimiser_star"] = r.optimiser_star;
    d["classes_mrcs"] = r.classes_mrcs;
    d["gallery_png"] = r.gallery_png;
    return d;
  }, "2D classification (Class2DOptions fields)");

  static const Fields<Refine3DOptions> r3_fields = Fields<Refine3DOptions>()
      .add("input", &Refine3DOptions::input).add("out_root", &Refine3DOptions::out_root)
      .add("reference", &Refine3DOptions::reference).add("ini_high", &Refine3DOptions::ini_high)
      .add("firstiter_cc", &Refine3DOptions::firstiter_cc).add("sym", &Refine3DOptions::sym)
      .add("particle_diameter", &Refine3DOptions::particle_diameter).add("ctf", &Refine3DOptions::ctf)
      .add("flatten_solvent", &Refine3DOptions::flatten_solvent).add("zero_mask", &Refine3DOptions::zero_mask)
      .add("solvent_mask", &Refine3DOptions::solvent_mask).add("healpix_order", &Refine3DOptions::healpix_order)
      .add("auto_local_healpix_order", &Refine3DOptions::auto_local_healpix_order)
      .add("offset_range", &Refine3DOptions::offset_range).add("offset_step", &Refine3DOptions::offset_step)
      .add("low_resol_join_halves", &Refine3DOptions::low_resol_join_halves)
      .add("threads", &Refine3DOptions::threads).add("seed", &Refine3DOptions::seed)
      .add("continue_from", &Refine3DOptions::continue_from).add("angpix", &Refine3DOptions::angpix)
      .add("norm", &Refine3DOptions::norm).add("max_iterations", &Refine3DOptions::max_iterations)
      .add("pose_mean", &Refine3DOptions::pose_mean);
  m.def("refine3d", [](py::kwargs kw) {
    Refine3DOptions o;
    r3_fields.apply(o, kw);
    Refine3DResult r = run_job(kw, [&] { return run_refine3d(o); });
    py::dict d;
    d["converged"] = r.converged;
    d["last_iteration"] = r.last_iteration;
    d["resolution"] = r.resolution_A;
    d["fsc"] = r.fsc;
    d["rot"] = r.rot;
    d["tilt"] = r.tilt;
    d["psi"] = r.psi;
    d["origin_x"] = r.origin_x;
    d["origin_y"] = r.origin_y;
    d["random_subset"] = r.random_subset;
    d["map"] = r.map;
    d["half1_unfil"] = r.half1_unfil;
    d["half2_unfil"] = r.half2_unfil;
    d["data_star"] = r.data_star;
    d["model_star"] = r.model_star;
    py::list stats;
    for (const auto& s : r.stats) {
      py::dict it;
      it["iteration"] = s.iteration;
      it["healpix_order"] = s.healpix_order;
      it["resolution"] = s.resolution_A;
      it["seconds"] = s.seconds;
      stats.append(it);
    }
    d["iterations"] = stats;
    return d;
  }, "3D auto-refinement (Refine3DOptions fields)");

  static const Fields<Class3DOptions> c3_fields = Fields<Class3DOptions>()
      .add("input", &Class3DOptions::input).add("out_root", &Class3DOptions::out_root)
      .add("reference", &Class3DOptions::reference).add("classes", &Class3DOptions::classes)
      .add("iterations", &Class3DOptions::iterations).add("tau2_fudge", &Class3DOptions::tau2_fudge)
      .add("ini_high", &Class3DOptions::ini_high).add("firstiter_cc", &Class3DOptions::firstiter_cc)
      .add("sym", &Class3DOptions::sym).add("particle_diameter", &Class3DOptions::particle_diameter)
      .add("ctf", &Class3DOptions::ctf).add("flatten_solvent", &Class3DOptions::flatten_solvent)
      .add("zero_mask", &Class3DOptions::zero_mask).add("healpix_order", &Class3DOptions::healpix_order)
      .add("offset_range", &Class3DOptions::offset_range).add("offset_step", &Class3DOptions::offset_step)
      .add("skip_align", &Class3DOptions::skip_align).add("sigma_ang", &Class3DOptions::sigma_ang)
      .add("threads", &Class3DOptions::threads).add("seed", &Class3DOptions::seed)
      .add("continue_from", &Class3DOptions::continue_from);
  m.def("class3d", [](py::kwargs kw) {
    Class3DOptions o;
    c3_fields.apply(o, kw);
    Class3DResult r = run_job(kw, [&] { return run_class3d(o); });
    py::dict d;
    d["class_fraction"] = r.class_fraction;
    d["class_resolution"] = r.class_resolution_A;
    d["particle_class"] = r.particle_class;
    d["class_maps"] = r.class_maps;
    d["data_star"] = r.data_star;
    d["model_star"] = r.model_star;
    return d;
  }, "3D classification (Class3DOptions fields)");

  static const Fields<PostprocessOptions> pp_fields = Fields<PostprocessOptions>()
      .add("half1", &PostprocessOptions::half1).add("half2", &PostprocessOptions::half2)
      .add("out_root", &PostprocessOptions::out_root).add("mask", &PostprocessOptions::mask)
      .add("angpix", &PostprocessOptions::angpix).add("auto_bfac", &PostprocessOptions::auto_bfac)
      .add("autob_lowres", &PostprocessOptions::autob_lowres).add("autob_highres", &PostprocessOptions::autob_highres)
      .add("adhoc_bfac", &PostprocessOptions::adhoc_bfac).add("mtf", &PostprocessOptions::mtf)
      .add("low_pass", &PostprocessOptions::low_pass).add("seed", &PostprocessOptions::seed);
  m.def("postprocess", [](py::kwargs kw) {
    PostprocessOptions o;
    pp_fields.apply(o, kw);
    PostprocessResult r = run_job(kw, [&] { return run_postprocess(o); });
    py::dict d;
    d["resolution"] = r.final_resolution;
    d["bfactor"] = r.bfactor;
    d["fsc_corrected"] = r.fsc_corrected;
    d["fsc_unmasked"] = r.fsc_unmasked;
    d["fsc_masked"] = r.fsc_masked;
    d["fsc_random_masked"] = r.fsc_random_masked;
    d["map"] = r.map;
    d["masked_map"] = r.masked_map;
    d["star"] = r.star;
    return d;
  }, "Post-processing (PostprocessOptions fields)");
}

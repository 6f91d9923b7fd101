// The `regula` Python module: a thin pybind11 layer over the library (docs/python.md).
//
// Arrays are numpy arrays in C order with x fastest, as mrcfile returns them: a volume has shape
// (nz, ny, nx), an image (ny, nx). Arrays returned from the library own the library's buffer (no
// copy); arrays passed in are converted to float32 grids (a copy). Jobs take keyword arguments named
// as the fields of the library's option structs (the command line's options), accept
// progress=callable(dict) and release the GIL while they run. regula::InputError becomes
// regula.InputError (a ValueError and a regula.Error), regula::Error becomes regula.Error (a
// RuntimeError).
#include "common.hpp"

#include "regula/core/error.hpp"
#include "regula/core/log.hpp"
#include "regula/core/version.hpp"

namespace regula::python {

py::array_t<float> to_numpy(Grid<float>&& g, bool force_3d) {
  auto* owner = new Grid<float>(std::move(g));
  py::capsule free_it(owner, [](void* p) { delete static_cast<Grid<float>*>(p); });
  const py::ssize_t nx = owner->nx(), ny = owner->ny(), nz = owner->nz(), f = sizeof(float);
  if (nz > 1 || force_3d) return py::array_t<float>({nz, ny, nx}, {f * nx * ny, f * nx, f}, owner->data(), free_it);
  return py::array_t<float>({ny, nx}, {f * nx, f}, owner->data(), free_it);
}

Grid<float> from_numpy(const py::handle& a, const char* what) {
  auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!f) throw py::type_error(std::string(what) + ": expected an array of numbers");
  Grid<float> g;
  if (f.ndim() == 3) g = Grid<float>(int(f.shape(2)), int(f.shape(1)), int(f.shape(0)));
  else if (f.ndim() == 2) g = Grid<float>(int(f.shape(1)), int(f.shape(0)));
  else
    throw py::value_error(std::string(what) + ": expected a 2D image (ny, nx) or a 3D volume (nz, ny, nx), got " +
                          std::to_string(f.ndim()) + " dimensions");
  std::copy(f.data(), f.data() + g.size(), g.data());
  return g;
}

std::mutex& job_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace regula::python

using namespace regula::python;

PYBIND11_MODULE(regula, m) {
  m.doc() = "Regula: cryo-EM single-particle analysis by regularised likelihood (docs/python.md)";
  m.attr("__version__") = regula::kVersion;

  // regula.Error(RuntimeError); regula.InputError(regula.Error, ValueError), as InputError : Error in C++.
  static PyObject* error = PyErr_NewExceptionWithDoc(
      "regula.Error", "A failure of the Regula library (I/O, runtime).", PyExc_RuntimeError, nullptr);
  py::tuple input_bases = py::make_tuple(py::handle(error), py::handle(PyExc_ValueError));
  static PyObject* input_error = PyErr_NewExceptionWithDoc(
      "regula.InputError", "Bad input (a file, option or value); the message names the file and the place.",
      input_bases.ptr(), nullptr);
  m.attr("Error") = py::handle(error);
  m.attr("InputError") = py::handle(input_error);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const regula::InputError& e) {
      PyErr_SetString(input_error, e.what());
    } catch (const regula::Error& e) {
      PyErr_SetString(error, e.what());
    }
  });

  m.def("set_verbosity", [](int level) {
    regula::set_verbosity(level);
    regula::ProgressSink::set_quiet(level <= 0);
  }, py::arg("level"), "Library log level: 0 errors only (and no progress bar on a terminal), 1 info, 2 debug");

  bind_io(m);
  bind_imaging(m);
  bind_jobs(m);
  bind_project(m);
}

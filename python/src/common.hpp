// Shared pieces of the `regula` Python module (docs/python.md): numpy conversions, the keyword
// table that maps a job's keyword arguments onto the fields of its option struct, and the runner
// that executes a job without the GIL with a progress callback.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <thread>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "regula/core/cancel.hpp"
#include "regula/core/grid.hpp"
#include "regula/core/progress.hpp"

namespace regula::python {

namespace py = pybind11;

// ---- arrays ----

// A numpy array that owns the grid's buffer (the grid is moved into a capsule; no copy). Shape
// (nz, ny, nx) for nz > 1 (or `force_3d`), else (ny, nx); C order, x fastest, as mrcfile.
py::array_t<float> to_numpy(Grid<float>&& g, bool force_3d = false);

// A numpy array that owns the vector's buffer (moved into a capsule; no copy).
template <class T>
py::array_t<T> vec_to_numpy(std::vector<T>&& v) {
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_it(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({py::ssize_t(owner->size())}, {py::ssize_t(sizeof(T))}, owner->data(), free_it);
}
template <class T>
py::array_t<T> vec_to_numpy(const std::vector<T>& v) {
  return vec_to_numpy(std::vector<T>(v));
}

// A float32 grid from a 2D (ny, nx) or 3D (nz, ny, nx) array of numbers (always a copy: the grid
// owns its buffer). `what` names the argument in the error message.
Grid<float> from_numpy(const py::handle& a, const char* what = "array");

// ---- keyword arguments onto option structs ----

// One table per option struct: (keyword, member pointer). Keywords are the member names, which are
// the command line's option names (docs/python.md). apply() sets the members from **kwargs and
// raises TypeError naming an unknown keyword or a value of the wrong type; defaults() gives the
// default-constructed values (for help texts and regula.job_options()).
template <class T>
class Fields {
 public:
  using Member = std::variant<std::string T::*, double T::*, int T::*, long T::*, bool T::*, uint64_t T::*,
                              std::vector<int> T::*, std::vector<double> T::*, std::vector<std::string> T::*>;
  Fields(std::string job, std::initializer_list<std::pair<const char*, Member>> fields) : job_(std::move(job)) {
    for (const auto& [name, m] : fields) table_.emplace_back(name, m);
  }

  // Keywords not in the table that the caller handles itself (e.g. "progress").
  void apply(T& opt, const py::kwargs& kw, std::initializer_list<const char*> extra = {"progress"}) const {
    for (auto item : kw) {
      const std::string key = py::str(item.first);
      if (std::find_if(extra.begin(), extra.end(), [&](const char* e) { return key == e; }) != extra.end()) continue;
      const Member* m = find(key);
      if (!m) throw py::type_error(job_ + "() got an unexpected keyword argument '" + key + "' (accepted: " +
                                   names() + ")");
      std::visit([&](auto p) { set(opt.*p, key, item.second); }, *m);
    }
  }

  py::dict defaults() const {
    T d{};
    py::dict out;
    for (const auto& [name, m] : table_) std::visit([&](auto p) { out[py::str(name)] = py::cast(d.*p); }, m);
    return out;
  }

  std::string names() const {
    std::string s;
    for (const auto& [name, m] : table_) s += (s.empty() ? "" : ", ") + name;
    return s;
  }

  // "  name=default, ..." for docstrings, in lines of at most ~100 characters.
  std::string signature() const {
    std::string s, line = " ";
    py::dict d = defaults();
    for (const auto& [name, m] : table_) {
      const std::string item = " " + name + "=" + std::string(py::repr(d[py::str(name)])) + ",";
      if (line.size() + item.size() > 100) {
        s += line + "\n";
        line = " ";
      }
      line += item;
    }
    line.pop_back();
    return s + line;
  }

 private:
  const Member* find(const std::string& key) const {
    for (const auto& [name, m] : table_)
      if (name == key) return &m;
    return nullptr;
  }
  template <class V>
  void set(V& field, const std::string& key, py::handle value) const {
    try {
      if constexpr (std::is_same_v<V, std::string>) {
        // str, or any path-like object (pathlib.Path).
        field = py::module_::import("os").attr("fspath")(value).template cast<std::string>();
      } else if constexpr (std::is_same_v<V, bool>) {
        if (!py::isinstance<py::bool_>(value) && !py::isinstance(value, py::module_::import("numpy").attr("bool_")))
          throw py::cast_error();
        field = value.cast<bool>();
      } else {
        field = value.cast<V>();
      }
    } catch (const py::cast_error&) {
      throw py::type_error(job_ + "(): keyword '" + key + "' expects " + type_name<V>() + ", got " +
                           std::string(py::str(py::type::of(value).attr("__name__"))));
    } catch (const py::error_already_set&) {
      throw py::type_error(job_ + "(): keyword '" + key + "' expects a path (str or os.PathLike), got " +
                           std::string(py::str(py::type::of(value).attr("__name__"))));
    }
  }
  template <class V>
  static const char* type_name() {
    if constexpr (std::is_same_v<V, std::string>) return "a str or path";
    else if constexpr (std::is_same_v<V, bool>) return "a bool";
    else if constexpr (std::is_same_v<V, double>) return "a number";
    else if constexpr (std::is_same_v<V, std::vector<int>>) return "a sequence of int";
    else if constexpr (std::is_same_v<V, std::vector<double>>) return "a sequence of numbers";
    else if constexpr (std::is_same_v<V, std::vector<std::string>>) return "a sequence of str";
    else return "an int";
  }

  std::string job_;
  std::vector<std::pair<std::string, Member>> table_;
};

#define REGULA_FIELD(T, name) std::pair<const char*, Fields<T>::Member> { #name, &T::name }

// ---- running jobs ----

// Jobs run one at a time (the progress callback and the cancel flag are process-wide).
std::mutex& job_mutex();

// True on a thread while it runs a job's Python progress callback: a job started there would wait
// for the job that is calling it, so run_job refuses it.
inline bool& in_progress_callback() {
  thread_local bool inside = false;
  return inside;
}

// Runs f() (a library job) without the GIL. Progress events go to kw["progress"] (a callable
// taking a dict {task, done, total, elapsed_s, eta_s}), called with the GIL held from whichever
// thread reports. An exception raised by the callback, or Ctrl-C (seen when an event arrives on the
// main thread), asks the job to stop at its next safe point and is re-raised when it returns. The
// job's callback replaces the process-wide one for the job's duration and the previous one (e.g. a
// host program's) is restored afterwards. A job started from inside a progress callback raises
// RuntimeError (it would wait for the job that is calling it).
template <class F>
auto run_job(const py::kwargs& kw, F&& f) -> decltype(f()) {
  using R = decltype(f());
  if (in_progress_callback())
    throw std::runtime_error("a regula job cannot be started from inside another job's progress callback "
                             "(jobs run one at a time)");
  struct State {
    py::object fn;
    std::exception_ptr error;  // first exception from the callback (guarded by the GIL)
  };
  auto st = std::make_shared<State>();
  st->fn = kw.contains("progress") ? py::object(kw["progress"]) : py::none();
  if (!st->fn.is_none() && !PyCallable_Check(st->fn.ptr()))
    throw py::type_error("progress must be a callable taking a dict, or None");
  std::function<void(const ProgressEvent&)> cb = [st](const ProgressEvent& e) {
    py::gil_scoped_acquire gil;
    if (st->error) return;
    struct Inside {
      bool before = std::exchange(in_progress_callback(), true);
      ~Inside() { in_progress_callback() = before; }
    } inside;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!st->fn.is_none()) {
        py::dict d;
        d["task"] = e.task;
        d["done"] = e.done;
        d["total"] = e.total;
        d["elapsed_s"] = e.elapsed_s;
        d["eta_s"] = e.eta_s;
        st->fn(d);
      }
    } catch (...) {
      st->error = std::current_exception();
      request_cancel();
    }
  };
  std::optional<R> result;
  std::exception_ptr job_error;
  {
    py::gil_scoped_release release;
    std::lock_guard lock(job_mutex());
    reset_cancel();
    {
      ScopedProgressCallback guard(cb);
      // The job runs on its own thread; this (Python's main) thread checks for Ctrl-C every 50 ms, since
      // Python handles signals only on the main thread and progress events may all come from workers.
      std::promise<void> finished;
      std::future<void> done = finished.get_future();
      std::thread worker([&] {
        try {
          result.emplace(f());
        } catch (...) {
          job_error = std::current_exception();
        }
        finished.set_value();
      });
      while (done.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
        py::gil_scoped_acquire gil;
        if (st->error) continue;
        if (PyErr_CheckSignals() != 0) {
          st->error = std::make_exception_ptr(py::error_already_set());
          request_cancel();
        }
      }
      worker.join();
    }
    reset_cancel();
  }
  if (st->error) std::rethrow_exception(st->error);
  if (job_error) std::rethrow_exception(job_error);
  return std::move(*result);
}

void bind_io(py::module_& m);
void bind_imaging(py::module_& m);
void bind_jobs(py::module_& m);
void bind_project(py::module_& m);

}  // namespace regula::python

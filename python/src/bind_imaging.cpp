// Imaging on arrays: CTF (imaging/ctf.hpp), projection (imaging/projector.hpp), FSC
// (imaging/fsc.hpp), masks (imaging/mask.hpp) and filters (imaging/filter.hpp). Every function
// returns a new array (inputs are never modified) and runs without the GIL. project, fsc and mask
// called with keywords only are the jobs on files (bind_jobs.cpp): these overloads come first and
// take an array as their first argument.
#include "common.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/sampling/euler.hpp"

namespace regula::python {
namespace {

// Applies an in-place library filter to a copy of the array and returns the copy (no further copy).
template <class F>
py::array_t<float> filtered(const py::array& a, F&& f) {
  Grid<float> g = from_numpy(a, "image");
  {
    py::gil_scoped_release release;
    f(g);
  }
  return to_numpy(std::move(g));
}

py::dict stats_dict(const BackgroundStats& s) {
  py::dict d;
  d["mean"] = s.mean;
  d["stddev"] = s.stddev;
  d["count"] = s.count;
  return d;
}

}  // namespace

void bind_imaging(py::module_& m) {
  // ---- CTF ----
  m.def("ctf", [](int n, double angpix, double defocus_u, std::optional<double> defocus_v, double defocus_angle,
                  double voltage, double cs, double amplitude_contrast, double phase_shift, double bfactor,
                  double scale, bool abs, bool phase_flip_only, bool intact_until_first_peak, bool damping) {
    CtfParams p;
    p.defocus_u = defocus_u;
    p.defocus_v = defocus_v.value_or(defocus_u);
    p.defocus_angle = defocus_angle;
    p.voltage_kv = voltage;
    p.cs_mm = cs;
    p.amplitude_contrast = amplitude_contrast;
    p.phase_shift = phase_shift;
    p.bfactor = bfactor;
    p.scale = scale;
    CtfOptions o;
    o.abs = abs;
    o.phase_flip_only = phase_flip_only;
    o.intact_until_first_peak = intact_until_first_peak;
    o.damping = damping;
    Grid<float> g;
    {
      py::gil_scoped_release release;
      g = Ctf(p, o).half_complex(n, angpix);
    }
    return to_numpy(std::move(g));
  }, py::arg("n"), py::arg("angpix"), py::arg("defocus_u"), py::arg("defocus_v") = py::none(),
        py::arg("defocus_angle") = 0.0, py::arg("voltage") = 300.0, py::arg("cs") = 2.7,
        py::arg("amplitude_contrast") = 0.1, py::arg("phase_shift") = 0.0, py::arg("bfactor") = 0.0,
        py::arg("scale") = 1.0, py::arg("abs") = false, py::arg("phase_flip_only") = false,
        py::arg("intact_until_first_peak") = false, py::arg("damping") = true,
        "RELION 3.1's CTF of an n x n image of pixel size angpix (Å) on the half-complex grid: shape (n, n//2+1),\n"
        "element [j, i] at kx = i/(n angpix), ky = fftfreq(n)[j]/angpix 1/Å except row n/2, which is +Nyquist\n"
        "(numpy.fft.rfft2's layout otherwise). Defocus in Å (positive = underfocus; defocus_v defaults to\n"
        "defocus_u), angles in degrees, voltage kV, cs mm, bfactor Å^2. -sin(gamma) * envelope * scale.");
  m.def("electron_wavelength", &electron_wavelength, py::arg("voltage"),
        "Relativistic electron wavelength (Å) for an acceleration voltage in kV");

  // ---- projection ----
  m.def("project", [](const py::array& map, double rot, double tilt, double psi, double shift_x, double shift_y,
                      int padding) {
    Grid<float> v = from_numpy(map, "map");
    if (v.nz() != v.nx() || v.ny() != v.nx()) throw py::value_error("project: map must be a cubic (n, n, n) array");
    Image img;
    {
      py::gil_scoped_release release;
      img = project_real(v, euler_to_matrix(rot, tilt, psi), shift_x, shift_y, padding);
    }
    return to_numpy(std::move(img));
  }, py::arg("map"), py::arg("rot"), py::arg("tilt"), py::arg("psi"), py::arg("shift_x") = 0.0,
        py::arg("shift_y") = 0.0, py::arg("padding") = 2,
        "project(map, rot, tilt, psi, shift_x=0, shift_y=0, padding=2) -> image: the projection of a cubic map at\n"
        "RELION Euler angles (degrees) as relion_project (sum along z for 0, 0, 0; Fourier central slice), the\n"
        "content moved by (shift_x, shift_y) px. With keywords only, project(**options) is the job (files).");

  // ---- FSC ----
  m.def("fsc", [](const py::array& a, const py::array& b) {
    Grid<float> ga = from_numpy(a, "a"), gb = from_numpy(b, "b");
    if (!ga.same_shape(gb)) throw py::value_error("fsc: the two arrays have different shapes");
    std::vector<double> f;
    {
      py::gil_scoped_release release;
      f = fsc(ga, gb);
    }
    return vec_to_numpy(std::move(f));
  }, py::arg("a"), py::arg("b"),
        "fsc(a, b) -> FSC (FRC for images) per shell 0..n/2, shell = round(|k|) Fourier px, as RELION (shell 0\n"
        "is 1). With keywords only, fsc(map1=, map2=, mask=, out_root=, angpix=) is the job (files).");
  m.def("resolution_at", [](const std::vector<double>& f, double threshold, double angpix, int n, bool interpolate) {
    return resolution_at(f, threshold, angpix, n, interpolate);
  }, py::arg("fsc"), py::arg("threshold"), py::arg("angpix"), py::arg("n"), py::arg("interpolate") = false,
        "Resolution (Å) where the FSC first drops below threshold, as relion_postprocess: n*angpix/i for the last\n"
        "shell i before the drop (inf when FSC(1) is below; Nyquist when it never drops)");

  // ---- masks ----
  m.def("spherical_mask", [](std::vector<int> shape, double radius, double edge) {
    if (shape.size() != 2 && shape.size() != 3) throw py::value_error("spherical_mask: shape is (ny, nx) or (nz, ny, nx)");
    const int nz = shape.size() == 3 ? shape[0] : 1, ny = shape[shape.size() - 2], nx = shape.back();
    Grid<float> g;
    {
      py::gil_scoped_release release;
      g = spherical_mask(nx, ny, nz, radius, edge);
    }
    return to_numpy(std::move(g));
  }, py::arg("shape"), py::arg("radius"), py::arg("edge") = 0.0,
        "Soft sphere (circle) about the centre n/2 per axis: 1 within radius px, raised-cosine edge px wide");
  m.def("apply_spherical_mask", [](const py::array& img, double radius, double edge, const py::object& fill,
                                   std::vector<double> centre_shift) {
    if (centre_shift.size() < 3) centre_shift.resize(3, 0.0);
    if (centre_shift.size() != 3) throw py::value_error("apply_spherical_mask: centre_shift is (dx, dy) or (dx, dy, dz)");
    const MaskCentre c{centre_shift[0], centre_shift[1], centre_shift[2]};
    if (py::isinstance<py::str>(fill)) {
      const std::string name = fill.cast<std::string>();
      MaskFill f;
      if (name == "zero") f = MaskFill::Zero;
      else if (name == "background") f = MaskFill::BackgroundMean;
      else throw py::value_error("apply_spherical_mask: fill is 'zero', 'background' or an array, got '" + name + "'");
      return filtered(img, [&](Grid<float>& g) { apply_spherical_mask(g, radius, edge, f, c); });
    }
    const Grid<float> bg = from_numpy(fill.cast<py::array>(), "fill");
    return filtered(img, [&](Grid<float>& g) {
      if (bg.nx() != g.nx() || bg.ny() != g.ny() || bg.nz() != g.nz())
        throw py::value_error("apply_spherical_mask: the fill array and the image differ in shape");
      apply_spherical_mask(g, radius, edge, bg, c);
    });
  }, py::arg("image"), py::arg("radius"), py::arg("edge") = 0.0, py::arg("fill") = "zero",
        py::arg("centre_shift") = std::vector<double>{},
        "Masked copy: fill='zero' multiplies by the soft sphere; 'background' blends to the mean outside (RELION); "
        "an array of the image's shape is blended in outside (e.g. coloured_noise). centre_shift (dx, dy[, dz]) "
        "moves the sphere's centre from n/2 by that many pixels");
  m.def("coloured_noise", [](int n, const std::vector<double>& sigma2, uint64_t seed, uint64_t stream) {
    Grid<float> g;
    {
      py::gil_scoped_release release;
      auto rng = make_rng(seed, stream);
      g = coloured_noise(n, sigma2, rng);
    }
    return to_numpy(std::move(g));
  }, py::arg("n"), py::arg("sigma2"), py::arg("seed") = 0, py::arg("stream") = 0,
        "n x n Gaussian noise whose unnormalised FFT (numpy's rfft2) has E|F|^2 = 2 sigma2[s] in shell s = round(|k|), "
        "0 beyond the last shell: the noise of the likelihood's model, as class2d/refine3d fill the solvent");
  m.def("mask", [](const py::array& map, double ini_threshold, double angpix, double lowpass, double extend_px,
                   double soft_edge_px) {
    MaskCreateOptions o;
    o.pixel_size = angpix;
    o.lowpass_A = lowpass;
    o.ini_threshold = ini_threshold;
    o.extend_px = extend_px;
    o.soft_edge_px = soft_edge_px;
    Grid<float> v = from_numpy(map, "map");
    Grid<float> out;
    {
      py::gil_scoped_release release;
      out = create_mask(v, o);
    }
    return to_numpy(std::move(out));
  }, py::arg("map"), py::arg("ini_threshold"), py::arg("angpix") = 1.0, py::arg("lowpass") = 0.0,
        py::arg("extend_px") = 0.0, py::arg("soft_edge_px") = 0.0,
        "mask(map, ini_threshold, angpix=1, lowpass=0, extend_px=0, soft_edge_px=0) -> mask in [0, 1], as\n"
        "relion_mask_create (lowpass in Å, 0 = none; extend and edge in px). With keywords only,\n"
        "mask(map=, out=, ini_threshold=, ...) is the job (files).");

  // ---- filters ----
  m.def("low_pass", [](const py::array& img, double resolution, double angpix, int edge) {
    return filtered(img, [&](Grid<float>& g) { low_pass(g, resolution, angpix, edge); });
  }, py::arg("image"), py::arg("resolution"), py::arg("angpix"), py::arg("edge") = 2,
        "Low-pass to resolution (Å) as RELION's lowPassFilterMap, raised-cosine edge in Fourier px");
  m.def("high_pass", [](const py::array& img, double resolution, double angpix, int edge) {
    return filtered(img, [&](Grid<float>& g) { high_pass(g, resolution, angpix, edge); });
  }, py::arg("image"), py::arg("resolution"), py::arg("angpix"), py::arg("edge") = 2,
        "High-pass (the complement of low_pass)");
  m.def("apply_bfactor", [](const py::array& img, double bfactor, double angpix) {
    return filtered(img, [&](Grid<float>& g) { apply_bfactor(g, bfactor, angpix); });
  }, py::arg("image"), py::arg("bfactor"), py::arg("angpix"),
        "Multiply the transform by exp(-B s^2 / 4), s in 1/Å, B in Å^2 (negative sharpens)");
  m.def("background_stats", [](const py::array& img, double bg_radius) {
    Grid<float> g = from_numpy(img, "image");
    return stats_dict(background_stats(g, bg_radius));
  }, py::arg("image"), py::arg("bg_radius"), "Mean and standard deviation of the pixels beyond bg_radius px");
  m.def("normalise_background", [](const py::array& img, double bg_radius) {
    BackgroundStats s;
    auto out = filtered(img, [&](Grid<float>& g) { s = normalise_background(g, bg_radius); });
    return py::make_tuple(out, stats_dict(s));
  }, py::arg("image"), py::arg("bg_radius"),
        "(image - mean) / stddev of the background beyond bg_radius px, as relion_preprocess --norm -> (image, stats)");
  m.def("rescale", [](const py::array& img, int new_n) {
    Grid<float> g = from_numpy(img, "image"), out;
    {
      py::gil_scoped_release release;
      out = rescale(g, new_n);
    }
    return to_numpy(std::move(out));
  }, py::arg("image"), py::arg("new_n"), "Fourier re-scaling to a new box (pixel size times n/new_n)");
  m.def("window", [](const py::array& img, int new_n, float fill) {
    Grid<float> g = from_numpy(img, "image"), out;
    {
      py::gil_scoped_release release;
      out = window(g, new_n, fill);
    }
    return to_numpy(std::move(out));
  }, py::arg("image"), py::arg("new_n"), py::arg("fill") = 0.0f, "Real-space crop or pad about the centre");
}

}  // namespace regula::python

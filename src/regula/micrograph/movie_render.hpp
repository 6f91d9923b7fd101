// Frames of a simulated movie from a Scene (layer 2 of the movie simulator, micrograph/scene.hpp).
//
// Motion (Drift): frame f (0-based) shows the specimen moved by a displacement field
//   D_f(x, y) = G_f + L_f(x, y)   (pixels, micrograph coordinates; D_0 = 0 everywhere)
// i.e. frame_f(r) = I(r - D_f(r)). G_f is the global drift: a fast start (1 - exp(-f / tau)) plus a
// slower steady part in another direction and a small wobble, scaled so that |G_last| is the
// drawn total. L_f = h(f) L(x, y) is a smooth local deformation (a mix of linear, quadratic and
// cosine modes in x and y, NOT RELION's polynomial) with zero mean over the field, so that the
// field's mean displacement is G_f; its largest magnitude at the last frame is `local_max`.
// RELION writes the opposite: the shift that re-aligns a frame (rlnMicrographShiftX = -G_f).
//
// Rendering: the phase of the scene, damaged for the exposure of frame f (Grant & Grigorieff,
// micrograph/dose.hpp, at the middle of the frame), goes through the CTF and the global
// displacement as one product in Fourier space on the whole canvas (exact sub-pixel shifts); the
// local part is then applied by cubic B-spline interpolation (micrograph/bspline.hpp); the result
// times the dose per pixel is the expected number of electrons of each pixel (Poisson counting is
// the caller's: jobs/simulate_movies). Motion within a frame is not modelled.
#pragma once
#include <array>
#include <random>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/micrograph/scene.hpp"

namespace regula {

struct DriftOptions {
  double total_min = 5, total_max = 30;  // |G_last| uniform in [min, max], px
  double local_max = 2.0;                // px, largest local displacement at the last frame
};

class Drift {
 public:
  Drift() = default;
  Drift(const DriftOptions& opt, int frames, int nx, int ny, std::mt19937_64& rng);
  int frames() const { return int(gx_.size()); }
  double global_x(int f) const { return gx_[size_t(f)]; }
  double global_y(int f) const { return gy_[size_t(f)]; }
  // Local part L_f at micrograph pixel (x, y).
  void local(int f, double x, double y, double& lx, double& ly) const;
  // Total displacement D_f(x, y).
  void displacement(int f, double x, double y, double& dx, double& dy) const;

 private:
  static constexpr int kModes = 6;
  std::vector<double> gx_, gy_, h_;
  std::array<double, kModes> cx_{}, cy_{}, mean_{};
  int nx_ = 0, ny_ = 0;
  double basis(int m, double x, double y) const;
};

// What is rendered for every frame, computed once per scene: -2 CTF(k) Phi(k) on the canvas
// (mean removed), and the damage exponent 1 / (2 Ne(k)).
struct SceneSpectrum {
  Grid<cfloat> signal;       // half-complex, canvas size
  Grid<float> damage_rate;   // 1 / (2 Ne(k)) per Å² of 300 kV-equivalent exposure
};
SceneSpectrum scene_spectrum(const Scene& s, int nthreads = 1);

// Expected electrons per pixel (nx x ny) of frame f at 300 kV-equivalent exposure `exposure_mid`
// (e/Å², at the middle of the frame) and `dose_per_pixel` electrons per pixel for I = 1.
// exposure_mid < 0 renders without damage.
Grid<float> render_frame(const Scene& s, const SceneSpectrum& spec, const Drift& drift, int f, double exposure_mid,
                         double dose_per_pixel, int nthreads = 1);

// The drift-free, undamaged, noise-free intensity I(r) (mean about 1) of the micrograph.
Grid<float> ideal_image(const Scene& s, const SceneSpectrum& spec, int nthreads = 1);

}  // namespace regula

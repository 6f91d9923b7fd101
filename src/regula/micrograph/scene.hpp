// The specimen of one simulated micrograph (layer 1 of the movie simulator; layer 2,
// micrograph/movie_render.hpp, turns a scene into frames). A Scene holds what the microscope
// images, on a canvas larger than the micrograph by a margin on every side (so that motion and the
// CTF's delocalisation bring in content from outside the field of view, as in a real exposure):
//
//  * particles: projections of one or more maps ("types", e.g. of different sizes) at known
//    positions (rlnCoordinateX/Y, pixels of the micrograph, the map's origin n/2 lands there) and
//    poses (rot, tilt, psi: RELION's ZYZ, the image of a particle is the projection at
//    euler_to_matrix(rot, tilt, psi), as relion_project), placed without overlap;
//  * junk: aggregates (clumps of overlapping particles at random poses), ice crystals (dense
//    discs that absorb: amplitude contrast) and a carbon edge (a region beyond a straight line with
//    a large mean phase, strong amorphous texture and some absorption);
//  * amorphous ice: a Gaussian random phase field whose spectrum rises from low frequencies to
//    the water peak at 1/3.7 Å (the structure factor of liquid water), rms `ice_rms` rad per pixel;
//  * the CTF of the micrograph (defocus U/V/angle, RELION's convention, imaging/ctf.hpp).
//
// Physics (weak phase object): the maps are scaled to phase shifts (radians) with the
// interaction constant sigma(V) (about 6.5e-4 rad/(V Å) at 300 kV), taking a map's mean density
// over its voxels above 10% of its maximum as a protein/ice contrast of 2.5 V. The recorded
// intensity (mean 1) is
//     I(r) = a(r) (1 - 2 [c * phi](r))
// with phi the projected phase (mean removed), c the CTF (RELION's sign: positive at low frequency
// for underfocus, so protein is dark as in a raw micrograph) and a(r) the absorption (1, less on
// crystals and carbon). Frames damage phi per spatial frequency (micrograph/dose.hpp).
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "regula/core/grid.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/projector.hpp"

namespace regula {

struct SceneOptions {
  int nx = 2048, ny = 2048;        // micrograph size, px
  int margin = 96;                 // canvas margin on each side, px (>= largest motion + CTF delocalisation)
  double angpix = 1.0;             // Å
  double voltage_kv = 300, cs_mm = 2.7, amplitude_contrast = 0.1;
  double defocus_min = 5000, defocus_max = 40000;  // Å, mean defocus (U+V)/2, uniform
  double astigmatism_max = 2000;   // Å, |U - V| uniform in [0, max]
  double bfactor = 0;              // Å², CTF envelope
  int particles = 100;             // particles per micrograph (fewer when they do not fit)
  std::vector<double> type_fractions;  // relative abundance of each map (empty: equal)
  double ice_rms = 0.15;           // rad per pixel
  int aggregates = 1;              // clumps of 4-12 particles
  int ice_crystals = 1;
  double carbon_probability = 0.3; // chance that the micrograph has a carbon edge
};

struct ScenePlacement {
  int type = 0;        // index of the map (0-based)
  double x = 0, y = 0; // micrograph pixels (centre of the map's origin)
  double rot = 0, tilt = 0, psi = 0;
};

struct SceneJunk {
  std::string kind;  // "aggregate", "ice_crystal", "carbon"
  double x = 0, y = 0, radius = 0;  // centre and radius (px); carbon: a point on the edge, radius 0
  double angle = 0;  // carbon: direction (degrees) of the normal pointing into the carbon
};

struct Scene {
  int nx = 0, ny = 0;            // micrograph
  int canvas_x = 0, canvas_y = 0, off_x = 0, off_y = 0;  // canvas size; micrograph pixel (0,0) at canvas (off_x, off_y)
  double angpix = 1;
  CtfParams ctf;
  Grid<float> phase;       // canvas: projected phase (rad), mean not removed
  Grid<float> absorption;  // canvas: amplitude factor a(r) (1 = none)
  std::vector<ScenePlacement> particles;
  std::vector<SceneJunk> junk;
};

// A map ready to be placed: its projector and phase scale.
struct SceneMap {
  std::string name;
  int box = 0;
  double radius_px = 0;   // radius of the particle (voxels above 10% of max), px
  double phase_scale = 0; // rad per map unit per voxel of path
  Projector projector;    // of the map as read (cubic)
};

// Prepares a map (cubic, pixel size `angpix`) for placement; InputError for an empty map.
SceneMap make_scene_map(const Grid<float>& map, const std::string& name, double angpix, double voltage_kv);

// Interaction constant sigma(V) in rad / (V Å) for electrons of `voltage_kv`.
double interaction_constant(double voltage_kv);

// Builds the scene of one micrograph from `rng` (its own stream). Deterministic for a given rng.
Scene make_scene(const SceneOptions& opt, const std::vector<SceneMap>& maps, std::mt19937_64& rng, int nthreads = 1);

// A good FFT size (only factors 2, 3, 5, 7) >= n, even.
int good_fft_size(int n);

}  // namespace regula

#include "regula/micrograph/gain.hpp"

#include "regula/core/error.hpp"

namespace regula {
namespace {

Grid<float> rotate(const Grid<float>& s, int rot) {
  const int nx = s.nx(), ny = s.ny();
  if (rot == 0) return s;
  Grid<float> d(rot % 2 ? ny : nx, rot % 2 ? nx : ny);
  for (int y = 0; y < ny; ++y)
    for (int x = 0; x < nx; ++x) {
      const float v = s(x, y);
      if (rot == 1)
        d(ny - 1 - y, x) = v;
      else if (rot == 2)
        d(nx - 1 - x, ny - 1 - y) = v;
      else
        d(y, nx - 1 - x) = v;
    }
  return d;
}

Grid<float> flip(const Grid<float>& s, int f) {
  if (f == 0) return s;
  const int nx = s.nx(), ny = s.ny();
  Grid<float> d(nx, ny);
  for (int y = 0; y < ny; ++y)
    for (int x = 0; x < nx; ++x) d(x, y) = f == 1 ? s(x, ny - 1 - y) : s(nx - 1 - x, y);
  return d;
}

void check(int rot, int f) {
  if (rot < 0 || rot > 3) input_error("--gain_rot {}: expected 0, 1, 2 or 3 (times 90 degrees clockwise)", rot);
  if (f < 0 || f > 2) input_error("--gain_flip {}: expected 0, 1 (upside down) or 2 (left-right)", f);
}

}  // namespace

Grid<float> orient_gain(const Grid<float>& gain, int rot, int f) {
  check(rot, f);
  return flip(rotate(gain, rot), f);
}

Grid<float> unorient_gain(const Grid<float>& gain, int rot, int f) {
  check(rot, f);
  return rotate(flip(gain, f), (4 - rot) % 4);
}

}  // namespace regula

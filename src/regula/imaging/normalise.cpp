#include "regula/imaging/normalise.hpp"

#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/random.hpp"

namespace regula {
namespace {

void check_image(const Grid<float>& img, const char* what) {
  if (img.nz() != 1 || img.nx() < 1 || img.ny() < 1)
    input_error("{}: expected a 2D image, got {}x{}x{}", what, img.nx(), img.ny(), img.nz());
}

// Calls f(x, y, value&) for the background pixels, x and y relative to the centre.
template <class F>
void for_background(Grid<float>& img, double r, F f) {
  const int cx = img.nx() / 2, cy = img.ny() / 2;
  const double r2 = r * r;
  for (int y = 0; y < img.ny(); ++y) {
    const double dy = y - cy;
    for (int x = 0; x < img.nx(); ++x) {
      const double dx = x - cx;
      if (dx * dx + dy * dy > r2) f(dx, dy, img(x, y));
    }
  }
}

}  // namespace

void subtract_background_ramp(Grid<float>& img, double bg_radius_px) {
  check_image(img, "ramp removal");
  // Normal equations of z = a x + b y + c over the background pixels.
  double sxx = 0, sxy = 0, syy = 0, sx = 0, sy = 0, n = 0, sxz = 0, syz = 0, sz = 0;
  for_background(img, bg_radius_px, [&](double x, double y, float& v) {
    sxx += x * x;
    sxy += x * y;
    syy += y * y;
    sx += x;
    sy += y;
    n += 1;
    sxz += x * v;
    syz += y * v;
    sz += v;
  });
  if (n < 3)
    input_error("ramp removal: background radius {} px leaves {} pixels outside it in a {}x{} image (need 3)",
                bg_radius_px, long(n), img.nx(), img.ny());
  // Solve [sxx sxy sx; sxy syy sy; sx sy n] (a b c)' = (sxz syz sz)' by Cramer's rule.
  const double det = sxx * (syy * n - sy * sy) - sxy * (sxy * n - sy * sx) + sx * (sxy * sy - syy * sx);
  if (!(std::abs(det) > 0)) input_error("ramp removal: the background pixels do not determine a plane");
  const double a = (sxz * (syy * n - sy * sy) - sxy * (syz * n - sy * sz) + sx * (syz * sy - syy * sz)) / det;
  const double b = (sxx * (syz * n - sz * sy) - sxz * (sxy * n - sy * sx) + sx * (sxy * sz - syz * sx)) / det;
  const double c = (sxx * (syy * sz - sy * syz) - sxy * (sxy * sz - syz * sx) + sxz * (sxy * sy - syy * sx)) / det;
  const int cx = img.nx() / 2, cy = img.ny() / 2;
  for (int y = 0; y < img.ny(); ++y)
    for (int x = 0; x < img.nx(); ++x) img(x, y) = float(img(x, y) - (a * (x - cx) + b * (y - cy) + c));
}

NormaliseResult normalise_particle(Grid<float>& img, const NormaliseOptions& opt, std::mt19937_64* rng) {
  check_image(img, "normalise");
  NormaliseResult res;
  if (2 * opt.bg_radius_px > img.nx())
    input_error("normalise: background radius {} px is more than half the {} px box", opt.bg_radius_px, img.nx());
  if (opt.white_dust > 0 || opt.black_dust > 0) {
    if (!rng) input_error("normalise: dust removal needs a random generator");
    const BackgroundStats st = background_stats(img, opt.bg_radius_px);
    if (st.count == 0) input_error("normalise: background radius {} px leaves no background pixels", opt.bg_radius_px);
    for (auto& v : img) {
      const double d = v - st.mean;
      if ((opt.white_dust > 0 && d > opt.white_dust * st.stddev) ||
          (opt.black_dust > 0 && d < -opt.black_dust * st.stddev)) {
        v = float(st.mean + st.stddev * normal01(*rng));
        ++res.dust_replaced;
      }
    }
  }
  if (opt.ramp) subtract_background_ramp(img, opt.bg_radius_px);
  res.stats = background_stats(img, opt.bg_radius_px);
  if (res.stats.count == 0)
    input_error("normalise: background radius {} px leaves no pixels outside it in a {}x{} image", opt.bg_radius_px,
                img.nx(), img.ny());
  if (res.stats.stddev < 1e-10) {
    res.flat = true;
    return res;
  }
  const double s = 1.0 / res.stats.stddev;
  for (auto& v : img) v = float((v - res.stats.mean) * s);
  return res;
}

}  // namespace regula

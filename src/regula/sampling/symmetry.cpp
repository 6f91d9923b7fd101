#include "regula/sampling/symmetry.hpp"

#include <cctype>
#include <charconv>
#include <cmath>

#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"

namespace regula {

namespace {

struct Generator {
  Vec3 axis;
  int fold;
};

Vec3 normalised(Vec3 v) {
  const double r = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  return {v[0] / r, v[1] / r, v[2] / r};
}

// Closure of the generators under multiplication (breadth-first, identity
// first). Two matrices are the same operator when all elements agree to 1e-6;
// products are re-orthonormalised implicitly by staying exact to ~1e-15.
std::vector<Mat3> close_group(const std::vector<Generator>& gens) {
  std::vector<Mat3> gmats;
  for (const auto& g : gens) gmats.push_back(axis_angle_matrix(normalised(g.axis), 360.0 / g.fold));
  std::vector<Mat3> ops{identity3()};
  auto known = [&](const Mat3& m) {
    for (const auto& o : ops)
      if (max_abs_diff(o, m) < 1e-6) return true;
    return false;
  };
  for (size_t i = 0; i < ops.size(); ++i) {
    for (const auto& g : gmats) {
      Mat3 m = matmul(g, ops[i]);
      if (!known(m)) ops.push_back(m);
      if (ops.size() > 200) runtime_error("symmetry group generation did not close (bug)");
    }
  }
  return ops;
}

[[noreturn]] void unknown_group(std::string_view name) {
  input_error("unknown symmetry group '{}' (expected C<n>, D<n>, T, O, I, I1-I4)", name);
}

}  // namespace

Mat3 axis_angle_matrix(const Vec3& u, double angle_deg) {
  const double a = deg2rad(angle_deg), c = std::cos(a), s = std::sin(a), t = 1 - c;
  Mat3 r;
  r[0] = {c + t * u[0] * u[0], t * u[0] * u[1] - s * u[2], t * u[0] * u[2] + s * u[1]};
  r[1] = {t * u[1] * u[0] + s * u[2], c + t * u[1] * u[1], t * u[1] * u[2] - s * u[0]};
  r[2] = {t * u[2] * u[0] - s * u[1], t * u[2] * u[1] + s * u[0], c + t * u[2] * u[2]};
  return r;
}

SymmetryGroup SymmetryGroup::parse(std::string_view name) {
  std::string up;
  for (char ch : name) up += char(std::toupper(static_cast<unsigned char>(ch)));
  // Trim surrounding blanks (STAR values and CLI options may carry them).
  while (!up.empty() && std::isspace(static_cast<unsigned char>(up.back()))) up.pop_back();
  while (!up.empty() && std::isspace(static_cast<unsigned char>(up.front()))) up.erase(up.begin());
  if (up.empty()) unknown_group(name);

  const Vec3 z{0, 0, 1}, x{1, 0, 0};
  std::vector<Generator> gens;
  if (up[0] == 'C' || up[0] == 'D') {
    if (up.size() < 2) unknown_group(name);
    int n = 0;
    const char* b = up.data() + 1;
    const char* e = up.data() + up.size();
    auto [ptr, ec] = std::from_chars(b, e, n);
    if (ec != std::errc() || ptr != e || n < 1 || n > 99 || b[0] == '+') unknown_group(name);
    if (n > 1) gens.push_back({z, n});
    if (up[0] == 'D') gens.push_back({x, 2});
    up = fmt::format("{}{}", up[0], n);  // canonical: "C07" -> "C7"
  } else if (up == "T") {
    gens = {{z, 3}, {{0, std::sqrt(2.0 / 3.0), std::sqrt(1.0 / 3.0)}, 2}};
  } else if (up == "O") {
    gens = {{{1, 1, 1}, 3}, {z, 4}};
  } else if (up[0] == 'I') {
    // RELION also lists a 3-fold per icosahedral group; it is implied by the
    // 2-fold and the 5-fold (and RELION's I3/I4 3-fold values are rounded at
    // 1e-8), so the group is generated from the exact 2- and 5-fold axes only.
    const double a = 0.525731112119133606, b = 0.850650808352039932;  // (1, 0, phi) / |(1, 0, phi)|
    if (up == "I" || up == "I2")
      gens = {{z, 2}, {{a, 0, b}, 5}};
    else if (up == "I1")
      gens = {{x, 2}, {{b, 0, -a}, 5}};
    else if (up == "I3")
      gens = {{{-a, 0, b}, 2}, {z, 5}};
    else if (up == "I4")
      gens = {{{a, 0, b}, 2}, {{2 / std::sqrt(5.0), 0, 1 / std::sqrt(5.0)}, 5}};
    else
      unknown_group(name);
  } else {
    unknown_group(name);
  }
  return SymmetryGroup(up, close_group(gens));
}

Mat3 nearest_symmetry_copy(const Mat3& A, const Mat3& B, const SymmetryGroup& group) {
  // The rotation angle of (A R)^T B falls as its trace grows: keep the copy of largest trace.
  Mat3 best = A;
  double best_trace = -4;
  for (const Mat3& R : group.operators()) {
    const Mat3 C = matmul(A, R);
    double tr = 0;
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 3; ++k) tr += C[k][i] * B[k][i];
    if (tr > best_trace + 1e-12) {
      best_trace = tr;
      best = C;
    }
  }
  return best;
}

double symmetric_distance_deg(const Mat3& A, const Mat3& B, const SymmetryGroup& group) {
  return rotation_distance_deg(nearest_symmetry_copy(A, B, group), B);
}

Volume symmetrise(const Volume& in, const SymmetryGroup& group, int nthreads) {
  const int n = in.nx();
  if (in.ny() != n || in.nz() != n)
    input_error("symmetrise: the map must be cubic, got {}x{}x{}", in.nx(), in.ny(), in.nz());
  if (group.is_c1()) return in;
  Volume out(n, n, n);
  const double c = n / 2;
  const auto& ops = group.operators();
  const double inv = 1.0 / double(ops.size());
  auto sample = [&](double x, double y, double z) -> double {
    const double fx = std::floor(x), fy = std::floor(y), fz = std::floor(z);
    const int x0 = int(fx), y0 = int(fy), z0 = int(fz);
    const double dx = x - fx, dy = y - fy, dz = z - fz;
    double v = 0;
    for (int k = 0; k < 2; ++k) {
      const int zz = z0 + k;
      if (zz < 0 || zz >= n) continue;
      const double wz = k ? dz : 1 - dz;
      for (int j = 0; j < 2; ++j) {
        const int yy = y0 + j;
        if (yy < 0 || yy >= n) continue;
        const double wy = j ? dy : 1 - dy;
        for (int i = 0; i < 2; ++i) {
          const int xx = x0 + i;
          if (xx < 0 || xx >= n) continue;
          v += wz * wy * (i ? dx : 1 - dx) * in(xx, yy, zz);
        }
      }
    }
    return v;
  };
  auto do_slice = [&](size_t zi, int) {
    const int z = int(zi);
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const Vec3 r{x - c, y - c, z - c};
        double acc = 0;
        for (const auto& R : ops) {
          const Vec3 p = matvec(R, r);
          acc += sample(p[0] + c, p[1] + c, p[2] + c);
        }
        out(x, y, z) = float(acc * inv);
      }
  };
  if (nthreads > 1) {
    ThreadPool pool(nthreads);
    pool.parallel_for(0, size_t(n), do_slice);
  } else {
    for (int z = 0; z < n; ++z) do_slice(size_t(z), 0);
  }
  return out;
}

}  // namespace regula

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
  // RELION's symmetry definitions list these axes; the icosahedral groups also list a 3-fold
  // (implied by the 2- and 5-fold, so the group is generated from the exact 2- and 5-fold axes
  // only: RELION's 3-fold values are rounded at 1e-8 to 1e-10). Only the order of the list
  // depends on them (relion_ordered_operators).
  std::vector<Generator> relion_extra;
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
    const double a = 0.525731112119133606, b = 0.850650808352039932;  // (1, 0, phi) / |(1, 0, phi)|
    if (up == "I" || up == "I2") {
      gens = {{z, 2}, {{a, 0, b}, 5}};
      relion_extra = {{{0, 0.356822076, 0.934172364}, 3}};
    } else if (up == "I1") {
      gens = {{x, 2}, {{b, 0, -a}, 5}};
      relion_extra = {{{0.9341723640, 0.3568220765, 0}, 3}};
    } else if (up == "I3") {
      gens = {{{-a, 0, b}, 2}, {z, 5}};
      relion_extra = {{{-0.4911234778630044, 0.3568220764705179, 0.7946544753759428}, 3}};
    } else if (up == "I4") {
      gens = {{{a, 0, b}, 2}, {{2 / std::sqrt(5.0), 0, 1 / std::sqrt(5.0)}, 5}};
      relion_extra = {{{0.4911234778630044, 0.3568220764705179, 0.7946544753759428}, 3}};
    } else {
      unknown_group(name);
    }
  } else {
    unknown_group(name);
  }
  std::vector<Axis> axes;
  for (const auto& g : gens) axes.push_back({g.axis, g.fold});
  for (const auto& g : relion_extra) axes.push_back({g.axis, g.fold});
  return SymmetryGroup(up, close_group(gens), std::move(axes));
}

std::vector<Mat3> SymmetryGroup::relion_ordered_operators() const {
  constexpr double kTol = 1e-6;  // RELION's equality and rounding threshold
  auto rounded = [](Mat3 m) {
    for (auto& row : m)
      for (double& v : row)
        if (std::abs(v) < kTol) v = 0;
    return m;
  };
  std::vector<Mat3> list;
  for (const Axis& ax : relion_axes_)
    for (int k = 1; k < ax.fold; ++k)
      list.push_back(rounded(axis_angle_matrix(normalised(ax.direction), -360.0 * k / ax.fold)));
  auto known = [&](const Mat3& m) {
    if (max_abs_diff(m, identity3()) <= kTol) return true;
    for (const auto& o : list)
      if (max_abs_diff(o, m) <= kTol) return true;
    return false;
  };
  auto try_pair = [&](size_t i, size_t j) {
    const Mat3 p = matmul(list[i], list[j]);
    if (!known(p)) list.push_back(rounded(p));
    if (list.size() > 200) runtime_error("symmetry list of {} did not close (bug)", name_);
  };
  // Products appended to the list only add pairs to later shells, so one pass over the shells
  // visits every pair in RELION's order.
  for (size_t m = 0; m < list.size(); ++m) {
    for (size_t i = 0; i <= m; ++i) try_pair(i, m);
    for (size_t j = m; j-- > 0;) try_pair(m, j);
  }
  if (list.size() + 1 != ops_.size())
    runtime_error("symmetry list of {} has {} operators, expected {} (bug)", name_, list.size() + 1, ops_.size());
  for (const auto& m : list) {
    bool found = false;
    for (const auto& o : ops_) found = found || max_abs_diff(o, m) < 1e-5;
    if (!found) runtime_error("symmetry list of {}: an operator outside the group (bug)", name_);
  }
  return list;
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

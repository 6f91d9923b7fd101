#include "regula/jobs/flex_analyse.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/multibody.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

namespace fs = std::filesystem;

std::string FlexAnalyseOptions::validate() const {
  if (data.empty()) return "--data: a multi-body refinement's _data.star is required";
  if (bodies.empty()) return "--bodies: the refinement's bodies STAR file is required";
  if (out_root.empty()) return "--o: an output root is required";
  if (do_maps && model.empty()) return "--do_maps needs --model (the multi-body _model.star naming the bodies' maps)";
  if (components < 1) return fmt::format("--k {}: at least 1", components);
  if (maps_per_component < 2) return fmt::format("--maps_per_movie {}: at least 2", maps_per_component);
  if (select_component > 0 && !(select_min < select_max))
    return fmt::format("--select_eigenvalue_min {} must be below --select_eigenvalue_max {}", select_min, select_max);
  return "";
}

namespace {

// Rotation vector (axis times angle, degrees) of a rotation matrix, and back.
Vec3 rotation_vector(const Mat3& R) {
  const double c = std::clamp((R[0][0] + R[1][1] + R[2][2] - 1) / 2, -1.0, 1.0);
  const double th = std::acos(c);
  if (th < 1e-12) return {0, 0, 0};
  const double f = rad2deg(th) / (2 * std::sin(th));
  return {f * (R[2][1] - R[1][2]), f * (R[0][2] - R[2][0]), f * (R[1][0] - R[0][1])};
}

Mat3 rotation_from_vector(const Vec3& w) {
  const double deg = std::sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2]);
  if (deg < 1e-12) return identity3();
  return axis_angle_matrix({w[0] / deg, w[1] / deg, w[2] / deg}, deg);
}


}  // namespace

FlexAnalyseResult flex_analyse(const FlexAnalyseOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("flex_analyse: " + msg);
  const ParticleTable table = ParticleTable::read(opt.data);
  const size_t N = table.size();
  table.require_angles(opt.data, "the consensus poses of the multi-body refinement");
  const double angpix = table.optics.front().pixel_size;
  if (!(angpix > 0)) input_error("{}: optics group 1 has no pixel size", opt.data);
  const star::Document doc = star::read(opt.data);
  // The bodies' maps (for --do_maps) and box.
  std::vector<Grid<float>> maps;
  int n = table.optics.front().image_size;
  if (!opt.model.empty()) {
    const star::Document m = star::read(opt.model);
    const star::Block& cls = m.require("model_classes");
    const int c = cls.require_column("rlnReferenceImage");
    for (size_t k = 0; k < cls.rows(); ++k) maps.push_back(mrc::read(std::string(cls.value(k, c))));
    if (!maps.empty()) n = maps[0].nx();
  }
  if (n <= 0) input_error("{}: no rlnImageSize in data_optics; give --model for the box size", opt.data);
  const std::vector<BodyDefinition> bodies = read_bodies(opt.bodies, n, angpix);
  const size_t B = bodies.size();
  if (!maps.empty() && maps.size() != B)
    input_error("{}: {} maps in data_model_classes but {} has {} bodies", opt.model, maps.size(), opt.bodies, B);
  for (const auto& mp : maps)
    if (mp.nx() != n || mp.ny() != n || mp.nz() != n)
      input_error("{}: the bodies' maps must be {}^3 (got {}x{}x{})", opt.model, n, mp.nx(), mp.ny(), mp.nz());
  if (N < 6 * B) input_error("{}: {} particles; the analysis of {} bodies needs at least {}", opt.data, N, B, 6 * B);
  // Radius of gyration of each body's mask about its centre of mass: Å per radian of rotation.
  std::vector<double> gyration(B);
  for (size_t b = 0; b < B; ++b) {
    double s = 0, s2 = 0;
    const auto& c = bodies[b].com;
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x) {
          const double w = bodies[b].mask(x, y, z);
          const double dx = x - n / 2 - c[0], dy = y - n / 2 - c[1], dz = z - n / 2 - c[2];
          s += w;
          s2 += w * (dx * dx + dy * dy + dz * dz);
        }
    gyration[b] = std::sqrt(s2 / std::max(s, 1e-30)) * angpix;
  }
  // The data: 6 columns per body.
  const size_t D = 6 * B;
  std::vector<double> X(N * D);
  for (size_t b = 0; b < B; ++b) {
    const std::string name = fmt::format("images_body_{}", b + 1);
    const star::Block* t = doc.find(name);
    if (!t) input_error("{}: no block data_{} (not a multi-body refinement of {} bodies?)", opt.data, name, B);
    if (t->rows() != N) input_error("{}: data_{} has {} rows, data_particles {}", opt.data, name, t->rows(), N);
    const int cr = t->require_column("rlnAngleRot"), ct = t->require_column("rlnAngleTilt"),
              cp = t->require_column("rlnAnglePsi"), cx = t->require_column("rlnOriginXAngst"),
              cy = t->require_column("rlnOriginYAngst");
    const double scale = deg2rad(1.0) * gyration[b];
    for (size_t i = 0; i < N; ++i) {
      const Mat3 R = body_rotation_from_angles({t->number(i, cr), t->number(i, ct), t->number(i, cp)}, bodies[b].orient);
      const Vec3 w = rotation_vector(R);
      const Mat3 A = matmul(euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]), R);
      const Vec3 tr = matvec(transpose(A), {-t->number(i, cx), -t->number(i, cy), 0.0});
      double* row = &X[i * D + 6 * b];
      for (int k = 0; k < 3; ++k) {
        row[k] = w[size_t(k)] * scale;
        row[3 + k] = tr[size_t(k)];
      }
    }
  }
  std::vector<double> mean(D, 0.0);
  for (size_t i = 0; i < N; ++i)
    for (size_t j = 0; j < D; ++j) mean[j] += X[i * D + j] / double(N);
  std::vector<double> cov(D * D, 0.0);
  for (size_t i = 0; i < N; ++i)
    for (size_t j = 0; j < D; ++j) {
      const double xj = X[i * D + j] - mean[j];
      for (size_t k = j; k < D; ++k) cov[j * D + k] += xj * (X[i * D + k] - mean[k]);
    }
  for (size_t j = 0; j < D; ++j)
    for (size_t k = j; k < D; ++k) cov[k * D + j] = cov[j * D + k] /= double(N - 1);
  FlexAnalyseResult res;
  symmetric_eigen(cov, D, res.variance, res.eigenvectors);
  const double total = std::accumulate(res.variance.begin(), res.variance.end(), 0.0);
  for (double v : res.variance) res.fraction.push_back(total > 0 ? std::max(v, 0.0) / total : 0.0);
  res.projections.assign(N, std::vector<double>(D, 0.0));
  for (size_t i = 0; i < N; ++i)
    for (size_t k = 0; k < D; ++k) {
      double p = 0;
      for (size_t j = 0; j < D; ++j) p += (X[i * D + j] - mean[j]) * res.eigenvectors[k][j];
      res.projections[i][k] = p;
    }
  const fs::path dir = fs::path(opt.out_root).parent_path();
  if (!dir.empty()) fs::create_directories(dir);
  {
    std::string s = "# component variance fraction eigenvector (per body: rotation x y z, translation x y z; Å)\n";
    for (size_t k = 0; k < D; ++k) {
      s += fmt::format("{} {:.6g} {:.6f}", k + 1, res.variance[k], res.fraction[k]);
      for (double e : res.eigenvectors[k]) s += fmt::format(" {:.6f}", e);
      s += "\n";
    }
    write_file_atomic(opt.out_root + "_eigenvectors.dat", s);
    std::string p;
    for (size_t i = 0; i < N; ++i) {
      p += std::string(table.image_name(i)) + " ";
      for (double v : res.projections[i]) p += fmt::format("{:>15.6g}", v);
      p += " \n";
    }
    write_file_atomic(opt.out_root + "_projections_along_eigenvectors_all_particles.txt", p);
  }
  for (size_t k = 0; k < std::min<size_t>(D, 6); ++k)
    spdlog::info("flex_analyse: component {} explains {:.1f}% of the variance", k + 1, 100 * res.fraction[k]);
  if (opt.do_maps) {
    mrc::WriteOptions wo;
    wo.pixel_size = angpix;
    const size_t K = std::min<size_t>(size_t(opt.components), D);
    const size_t M = size_t(opt.maps_per_component);
    for (size_t k = 0; k < K; ++k) {
      std::vector<double> p(N);
      for (size_t i = 0; i < N; ++i) p[i] = res.projections[i][k];
      std::sort(p.begin(), p.end());
      for (size_t m = 0; m < M; ++m) {
        const size_t lo = m * N / M, hi = (m + 1) * N / M;
        double avg = 0;
        for (size_t i = lo; i < hi; ++i) avg += p[i] / double(std::max<size_t>(hi - lo, 1));
        Grid<float> sum(n, n, n), wsum(n, n, n);
        for (size_t b = 0; b < B; ++b) {
          Vec3 w, t;
          for (int a = 0; a < 3; ++a) {
            w[size_t(a)] = (mean[6 * b + size_t(a)] + avg * res.eigenvectors[k][6 * b + size_t(a)]) /
                           (deg2rad(1.0) * gyration[b]);
            t[size_t(a)] = (mean[6 * b + 3 + size_t(a)] + avg * res.eigenvectors[k][6 * b + 3 + size_t(a)]) / angpix;
          }
          const Mat3 R = rotation_from_vector(w);
          const auto& c = bodies[b].com;
          const Vec3 com{double(c[0]), double(c[1]), double(c[2])};
          Grid<float> body = maps[b];
          for (size_t v = 0; v < body.size(); ++v) body[v] *= bodies[b].mask[v];
          const Grid<float> mb = transform_map(body, R, com, t), mm = transform_map(bodies[b].mask, R, com, t);
          for (size_t v = 0; v < sum.size(); ++v) {
            sum[v] += mb[v];
            wsum[v] += mm[v];
          }
        }
        for (size_t v = 0; v < sum.size(); ++v)
          if (wsum[v] > 1) sum[v] /= wsum[v];
        const std::string name = fmt::format("{}_component{:03d}_bin{:03d}.mrc", opt.out_root, k + 1, m + 1);
        mrc::write(name, sum, wo);
        res.maps.push_back(name);
      }
    }
    spdlog::info("flex_analyse: {} maps along the first {} components ({}_component001_bin001.mrc ...)",
                 res.maps.size(), K, opt.out_root);
  }
  if (opt.select_component > 0) {
    if (size_t(opt.select_component) > D)
      input_error("--select_eigenvalue {}: there are {} components", opt.select_component, D);
    std::vector<size_t> keep;
    for (size_t i = 0; i < N; ++i) {
      const double v = res.projections[i][size_t(opt.select_component - 1)];
      if (v >= opt.select_min && v <= opt.select_max) keep.push_back(i);
    }
    star::Document out = doc;
    for (star::Block& blk : out.blocks)
      if (blk.name == "particles" || blk.name.rfind("images_body_", 0) == 0) blk.select_rows(keep);
    res.selection = opt.out_root + "_selected_particles.star";
    res.selected = keep.size();
    star::write(res.selection, out);
    spdlog::info("flex_analyse: {} of {} particles with projection {} in [{}, {}]; wrote {}", keep.size(), N,
                 opt.select_component, opt.select_min, opt.select_max, res.selection);
  }
  return res;
}

}  // namespace regula

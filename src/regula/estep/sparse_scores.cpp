#include "regula/estep/sparse_scores.hpp"

#include <algorithm>

#include "regula/core/blas.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/estep/matrices.hpp"

namespace regula::estep {

PoseList oversampled_poses(const SparseWeights& coarse, size_t t_children, size_t j_children) {
  if (t_children == 0 || j_children == 0) runtime_error("estep: oversampling with zero children");
  if (coarse.offset.size() != coarse.n + 1 || coarse.offset.back() != coarse.entry.size())
    runtime_error("estep: inconsistent sparse weights ({} particles, {} entries)", coarse.n, coarse.entry.size());
  if ((coarse.t * t_children) >> 32 || (coarse.j * j_children) >> 32)
    runtime_error("estep: {} x {} fine poses exceed 2^32", coarse.t * t_children, coarse.j * j_children);
  PoseList out;
  out.n = coarse.n;
  out.t = coarse.t * t_children;
  out.j = coarse.j * j_children;
  out.offset.assign(coarse.n + 1, 0);
  out.pose.reserve(coarse.entry.size() * t_children * j_children);
  // Children of different coarse poses are different (fine index = coarse index * children + child).
  for (size_t i = 0; i < coarse.n; ++i) {
    for (size_t q = coarse.offset[i]; q < coarse.offset[i + 1]; ++q) {
      const PoseWeight& e = coarse.entry[q];
      for (size_t a = 0; a < t_children; ++a)
        for (size_t b = 0; b < j_children; ++b)
          out.pose.push_back({uint32_t(e.t * t_children + a), uint32_t(e.j * j_children + b)});
    }
    out.offset[i + 1] = out.pose.size();
  }
  return out;
}

std::vector<uint32_t> compact_references(PoseList& poses) {
  std::vector<uint32_t> slot(poses.j, 0), used;
  for (const PoseList::Pose& p : poses.pose) slot[p.j] = 1;
  for (size_t v = 0; v < poses.j; ++v)
    if (slot[v]) {
      slot[v] = uint32_t(used.size());
      used.push_back(uint32_t(v));
    }
  for (PoseList::Pose& p : poses.pose) p.j = slot[p.j];
  poses.j = used.size();
  return used;
}

double compute_pose_scores(const ParticleBatch& pb, const TranslationPhases& tp, const ReferenceSlices& refs,
                           const PoseList& poses, std::vector<float>& out, ThreadPool& pool) {
  pb.validate();
  tp.validate(pb.m);
  refs.validate(pb.m);
  if (poses.n != pb.n || poses.offset.size() != pb.n + 1 || poses.offset.back() != poses.pose.size())
    runtime_error("estep: pose list for {} particles does not match the batch of {}", poses.n, pb.n);
  if (poses.t != tp.t || poses.j != refs.j)
    runtime_error("estep: pose list over {} x {} poses, shifts and references give {} x {}", poses.t, poses.j, tp.t,
                  refs.j);
  for (const PoseList::Pose& p : poses.pose)
    if (p.t >= tp.t || p.j >= refs.j) runtime_error("estep: pose ({}, {}) out of range", p.t, p.j);
  set_blas_single_threaded();
  const size_t m = pb.m;
  out.assign(poses.pose.size(), 0.0f);

  struct Scratch {
    detail::DistinctPoses d;
    std::vector<cfloat> a, r;
    std::vector<float> c2w, r2, a1, a2;
  };
  std::vector<Scratch> scratch(size_t(pool.size()));
  std::vector<double> flops(pb.n, 0.0);
  pool.parallel_for(0, pb.n, [&](size_t i, int thread) {
    const size_t q0 = poses.offset[i], q1 = poses.offset[i + 1];
    if (q0 == q1) return;
    Scratch& s = scratch[size_t(thread)];
    s.d.build(std::span<const PoseList::Pose>(poses.pose.data() + q0, q1 - q0), tp.t, refs.j);
    const size_t nt = s.d.t.size(), nj = s.d.j.size();
    flops[i] = 4.0 * double(m) * double(nt) * double(nj) + 2.0 * double(m) * double(nj);
    // Rows of s C w X^t for the particle's translations (the rows of compute_scores).
    s.a.resize(nt * m);
    for (size_t u = 0; u < nt; ++u)
      detail::shifted_weighted_row(pb, tp, i, s.d.t[u], s.a.data() + u * m);
    s.r.resize(nj * m);
    s.r2.resize(nj * m);
    for (size_t u = 0; u < nj; ++u) {
      const cfloat* src = refs.p.data() + size_t(s.d.j[u]) * m;
      std::copy(src, src + m, s.r.data() + u * m);
      for (size_t k = 0; k < m; ++k) s.r2[u * m + k] = std::norm(src[k]);
    }
    s.c2w.resize(m);
    detail::ctf2_weight_row(pb, i, s.c2w.data());
    s.a1.resize(nj);
    s.a2.resize(nt * nj);
    // A1[j] = sum_k s^2 C^2 w |P_j|^2,  A2[t, j] = sum_k Re(conj(s C w X^t) P_j)
    detail::sgemm(false, true, 1, nj, m, s.c2w.data(), m, s.r2.data(), m, 0.0f, s.a1.data(), nj);
    detail::sgemm(false, true, nt, nj, 2 * m, reinterpret_cast<const float*>(s.a.data()), 2 * m,
                  reinterpret_cast<const float*>(s.r.data()), 2 * m, 0.0f, s.a2.data(), nj);
    for (size_t q = q0; q < q1; ++q) {
      const uint32_t ut = s.d.t_slot[poses.pose[q].t], uj = s.d.j_slot[poses.pose[q].j];
      out[q] = s.a2[ut * nj + uj] - 0.5f * s.a1[uj];
    }
  });
  double total = 0;
  for (double f : flops) total += f;
  return total;
}

}  // namespace regula::estep

#include "regula/jobs/particle_subtract.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/imaging/ctf.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/mask.hpp"
#include "regula/imaging/particle_ctf.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"
#include "regula/model/refinement_files.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

namespace fs = std::filesystem;

namespace {

constexpr double kUnset = 9999;

std::string as_dir(std::string d) {
  if (!d.empty() && d.back() != '/') d += '/';
  return d;
}

}  // namespace

void check_subtraction_optics(const ParticleTable& table, double model_pixel, int model_box) {
  const star::Block* ob = table.document().find("optics");
  std::string mtf;
  for (size_t g = 0; g < table.optics.size(); ++g) {
    const OpticsGroup& og = table.optics[g];
    if (std::abs(og.pixel_size - model_pixel) > 1e-4 * model_pixel)
      input_error("{}: optics group {} has pixel size {} Å but the refinement's model has {} Å (RELION rescales "
                  "such groups; Regula does not)",
                  table.source(), og.number, og.pixel_size, model_pixel);
    if (og.image_size > 0 && og.image_size != model_box)
      input_error("{}: optics group {} has box {} px but the refinement's model has {} px", table.source(), og.number,
                  og.image_size, model_box);
    if (!ob || g >= ob->rows()) continue;
    auto value = [&](const char* label) -> std::string {
      const int c = ob->column(label);
      return c < 0 ? std::string() : std::string(ob->value(g, c));
    };
    auto nonzero = [&](const char* label) {
      const int c = ob->column(label);
      return c >= 0 && ob->is_number(g, c) && ob->number(g, c) != 0;
    };
    for (const char* l : {"rlnBeamTiltX", "rlnBeamTiltY"})
      if (nonzero(l))
        input_error("{}: optics group {} has _{} (beam tilt is not modelled by Regula's subtraction)",
                    table.source(), og.number, l);
    for (const char* l : {"rlnOddZernike", "rlnEvenZernike"})
      if (!value(l).empty() && value(l) != "[]")
        input_error("{}: optics group {} has _{} (higher-order aberrations are not modelled by Regula)",
                    table.source(), og.number, l);
    for (const char* l : {"rlnMagMat01", "rlnMagMat10"})
      if (nonzero(l))
        input_error("{}: optics group {} has anisotropic magnification (_{}), not modelled by Regula",
                    table.source(), og.number, l);
    for (const char* l : {"rlnMagMat00", "rlnMagMat11"}) {
      const int c = ob->column(l);
      if (c >= 0 && ob->is_number(g, c) && std::abs(ob->number(g, c) - 1) > 1e-9)
        input_error("{}: optics group {} has anisotropic magnification (_{}), not modelled by Regula",
                    table.source(), og.number, l);
    }
    const std::string m = value("rlnMtfFileName");
    if (!m.empty() && !mtf.empty() && m != mtf)
      input_error("{}: optics groups have different MTFs (_rlnMtfFileName); RELION weighs the projections by each "
                  "group's MTF relative to their average, which Regula does not model",
                  table.source());
    if (!m.empty()) mtf = m;
  }
}

// The group of each particle as RELION's Experiment numbers them: groups in order of first
// appearance of rlnGroupName, or else of the micrograph name without its "Job/jobNNN/" prefix;
// a single group when the file has neither.
std::vector<int> relion_group_index(const ParticleTable& table) {
  const star::Block& pb = table.particles_block();
  const int c_group = pb.column("rlnGroupName");
  const int c_mic = pb.column("rlnMicrographName");
  std::vector<int> out(table.size(), 0);
  if (c_group < 0 && c_mic < 0) return out;
  std::map<std::string, int> seen;
  for (size_t i = 0; i < table.size(); ++i) {
    std::string name(pb.value(i, c_group >= 0 ? c_group : c_mic));
    if (c_group < 0) {
      // "MotionCorr/job002/Movies/a.mrc" -> "Movies/a.mrc" (RELION's decomposePipelineFileName).
      const size_t p = name.find("/job");
      if (p != std::string::npos && p + 8 <= name.size() && name[p + 7] == '/' &&
          std::all_of(name.begin() + long(p) + 4, name.begin() + long(p) + 7, [](char ch) { return std::isdigit(ch); }))
        name = name.substr(p + 8);
    }
    auto [it, added] = seen.emplace(name, int(seen.size()));
    out[i] = it->second;
  }
  return out;
}

namespace {

struct Subtraction {
  const RefinementFiles* files = nullptr;
  // projectors[h][k]: half h (0, or 1 for the second half), class k (0-based); null when unused.
  std::vector<std::vector<std::unique_ptr<Projector>>> projectors;
  std::vector<int> half, cls, group;  // per particle, 0-based
  std::vector<bool> premultiplied;    // per optics group
  bool recentre = false;
  std::array<double, 3> centre{0, 0, 0};  // px (model pixels) from the map centre
  int n = 0, n_out = 0;
};

ParticleSubtractResult revert_subtraction(const ParticleSubtractOptions& opt) {
  ParticleTable table = ParticleTable::read(opt.revert);
  star::Block& pb = table.particles_block();
  const int c_ori = pb.column("rlnImageOriginalName");
  if (c_ori < 0) input_error("{}: no _rlnImageOriginalName column (not a subtracted particle file)", opt.revert);
  if (!pb.has("rlnImageName")) input_error("{}: no _rlnImageName column", opt.revert);
  const size_t n = table.size();
  std::vector<std::string> subtracted(n), original(n);
  for (size_t i = 0; i < n; ++i) {
    subtracted[i] = std::string(table.image_name(i));
    original[i] = std::string(pb.value(i, c_ori));
  }
  pb.set_column("rlnImageOriginalName", subtracted);
  pb.set_column("rlnImageName", original);
  ParticleTable back = ParticleTable::from_document(table.sync());
  // Box of each optics group from its first image.
  std::vector<bool> done(back.optics.size(), false);
  for (size_t i = 0; i < n; ++i) {
    const size_t g = size_t(back.optics_index[i]);
    if (done[g]) continue;
    const mrc::Header h = mrc::read_header(back.image(i).path);
    if (h.size_x() != h.size_y())
      input_error("{}: image {} is {}x{}, expected square", back.where(i), back.image_name(i), h.size_x(), h.size_y());
    back.optics[g].image_size = h.size_x();
    done[g] = true;
  }
  ParticleSubtractResult res;
  res.particles = n;
  fs::create_directories(as_dir(opt.out_dir));
  res.star = as_dir(opt.out_dir) + "original.star";
  back.write(res.star);
  spdlog::info("particle_subtract --revert: {} particles; wrote {}", n, res.star);
  return res;
}

// Loads the (1 - mask)-weighted maps that particles use and checks the particles against them.
void prepare(Subtraction& s, const ParticleTable& table, const ParticleSubtractOptions& opt, const Grid<float>& keep) {
  const RefinementFiles& f = *s.files;
  const ModelFile& m0 = f.models[0];
  const size_t count = table.size();
  s.half.assign(count, 0);
  s.cls.assign(count, 0);
  const size_t nclass = m0.references.size();
  const bool by_class = !opt.ignore_class && table.particles_block().has("rlnClassNumber");
  for (size_t i = 0; i < count; ++i) {
    if (f.split_halves) {
      const int h = table.random_subset[i];
      if (h != 1 && h != 2)
        input_error("{}: _rlnRandomSubset is {} but the refinement has two half sets (1 or 2 expected)",
                    table.where(i), h);
      s.half[i] = h - 1;
    }
    if (by_class) {
      const int k = table.class_number[i];
      if (k < 1 || size_t(k) > nclass)
        input_error("{}: particle of class {} but the refinement has {} class{} (after a Class3D without "
                    "alignment on a Refine3D, use --ignore_class)",
                    table.where(i), k, nclass, nclass == 1 ? "" : "es");
      s.cls[i] = k - 1;
    }
  }
  std::vector<std::vector<bool>> used(f.models.size(), std::vector<bool>(nclass, false));
  for (size_t i = 0; i < count; ++i) used[size_t(s.half[i])][size_t(s.cls[i])] = true;
  s.projectors.clear();
  s.projectors.resize(f.models.size());
  for (size_t h = 0; h < f.models.size(); ++h) {
    const ModelFile& m = f.models[h];
    s.projectors[h].resize(m.references.size());
    for (size_t k = 0; k < m.references.size(); ++k) {
      if (!used[h][k]) continue;
      Grid<float> map = mrc::read(m.references[k]);
      if (map.nx() != s.n || map.ny() != s.n || map.nz() != s.n)
        input_error("{}: map is {}x{}x{}, expected {}^3 (rlnOriginalImageSize of {})", m.references[k], map.nx(),
                    map.ny(), map.nz(), s.n, m.path);
      if (!keep.empty())
        for (size_t v = 0; v < map.size(); ++v) map[v] *= 1.0f - keep[v];
      const int pad = int(std::lround(m.padding));
      s.projectors[h][k] = std::make_unique<Projector>(map, pad, m.current_size / 2, opt.threads);
      spdlog::info("particle_subtract: {} (half {}, class {}): frequencies up to {} px, padding {}", m.references[k],
                   h + 1, k + 1, m.current_size / 2, pad);
    }
  }
  if (f.scale) {
    s.group = relion_group_index(table);
    for (size_t i = 0; i < count; ++i) {
      const ModelFile& m = f.models[size_t(s.half[i])];
      if (size_t(s.group[i]) >= m.group_scale.size())
        input_error("{}: the particles make {} or more groups but {} has {} in data_model_groups (scale correction)",
                    table.where(i), s.group[i] + 1, m.path, m.group_scale.size());
    }
  }
  s.premultiplied.assign(table.optics.size(), false);
  if (const star::Block* ob = table.document().find("optics")) {
    const int c = ob->column("rlnCtfDataAreCtfPremultiplied");
    for (size_t g = 0; g < table.optics.size() && c >= 0 && g < ob->rows(); ++g)
      s.premultiplied[g] = ob->value(g, c) == "1";
  }
}

// Subtracts the projection from one image (in place) and returns the new origin (Å) when
// re-centring.
std::array<double, 2> subtract_one(const Subtraction& s, const ParticleTable& table, size_t i, Image& img) {
  const RefinementFiles& f = *s.files;
  const int h = s.half[i];
  const ModelFile& m = f.models[size_t(h)];
  const double px = table.optics_of(i).pixel_size;
  const int n = s.n;
  if (f.norm) {
    const int c = table.particles_block().column("rlnNormCorrection");
    const double norm = c >= 0 ? table.particles_block().number(i, c) : 1.0;
    if (!(norm > 0)) input_error("{}: _rlnNormCorrection {} must be positive", table.where(i), norm);
    const float factor = float(m.norm_average / norm);
    for (float& v : img) v *= factor;
  }
  Grid<cfloat> F = fourier_centred(img);
  const Mat3 A = euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]);
  Grid<cfloat> P = s.projectors[size_t(h)][size_t(s.cls[i])]->project(A);
  const double ox = table.origin_x[i] / px, oy = table.origin_y[i] / px;
  shift_phase(P, -ox, -oy, n);
  subtract_projection(F, P, f, table, i, s.premultiplied[size_t(table.optics_index[i])],
                      f.scale ? m.group_scale[size_t(s.group[i])] : 1.0, px);
  img = from_fourier_centred(F, n);
  std::array<double, 2> origin{table.origin_x[i], table.origin_y[i]};
  if (s.recentre) {
    const double scale = m.pixel_size / px;
    const Vec3 c{s.centre[0] * scale, s.centre[1] * scale, s.centre[2] * scale};
    const Vec3 Ac = matvec(A, c);
    double rx = ox - Ac[0], ry = oy - Ac[1];
    const double sx = std::round(rx), sy = std::round(ry);  // half away from zero, as RELION's ROUND
    rx -= sx;
    ry -= sy;
    img = shift_wrapped(img, int(sx), int(sy));
    origin = {px * rx, px * ry};
  }
  if (s.n_out != n) img = window(img, s.n_out);
  return origin;
}

}  // namespace

std::string ParticleSubtractOptions::validate() const {
  if (out_dir.empty()) return "--o: an output directory is required";
  if (revert.empty() == optimiser.empty()) return "give either --i (an optimiser STAR file) or --revert, not both";
  if (!revert.empty()) return "";
  if (recenter_on_mask && mask.empty()) return "--recenter_on_mask needs --mask";
  const int given = (center_x != kUnset) + (center_y != kUnset) + (center_z != kUnset);
  if (given != 0 && given != 3) return "--center_x, --center_y and --center_z go together";
  if (given == 3 && recenter_on_mask) return "give either --recenter_on_mask or --center_x/y/z, not both";
  if (new_box != -1 && new_box < 2) return fmt::format("--new_box: must be at least 2 px (got {})", new_box);
  if (threads < 1) return fmt::format("--j: must be at least 1 (got {})", threads);
  return "";
}

ParticleSubtractResult particle_subtract(const ParticleSubtractOptions& opt) {
  if (auto msg = opt.validate(); !msg.empty()) throw InputError("particle_subtract: " + msg);
  if (!opt.revert.empty()) return revert_subtraction(opt);

  const RefinementFiles files = read_refinement_files(opt.optimiser);
  if (!files.body_star.empty())
    input_error("{}: a multi-body refinement (_rlnBodyStarFile {}): multi-body subtraction is not supported",
                opt.optimiser, files.body_star);
  for (const ModelFile& m : files.models) {
    if (m.data_dim != 2 || m.reference_dim != 3)
      input_error("{}: {}D references and {}D data: only 3D references and 2D particle images are supported", m.path,
                  m.reference_dim, m.data_dim);
    if (m.interpolator != 1)
      input_error("{}: _rlnFourierSpaceInterpolator {} (nearest neighbour) is not supported, only linear (1)", m.path,
                  m.interpolator);
    if (std::abs(m.padding - std::round(m.padding)) > 1e-6 || m.padding < 1)
      input_error("{}: _rlnPaddingFactor {} must be a whole number >= 1", m.path, m.padding);
    if (m.original_size != files.models[0].original_size || m.references.size() != files.models[0].references.size())
      input_error("{}: the two half models differ in box or number of classes", m.path);
  }
  const std::string data_star = opt.data.empty() ? files.data_star : opt.data;
  ParticleTable table = ParticleTable::read(data_star);
  const size_t count = table.size();
  if (count == 0) input_error("{}: no particles (the particles table has no rows)", data_star);
  table.require_angles(data_star, "subtraction needs refined poses");

  Subtraction s;
  s.files = &files;
  s.n = files.models[0].original_size;
  check_subtraction_optics(table, files.models[0].pixel_size, s.n);

  Grid<float> keep;
  if (!opt.mask.empty()) {
    keep = mrc::read(opt.mask);
    if (keep.nx() != s.n || keep.ny() != s.n || keep.nz() != s.n)
      input_error("{}: mask is {}x{}x{}, expected {}^3 as the refinement's maps", opt.mask, keep.nx(), keep.ny(),
                  keep.nz(), s.n);
    const auto [lo, hi] = std::minmax_element(keep.begin(), keep.end());
    if (*lo < 0 || *hi > 1)
      input_error("{}: mask values span [{}, {}], expected values in [0, 1]", opt.mask, *lo, *hi);
  }
  if (opt.recenter_on_mask) {
    s.recentre = true;
    s.centre = centre_of_mass(keep);
  } else if (opt.center_x != kUnset) {
    s.recentre = true;
    s.centre = {opt.center_x, opt.center_y, opt.center_z};
  }
  if (s.recentre)
    spdlog::info("particle_subtract: re-centring on the projections of ({:.3f}, {:.3f}, {:.3f}) px from the map centre",
                 s.centre[0], s.centre[1], s.centre[2]);
  s.n_out = opt.new_box > 0 ? opt.new_box - opt.new_box % 2 : s.n;
  prepare(s, table, opt, keep);

  // Output names, per optics group, as RELION: OUT/Particles/subtracted_opticsgroupG.mrcs.
  const std::string out = as_dir(opt.out_dir);
  fs::create_directories(out + "Particles");
  std::vector<std::unique_ptr<mrc::StackWriter>> writers(table.optics.size());
  std::vector<std::string> stacks(table.optics.size());
  std::vector<long> next(table.optics.size(), 0);
  mrc::WriteOptions wo;
  wo.is_stack = true;
  std::vector<std::string> original(count);
  for (size_t i = 0; i < count; ++i) original[i] = std::string(table.image_name(i));

  ParticleImages images(table);
  ThreadPool pool(opt.threads);
  Progress progress("particle_subtract: images", double(count));
  const size_t batch = 256;
  std::vector<Image> buf(batch);
  std::vector<std::array<double, 2>> origin(count);
  std::vector<long> index(count);
  for (size_t b0 = 0; b0 < count; b0 += batch) {
    const size_t b1 = std::min(count, b0 + batch);
    for (size_t i = b0; i < b1; ++i) {  // one reader per stack: sequential
      buf[i - b0] = images.read(i);
      const Image& img = buf[i - b0];
      if (img.nx() != s.n || img.ny() != s.n || img.nz() != 1)
        input_error("{}: image is {}x{}x{}, expected {}x{} (rlnOriginalImageSize of the model)", table.where(i),
                    img.nx(), img.ny(), img.nz(), s.n, s.n);
    }
    pool.parallel_for(b0, b1, [&](size_t i, int) { origin[i] = subtract_one(s, table, i, buf[i - b0]); });
    for (size_t i = b0; i < b1; ++i) {
      const size_t g = size_t(table.optics_index[i]);
      if (!writers[g]) {
        stacks[g] = fmt::format("{}Particles/subtracted_opticsgroup{}.mrcs", out, g + 1);
        wo.pixel_size = table.optics[g].pixel_size;
        writers[g] = std::make_unique<mrc::StackWriter>(stacks[g], s.n_out, s.n_out, wo);
      }
      writers[g]->append(buf[i - b0]);
      index[i] = ++next[g];
    }
    progress.advance(double(b1 - b0));
  }

  for (size_t i = 0; i < count; ++i) {
    table.set_image(i, index[i], stacks[size_t(table.optics_index[i])]);
    if (s.recentre) {
      table.origin_x[i] = origin[i][0];
      table.origin_y[i] = origin[i][1];
    }
  }
  if (opt.new_box > 0)
    for (OpticsGroup& og : table.optics) og.image_size = s.n_out;
  star::Block& pb = table.particles_block();
  pb.set_column("rlnImageOriginalName", original);
  if (s.recentre) {
    pb.remove_column("rlnOriginXPriorAngst");
    pb.remove_column("rlnOriginYPriorAngst");
  }
  ParticleSubtractResult res;
  res.particles = count;
  res.star = out + "particles_subtracted.star";
  res.box = s.n_out;
  res.recentred = s.recentre;
  for (int a = 0; a < 3; ++a) res.centre[a] = s.centre[size_t(a)];
  const std::string star_text = star::to_string(table.sync());
  for (auto& w : writers)
    if (w) w->commit();
  write_file_atomic(res.star, star_text);
  progress.finish();
  spdlog::info("particle_subtract: {} particles, box {} -> {} px; wrote {}", count, s.n, s.n_out, res.star);
  return res;
}

void subtract_projection(Grid<cfloat>& F, const Grid<cfloat>& P, const RefinementFiles& f, const ParticleTable& table,
                         size_t i, bool premultiplied, double scale, double pixel_size) {
  if (F.size() != P.size()) runtime_error("subtract_projection: transforms of {} and {} values", F.size(), P.size());
  const float sc = float(scale);
  if (!f.ctf) {
    for (size_t k = 0; k < F.size(); ++k) F[k] -= P[k] * sc;
    return;
  }
  CtfOptions co;
  co.abs = f.phase_flipped;
  co.intact_until_first_peak = f.intact_first_peak;
  Grid<float> ctf;
  Ctf(particle_ctf_params(table, i), co).evaluate_half_complex(ctf, F.ny(), pixel_size);
  for (size_t k = 0; k < F.size(); ++k) F[k] -= P[k] * (sc * (premultiplied ? ctf[k] * ctf[k] : ctf[k]));
}

}  // namespace regula

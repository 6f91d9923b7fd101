#include "regula/jobs/polish.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <regex>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/mpi.hpp"
#include "regula/core/nelder_mead.hpp"
#include "regula/core/parallel.hpp"
#include "regula/core/progress.hpp"
#include "regula/core/random.hpp"
#include "regula/imaging/normalise.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/plot.hpp"
#include "regula/io/movie.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/half_references.hpp"
#include "regula/micrograph/dose.hpp"
#include "regula/micrograph/extract.hpp"
#include "regula/micrograph/motion_model.hpp"
#include "regula/micrograph/particle_motion.hpp"
#include "regula/model/particles.hpp"
#include "regula/sampling/euler.hpp"

namespace regula {

namespace fs = std::filesystem;

namespace {

using cf = std::complex<float>;

// The compared pixels of one optics group's box: half plane (x > 0, or x = 0 and y > 0),
// 0 < |f| <= f_max, T k inside the references.
struct Pixels {
  int box = 0;
  std::vector<float> kx, ky;       // Fourier px of the particle box
  std::vector<float> freq;         // |f|, 1/Å (after the magnification)
  std::vector<int> ref_shell;      // round(|f| N P): shell of the references' box
  std::vector<int> shell;          // round(|k|): shell of the particle box
  std::vector<float> gamma_offset, qx, qy;
  std::vector<cf> phase_factor;
  size_t size() const { return kx.size(); }
};

Pixels make_pixels(const OpticsGroupModel& g, double f_max, int ref_box, double ref_pixel, int r_max) {
  Pixels p;
  p.box = g.box;
  const int m = g.box;
  for (int y = -m / 2 + 1; y < m / 2; ++y)
    for (int x = 0; x < m / 2; ++x) {
      if (x == 0 && y <= 0) continue;
      const auto f = g.frequency(x, y);
      const double a = std::hypot(f[0], f[1]);
      if (a > f_max) continue;
      const double qx = g.to_reference[0][0] * x + g.to_reference[0][1] * y;
      const double qy = g.to_reference[1][0] * x + g.to_reference[1][1] * y;
      if (qx * qx + qy * qy > double(r_max - 1) * (r_max - 1)) continue;
      p.kx.push_back(float(x));
      p.ky.push_back(float(y));
      p.freq.push_back(float(a));
      p.ref_shell.push_back(int(std::lround(a * ref_box * ref_pixel)));
      p.shell.push_back(int(std::lround(std::sqrt(double(x * x + y * y)))));
      p.qx.push_back(float(qx));
      p.qy.push_back(float(qy));
    }
  const size_t n = p.size();
  std::vector<float> phase(n);
  p.gamma_offset.resize(n);
  g.evaluate(p.kx, p.ky, phase.data(), p.gamma_offset.data(), nullptr, nullptr);
  p.phase_factor.resize(n);
  for (size_t k = 0; k < n; ++k) p.phase_factor[k] = std::polar(1.0f, phase[k]);
  return p;
}

// Index of Fourier pixel (kx >= 0, ky) in a half-complex grid of an n-px box.
inline size_t half_index(int kx, int ky, int n) { return size_t(kx) + size_t(ky < 0 ? ky + n : ky) * size_t(n / 2 + 1); }

struct Micrograph {
  std::string name, metadata;
  std::vector<size_t> particles;
};

// ROOT of a micrograph's outputs (RELION's rule): the name without its job directory
// ("Type/jobNNN/", when it has one) and without its extension.
std::string output_root(const std::string& out_dir, const std::string& name) {
  std::string rel = name;
  static const std::regex job(R"((^|.*/)job[0-9]+/)");
  std::smatch m;
  if (std::regex_search(rel, m, job) && m.position(0) == 0) rel = rel.substr(size_t(m.length(0)));
  const fs::path p(rel);
  return out_dir + "/" + (p.parent_path() / p.stem()).string();
}

// Replaces listed hot pixels by the mean of their neighbours that are not hot.
void fix_hot_pixels(Grid<float>& frame, const std::vector<int>& hx, const std::vector<int>& hy,
                    const std::vector<unsigned char>& is_hot) {
  const int nx = frame.nx(), ny = frame.ny();
  for (size_t h = 0; h < hx.size(); ++h) {
    const int x = hx[h], y = hy[h];
    if (x < 0 || y < 0 || x >= nx || y >= ny) continue;
    double s = 0;
    int c = 0;
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        const int u = x + dx, v = y + dy;
        if ((dx == 0 && dy == 0) || u < 0 || v < 0 || u >= nx || v >= ny) continue;
        if (is_hot[size_t(v) * size_t(nx) + size_t(u)]) continue;
        s += frame(u, v);
        ++c;
      }
    if (c > 0) frame(x, y) = float(s / c);
  }
}

// Everything about one micrograph's movie that both passes need.
struct MovieFrames {
  MovieMotion meta;
  double angpix = 0, coords_angpix = 0, dose = 0, pre = 0, voltage_factor = 1;
  int first = 0, count = 0;  // movie frames [first, first + count), 0-based
  std::unique_ptr<MovieReader> reader;
  const Grid<float>* gain = nullptr;  // the gain reference (kept once per file), or none
  std::vector<unsigned char> hot;     // 1 at the metadata's hot pixels (empty: none)
};

// The movie of a micrograph ready to read: its metadata, reader, gain (read once per file into
// `gains`) and hot-pixel mask. InputError for anything missing or inconsistent.
MovieFrames open_movie(const Micrograph& mic, const PolishOptions& opt, double voltage,
                       std::map<std::string, Grid<float>>& gains) {
  MovieFrames mf;
  mf.meta = read_movie_motion(mic.metadata);
  const MovieMotion& m = mf.meta;
  if (m.movie.empty()) input_error("{}: data_general has no _rlnMicrographMovieName", mic.metadata);
  if (!(m.angpix > 0)) input_error("{}: data_general has no _rlnMicrographOriginalPixelSize", mic.metadata);
  mf.angpix = m.angpix;
  mf.coords_angpix = m.angpix * m.binning;
  mf.dose = opt.fdose > 0 ? opt.fdose : m.dose_per_frame;
  if (!(mf.dose > 0))
    input_error("{}: no _rlnMicrographDoseRate (give --fdose, the dose per frame in e/Å²)", mic.metadata);
  mf.pre = std::max(0.0, m.preexposure);
  mf.voltage_factor = dose_voltage_factor(m.voltage > 0 ? m.voltage : voltage);
  const int total = m.frames > 0 ? m.frames : int(m.shift_x.size());
  mf.first = opt.first_frame - 1;
  const int last = opt.last_frame > 0 ? std::min(opt.last_frame, total) : total;
  mf.count = last - mf.first;
  if (mf.count < 2)
    input_error("{}: frames {}..{} of a movie of {} frames: at least 2 are needed", mic.metadata, opt.first_frame, last,
                total);
  for (int f = mf.first; f < last; ++f)
    if (size_t(f) >= m.shift_x.size() || m.shift_x[size_t(f)] < -9990)
      input_error("{}: frame {} has no global shift (motion correction did not use it; see --first_frame/--last_frame)",
                  mic.metadata, f + 1);
  mf.reader = std::make_unique<MovieReader>(m.movie);
  const MovieReader& r = *mf.reader;
  if (r.frames() < mf.first + mf.count)
    input_error("{}: the movie has {} frames, {} expected", m.movie, r.frames(), mf.first + mf.count);
  if (!m.gain.empty()) {
    auto it = gains.find(m.gain);
    if (it == gains.end()) it = gains.emplace(m.gain, mrc::read(m.gain)).first;
    mf.gain = &it->second;
  }
  if (!m.hot_x.empty()) {
    mf.hot.assign(size_t(r.nx()) * size_t(r.ny()), 0);
    for (size_t h = 0; h < m.hot_x.size(); ++h)
      if (m.hot_x[h] >= 0 && m.hot_y[h] >= 0 && m.hot_x[h] < r.nx() && m.hot_y[h] < r.ny())
        mf.hot[size_t(m.hot_y[h]) * size_t(r.nx()) + size_t(m.hot_x[h])] = 1;
  }
  return mf;
}

// One micrograph's data for the motion fit (and the training of its prior): the particles' frame
// boxes on their groups' pixel lists, the predictions from the own and the other half map, the damage
// per frame, and the grey scale and noise per shell.
struct Prepared {
  MovieFrames mf;
  int F = 0;
  size_t P = 0;
  std::vector<int> s_mov;                      // movie box per particle
  std::vector<std::array<double, 2>> init;     // [q * F + f]: initial track, movie px
  std::vector<std::vector<cf>> X;              // [q * F + f]: observed frame box
  std::vector<std::vector<cf>> pred, other;    // [q]: own and other half map's prediction
  std::vector<std::vector<float>> damage;      // per optics group: [f * pixels + k]
  double scale = 0;                            // grey scale (sign included)
  std::vector<double> w;                       // 1 / noise power per shell of the particle box
  int max_box = 0;
};

// Movie-pixel displacement of the content at movie position (x, y) in movie frame `f` (0-based)
// relative to the micrograph: minus motion correction's shift (global plus local model).
void initial_track(const MovieFrames& mf, int f, double x, double y, double& tx, double& ty) {
  const MovieMotion& m = mf.meta;
  double sx = m.shift_x[size_t(f)], sy = m.shift_y[size_t(f)];
  if (m.has_model && m.width > 0 && m.height > 0) {
    double lx, ly;
    m.model.shift_at(double(f - (m.first_frame - 1)), x / m.width - 0.5, y / m.height - 0.5, lx, ly);
    sx += lx;
    sy += ly;
  }
  tx = -sx;
  ty = -sy;
}

// Reads frame f of the movie with the gain and hot pixels applied.
// Frame f of the movie into `frame` (reshaped only when its shape differs: no allocation per frame).
void read_frame(const MovieFrames& mf, int f, const std::string& metadata, Grid<float>& frame) {
  if (frame.nx() != mf.reader->nx() || frame.ny() != mf.reader->ny() || frame.nz() != 1)
    frame = Grid<float>(mf.reader->nx(), mf.reader->ny(), 1);
  mf.reader->read_into(f, frame.data());
  if (mf.gain) {
    if (!mf.gain->same_shape(frame))
      input_error("{}: gain reference {} is {}x{}, the movie's frames {}x{}", metadata, mf.meta.gain, mf.gain->nx(),
                  mf.gain->ny(), frame.nx(), frame.ny());
    for (size_t v = 0; v < frame.size(); ++v) frame[v] *= (*mf.gain)[v];
  }
  if (!mf.meta.hot_x.empty()) fix_hot_pixels(frame, mf.meta.hot_x, mf.meta.hot_y, mf.hot);
}

// Calls use(f, frame) for the frames f = 0..F-1 of the movie (first + f), in order, reading frame f + 1
// on another thread meanwhile (reading and converting the frames, serial before, took about a tenth
// of polishing's wall time on 2 cores with 2048^2 frames). A reading error is thrown after the
// current frame's use.
template <class Use>
void for_each_frame(const MovieFrames& mf, int F, const std::string& metadata, Use use) {
  Grid<float> current, next;
  if (F > 0) read_frame(mf, mf.first, metadata, current);
  for (int f = 0; f < F; ++f) {
    std::future<void> ahead;
    if (f + 1 < F) ahead = std::async(std::launch::async, [&, f] { read_frame(mf, mf.first + f + 1, metadata, next); });
    use(f, static_cast<const Grid<float>&>(current));  // (on an exception, ahead's destructor waits for the read)
    if (ahead.valid()) ahead.get();
    std::swap(current, next);
  }
}

// The particle's box in a frame: s_mov px at movie position (x, y), Fourier-cropped to `box`, the
// content moved by the sub-pixel remainder so that (x, y) is at the box centre; coefficients in
// the half-complex layout of the particle box, into `out` (every value written; reshaped only when its
// shape differs: a caller's grid is reused from particle to particle).
void frame_box(const Grid<float>& frame, double x, double y, int s_mov, int box, Grid<cfloat>& out) {
  const double xi = std::floor(x + 0.5), yi = std::floor(y + 0.5);
  thread_local Grid<float> b;
  extract_box(frame, xi, yi, s_mov, b);
  if (b.empty()) {
    b = Grid<float>(s_mov, s_mov, 1);
    float mean = 0;
    for (size_t v = 0; v < frame.size(); ++v) mean += frame[v];
    b.fill(mean / float(frame.size()));
  }
  // The box's transform, about its centre s/2 (s even: the sign (-1)^(kx+ky)), times the sub-pixel
  // shift, cropped to the particle box.
  const int sh = s_mov / 2 + 1;
  thread_local AlignedArray<cfloat> buf;
  buf.resize(size_t(sh) * size_t(s_mov));
  fft2_forward(b.data(), s_mov, s_mov, buf.data());
  const double dx = x - xi, dy = y - yi;
  if (out.nx() != box / 2 + 1 || out.ny() != box || out.nz() != 1) out = Grid<cfloat>(box / 2 + 1, box, 1);
  thread_local std::vector<cf> ex;
  ex.resize(size_t(box / 2 + 1));
  for (int kx = 0; kx <= box / 2; ++kx)
    ex[size_t(kx)] = std::polar(1.0f, float(2 * M_PI * kx * dx / s_mov)) * float(kx % 2 ? -1 : 1);
  for (int ky = -box / 2; ky < box / 2; ++ky) {
    const cf ey = std::polar(1.0f, float(2 * M_PI * ky * dy / s_mov)) * float((ky + s_mov) % 2 ? -1 : 1);
    const cf* in = buf.data() + size_t(ky < 0 ? ky + s_mov : ky) * size_t(sh);
    cf* o = &out[half_index(0, ky, box)];
    // Products written out: std::complex's operator* checks every result for NaN (C99 Annex G), which
    // took half of this function's time; the values are the same for finite operands.
    for (int kx = 0; kx <= box / 2; ++kx) {
      const cf e = ex[size_t(kx)];
      const float er = e.real() * ey.real() - e.imag() * ey.imag(), ei = e.real() * ey.imag() + e.imag() * ey.real();
      o[kx] = cf(in[kx].real() * er - in[kx].imag() * ei, in[kx].real() * ei + in[kx].imag() * er);
    }
  }
  out[0] = 0;  // no mean
}

// Sums per frame and reference shell for the per-frame Fourier shell correlations.
struct FccSums {
  int frames = 0, shells = 0;
  std::vector<double> cc, w0, w1;  // [frame * shells + shell]
  void init(int f, int s) {
    frames = f;
    shells = s;
    cc.assign(size_t(f * s), 0.0);
    w0 = w1 = cc;
  }
  // Adds another's sums (the same frames and shells), in the order the micrographs come.
  void add(const FccSums& o) {
    for (size_t a = 0; a < cc.size(); ++a) {
      cc[a] += o.cc[a];
      w0[a] += o.w0[a];
      w1[a] += o.w1[a];
    }
  }
};

double sq(double x) { return x * x; }

// What the motion pass found for one micrograph (grey scale, tracks, its FCC sums), kept beside its
// tracks as ROOT_polish_sums.bin so that --only_do_unfinished takes it up unchanged (doubles, bit for
// bit): a continued run writes the bytes of an uninterrupted one.
constexpr std::string_view kSumsMagic = "RGPOLSH1";

void write_micrograph_sums(const std::string& path, double scale, const std::vector<std::array<double, 2>>& track,
                           const FccSums& fcc) {
  std::string out(kSumsMagic);
  auto put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  const int32_t f = fcc.frames, sh = fcc.shells;
  const int64_t n = int64_t(track.size());
  put(&f, 4);
  put(&sh, 4);
  put(&n, 8);
  put(&scale, 8);
  put(track.data(), track.size() * sizeof(track[0]));
  for (const auto* v : {&fcc.cc, &fcc.w0, &fcc.w1}) put(v->data(), v->size() * sizeof(double));
  write_file_atomic(path, out);
}

// The sums of a micrograph done before, when `path` holds them for `particles` particles, `frames` frames
// (-1: any) and `shells` shells; false otherwise (with a message unless `quiet`, or the file is absent).
bool read_micrograph_sums(const std::string& path, size_t particles, int frames, int shells, double& scale,
                          std::vector<std::array<double, 2>>& track, FccSums& fcc, bool quiet) {
  std::string in;
  try {
    in = read_file(path);
  } catch (const Error&) {
    return false;
  }
  size_t at = kSumsMagic.size();
  auto get = [&](void* p, size_t n) {
    if (at + n > in.size()) return false;
    std::memcpy(p, in.data() + at, n);
    at += n;
    return true;
  };
  int32_t f = 0, sh = 0;
  int64_t n = 0;
  if (in.compare(0, kSumsMagic.size(), kSumsMagic) != 0 || !get(&f, 4) || !get(&sh, 4) || !get(&n, 8) ||
      !get(&scale, 8) || f <= 0 || n != int64_t(particles) * f || sh != shells || (frames >= 0 && f != frames)) {
    if (!quiet) spdlog::warn("polish: {} does not hold this micrograph's sums: it is done again", path);
    return false;
  }
  track.resize(size_t(n));
  fcc.init(f, sh);
  bool ok = get(track.data(), track.size() * sizeof(track[0]));
  for (auto* v : {&fcc.cc, &fcc.w0, &fcc.w1}) ok = ok && get(v->data(), v->size() * sizeof(double));
  if (!ok || at != in.size()) {
    if (!quiet) spdlog::warn("polish: {} is truncated: the micrograph is done again", path);
    return false;
  }
  return true;
}

}  // namespace

std::string PolishOptions::validate() const {
  if (particles.empty()) return "--i (particles with refined poses) is required";
  if (out_dir.empty()) return "--o (output directory) is required";
  if (corr_mic.empty()) return "--corr_mic (motion correction's corrected_micrographs.star) is required";
  if (postprocess.empty() && (half1.empty() || half2.empty())) return "give --f postprocess.star or --m1 and --m2";
  if (first_frame < 1) return fmt::format("--first_frame {}: frames are counted from 1", first_frame);
  if (last_frame > 0 && last_frame < first_frame + 1)
    return fmt::format("--last_frame {} with --first_frame {}: at least 2 frames are needed", last_frame, first_frame);
  if (params_file.empty() && (!(s_vel > 0) || !(s_div > 0)))
    return "--s_vel and --s_div must be positive";
  if (range < 2) return fmt::format("--range {}: at least 2 px", range);
  if (max_iters < 1) return "--max_iters must be at least 1";
  if (!(bfac_minfreq > 0)) return "--bfac_minfreq must be positive (Å)";
  if (threads < 1) return "--j must be at least 1";
  if (pad < 1) return "--pad must be at least 1";
  if (params2 && params3) return "give --params2 or --params3, not both";
  if (params2 || params3) {
    if (combine_frames) return "--combine_frames with --params2/--params3: training estimates parameters only";
    if (!params_file.empty()) return "--params_file with --params2/--params3: the start is --s_vel_0/--s_div_0/--s_acc_0";
    if (!(align_frac > 0 && align_frac <= 1) || !(eval_frac > 0 && eval_frac <= 1))
      return "--align_frac and --eval_frac must lie in (0, 1]";
    if (align_frac + eval_frac > 1 + 1e-6)
      return fmt::format("--align_frac {} and --eval_frac {} overlap: their sum must not exceed 1", align_frac, eval_frac);
    if (min_p < 2) return "--min_p must be at least 2";
    if (!(s_vel_0 > 0) || !(s_div_0 > 0)) return "--s_vel_0 and --s_div_0 must be positive";
    if (!(in_step > 0) || !(conv > 0)) return "--in_step and --conv must be positive";
    if (par_iters < 1) return "--par_iters must be at least 1";
  }
  return {};
}

PolishResult polish(const PolishOptions& opt_in) {
  if (auto msg = opt_in.validate(); !msg.empty()) throw InputError("polish: " + msg);
  PolishOptions opt = opt_in;
  while (opt.out_dir.size() > 1 && opt.out_dir.back() == '/') opt.out_dir.pop_back();
  if (!opt.params_file.empty()) {
    std::ifstream in(opt.params_file);
    if (!in) input_error("{}: cannot read (--params_file: a text file with s_vel s_div s_acc)", opt.params_file);
    if (!(in >> opt.s_vel >> opt.s_div >> opt.s_acc) || !(opt.s_vel > 0) || !(opt.s_div > 0))
      input_error("{}: expected three numbers s_vel s_div s_acc (positive s_vel and s_div)", opt.params_file);
  }

  const HalfReferences refs = load_half_references(half_reference_options(opt, "polish"));
  double f_fit_max = refs.f_max;
  // The motion fit uses every frequency where the half maps still agree (FSC > 0): the references
  // are FSC-weighted, so shells of low FSC count little, and stopping at FSC 0.143 (as the B-factor
  // fit does) left offsets of about 2 px with half maps of 14 Å (bench/polish_vs_relion.py).
  int shell_pos = refs.box / 2 - 1;
  for (int s = 1; s < int(refs.fsc.size()) && s < refs.box / 2; ++s)
    if (!(refs.fsc[size_t(s)] > 0)) {
      shell_pos = std::max(refs.shell_max, s - 1);
      break;
    }
  const double f_motion = shell_pos / (refs.box * refs.pixel_size);
  if (opt.bfac_maxfreq > 0) f_fit_max = 1.0 / opt.bfac_maxfreq;

  ParticleTable table = ParticleTable::read(opt.particles);
  const size_t count = table.size();
  if (count == 0) input_error("{}: no particles (the particles table has no rows)", opt.particles);
  const star::Block& pb = table.particles_block();
  for (const char* label : {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnRandomSubset", "rlnMicrographName",
                            "rlnCoordinateX", "rlnCoordinateY"})
    if (!pb.has(label)) input_error("{}: the particles table has no _{} (polishing needs it)", opt.particles, label);
  const int col_x = pb.column("rlnCoordinateX"), col_y = pb.column("rlnCoordinateY");
  std::vector<double> coord_x(count), coord_y(count);
  for (size_t i = 0; i < count; ++i) {
    coord_x[i] = pb.number(i, col_x);
    coord_y[i] = pb.number(i, col_y);
    const int h = table.random_subset[i];
    if (h != 1 && h != 2) input_error("{}: _rlnRandomSubset is {}, expected 1 or 2", table.where(i), h);
  }
  OpticsModel optics(table);
  {
    ParticleImages images(table, 1);
    for (size_t g = 0; g < table.optics.size(); ++g)
      if (optics.group(g).box <= 0)
        for (size_t i = 0; i < count; ++i)
          if (size_t(table.optics_index[i]) == g) {
            optics.set_box(g, table.optics[g].image_size > 0 ? table.optics[g].image_size : images.read(i).nx());
            break;
          }
  }
  optics.set_reference(refs.box, refs.pixel_size);
  for (size_t g = 0; g < optics.groups(); ++g) {
    if (!(table.optics[g].voltage > 0)) input_error("{}: optics group {} has no _rlnVoltage", opt.particles, table.optics[g].number);
    if (!(optics.group(g).pixel_size > 0))
      input_error("{}: optics group {} has no _rlnImagePixelSize", opt.particles, table.optics[g].number);
  }
  std::vector<Pixels> pixels;
  for (size_t g = 0; g < optics.groups(); ++g)
    pixels.push_back(make_pixels(optics.group(g), f_motion, refs.box, refs.pixel_size, refs.box / 2));

  // Micrographs: metadata from --corr_mic.
  std::map<std::string, std::string> metadata_of;
  {
    const star::Document cm = star::read(opt.corr_mic);
    const star::Block* mb = cm.find("micrographs");
    if (!mb) input_error("{}: no data_micrographs block (motion correction's corrected_micrographs.star expected)",
                         opt.corr_mic);
    const int cn = mb->require_column("rlnMicrographName"), cmd = mb->require_column("rlnMicrographMetadata");
    for (size_t r = 0; r < mb->rows(); ++r) metadata_of[std::string(mb->value(r, cn))] = std::string(mb->value(r, cmd));
  }
  std::vector<Micrograph> mics;
  PolishResult res;
  {
    std::map<std::string, size_t> at;
    std::map<std::string, long> missing;
    for (size_t i = 0; i < count; ++i) {
      const std::string& name = table.micrographs[table.micrograph[i]];
      auto it = metadata_of.find(name);
      if (it == metadata_of.end()) {
        ++missing[name];
        continue;
      }
      auto [a, added] = at.emplace(name, mics.size());
      if (added) mics.push_back({name, it->second, {}});
      mics[a->second].particles.push_back(i);
    }
    for (const auto& [name, n] : missing) {
      spdlog::warn("polish: micrograph {} is not in {}: its {} particles are skipped", name, opt.corr_mic, n);
      res.skipped += n;
    }
  }
  if (mics.empty()) input_error("{}: none of the particles' micrographs is listed in {}", opt.particles, opt.corr_mic);

  fs::create_directories(opt.out_dir);
  ThreadPool pool(opt.threads);
  const int ref_shells = refs.box / 2 + 1;
  FccSums fcc;
  int frames_used = -1;
  std::map<std::string, Grid<float>> gains;

  struct Fitted {
    std::vector<std::array<double, 2>> track;  // [p * F + f]: movie px, from the micrograph position
    double scale = 1;
    bool ok = false;
  };
  std::vector<Fitted> fitted(mics.size());
  const double ref_voltage = table.optics.front().voltage;
  Progress progress("polish: motion", double(mics.size()));
  // A micrograph's sums from its file (fitted before, or by another rank) into fitted[mi] and fcc.
  auto take_sums = [&](size_t mi, bool quiet) {
    const Micrograph& mic = mics[mi];
    Fitted& done = fitted[mi];
    FccSums mine;
    if (!read_micrograph_sums(output_root(opt.out_dir, mic.name) + "_polish_sums.bin", mic.particles.size(),
                              frames_used, ref_shells, done.scale, done.track, mine, quiet))
      return false;
    if (frames_used < 0) {
      frames_used = mine.frames;
      fcc.init(frames_used, ref_shells);
    }
    fcc.add(mine);
    done.ok = true;
    ++res.micrographs;
    res.particles += long(mic.particles.size());
    return true;
  };
  // A micrograph's movie opened and its particles prepared for the motion fit, or the reason it
  // cannot be (the micrograph is then skipped). frames: how many frames the movie must give (-1: any).
  auto prepare = [&](const Micrograph& mic, int frames, Prepared& d) -> std::string {
    try {
      d.mf = open_movie(mic, opt, ref_voltage, gains);
    } catch (const InputError& e) {
      return e.what();
    }
    const MovieFrames& mf = d.mf;
    if (frames >= 0 && mf.count != frames) return fmt::format("{} frames used where the first movie had {}", mf.count, frames);
    const int F = d.F = mf.count;
    const size_t P = d.P = mic.particles.size();
    // Movie box of each particle (its group's box and pixel size).
    std::vector<int>& s_mov = d.s_mov;
    s_mov.resize(P);
    for (size_t q = 0; q < P; ++q) {
      const size_t i = mic.particles[q];
      const OpticsGroupModel& g = optics.group_of(i);
      const double s = g.box * g.pixel_size / mf.angpix;
      s_mov[q] = int(std::lround(s));
      if (std::abs(s - s_mov[q]) > 1e-3 * s || s_mov[q] % 2 || s_mov[q] < g.box)
        input_error("{}: a box of {} px at {} Å/px is {:.3f} px of the movie ({} Å/px): an even number of movie "
                    "pixels at least the box is needed",
                    table.where(i), g.box, g.pixel_size, s, mf.angpix);
    }
    // Initial tracks (movie px) and the observed boxes on each group's pixel list.
    std::vector<std::array<double, 2>>& init = d.init;
    init.resize(P * size_t(F));
    for (size_t q = 0; q < P; ++q) {
      const size_t i = mic.particles[q];
      const double mx = std::trunc(coord_x[i]) * mf.meta.binning, my = std::trunc(coord_y[i]) * mf.meta.binning;
      for (int f = 0; f < F; ++f) initial_track(mf, mf.first + f, mx, my, init[q * F + f][0], init[q * F + f][1]);
    }
    std::vector<std::vector<cf>>& X = d.X;
    X.resize(P * size_t(F));
    try {
      for_each_frame(mf, F, mic.metadata, [&](int f, const Grid<float>& frame) {
        pool.parallel_for(0, P, [&](size_t q, int) {
          const size_t i = mic.particles[q];
          const Pixels& pl = pixels[size_t(table.optics_index[i])];
          const double mx = std::trunc(coord_x[i]) * mf.meta.binning, my = std::trunc(coord_y[i]) * mf.meta.binning;
          const auto& t = init[q * F + size_t(f)];
          thread_local Grid<cfloat> B;
          frame_box(frame, mx + t[0], my + t[1], s_mov[q], pl.box, B);
          auto& x = X[q * F + size_t(f)];
          x.resize(pl.size());
          for (size_t k = 0; k < pl.size(); ++k) x[k] = B[half_index(int(pl.kx[k]), int(pl.ky[k]), pl.box)];
        });
      });
    } catch (const InputError& e) {
      return e.what();
    }
    // Predictions from the own and the other half map, and the damage per frame.
    std::vector<std::vector<cf>>& pred = d.pred;
    std::vector<std::vector<cf>>& other = d.other;
    pred.resize(P);
    other.resize(P);
    pool.parallel_for(0, P, [&](size_t q, int) {
      const size_t i = mic.particles[q];
      const size_t gi = size_t(table.optics_index[i]);
      const Pixels& pl = pixels[gi];
      const OpticsGroupModel& g = optics.group(gi);
      const ParticleOptics po = optics.particle(i);
      std::vector<float> c(pl.size());
      po.evaluate_ctf(pl.kx, pl.ky, pl.gamma_offset.data(), c.data());
      const Mat3 A = euler_to_matrix(table.rot[i], table.tilt[i], table.psi[i]);
      const double ox = table.origin_x[i] / g.pixel_size, oy = table.origin_y[i] / g.pixel_size;
      const int h = table.random_subset[i] - 1;
      pred[q].resize(pl.size());
      other[q].resize(pl.size());
      for (size_t k = 0; k < pl.size(); ++k) {
        const cf shift = std::polar(1.0f, float(2 * M_PI * (pl.kx[k] * ox + pl.ky[k] * oy) / g.box));
        const cf factor = po.predicted(c[k]) * shift * pl.phase_factor[k];
        pred[q][k] = refs.maps[size_t(h)]->value_at(A, pl.qx[k], pl.qy[k]) * factor;
        other[q][k] = refs.maps[size_t(1 - h)]->value_at(A, pl.qx[k], pl.qy[k]) * factor;
      }
    });
    // Damage per group, frame and pixel: exp(-N / (2 Ne(|f|))), N the exposure at the middle of the frame.
    std::vector<std::vector<float>>& damage = d.damage;
    damage.resize(pixels.size());
    for (size_t gi = 0; gi < pixels.size(); ++gi) {
      const Pixels& pl = pixels[gi];
      damage[gi].resize(size_t(F) * pl.size());
      for (int f = 0; f < F; ++f) {
        const double exposure = mf.voltage_factor * (mf.pre + (mf.first + f + 0.5) * mf.dose);
        for (size_t k = 0; k < pl.size(); ++k)
          damage[gi][size_t(f) * pl.size() + k] = float(damage_attenuation(exposure, pl.freq[k]));
      }
    }
    // Grey scale and noise per shell of the particle box (two rounds), at the initial tracks.
    const int max_box = d.max_box = *std::max_element(s_mov.begin(), s_mov.end());
    const size_t shells = size_t(max_box / 2 + 1);
    std::vector<double> xx(shells), xp(shells), pp(shells), cnt(shells);
    std::vector<double>& w = d.w;
    w.assign(shells, 1.0);
    for (size_t q = 0; q < P; ++q) {
      const size_t gi = size_t(table.optics_index[mic.particles[q]]);
      const Pixels& pl = pixels[gi];
      for (int f = 0; f < F; ++f) {
        const auto& x = X[q * F + size_t(f)];
        const float* dmg = damage[gi].data() + size_t(f) * pl.size();
        for (size_t k = 0; k < pl.size(); ++k) {
          const size_t sh = size_t(pl.shell[k]);
          const cf p = dmg[k] * pred[q][k];
          xx[sh] += std::norm(x[k]);
          xp[sh] += std::real(x[k] * std::conj(p));
          pp[sh] += std::norm(p);
          cnt[sh] += 1;
        }
      }
    }
    double& scale = d.scale;
    for (int round = 0; round < 3; ++round) {
      double nw = 0, dw = 0;
      for (size_t sh = 0; sh < shells; ++sh) {
        nw += w[sh] * xp[sh];
        dw += w[sh] * pp[sh];
      }
      scale = dw > 0 ? nw / dw : 0.0;
      for (size_t sh = 0; sh < shells; ++sh) {
        const double noise = cnt[sh] > 0 ? (xx[sh] - 2 * scale * xp[sh] + scale * scale * pp[sh]) / cnt[sh] : 0.0;
        w[sh] = noise > 0 ? 1.0 / noise : 0.0;
      }
    }
    return {};
  };
  // Log-likelihood map of the displacement (particle px) of particle q's frames [f0, f1) together,
  // against the prediction `ref` (one inverse FFT), from the pixels below the frequency f_hi (1/Å).
  auto likelihood_map = [&](const Micrograph& mic, const Prepared& d, size_t q, int f0, int f1,
                            const std::vector<cf>& ref, ShiftMap& m, double f_hi) {
    const size_t gi = size_t(table.optics_index[mic.particles[q]]);
    const Pixels& pl = pixels[gi];
    const int n = pl.box;
    thread_local AlignedArray<cfloat> Z;
    Z.resize(size_t(n / 2 + 1) * size_t(n));
    std::fill_n(Z.data(), Z.size(), cf(0));
    const float scale = float(d.scale);
    for (int f = f0; f < f1; ++f) {
      const auto& x = d.X[q * size_t(d.F) + size_t(f)];
      const float* dmg = d.damage[gi].data() + size_t(f) * pl.size();
      for (size_t k = 0; k < pl.size(); ++k) {
        if (!(pl.freq[k] < f_hi)) continue;
        const cf z = x[k] * std::conj(scale * dmg[k] * ref[k]) * float(d.w[size_t(pl.shell[k])]);
        Z[half_index(int(pl.kx[k]), int(pl.ky[k]), n)] += z;
        if (pl.kx[k] == 0) Z[half_index(0, -int(pl.ky[k]), n)] += std::conj(z);
      }
    }
    thread_local AlignedArray<float> cc;
    cc.resize(size_t(n) * size_t(n));
    fft2_inverse(Z.data(), n, n, cc.data());  // unnormalised: the sum over the frequencies
    const size_t row = size_t(n);
    m.range = std::min(opt.range, n / 2 - 2);
    m.value.resize(size_t(m.size()) * size_t(m.size()));
    for (int dy = -m.range; dy <= m.range; ++dy)
      for (int dx = -m.range; dx <= m.range; ++dx)
        m.value[size_t((dy + m.range) * m.size() + dx + m.range)] = cc[size_t((dy + n) % n) * row + size_t((dx + n) % n)];
  };
  constexpr double kAll = std::numeric_limits<double>::infinity();
  // The offsets prior's width (px) for a micrograph, from the likelihood of a constant displacement
  // against the OTHER half map below f_hi: the own half map holds the particle's own noise at its
  // refined position, which would pull the estimate towards 0.
  auto offsets_sigma = [&](const Micrograph& mic, const Prepared& d, double f_hi) {
    std::vector<ShiftMap> constant(d.P);
    pool.parallel_for(0, d.P, [&](size_t q, int) { likelihood_map(mic, d, q, 0, d.F, d.other[q], constant[q], f_hi); });
    return offset_prior_sigma(constant, int(d.P), 1);
  };
  // The particles' positions in the micrograph (Å), for the velocity kernel.
  auto positions = [&](const Micrograph& mic, const Prepared& d, std::vector<double>& px, std::vector<double>& py) {
    px.resize(d.P);
    py.resize(d.P);
    for (size_t q = 0; q < d.P; ++q) {
      px[q] = coord_x[mic.particles[q]] * d.mf.coords_angpix;
      py[q] = coord_y[mic.particles[q]] * d.mf.coords_angpix;
    }
  };
  // Training mode (--params2/--params3, RELION's parameter estimation): micrographs drawn at random
  // (--seed) until --min_p particles; tracks fitted with the frequencies below f_motion sqrt(align_frac)
  // only, and scored by the correlation of the frames moved by them with the OTHER half map's prediction
  // at the frequencies above f_motion sqrt(1 - eval_frac), weighted by the damage and the noise per
  // shell (held-out pixels: a prior that smooths too much or too little scores lower there); Nelder-Mead
  // over (s_vel x 1e4, s_div, s_acc x 1e3), the result rounded to --conv / 2 in those units.
  if (opt.params2 || opt.params3) {
    if (mpi::size() > 1) input_error("polish: --params2/--params3 run in one process (start them without mpirun)");
    const double f_align = f_motion * std::sqrt(opt.align_frac), f_eval = f_motion * std::sqrt(1 - opt.eval_frac);
    std::vector<size_t> order(mics.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::mt19937_64 rng = make_rng(uint64_t(opt.seed));
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[size_t(rng() % i)]);
    if (opt.par_group > 0 && size_t(opt.par_group) > optics.groups())
      input_error("{}: --par_group {}: the particles have {} optics groups", opt.particles, opt.par_group,
                  optics.groups());
    auto group_name = [&](size_t g) {
      return table.optics[g].name.empty() ? fmt::format("opticsGroup{}", table.optics[g].number) : table.optics[g].name;
    };
    res.params_out = opt.out_dir + "/" +
                     (opt.par_group > 0 ? "opt_params_group_" + group_name(size_t(opt.par_group - 1)) + ".txt"
                                        : std::string("opt_params_all_groups.txt"));
    // --only_do_unfinished (a project job's --continue): a training that wrote its file is done.
    if (opt.only_do_unfinished && fs::exists(res.params_out)) {
      std::ifstream in(res.params_out);
      if (!(in >> res.trained[0] >> res.trained[1] >> res.trained[2]) || !(res.trained[0] > 0) ||
          !(res.trained[1] > 0))
        input_error("{}: expected three numbers s_vel s_div s_acc (written by an earlier training; remove it to "
                    "train again)", res.params_out);
      spdlog::info("polish: {} exists: trained before (--only_do_unfinished): --s_vel {} --s_div {} --s_acc {}",
                   res.params_out, res.trained[0], res.trained[1], res.trained[2]);
      return res;
    }
    struct Training {
      Micrograph mic;
      int F = 0;
      size_t P = 0;
      double dose = 0, part_px = 0, sigma_off = 0, sign = 1;
      std::vector<ShiftMap> maps;
      std::vector<double> px, py;
      std::vector<std::vector<cf>> obs;      // [q * F + f]: the frame box at the scored pixels
      std::vector<std::vector<cf>> ref;      // [q]: the other half map's prediction there
      std::vector<std::vector<float>> wgt;   // per group: [f * scored + j], damage x noise weight
    };
    std::vector<std::vector<size_t>> scored(pixels.size());  // per group: the scored pixels
    for (size_t gi = 0; gi < pixels.size(); ++gi)
      for (size_t k = 0; k < pixels[gi].size(); ++k)
        if (pixels[gi].freq[k] >= f_eval) scored[gi].push_back(k);
    std::vector<Training> train;
    long chosen = 0;
    size_t held = 0;
    for (size_t oi = 0; oi < order.size() && chosen < opt.min_p; ++oi) {
      Micrograph mic = mics[order[oi]];
      if (opt.par_group > 0)
        std::erase_if(mic.particles, [&](size_t i) { return table.optics_index[i] != opt.par_group - 1; });
      if (mic.particles.size() < 2) continue;  // the prior couples particles: one alone says nothing
      Prepared d;
      if (const std::string why = prepare(mic, -1, d); !why.empty()) {
        spdlog::warn("polish: micrograph {} not used for training: {}", mic.name, why);
        continue;
      }
      Training t;
      t.F = d.F;
      t.P = d.P;
      const size_t F = size_t(d.F), P = d.P;
      t.maps.resize(P * F);
      pool.parallel_for(0, P * F, [&](size_t pf, int) {
        likelihood_map(mic, d, pf / F, int(pf % F), int(pf % F) + 1, d.pred[pf / F], t.maps[pf], f_align);
      });
      t.sigma_off = offsets_sigma(mic, d, f_align);
      t.dose = d.mf.dose;
      t.part_px = optics.group_of(mic.particles[0]).pixel_size;
      t.sign = d.scale < 0 ? -1.0 : 1.0;
      positions(mic, d, t.px, t.py);
      t.obs.resize(P * F);
      t.ref.resize(P);
      for (size_t q = 0; q < P; ++q) {
        const std::vector<size_t>& sk = scored[size_t(table.optics_index[mic.particles[q]])];
        for (size_t f = 0; f < F; ++f) {
          auto& o = t.obs[q * F + f];
          for (size_t k : sk) o.push_back(d.X[q * F + f][k]);
          held += o.size() * sizeof(cf);
        }
        for (size_t k : sk) t.ref[q].push_back(d.other[q][k]);
      }
      t.wgt.resize(pixels.size());
      for (size_t gi = 0; gi < pixels.size(); ++gi)
        for (size_t f = 0; f < F; ++f)
          for (size_t k : scored[gi])
            t.wgt[gi].push_back(d.damage[gi][f * pixels[gi].size() + k] * float(d.w[size_t(pixels[gi].shell[k])]));
      held += P * F * t.maps[0].value.size() * sizeof(float);
      t.mic = std::move(mic);
      chosen += long(P);
      spdlog::info("polish: training on micrograph {} ({} particles)", t.mic.name, P);
      train.push_back(std::move(t));
    }
    if (train.empty()) input_error("{}: no micrograph with 2 or more particles could be read for training", opt.particles);
    if (chosen < opt.min_p)
      spdlog::warn("polish: training on {} particles: the data have fewer than --min_p {} in readable micrographs "
                   "with 2 or more particles", chosen, opt.min_p);
    spdlog::info("polish: training on {} particles of {} micrographs ({:.0f} MB held); aligned below {:.2f} Å, "
                 "scored from {:.2f} to {:.2f} Å", chosen, train.size(), double(held) / 1e6, 1 / f_align, 1 / f_eval,
                 1 / f_motion);
    MotionFitOptions fo;
    fo.max_iterations = opt.max_iters;
    // The score of (s_vel, s_div, s_acc): the correlation over all training particles (sums in a fixed
    // order: the result does not depend on the threads).
    auto score = [&](double sv, double sd, double sa) {
      if (!(sv > 0) || !(sd > 0)) return -std::numeric_limits<double>::infinity();
      double cc = 0, w0 = 0, w1 = 0;
      for (const Training& t : train) {
        const size_t F = size_t(t.F);
        MotionPrior prior{t.dose * sv / t.part_px, sd, sa > 0 ? t.dose * sa / t.part_px : 0.0, t.sigma_off};
        const VelocityBasis basis = velocity_basis(t.px, t.py, prior);
        const MotionFitResult fit = fit_particle_motion(t.maps, int(t.P), t.F, basis, prior, fo, pool);
        std::vector<std::array<double, 3>> part(t.P);
        pool.parallel_for(0, t.P, [&](size_t q, int) {
          const size_t gi = size_t(table.optics_index[t.mic.particles[q]]);
          const Pixels& pl = pixels[gi];
          const std::vector<size_t>& sk = scored[gi];
          std::array<double, 3> acc{};
          for (size_t f = 0; f < F; ++f) {
            const auto& dd = fit.d[q * F + f];
            const auto& o = t.obs[q * F + f];
            const float* wt = t.wgt[gi].data() + f * sk.size();
            for (size_t j = 0; j < sk.size(); ++j) {
              const size_t k = sk[j];
              const double ph = 2 * M_PI * (pl.kx[k] * dd[0] + pl.ky[k] * dd[1]) / pl.box;
              const cf al = o[j] * cf(float(std::cos(ph)), float(std::sin(ph)));
              acc[0] += wt[j] * t.sign * std::real(al * std::conj(t.ref[q][j]));
              acc[1] += wt[j] * std::norm(al);
              acc[2] += wt[j] * std::norm(t.ref[q][j]);
            }
          }
          part[q] = acc;
        });
        for (const auto& a : part) {
          cc += a[0];
          w0 += a[1];
          w1 += a[2];
        }
      }
      return w0 > 0 && w1 > 0 ? cc / std::sqrt(w0 * w1) : 0.0;
    };
    constexpr double kVel = 1e4, kDiv = 1, kAcc = 1e3;  // RELION's scaling of the three parameters
    const int n = opt.params3 ? 3 : 2;
    auto params = [&](const std::vector<double>& x) {
      return std::array<double, 3>{x[0] / kVel, x[1] / kDiv, n == 3 ? x[2] / kAcc : opt.s_acc_0};
    };
    auto objective = [&](const std::vector<double>& x) {
      const auto p = params(x);
      return score(p[0], p[1], p[2]);
    };
    std::vector<double> x0{opt.s_vel_0 * kVel, opt.s_div_0 * kDiv};
    if (n == 3) x0.push_back(opt.s_acc_0 * kAcc);
    res.score_start = objective(x0);
    spdlog::info("polish: training start: s_vel {:.4f} s_div {:.0f} s_acc {:.3f}, score {:.8f}", opt.s_vel_0,
                 opt.s_div_0, opt.s_acc_0, res.score_start);
    NelderMeadOptions nm;
    nm.step = {opt.in_step};
    nm.x_tol = opt.conv;
    nm.max_iterations = opt.par_iters;
    nm.report = [&](int it, const std::vector<double>& x, double v) {
      const auto p = params(x);
      spdlog::info("polish: training iteration {}: s_vel {:.4f} s_div {:.0f} s_acc {:.3f}, score {:.8f}", it, p[0], p[1],
                   p[2], v);
    };
    const NelderMeadResult best = nelder_mead_maximise(objective, x0, nm);
    res.score_end = best.value;
    // Rounded to conv / 2 (the simplex's final size) in the scaled units, as RELION writes them.
    const std::array<double, 3> unit{kVel, kDiv, kAcc};
    for (int a = 0; a < n; ++a)
      res.trained[size_t(a)] = opt.conv * 0.5 * std::round(2 * best.x[size_t(a)] / opt.conv) / unit[size_t(a)];
    if (n == 2) res.trained[2] = opt.s_acc_0;  // --params2: as given
    if (!(res.trained[2] > 0)) res.trained[2] = -1;  // no acceleration term
    if (res.trained[0] <= 0) res.trained[0] = opt.conv * 0.5 / kVel;
    if (res.trained[1] <= 0) res.trained[1] = opt.conv * 0.5 / kDiv;
    write_file_atomic(res.params_out, fmt::format("{} {} {}\n", res.trained[0], res.trained[1], res.trained[2]));
    spdlog::info("polish: good parameters: --s_vel {} --s_div {} --s_acc {} (score {:.8f} from {:.8f}; {} iterations); "
                 "written to {} (give it to --params_file)", res.trained[0], res.trained[1], res.trained[2],
                 res.score_end, res.score_start, best.iterations, res.params_out);
    res.particles = chosen;
    res.micrographs = int(train.size());
    return res;
  }
  // Under mpirun each rank fits the micrographs mi = rank (mod ranks); then every rank reads all their
  // sums in micrograph order, so the B-factors and the files are those of one process.
  const bool split = mpi::size() > 1;
  for (size_t mi = 0; mi < mics.size(); ++mi) {
    const Micrograph& mic = mics[mi];
    const std::string root = output_root(opt.out_dir, mic.name);
    if (int(mi % size_t(mpi::size())) != mpi::rank()) {
      progress.advance(1);
      continue;
    }
    if (opt.only_do_unfinished && fs::exists(root + "_tracks.star") && take_sums(mi, false)) {
      spdlog::info("polish: {}: done before (--only_do_unfinished)", mic.name);
      progress.advance(1);
      continue;
    }
    // Fitted anew: sums left by an earlier run must not stand for it if this one fails (the ranks read
    // every micrograph's sums after the fit).
    fs::remove(root + "_polish_sums.bin");
    Prepared d;
    if (const std::string why = prepare(mic, frames_used, d); !why.empty()) {
      spdlog::warn("polish: micrograph {} skipped ({} particles): {}", mic.name, mic.particles.size(), why);
      ++res.micrographs_skipped;
      res.skipped += long(mic.particles.size());
      progress.advance(1);
      continue;
    }
    if (frames_used < 0) {
      frames_used = d.F;
      fcc.init(frames_used, ref_shells);
    }
    const MovieFrames& mf = d.mf;
    const int F = d.F;
    const size_t P = d.P;
    const std::vector<int>& s_mov = d.s_mov;
    const std::vector<std::array<double, 2>>& init = d.init;
    const std::vector<std::vector<cf>>& X = d.X;
    const std::vector<std::vector<cf>>& other = d.other;
    const double scale = d.scale;
    const int max_box = d.max_box;
    std::vector<ShiftMap> maps(P * size_t(F));
    pool.parallel_for(0, P * size_t(F), [&](size_t pf, int) {
      const size_t q = pf / size_t(F);
      likelihood_map(mic, d, q, int(pf % size_t(F)), int(pf % size_t(F)) + 1, d.pred[q], maps[pf], kAll);
    });
    // Tracks: all particles of the micrograph together. Positions in Å for the kernel; velocities in
    // particle px (all the micrograph's particles share one pixel size for the prior: the first's).
    const double part_px = optics.group_of(mic.particles[0]).pixel_size;
    std::vector<double> px, py;
    positions(mic, d, px, py);
    MotionPrior prior{mf.dose * opt.s_vel / part_px, opt.s_div, mf.dose * opt.s_acc / part_px};
    prior.sigma_off = offsets_sigma(mic, d, kAll);
    const VelocityBasis basis = velocity_basis(px, py, prior);
    MotionFitOptions fo;
    fo.max_iterations = opt.max_iters;
    const MotionFitResult fit = fit_particle_motion(maps, int(P), F, basis, prior, fo, pool);
    Fitted& out = fitted[mi];
    out.ok = true;
    out.scale = scale;
    out.track.resize(P * size_t(F));
    for (size_t q = 0; q < P; ++q) {
      const OpticsGroupModel& g = optics.group_of(mic.particles[q]);
      const double to_movie = double(s_mov[q]) / g.box;
      for (int f = 0; f < F; ++f)
        for (int a = 0; a < 2; ++a)
          out.track[q * F + size_t(f)][size_t(a)] = init[q * F + size_t(f)][size_t(a)] + fit.d[q * F + size_t(f)][size_t(a)] * to_movie;
    }
    // Per-frame FCC sums with the other half map, the frames aligned by the fitted displacement, with
    // the frames' contrast (the sign of the grey scale).
    const double sign = scale < 0 ? -1.0 : 1.0;
    FccSums mine;
    mine.init(F, ref_shells);
    std::vector<cf> ex(size_t(max_box / 2 + 1)), ey(size_t(max_box + 1));
    for (size_t q = 0; q < P; ++q) {
      const Pixels& pl = pixels[size_t(table.optics_index[mic.particles[q]])];
      for (int f = 0; f < F; ++f) {
        const auto& d = fit.d[q * F + size_t(f)];
        const auto& x = X[q * F + size_t(f)];
        const int n = pl.box;
        for (int a = 0; a <= n / 2; ++a) ex[size_t(a)] = std::polar(1.0f, float(2 * M_PI * a * d[0] / n));
        for (int a = -n / 2; a <= n / 2; ++a) ey[size_t(a + n / 2)] = std::polar(1.0f, float(2 * M_PI * a * d[1] / n));
        for (size_t k = 0; k < pl.size(); ++k) {
          const int sh = pl.ref_shell[k];
          if (sh >= ref_shells) continue;
          const cf al = x[k] * ex[size_t(pl.kx[k])] * ey[size_t(int(pl.ky[k]) + n / 2)];
          const size_t at = size_t(f) * size_t(ref_shells) + size_t(sh);
          mine.cc[at] += sign * std::real(al * std::conj(other[q][k]));
          mine.w0[at] += std::norm(al);
          mine.w1[at] += std::norm(other[q][k]);
        }
      }
    }
    // Tracks file (RELION's): per particle, the displacement in Å from its micrograph position.
    star::Document doc;
    star::Block& gen = doc.add_block("general", false);
    gen.set("rlnParticleNumber", std::to_string(P));
    for (size_t q = 0; q < P; ++q) {
      star::Block& b = doc.add_block(std::to_string(q), true);
      for (int f = 0; f < F; ++f) b.add_row();
      std::vector<double> tx(static_cast<size_t>(F)), ty(static_cast<size_t>(F));
      for (int f = 0; f < F; ++f) {
        tx[size_t(f)] = out.track[q * F + size_t(f)][0] * mf.angpix;
        ty[size_t(f)] = out.track[q * F + size_t(f)][1] * mf.angpix;
      }
      b.set_column("rlnOriginXAngst", tx);
      b.set_column("rlnOriginYAngst", ty);
    }
    fs::create_directories(fs::path(root).parent_path());
    // The sums first: a micrograph counts as done when its tracks exist (RELION's rule).
    write_micrograph_sums(root + "_polish_sums.bin", scale, out.track, mine);
    star::write(root + "_tracks.star", doc);
    fcc.add(mine);
    spdlog::info("polish: {}: {} particles, {} frames, grey scale {:.3g}, offsets prior s.d. {:.2f} px, {} L-BFGS "
                 "iterations", mic.name, P, F, scale, prior.sigma_off, fit.iterations);
    ++res.micrographs;
    res.particles += long(P);
    progress.advance(1);
  }
  progress.finish();
  if (split) {
    mpi::barrier();
    fitted.assign(mics.size(), Fitted{});
    frames_used = -1;
    res.micrographs = res.particles = 0;
    for (size_t mi = 0; mi < mics.size(); ++mi)
      if (!take_sums(mi, true)) {
        ++res.micrographs_skipped;
        res.skipped += long(mics[mi].particles.size());
        if (mpi::rank() == 0 && int(mi % size_t(mpi::size())) != 0)
          spdlog::warn("polish: micrograph {} skipped by rank {} (see its messages in run.out)", mics[mi].name,
                       int(mi % size_t(mpi::size())));
      }
  }
  if (frames_used < 0) input_error("{}: no micrograph could be read (see the messages above)", opt.particles);

  // Per-frame B-factors and scales: FCC_f(k) ~ g(k) a_f exp(B_f q_k), q = k^2 / 4, by alternating
  // least squares over the shells between --bfac_minfreq and the highest frequency.
  const int F = frames_used;
  const double ref_len = refs.box * refs.pixel_size;
  const int k0 = std::max(1, int(std::ceil(ref_len / opt.bfac_minfreq)));
  int k1 = std::min(ref_shells - 1, int(std::floor(f_fit_max * ref_len)));
  if (k1 - k0 < 2 && opt.bfac_maxfreq <= 0) {
    // Half maps whose FSC falls to 0.143 before --bfac_minfreq: fit up to where it reaches 0.
    const int k_motion = std::min(ref_shells - 1, int(std::floor(f_motion * ref_len)));
    if (k_motion > k1) {
      spdlog::warn("polish: the half maps' FSC reaches 0.143 at {:.1f} Å, beyond --bfac_minfreq {:.1f} Å: B-factors "
                   "fitted up to {:.1f} Å (where the FSC reaches 0)",
                   ref_len / std::max(1, k1), opt.bfac_minfreq, ref_len / k_motion);
      k1 = k_motion;
    }
  }
  if (k1 - k0 < 2)
    input_error("polish: frequencies {:.1f}-{:.1f} Å leave fewer than 3 shells for the B-factors (--bfac_minfreq, "
                "--bfac_maxfreq)", opt.bfac_minfreq, 1.0 / f_fit_max);
  std::vector<double> fccv(size_t(F * ref_shells), 0.0);
  for (size_t a = 0; a < fccv.size(); ++a) {
    const double d = std::sqrt(fcc.w0[a] * fcc.w1[a]);
    fccv[a] = d > 0 ? fcc.cc[a] / d : 0.0;
  }
  std::vector<double> B(size_t(F), 0.0), amp(size_t(F), 1.0), g(size_t(ref_shells), 0.0);
  auto qk = [&](int k) { return sq(k / ref_len) / 4.0; };
  std::array<double, 2> smooth_b{0.0, 0.0};
  for (int round = 0; round < 8; ++round) {
    for (int k = k0; k <= k1; ++k) {
      double n = 0, d = 0;
      for (int f = 0; f < F; ++f) {
        const double m = amp[size_t(f)] * std::exp(B[size_t(f)] * qk(k));
        n += m * fccv[size_t(f * ref_shells + k)];
        d += m * m;
      }
      g[size_t(k)] = d > 0 ? std::max(0.0, n / d) : 0.0;
    }
    // The error of frame f with B-factor b, its best scale in *a_out.
    auto err = [&](int f, double b, double* a_out) {
      double n = 0, d = 0;
      for (int k = k0; k <= k1; ++k) {
        const double m = g[size_t(k)] * std::exp(b * qk(k));
        n += m * fccv[size_t(f * ref_shells + k)];
        d += m * m;
      }
      const double a = d > 0 ? std::max(0.0, n / d) : 0.0;
      double e = 0;
      for (int k = k0; k <= k1; ++k) e += sq(fccv[size_t(f * ref_shells + k)] - a * g[size_t(k)] * std::exp(b * qk(k)));
      if (a_out) *a_out = a;
      return e;
    };
    if (opt.bfac_per_frame) {
      for (int f = 0; f < F; ++f) {
        // Grid search over B (Å^2) refined three times around the best value.
        double lo = -1500, hi = 500, best = B[size_t(f)];
        for (int depth = 0; depth < 4; ++depth) {
          double best_e = err(f, best, nullptr);
          const int steps = 40;
          for (int s = 0; s <= steps; ++s) {
            const double b = lo + (hi - lo) * s / steps;
            const double e = err(f, b, nullptr);
            if (e < best_e) {
              best_e = e;
              best = b;
            }
          }
          const double width = (hi - lo) / steps;
          lo = best - width;
          hi = best + width;
        }
        B[size_t(f)] = best;
        err(f, best, &amp[size_t(f)]);
      }
    } else {
      // B_f = b1 t + b2 t^2 with t = f / (F - 1) (the gauge takes up a constant), a_f free: a grid
      // over (b1, b2) refined three times around the best pair.
      auto total = [&](double b1, double b2) {
        double e = 0;
        for (int f = 0; f < F; ++f) {
          const double t = F > 1 ? double(f) / (F - 1) : 0.0;
          e += err(f, b1 * t + b2 * t * t, nullptr);
        }
        return e;
      };
      double c1 = smooth_b[0], c2 = smooth_b[1], w1 = 1000, w2 = 1000;
      for (int depth = 0; depth < 4; ++depth) {
        double best_e = total(c1, c2), b1 = c1, b2 = c2;
        const int steps = 20;
        for (int s1 = 0; s1 <= steps; ++s1)
          for (int s2 = 0; s2 <= steps; ++s2) {
            const double x1 = c1 - w1 + 2 * w1 * s1 / steps, x2 = c2 - w2 + 2 * w2 * s2 / steps;
            const double e = total(x1, x2);
            if (e < best_e) {
              best_e = e;
              b1 = x1;
              b2 = x2;
            }
          }
        c1 = b1;
        c2 = b2;
        w1 /= steps / 2.0;
        w2 /= steps / 2.0;
      }
      smooth_b = {c1, c2};
      for (int f = 0; f < F; ++f) {
        const double t = F > 1 ? double(f) / (F - 1) : 0.0;
        B[size_t(f)] = c1 * t + c2 * t * t;
        err(f, B[size_t(f)], &amp[size_t(f)]);
      }
    }
    // Gauge: the best frame has B = 0 and amplitude 1 (g takes up the rest).
    const double bmax = *std::max_element(B.begin(), B.end());
    const double amax = *std::max_element(amp.begin(), amp.end());
    for (int f = 0; f < F; ++f) {
      B[size_t(f)] -= bmax;
      if (amax > 0) amp[size_t(f)] /= amax;
    }
  }
  // Frame weights W_f(k) at physical frequency |f| (1/Å), normalised over the frames.
  auto frame_weights = [&](double freq, std::vector<float>& wf) {
    double s = 0;
    for (int f = 0; f < F; ++f) s += (wf[size_t(f)] = float(amp[size_t(f)] * std::exp(B[size_t(f)] * freq * freq / 4)));
    for (int f = 0; f < F; ++f) wf[size_t(f)] = s > 0 ? float(wf[size_t(f)] / s) : 1.0f / float(F);
  };
  {
    star::Document doc;
    star::Block& b = doc.add_block("perframe_bfactors", true);
    for (int f = 0; f < F; ++f) b.add_row();
    std::vector<int> idx(static_cast<size_t>(F));
    std::vector<double> bf(static_cast<size_t>(F)), ic(static_cast<size_t>(F));
    for (int f = 0; f < F; ++f) {
      idx[size_t(f)] = f;
      bf[size_t(f)] = B[size_t(f)];
      ic[size_t(f)] = amp[size_t(f)] > 0 ? std::log(amp[size_t(f)]) : -99.0;
      res.frames.push_back({f, bf[size_t(f)], ic[size_t(f)]});
    }
    b.set_column("rlnMovieFrameNumber", idx);
    b.set_column("rlnBfactorUsedForSharpening", bf);
    b.set_column("rlnFittedInterceptGuinierPlot", ic);
    res.bfactors_star = opt.out_dir + "/bfactors.star";
    if (mpi::rank() == 0) star::write(res.bfactors_star, doc);
    LinePlot plot;
    for (int f = 0; f < F; ++f) {
      plot.x.push_back(f + 1);
      plot.y.push_back(B[size_t(f)]);
    }
    plot.x_min = 1;
    plot.x_max = std::max(2, F);
    plot.y_min = std::min(-10.0, *std::min_element(B.begin(), B.end()) * 1.1);
    plot.y_max = 0;
    plot.hlines = {0};
    if (mpi::rank() == 0) write_file_atomic(opt.out_dir + "/bfactors.png", render_line_plot_png(plot));
    std::string line;
    for (int f = 0; f < F; ++f) line += fmt::format(" {:.0f}", B[size_t(f)]);
    spdlog::info("polish: per-frame B-factors (Å², relative to the best frame):{}", line);
  }

  if (opt.combine_frames) {
    // W_f on each group's half-complex grid, per frame.
    std::vector<std::vector<Grid<float>>> weights(optics.groups());
    for (size_t gi = 0; gi < optics.groups(); ++gi) {
      const OpticsGroupModel& g = optics.group(gi);
      const int n = g.box;
      weights[gi].assign(size_t(F), Grid<float>(n / 2 + 1, n, 1));
      std::vector<float> wf(static_cast<size_t>(F));
      for (int ky = -n / 2; ky < n / 2; ++ky)
        for (int kx = 0; kx <= n / 2; ++kx) {
          const auto fr = g.frequency(kx, ky);
          frame_weights(std::hypot(fr[0], fr[1]), wf);
          for (int f = 0; f < F; ++f) weights[gi][size_t(f)][half_index(kx, ky, n)] = wf[size_t(f)];
        }
    }
    auto weight_grid = [&](size_t gi, int f) -> const Grid<float>& { return weights[gi][size_t(f)]; };
    std::vector<std::string> image_names(count);
    std::vector<char> kept(count, 0);
    Progress progress2("polish: shiny particles", double(mics.size()));
    for (size_t mi = 0; mi < mics.size(); ++mi) {
      const Micrograph& mic = mics[mi];
      const Fitted& fit = fitted[mi];
      if (!fit.ok) {
        progress2.advance(1);
        continue;
      }
      const std::string stack = output_root(opt.out_dir, mic.name) + "_shiny.mrcs";
      for (size_t q = 0; q < mic.particles.size(); ++q) {
        image_names[mic.particles[q]] = fmt::format("{:06d}@{}", q + 1, stack);
        kept[mic.particles[q]] = 1;
      }
      if (int(mi % size_t(mpi::size())) != mpi::rank()) {  // another rank's micrograph
        progress2.advance(1);
        continue;
      }
      const MovieFrames mf = open_movie(mic, opt, ref_voltage, gains);
      const size_t P = mic.particles.size();
      std::vector<Grid<cfloat>> acc(P);
      std::vector<int> s_mov(P);
      for (size_t q = 0; q < P; ++q) {
        const OpticsGroupModel& g = optics.group_of(mic.particles[q]);
        s_mov[q] = int(std::lround(g.box * g.pixel_size / mf.angpix));
        acc[q] = Grid<cfloat>(g.box / 2 + 1, g.box, 1);
      }
      for_each_frame(mf, F, mic.metadata, [&](int f, const Grid<float>& frame) {
        pool.parallel_for(0, P, [&](size_t q, int) {
          const size_t i = mic.particles[q];
          const OpticsGroupModel& g = optics.group_of(i);
          const double mx = std::trunc(coord_x[i]) * mf.meta.binning, my = std::trunc(coord_y[i]) * mf.meta.binning;
          const auto& t = fit.track[q * F + size_t(f)];
          thread_local Grid<cfloat> Bx;
          frame_box(frame, mx + t[0], my + t[1], s_mov[q], g.box, Bx);
          const Grid<float>& W = weight_grid(size_t(table.optics_index[i]), f);
          for (size_t at = 0; at < W.size(); ++at) acc[q][at] += Bx[at] * W[at];
        });
      });
      std::vector<Grid<float>> images(P);
      pool.parallel_for(0, P, [&](size_t q, int) {
        const OpticsGroupModel& g = optics.group_of(mic.particles[q]);
        Grid<float> img = from_fourier_centred(acc[q], g.box);
        if (fit.scale < 0)
          for (size_t v = 0; v < img.size(); ++v) img[v] = -img[v];
        NormaliseOptions no;
        no.bg_radius_px = 0.75 * g.box / 2;
        normalise_particle(img, no);
        images[q] = std::move(img);
      });
      mrc::WriteOptions wo;
      wo.is_stack = true;
      wo.pixel_size = optics.group_of(mic.particles[0]).pixel_size;
      {
        // One stack per micrograph; groups of another box would need their own stack.
        const int n0 = images[0].nx();
        for (size_t q = 1; q < P; ++q)
          if (images[q].nx() != n0)
            input_error("{}: particles of micrograph {} have boxes {} and {}: one box per micrograph is needed",
                        opt.particles, mic.name, n0, images[q].nx());
        mrc::StackWriter w(stack, n0, n0, wo);
        for (size_t q = 0; q < P; ++q) w.append(images[q]);
        w.commit();
      }
      progress2.advance(1);
    }
    progress2.finish();
    std::vector<size_t> keep;
    for (size_t i = 0; i < count; ++i)
      if (kept[i]) keep.push_back(i);
    for (size_t i = 0; i < count; ++i)
      if (kept[i]) table.set_image(i, std::stol(image_names[i]), image_names[i].substr(image_names[i].find('@') + 1));
    table.select(keep);
    res.shiny_star = opt.out_dir + "/shiny.star";
    mpi::barrier();  // every rank's stacks written
    if (mpi::rank() == 0) table.write(res.shiny_star);
    spdlog::info("polish: {} shiny particles; wrote {}", keep.size(), res.shiny_star);
  }
  return res;
}

}  // namespace regula

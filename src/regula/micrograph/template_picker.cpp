#include "regula/micrograph/template_picker.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/core/parallel.hpp"
#include "regula/imaging/filter.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/micrograph/paired_dft.hpp"
#include "regula/sampling/healpix.hpp"
#include "regula/sampling/symmetry.hpp"

namespace regula {

std::string TemplatePickOptions::validate() const {
  if (!(angpix > 0)) return fmt::format("--angpix: the micrograph pixel size must be positive (got {})", angpix);
  if (!(psi_step > 0) || psi_step > 360) return fmt::format("--ang: an in-plane step in (0, 360] degrees (got {})", psi_step);
  if (shrink < 0) return fmt::format("--shrink: must be >= 0 (got {})", shrink);
  if (shrink_mask < 0) return "--shrink_particle_mask: must be >= 0";
  if (outlier_z <= 0) return "--outlier_removal_zscore: must be positive";
  if (skip_side < 0) return "--skip_side: must be >= 0";
  if (ctf_intact_first_peak && !ctf) return "--ctf_intact_first_peak needs --ctf";
  return "";
}

namespace {

// RELION's automatic mask diameter (px of the reference): along the central row, the span between
// the first pixel that differs from the corner value and the next one equal to it again.
double auto_diameter_px(const Grid<float>& ref) {
  const int n = ref.nx(), cy = ref.ny() / 2;
  const float corner = ref[0];
  int first = -(n / 2), last = first + n - 1;  // logical indices, as RELION
  bool has_first = false, has_last = false;
  for (int j = -(n / 2); j < -(n / 2) + n; ++j) {
    const float v = ref(j + n / 2, cy);
    if (!has_first) {
      if (std::abs(v - corner) > 1e-6f) {
        first = j;
        has_first = true;
      }
    } else if (!has_last) {
      if (std::abs(v - corner) < 1e-6f) {
        last = j - 1;
        has_last = true;
      }
    }
  }
  return double(last - first);
}

struct Peak {
  int x = 0, y = 0, ref = 0;  // working-grid pixels from the micrograph's corner
  double psi = 0, fom = 0;
};

inline float d2f(const Peak& a, const Peak& b) {
  const float dx = float(a.x - b.x), dy = float(a.y - b.y);
  return dx * dx + dy * dy;
}

// RELION's prunePeakClusters: single-linkage clusters at distance^2 < link2, then from each cluster
// the best peak, then the best of those not within mind2 of it, and so on.
std::vector<Peak> prune_clusters(const std::vector<Peak>& peaks, float link2, float mind2) {
  std::vector<Peak> out;
  std::vector<char> used(peaks.size(), 0);
  for (size_t s = 0; s < peaks.size(); ++s) {
    if (used[s]) continue;
    std::vector<size_t> cluster{s};
    used[s] = 1;
    for (size_t c = 0; c < cluster.size(); ++c)
      for (size_t p = 0; p < peaks.size(); ++p)
        if (!used[p] && d2f(peaks[cluster[c]], peaks[p]) < link2) {
          used[p] = 1;
          cluster.push_back(p);
        }
    while (!cluster.empty()) {
      size_t best = 0;
      for (size_t c = 1; c < cluster.size(); ++c)
        if (peaks[cluster[c]].fom > peaks[cluster[best]].fom) best = c;
      const Peak b = peaks[cluster[best]];
      out.push_back(b);
      std::vector<size_t> rest;
      for (size_t c = 0; c < cluster.size(); ++c)
        if (c != best && !(d2f(peaks[cluster[c]], b) < mind2)) rest.push_back(cluster[c]);
      cluster.swap(rest);
    }
  }
  return out;
}

// RELION's removeTooCloselyNeighbouringPeaks: drops every peak with another closer than mind2.
std::vector<Peak> remove_close(const std::vector<Peak>& peaks, float mind2) {
  std::vector<Peak> out;
  for (size_t i = 0; i < peaks.size(); ++i) {
    float m = 9999999999.0f;
    for (size_t j = 0; j < peaks.size(); ++j)
      if (j != i) {
        const int dx = peaks[j].x - peaks[i].x, dy = peaks[j].y - peaks[i].y;
        m = std::min(m, float(dx * dx + dy * dy));
      }
    if (m > mind2) out.push_back(peaks[i]);
  }
  return out;
}

// The exact transform of a centred n x n image on a lattice of `size`-periodic frequencies
// oversampled twice: value at lattice (x, y), x in [0, R], y in [-R, R], is
// sum_{a,b} img(a, b) exp(-2 pi i (x (a - n/2) + y (b - n/2)) / (2 size)).
FourierLattice fine_lattice(const Grid<float>& img, int size, int R) {
  const int n = img.nx(), c = n / 2;
  FourierLattice lat;
  lat.init(2, R);
  const double w = -2.0 * kPi / (2.0 * size);
  std::vector<cdouble> ex(size_t(R + 1) * size_t(n)), ey(size_t(2 * R + 1) * size_t(n));
  for (int x = 0; x <= R; ++x)
    for (int a = 0; a < n; ++a) ex[size_t(x) * n + a] = std::polar(1.0, w * x * (a - c));
  for (int y = -R; y <= R; ++y)
    for (int b = 0; b < n; ++b) ey[size_t(y + R) * n + b] = std::polar(1.0, w * y * (b - c));
  // P(x, b) = sum_a img(a, b) ex(x, a)
  std::vector<cdouble> P(size_t(R + 1) * size_t(n));
  for (int b = 0; b < n; ++b) {
    const float* row = img.data() + size_t(b) * n;
    for (int x = 0; x <= R; ++x) {
      const cdouble* e = &ex[size_t(x) * n];
      double re = 0, im = 0;
      for (int a = 0; a < n; ++a) {
        re += row[a] * e[a].real();
        im += row[a] * e[a].imag();
      }
      P[size_t(x) * n + b] = cdouble(re, im);
    }
  }
  for (int y = -R; y <= R; ++y) {
    const cdouble* e = &ey[size_t(y + R) * n];
    for (int x = 0; x <= R; ++x) {
      const cdouble* p = &P[size_t(x) * n];
      cdouble s = 0;
      for (int b = 0; b < n; ++b) s += p[b] * e[b];
      lat.data[lat.index(x, y, 0)] = cfloat(s);
    }
  }
  return lat;
}

}  // namespace

// Paired inverse transforms of one size (FFTW plans and two n x n complex buffers each, 10.8 MB at
// RELION's 820 px), made on first use and lent out again: one per concurrent reference_peaks call,
// kept across references and micrographs.
class PairedDftPool {
 public:
  struct Lease {
    PairedDftPool* pool = nullptr;
    std::unique_ptr<PairedInverseDft> dft;
    Lease(PairedDftPool* p, std::unique_ptr<PairedInverseDft> d) : pool(p), dft(std::move(d)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
      if (pool && dft) pool->give_back(std::move(dft));
    }
  };
  // A transform of size n, or none (null) where FFTW's own is the faster (PairedInverseDft::preferred).
  Lease lend(int n) {
    if (!PairedInverseDft::preferred(n)) return Lease(nullptr, nullptr);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        std::unique_ptr<PairedInverseDft> d = std::move(free_.back());
        free_.pop_back();
        if (d->size() == n) return Lease(this, std::move(d));
      }
    }
    return Lease(this, std::make_unique<PairedInverseDft>(n));
  }

 private:
  void give_back(std::unique_ptr<PairedInverseDft> d) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(d));
  }
  std::mutex mutex_;
  std::vector<std::unique_ptr<PairedInverseDft>> free_;
};

struct TemplateReferences::Impl {
  TemplatePickOptions opt;
  PickingGrid grid;
  int downsize = 0;       // RELION's downsize_mic: the references' Fourier radius is downsize / 2
  int box = 0;            // reference box at the micrograph's pixel size
  double diameter = 0;    // Å
  double min_distance = 0;  // Å
  long radius2 = 0;       // (mask radius in px)^2
  long n_mask = 0, n_ring = 0;
  std::vector<Projector> refs;
  Grid<cfloat> ring;      // transform of the ring (origin at 0) on the working grid
  std::vector<double> psis;
  mutable PairedDftPool paired;  // the correlation maps' inverse transforms (BestCorrelation)
};

TemplateReferences::TemplateReferences(const std::vector<Grid<float>>& refs_in, const TemplatePickOptions& o,
                                       int mic_nx, int mic_ny, int nthreads)
    : impl_(std::make_unique<Impl>()) {
  if (auto m = o.validate(); !m.empty()) throw InputError("template picking: " + m);
  if (refs_in.empty()) input_error("template picking: no references");
  Impl& im = *impl_;
  im.opt = o;
  const int n0 = refs_in[0].nx();
  for (auto& r : refs_in)
    if (r.nx() != n0 || r.ny() != n0 || r.nz() != 1 || n0 < 4)
      input_error("template picking: references must be square 2D images of one size (got {}x{}x{} and {}x{})",
                  r.nx(), r.ny(), r.nz(), n0, n0);
  const double angpix_ref = o.angpix_ref > 0 ? o.angpix_ref : o.angpix;
  double diameter = o.particle_diameter;
  if (!(diameter > 0)) {
    double s = 0;
    for (auto& r : refs_in) s += auto_diameter_px(r);
    diameter = s / double(refs_in.size()) * angpix_ref;
  }
  // References at the micrograph's pixel size (RELION's resizeMap and grey-value correction).
  std::vector<Grid<float>> refs = refs_in;
  if (std::abs(angpix_ref - o.angpix) > 1e-3) {
    const int newsize = 2 * int(std::lround((n0 / 2) * (angpix_ref / o.angpix)));
    if (newsize < 4) input_error("template picking: references of {} px at {} Å become too small at {} Å", n0, angpix_ref, o.angpix);
    const float f = newsize > n0 ? float(n0) / float(newsize) : 1.0f;
    for (auto& r : refs) {
      r = rescale(r, newsize);
      for (auto& v : r) v *= f;
    }
  }
  im.box = refs[0].nx();
  im.diameter = diameter;
  if (diameter > im.box * o.angpix)
    input_error("template picking: the mask diameter {} Å is larger than the reference box ({} px at {} Å)", diameter,
                im.box, o.angpix);
  im.min_distance = o.min_distance > 0 ? o.min_distance : im.box * o.angpix / 2.0;
  long r = std::lround(diameter / (2.0 * o.angpix)) - o.shrink_mask;
  im.radius2 = r * r;
  im.grid = picking_grid(mic_nx, mic_ny, o.angpix, o.lowpass, o.shrink, o.optimise_size);
  const int size = im.grid.size;
  im.downsize = o.lowpass > 0 ? 2 * int(std::lround(size * o.angpix / o.lowpass)) : size;
  im.downsize = std::min(im.downsize, size);
  // Masks: the particle disc (r^2 < R^2) and the ring around it within the box.
  const int b = im.box, c = b / 2;
  Grid<float> ring_img(size, size);
  for (int y = 0; y < b; ++y)
    for (int x = 0; x < b; ++x) {
      const long d2 = long(x - c) * (x - c) + long(y - c) * (y - c);
      if (d2 < im.radius2) {
        ++im.n_mask;
      } else {
        ++im.n_ring;
        ring_img(((x - c) % size + size) % size, ((y - c) % size + size) % size) = 1.0f;
      }
    }
  if (im.n_mask == 0 || im.n_ring == 0)
    input_error("template picking: the mask of {} Å leaves no particle or no background pixels in the {} px box",
                diameter, b);
  im.ring = window_fourier(fft_forward(ring_img, nthreads), size, im.grid.work);
  for (auto& v : im.ring) v = std::conj(v);
  // Masked, inverted references on the oversampled Fourier lattice.
  const int rmax = im.downsize / 2;
  const int R = 2 * rmax + 2;
  im.refs.resize(refs.size());
  ThreadPool pool(std::max(1, std::min(nthreads, int(refs.size()))));
  pool.parallel_for(0, refs.size(), [&](size_t k, int) {
    Grid<float> a = refs[k];
    for (int y = 0; y < b; ++y)
      for (int x = 0; x < b; ++x) {
        const long d2 = long(x - c) * (x - c) + long(y - c) * (y - c);
        a(x, y) = d2 < im.radius2 ? (o.invert ? -a(x, y) : a(x, y)) : 0.0f;
      }
    im.refs[k] = Projector(size, 2, rmax, fine_lattice(a, size, R));
  });
  const int npsi = std::max(1, int(std::lround(360.0 / o.psi_step)));
  for (int i = 0; i < npsi; ++i) im.psis.push_back(i * 360.0 / npsi);
}

TemplateReferences::~TemplateReferences() = default;
int TemplateReferences::count() const { return int(impl_->refs.size()); }
int TemplateReferences::box() const { return impl_->box; }
double TemplateReferences::particle_diameter() const { return impl_->diameter; }
double TemplateReferences::min_distance() const { return impl_->min_distance; }
const PickingGrid& TemplateReferences::grid() const { return impl_->grid; }

namespace {

struct MicrographMaps {
  Grid<cfloat> F;              // the prepared micrograph's transform on the working grid
  std::vector<double> mean, sd;  // local mean and standard deviation over the ring (working grid)
  Grid<float> ctf;             // CTF on the downsize grid (empty without --ctf)
};

MicrographMaps micrograph_maps(const Grid<float>& mic, const TemplateReferences::Impl& im, const CtfParams& ctfp,
                               uint64_t noise_seed, int nthreads) {
  const TemplatePickOptions& o = im.opt;
  const int size = im.grid.size, work = im.grid.work;
  MicrographMaps mm;
  Grid<cfloat> F2;
  if (o.highpass > 0) {
    // The high-passed micrograph is needed in real space for its square: the full transform.
    Grid<float> X = prepare_for_picking(mic, o.outlier_z, noise_seed);
    Grid<cfloat> F = fft_forward(X, nthreads);
    high_pass(F, o.highpass, o.angpix, 2);
    X = fft_inverse(F, size, nthreads);
    for (auto& v : X) v *= v;
    F2 = window_fourier(fft_forward(X, nthreads), size, work);
    mm.F = window_fourier(F, size, work);
  } else {
    auto t = prepared_transforms(mic, o.outlier_z, noise_seed, im.grid, 1.0f, true, nthreads);
    mm.F = std::move(t[0]);
    F2 = std::move(t[1]);
  }
  // Local statistics over the ring: correlations with the ring on the working grid.
  const double f = double(work) * work / (double(size) * size) / double(im.n_ring);
  Grid<cfloat> G = mm.F;
  for (size_t i = 0; i < G.size(); ++i) {
    G[i] *= im.ring[i];
    F2[i] *= im.ring[i];
  }
  const Grid<float> m1 = fft_inverse(G, work, nthreads), m2 = fft_inverse(F2, work, nthreads);
  mm.mean.resize(m1.size());
  mm.sd.resize(m1.size());
  for (size_t i = 0; i < m1.size(); ++i) {
    const double mu = m1[i] * f;
    const double var = m2[i] * f - mu * mu;
    mm.mean[i] = mu;
    mm.sd[i] = var > 1e-10 ? std::sqrt(var) : 1.0;
  }
  if (o.ctf) {
    CtfOptions co;
    co.intact_until_first_peak = o.ctf_intact_first_peak;
    const Ctf ctf(ctfp, co);
    const int d = im.downsize;
    mm.ctf = Grid<float>(d / 2 + 1, d);
    const double inv = 1.0 / (size * o.angpix);
    for (int iy = 0; iy < d; ++iy)
      for (int ix = 0; ix <= d / 2; ++ix) mm.ctf(ix, iy) = float(ctf.value(ix * inv, fft_freq(iy, d) * inv));
  }
  return mm;
}

// The reference's transform at in-plane angle psi with the CTF, on the working grid, into T.
void reference_at(const TemplateReferences::Impl& im, size_t k, double psi, const MicrographMaps& mm,
                  Grid<cfloat>& buf, Grid<cfloat>& T) {
  im.refs[k].project(euler_to_matrix(0, 0, psi), buf, im.downsize);
  if (!mm.ctf.empty())
    for (size_t i = 0; i < buf.size(); ++i) buf[i] *= mm.ctf[i];
  window_fourier(buf, im.downsize, im.grid.work, T);
}

// The best cross-correlation per pixel over in-plane angles and the angle giving it. The correlation
// maps come as spectra (next_spectrum, then add) and update the maxima in the order they were given
// (the first of equal values is kept). Where the working size has a large prime factor the spectra
// are inverse-transformed two at a time (PairedInverseDft: the same numbers to rounding, several
// times faster than FFTW_ESTIMATE there), otherwise one at a time by FFTW.
class BestCorrelation {
 public:
  // `paired`: a PairedInverseDft of size `work`, or null (FFTW one map at a time).
  BestCorrelation(int work, PairedInverseDft* paired)
      : work_(work), best_(size_t(work) * size_t(work), -3.4e38f), psi_(best_.size(), 0.0f), paired_(paired) {}
  // The buffer to fill with the next correlation map's spectrum (nx x ny, fft_forward's layout).
  Grid<cfloat>& next_spectrum(int nx, int ny) {
    Grid<cfloat>& q = paired_ && pending_ ? spectra_[1] : spectra_[0];
    if (q.nx() != nx || q.ny() != ny) q = Grid<cfloat>(nx, ny);
    return q;
  }
  // The map just written to next_spectrum() is that of in-plane angle psi (degrees).
  void add(double psi) {
    if (!paired_) {
      fft_inverse_destroy(spectra_[0], work_, maps_[0]);
      update(maps_[0], psi);
    } else if (!pending_) {
      pending_ = true;
      pending_psi_ = psi;
    } else {
      paired_->inverse(spectra_[0], spectra_[1], maps_[0], maps_[1]);
      update(maps_[0], pending_psi_);
      update(maps_[1], psi);
      pending_ = false;
    }
  }
  // After the last add(): a map still waiting for its pair is transformed alone.
  void finish() {
    if (!pending_) return;
    fft_inverse_destroy(spectra_[0], work_, maps_[0]);
    update(maps_[0], pending_psi_);
    pending_ = false;
  }
  const std::vector<float>& best() const { return best_; }
  const std::vector<float>& best_psi() const { return psi_; }

 private:
  void update(const Grid<float>& c, double psi) {
    for (size_t p = 0; p < best_.size(); ++p)
      if (c[p] > best_[p]) {
        best_[p] = c[p];
        psi_[p] = float(psi);
      }
  }

  int work_;
  std::vector<float> best_, psi_;
  PairedInverseDft* paired_;
  Grid<cfloat> spectra_[2];
  Grid<float> maps_[2];
  bool pending_ = false;
  double pending_psi_ = 0;
};

// Peaks of one reference: the best correlation over in-plane angles, its FOM map, the peak search
// and the pruning of its peaks.
std::vector<Peak> reference_peaks(const TemplateReferences::Impl& im, size_t k, const MicrographMaps& mm) {
  const TemplatePickOptions& o = im.opt;
  const int size = im.grid.size, work = im.grid.work;
  const size_t np = size_t(work) * size_t(work);
  Grid<cfloat> buf, T, T0;
  // Sums of the CTF-filtered reference over the mask (RELION takes them at the first angle); the
  // projection at the first angle (T0) is kept for the angle loop.
  double a1 = 0, a2 = 0;
  {
    reference_at(im, k, im.psis[0], mm, buf, T0);
    T = T0;
    centre_origin(T, work, true);
    const Grid<float> t = fft_inverse(T, work);
    const double f = double(work) * work / (double(size) * size);
    const double s2 = 1.0 / (double(im.grid.scale) * im.grid.scale);
    double s = 0, ss = 0;
    long cnt = 0;
    for (int y = 0; y < work; ++y)
      for (int x = 0; x < work; ++x) {
        const double dx = x - work / 2, dy = y - work / 2;
        if ((dx * dx + dy * dy) * s2 < double(im.radius2)) {
          const double v = t(x, y) * f;
          s += v;
          ss += v * v;
          ++cnt;
        }
      }
    if (cnt == 0) cnt = 1;
    const double n = double(im.n_mask);
    a1 = s / double(cnt) * n / (n + 1);
    a2 = ss / double(cnt) * n / (n + 1);
  }
  const double expected = std::exp(a2 / 2.0);
  const double ccf = double(work) * work / (double(size) * size) / double(im.n_mask);
  // Cross-correlations with the reference at each angle: P = conj(T) F, or T F for the reference
  // turned by 180 degrees (a real image turned by 180 degrees has the complex conjugate transform;
  // the CTF is real and even).
  const PairedDftPool::Lease paired = im.paired.lend(work);
  BestCorrelation bc(work, paired.dft.get());
  const auto correlate = [&](bool conj_ref, double psi) {
    Grid<cfloat>& Q = bc.next_spectrum(T.nx(), T.ny());
    for (size_t i = 0; i < T.size(); ++i) Q[i] = (conj_ref ? std::conj(T[i]) : T[i]) * mm.F[i];
    bc.add(psi);
  };
  // With an even number of angles, psi and psi + 180 share one projection (in that order).
  const size_t npsi = im.psis.size(), half = npsi % 2 == 0 ? npsi / 2 : npsi;
  for (size_t i = 0; i < half; ++i) {
    if (i == 0) std::swap(T, T0);
    else reference_at(im, k, im.psis[i], mm, buf, T);
    correlate(true, im.psis[i]);
    if (half < npsi) correlate(false, im.psis[i + half]);
  }
  bc.finish();
  const std::vector<float>& best = bc.best();
  const std::vector<float>& best_psi = bc.best_psi();
  std::vector<double> fom(np);
  for (size_t p = 0; p < np; ++p) {
    double d = -2.0 * ccf * best[p] + 2.0 * mm.mean[p] * a1;
    if (mm.sd[p] > 1e-10) d /= mm.sd[p];
    d += a2;
    fom[p] = (std::exp(-d / 2.0) - 1.0) / (expected - 1.0);
  }
  // Peak search.
  int skip = int(float(o.skip_side + im.box / 2) * im.grid.scale);
  skip = std::max(1, skip);
  int ilo, ihi, jlo, jhi;
  im.grid.valid_range(skip, ilo, ihi, jlo, jhi);
  const double t = o.threshold;
  const bool shrunk = im.grid.scale < 1.0f;
  std::vector<Peak> peaks;
  const int offx = int(std::lround(im.grid.x_of(0) * im.grid.scale)), offy = int(std::lround(im.grid.y_of(0) * im.grid.scale));
  for (int i = std::max(ilo, 1); i <= std::min(ihi, work - 2); ++i)
    for (int j = std::max(jlo, 1); j <= std::min(jhi, work - 2); ++j) {
      const size_t p = size_t(i) * work + size_t(j);
      const double v = fom[p];
      if (!(v >= t)) continue;
      if (o.max_stddev_noise > 0 && mm.sd[p] > o.max_stddev_noise) continue;
      if (o.min_avg_noise > -900 && mm.mean[p] < o.min_avg_noise) continue;
      const double nb[4] = {fom[p - size_t(work)], fom[p + size_t(work)], fom[p - 1], fom[p + 1]};
      bool ok = true;
      for (double u : nb)
        if (u > v || (!shrunk && u < t)) ok = false;
      if (!ok) continue;
      Peak pk;
      pk.x = j + offx;
      pk.y = i + offy;
      pk.ref = int(k);
      pk.psi = best_psi[p];
      pk.fom = v;
      peaks.push_back(pk);
    }
  return peaks;
}

}  // namespace

TemplatePickResult pick_templates(const Grid<float>& mic, const TemplateReferences& refs, const TemplatePickOptions& o,
                                  const CtfParams& ctf, uint64_t noise_seed, int nthreads) {
  const TemplateReferences::Impl& im = refs.impl();
  const int size = std::max(mic.nx(), mic.ny());
  if (mic.nx() != im.grid.nx || mic.ny() != im.grid.ny)
    input_error("template picking: the micrograph is {}x{} px but the references were prepared for {}x{} "
                "(all micrographs of a run must have one size)", mic.nx(), mic.ny(), im.grid.nx, im.grid.ny);
  (void)size;
  const MicrographMaps mm = micrograph_maps(mic, im, ctf, noise_seed, nthreads);
  const float scale = im.grid.scale;
  const long mind = std::lround(im.min_distance / o.angpix);
  const float mind2 = float(mind) * float(mind) * scale * scale;
  const float link2 = float(im.radius2) * scale * scale;
  std::vector<std::vector<Peak>> per_ref(im.refs.size());
  std::vector<long> found(im.refs.size());
  ThreadPool pool(std::max(1, std::min(nthreads, int(im.refs.size()))));
  pool.parallel_for(0, im.refs.size(), [&](size_t k, int) {
    std::vector<Peak> p = reference_peaks(im, k, mm);
    found[k] = long(p.size());
    per_ref[k] = prune_clusters(p, link2, mind2);
  });
  std::vector<Peak> all;
  TemplatePickResult res;
  for (size_t k = 0; k < per_ref.size(); ++k) {
    all.insert(all.end(), per_ref[k].begin(), per_ref[k].end());
    res.peaks += found[k];
  }
  all = remove_close(prune_clusters(all, link2, mind2), mind2);
  for (const Peak& p : all) {
    Pick pk;
    pk.x = double(p.x) / scale;
    pk.y = double(p.y) / scale;
    pk.fom = p.fom;
    pk.class_number = p.ref + 1;
    pk.psi = p.psi;
    res.picks.push_back(pk);
  }
  return res;
}

std::vector<Grid<float>> project_for_picking(const Grid<float>& map, double angpix_ref, double lowpass,
                                             int healpix_order, const std::string& symmetry, int nthreads) {
  const int n = map.nx();
  if (map.ny() != n || map.nz() != n || n < 4) input_error("template picking: the 3D reference must be a cubic map");
  const int r_max = lowpass > 0 ? int(std::ceil(n * angpix_ref / lowpass)) : n / 2;
  const Projector P(map, 2, std::max(1, std::min(r_max, n / 2)), nthreads);
  const OrientationSampling s(healpix_order, SymmetryGroup::parse(symmetry), 360.0);
  std::vector<Grid<float>> out(s.num_directions());
  ThreadPool pool(nthreads);
  pool.parallel_for(0, out.size(), [&](size_t d, int) {
    out[d] = P.project_real(euler_to_matrix(s.rot(d), s.tilt(d), 0.0));
  });
  return out;
}

}  // namespace regula

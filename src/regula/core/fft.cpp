#include "regula/core/fft.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>

#include <map>
#include <mutex>
#include <tuple>

#include <fftw3.h>

#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"

namespace regula {
namespace {

std::mutex g_plan_mu;
using Key = std::tuple<int, int, int, int, bool, bool>;  // nx, ny, nz, threads, forward, in place
std::map<Key, fftwf_plan>& plans() {
  static std::map<Key, fftwf_plan> p;
  return p;
}

int rank_dims(int nx, int ny, int nz, int dims[3]) {
  if (nz > 1) { dims[0] = nz; dims[1] = ny; dims[2] = nx; return 3; }
  if (ny > 1) { dims[0] = ny; dims[1] = nx; return 2; }
  dims[0] = nx;
  return 1;
}

fftwf_plan get_plan(int nx, int ny, int nz, int nthreads, bool forward, bool inplace = false) {
  std::lock_guard lk(g_plan_mu);
  static bool threads_init = [] { return fftwf_init_threads() != 0; }();
  (void)threads_init;
  if (nz == 1 && ny == 1 ) nthreads = 1;
  Key key{nx, ny, nz, nthreads, forward, inplace};
  auto it = plans().find(key);
  if (it != plans().end()) return it->second;
  int dims[3];
  int rank = rank_dims(nx, ny, nz, dims);
  size_t nreal = size_t(nx) * ny * nz;
  size_t ncplx = size_t(nx / 2 + 1) * ny * nz;
  float* r = inplace ? nullptr : fftwf_alloc_real(nreal);
  fftwf_complex* c = fftwf_alloc_complex(ncplx);
  if (inplace) r = reinterpret_cast<float*>(c);
  fftwf_plan_with_nthreads(nthreads);
  unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
  fftwf_plan p = forward ? fftwf_plan_dft_r2c(rank, dims, r, c, flags)
                         : fftwf_plan_dft_c2r(rank, dims, c, r, flags | FFTW_DESTROY_INPUT);
  if (!inplace) fftwf_free(r);
  fftwf_free(c);
  if (!p) runtime_error("FFTW could not plan a transform of {}x{}x{}", nx, ny, nz);
  plans()[key] = p;
  return p;
}

}  // namespace

void with_fftw_planner(const std::function<void()>& plan) {
  std::lock_guard lk(g_plan_mu);
  fftwf_plan_with_nthreads(1);
  plan();
}

namespace {

// Plans of the row-and-column 2D transforms: kind 0 rows r2c, 1 rows c2r, 2 columns forward, 3
// columns backward, 6 rows r2c out of place (real rows n floats apart into complex rows n/2 + 1
// apart), 7 rows c2r out of place (the other way, destroying the input) (n: transform length, m:
// howmany); all for 16-byte aligned arrays (FFTW_UNALIGNED plans are slower).
std::map<std::tuple<int, int, int>, fftwf_plan>& row_column_plans() {
  static std::map<std::tuple<int, int, int>, fftwf_plan> p;
  return p;
}
// Columns are copied column_block(n) at a time into a buffer whose columns are kColumnPad longer than
// the transform (so that they do not fall on the same cache sets): 8 for columns up to 1,023 long, 32 for
// longer ones (a movie frame's: 2048^2 forward and back in 17.7 against 19.5 ms with 8; shorter columns,
// a reconstruction's, are no faster with more; bench_imaging BM_FFT2DInPlace, BM_FFT3DInPlace).
constexpr int kColumnPad = 16;
inline int column_block(int n) { return n >= 1024 ? 32 : 8; }

fftwf_plan row_column_plan(int kind, int n, int m) {
  std::lock_guard lk(g_plan_mu);
  auto key = std::make_tuple(kind, n, m);
  auto it = row_column_plans().find(key);
  if (it != row_column_plans().end()) return it->second;
  fftwf_plan_with_nthreads(1);
  const int nh = n / 2 + 1;
  fftwf_plan p = nullptr;
  if (kind == 6) {
    float* r = fftwf_alloc_real(size_t(n) * size_t(m));
    fftwf_complex* c = fftwf_alloc_complex(size_t(nh) * size_t(m));
    p = fftwf_plan_many_dft_r2c(1, &n, m, r, nullptr, 1, n, c, nullptr, 1, nh, FFTW_ESTIMATE);
    fftwf_free(r);
    fftwf_free(c);
  } else if (kind == 7) {
    float* r = fftwf_alloc_real(size_t(n) * size_t(m));
    fftwf_complex* c = fftwf_alloc_complex(size_t(nh) * size_t(m));
    p = fftwf_plan_many_dft_c2r(1, &n, m, c, nullptr, 1, nh, r, nullptr, 1, n, FFTW_ESTIMATE | FFTW_DESTROY_INPUT);
    fftwf_free(r);
    fftwf_free(c);
  } else if (kind <= 1) {  // m rows of length n, padded to 2 nh floats
    float* r = fftwf_alloc_real(size_t(2 * nh) * size_t(m));
    auto* c = reinterpret_cast<fftwf_complex*>(r);
    p = kind == 0 ? fftwf_plan_many_dft_r2c(1, &n, m, r, nullptr, 1, 2 * nh, c, nullptr, 1, nh, FFTW_ESTIMATE)
                  : fftwf_plan_many_dft_c2r(1, &n, m, c, nullptr, 1, nh, r, nullptr, 1, 2 * nh,
                                            FFTW_ESTIMATE | FFTW_DESTROY_INPUT);
    fftwf_free(r);
  } else if (kind <= 3) {  // m contiguous complex transforms of length n, n + kColumnPad apart
    const int ld = n + kColumnPad;
    fftwf_complex* c = fftwf_alloc_complex(size_t(ld) * size_t(m));
    p = fftwf_plan_many_dft(1, &n, m, c, nullptr, 1, ld, c, nullptr, 1, ld, kind == 2 ? FFTW_FORWARD : FFTW_BACKWARD,
                            FFTW_ESTIMATE);
    fftwf_free(c);
  }
  if (!p) runtime_error("FFTW could not plan a transform of length {} (x{})", n, m);
  row_column_plans()[key] = p;
  return p;
}

// Column transforms of length n of the nxh columns data[x + k * stride], k < n (a plane's y
// columns: stride nxh; a volume's z columns: stride nxh * ny), column_block(n) columns at a time.
void columns_inplace(cfloat* data, int nxh, int n, size_t stride, bool forward) {
  thread_local AlignedArray<cfloat> buf;
  const size_t ld = size_t(n + kColumnPad);
  const int block = column_block(n);
  buf.resize(size_t(block) * ld);
  for (int x0 = 0; x0 < nxh; x0 += block) {
    const int b = std::min(block, nxh - x0);
    fftwf_plan p = row_column_plan(forward ? 2 : 3, n, b);
    for (int k = 0; k < n; ++k) {
      const cfloat* row = data + size_t(k) * stride + size_t(x0);
      for (int c = 0; c < b; ++c) buf[size_t(c) * ld + size_t(k)] = row[c];
    }
    auto* f = reinterpret_cast<fftwf_complex*>(buf.data());
    fftwf_execute_dft(p, f, f);
    for (int k = 0; k < n; ++k) {
      cfloat* row = data + size_t(k) * stride + size_t(x0);
      for (int c = 0; c < b; ++c) row[c] = buf[size_t(c) * ld + size_t(k)];
    }
  }
}
void columns_inplace(cfloat* data, int nxh, int ny, bool forward) { columns_inplace(data, nxh, ny, size_t(nxh), forward); }

// A 3D in-place transform as planes and z columns: forward, each plane's rows (r2c) then its y
// columns, then the z columns; inverse the other way round, each plane scaled by `scale` after its
// rows. Planes and z-column rows are handed out to the threads; every 1D transform is the same
// whatever the thread count, so the result does not depend on it (FFTW's threaded 3D plans made
// with FFTW_ESTIMATE copy the data through buffers that took 40% of their time here).
void fft3_inplace(cfloat* data, int nx, int ny, int nz, bool forward, float scale, int nthreads) {
  const int nxh = nx / 2 + 1;
  const size_t plane = size_t(nxh) * size_t(ny);
  // Each plane's rows out of place through a buffer of contiguous reals: fft2_forward / fft2_inverse
  // (FFTW_ESTIMATE's in-place rows with FFTW_UNALIGNED plans were slower: both ways with 2 threads,
  // bench_imaging BM_FFT3DInPlace, 192^3 22.6 -> 18.6 ms, 384^3 200 -> 150 ms). Planes 8 bytes off
  // the alignment (nxh ny odd) go through fft2_forward's aligned copy.
  ThreadPool pool(std::max(1, std::min(nthreads, std::max(ny, nz))));
  const auto planes = [&] {
    pool.parallel_for(0, size_t(nz), [&](size_t z, int) {
      thread_local AlignedArray<float> buf;
      buf.resize(size_t(nx) * size_t(ny));
      cfloat* p = data + z * plane;
      float* r = reinterpret_cast<float*>(p);
      const size_t stride = size_t(2 * nxh);
      if (forward) {
        for (int y = 0; y < ny; ++y) std::copy_n(r + size_t(y) * stride, nx, buf.data() + size_t(y) * size_t(nx));
        fft2_forward(buf.data(), nx, ny, p);
      } else {
        fft2_inverse(p, nx, ny, buf.data());
        for (int y = 0; y < ny; ++y) {
          const float* b = buf.data() + size_t(y) * size_t(nx);
          float* o = r + size_t(y) * stride;
          if (scale != 1.0f)
            for (int x = 0; x < nx; ++x) o[x] = b[x] * scale;
          else
            std::copy_n(b, nx, o);
          std::fill(o + nx, o + stride, 0.0f);
        }
      }
    });
  };
  const auto zcolumns = [&] {
    pool.parallel_for(0, size_t(ny), [&](size_t y, int) { columns_inplace(data + y * size_t(nxh), nxh, nz, plane, forward); });
  };
  if (forward) {
    planes();
    zcolumns();
  } else {
    zcolumns();
    planes();
  }
}

// 1D plans (kind 0: r2c, 1: c2c forward in place) of length n, cached.
fftwf_plan get_plan_1d(int n, int kind) {
  std::lock_guard lk(g_plan_mu);
  static std::map<std::pair<int, int>, fftwf_plan> p1;
  auto it = p1.find({n, kind});
  if (it != p1.end()) return it->second;
  fftwf_plan_with_nthreads(1);
  fftwf_plan p;
  if (kind == 0) {
    float* r = fftwf_alloc_real(size_t(n));
    fftwf_complex* c = fftwf_alloc_complex(size_t(n / 2 + 1));
    p = fftwf_plan_dft_r2c_1d(n, r, c, FFTW_ESTIMATE | FFTW_UNALIGNED);
    fftwf_free(r);
    fftwf_free(c);
  } else {
    fftwf_complex* c = fftwf_alloc_complex(size_t(n));
    p = fftwf_plan_dft_1d(n, c, c, FFTW_FORWARD, FFTW_ESTIMATE | FFTW_UNALIGNED);
    fftwf_free(c);
  }
  if (!p) runtime_error("FFTW could not plan a 1D transform of {}", n);
  p1[{n, kind}] = p;
  return p;
}

}  // namespace

template <class T>
void AlignedArray<T>::resize(size_t n) {
  if (n > cap_) {
    release();
    const size_t bytes = n * sizeof(T);
    p_ = big(n) ? BigAllocator<T>().allocate(n) : static_cast<T*>(fftwf_malloc(bytes));
    if (!p_) throw std::bad_alloc();
    cap_ = n;
  }
  n_ = n;
}
template <class T>
void AlignedArray<T>::release() {
  if (p_) {
    if (big(cap_))
      BigAllocator<T>().deallocate(p_, cap_);
    else
      fftwf_free(p_);
  }
  p_ = nullptr;
  n_ = cap_ = 0;
}
template class AlignedArray<float>;
template class AlignedArray<cfloat>;

void fft2_forward_inplace(float* data, int nx, int ny) {
  fftwf_plan rows = row_column_plan(0, nx, ny);
  fftwf_execute_dft_r2c(rows, data, reinterpret_cast<fftwf_complex*>(data));
  columns_inplace(reinterpret_cast<cfloat*>(data), nx / 2 + 1, ny, true);
}

void fft2_forward(const float* in, int nx, int ny, cfloat* out) {
  // FFTW requires the arrays' alignment of the plan's (16 bytes): otherwise through an aligned copy.
  if (reinterpret_cast<uintptr_t>(in) % 16 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    thread_local AlignedArray<float> a;
    thread_local AlignedArray<cfloat> b;
    a.resize(size_t(nx) * size_t(ny));
    b.resize(size_t(nx / 2 + 1) * size_t(ny));
    std::copy_n(in, a.size(), a.data());
    fft2_forward(a.data(), nx, ny, b.data());
    std::copy_n(b.data(), b.size(), out);
    return;
  }
  fftwf_plan rows = row_column_plan(6, nx, ny);
  fftwf_execute_dft_r2c(rows, const_cast<float*>(in), reinterpret_cast<fftwf_complex*>(out));  // input kept
  columns_inplace(out, nx / 2 + 1, ny, true);
}

void fft2_inverse(cfloat* in, int nx, int ny, float* out) {
  if (reinterpret_cast<uintptr_t>(in) % 16 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    thread_local AlignedArray<cfloat> a;
    thread_local AlignedArray<float> b;
    a.resize(size_t(nx / 2 + 1) * size_t(ny));
    b.resize(size_t(nx) * size_t(ny));
    std::copy_n(in, a.size(), a.data());
    fft2_inverse(a.data(), nx, ny, b.data());
    std::copy_n(b.data(), b.size(), out);
    return;
  }
  columns_inplace(in, nx / 2 + 1, ny, false);
  fftwf_plan rows = row_column_plan(7, nx, ny);
  fftwf_execute_dft_c2r(rows, reinterpret_cast<fftwf_complex*>(in), out);
}

void fft2_inverse_inplace(cfloat* data, int nx, int ny) {
  columns_inplace(data, nx / 2 + 1, ny, false);
  fftwf_plan rows = row_column_plan(1, nx, ny);
  fftwf_execute_dft_c2r(rows, reinterpret_cast<fftwf_complex*>(data), reinterpret_cast<float*>(data));
}


std::vector<Grid<cfloat>> fft_forward_cropped(int n, int m, int count,
                                              const std::function<void(int, float* const*)>& rows, int nthreads) {
  if (m > n || m < 2 || m % 2 || count < 1)
    runtime_error("fft_forward_cropped: cannot crop a transform of {} to {} ({} images)", n, m, count);
  const int hx = m / 2 + 1;  // kept columns
  const int nh = n / 2 + 1;
  // Columns kept, y contiguous: col[c][kx][y].
  std::vector<AlignedArray<cfloat>> col(static_cast<size_t>(count));  // every value written below
  for (auto& c : col) c.resize(size_t(hx) * size_t(n));
  const fftwf_plan pr = get_plan_1d(n, 0), pc = get_plan_1d(n, 1);
  ThreadPool pool(std::max(1, nthreads));
  struct Buf {
    std::vector<float> in;
    std::vector<cfloat> out;
    std::vector<float*> ptr;
  };
  std::vector<Buf> bufs(size_t(pool.size()));
  for (auto& b : bufs) {
    b.in.resize(size_t(count) * size_t(n));
    b.out.resize(size_t(nh));
    for (int c = 0; c < count; ++c) b.ptr.push_back(b.in.data() + size_t(c) * size_t(n));
  }
  pool.parallel_for(0, size_t(n), [&](size_t y, int t) {
    Buf& b = bufs[size_t(t)];
    rows(int(y), b.ptr.data());
    for (int c = 0; c < count; ++c) {
      fftwf_execute_dft_r2c(pr, b.ptr[size_t(c)], reinterpret_cast<fftwf_complex*>(b.out.data()));
      cfloat* dst = col[size_t(c)].data() + y;
      for (int kx = 0; kx < hx; ++kx) dst[size_t(kx) * size_t(n)] = b.out[size_t(kx)];
    }
  }, 8);
  pool.parallel_for(0, size_t(count) * size_t(hx), [&](size_t j, int) {
    cfloat* v = col[j / size_t(hx)].data() + (j % size_t(hx)) * size_t(n);
    fftwf_execute_dft(pc, reinterpret_cast<fftwf_complex*>(v), reinterpret_cast<fftwf_complex*>(v));
  });
  std::vector<Grid<cfloat>> out;
  for (int c = 0; c < count; ++c) {
    Grid<cfloat> G(hx, m);
    for (int iy = 0; iy < m; ++iy) {
      const size_t sy = size_t(fft_index(fft_freq(iy, m), n));
      for (int kx = 0; kx < hx; ++kx) G(kx, iy) = col[size_t(c)][size_t(kx) * size_t(n) + sy];
    }
    out.push_back(std::move(G));
  }
  return out;
}

void fft_forward(const Grid<float>& in, Grid<cfloat>& out, int nthreads) {
  if (out.nx() != in.nx() / 2 + 1 || out.ny() != in.ny() || out.nz() != in.nz())
    out = Grid<cfloat>(in.nx() / 2 + 1, in.ny(), in.nz());
  if (in.empty()) return;
  fftwf_plan p = get_plan(in.nx(), in.ny(), in.nz(), nthreads, true);
  // r2c does not modify its input.
  fftwf_execute_dft_r2c(p, const_cast<float*>(in.data()), reinterpret_cast<fftwf_complex*>(out.data()));
}

Grid<cfloat> fft_forward(const Grid<float>& in, int nthreads) {
  Grid<cfloat> out;
  fft_forward(in, out, nthreads);
  return out;
}

void fft_inverse_destroy(Grid<cfloat>& in, int nx, Grid<float>& out, int nthreads) {
  if (in.nx() != nx / 2 + 1) runtime_error("fft_inverse: half-complex width {} does not match nx {}", in.nx(), nx);
  if (out.nx() != nx || out.ny() != in.ny() || out.nz() != in.nz()) out = Grid<float>(nx, in.ny(), in.nz());
  if (in.empty()) return;
  fftwf_plan p = get_plan(nx, in.ny(), in.nz(), nthreads, false);
  fftwf_execute_dft_c2r(p, reinterpret_cast<fftwf_complex*>(in.data()), out.data());
  float s = 1.0f / float(double(nx) * in.ny() * in.nz());
  for (auto& v : out) v *= s;
}

Grid<float> fft_inverse(const Grid<cfloat>& in, int nx, int nthreads) {
  Grid<cfloat> tmp = in;  // c2r destroys its input
  Grid<float> out;
  fft_inverse_destroy(tmp, nx, out, nthreads);
  return out;
}

void fft_forward_inplace(Grid<cfloat>& buf, int nx, int nthreads) {
  if (buf.nx() != nx / 2 + 1) runtime_error("fft_forward_inplace: half-complex width {} does not match nx {}", buf.nx(), nx);
  if (buf.empty()) return;
  if (buf.nz() > 1 && buf.ny() > 1) {
    fft3_inplace(buf.data(), nx, buf.ny(), buf.nz(), true, 1.0f, nthreads);
    return;
  }
  fftwf_plan p = get_plan(nx, buf.ny(), buf.nz(), nthreads, true, true);
  auto* c = reinterpret_cast<fftwf_complex*>(buf.data());
  fftwf_execute_dft_r2c(p, reinterpret_cast<float*>(c), c);
}

void fft_inverse_inplace(Grid<cfloat>& buf, int nx, int nthreads) {
  if (buf.nx() != nx / 2 + 1) runtime_error("fft_inverse_inplace: half-complex width {} does not match nx {}", buf.nx(), nx);
  if (buf.empty()) return;
  const float s = 1.0f / float(double(nx) * buf.ny() * buf.nz());
  if (buf.nz() > 1 && buf.ny() > 1) {
    fft3_inplace(buf.data(), nx, buf.ny(), buf.nz(), false, s, nthreads);
    return;
  }
  fftwf_plan p = get_plan(nx, buf.ny(), buf.nz(), nthreads, false, true);
  auto* c = reinterpret_cast<fftwf_complex*>(buf.data());
  fftwf_execute_dft_c2r(p, c, reinterpret_cast<float*>(c));
  float* r = reinterpret_cast<float*>(c);
  const size_t total = buf.size() * 2;
  for (size_t i = 0; i < total; ++i) r[i] *= s;
}

void centre_origin(Grid<cfloat>& F, int nx, bool undo) {
  const int ny = F.ny(), nz = F.nz();
  const bool even = nx % 2 == 0 && (ny == 1 || ny % 2 == 0) && (nz == 1 || nz % 2 == 0);
  for (int z = 0; z < nz; ++z) {
    int kz = nz > 1 ? fft_freq(z, nz) : 0;
    for (int y = 0; y < ny; ++y) {
      int ky = ny > 1 ? fft_freq(y, ny) : 0;
      for (int x = 0; x < F.nx(); ++x) {
        cfloat& v = F(x, y, z);
        if (even) {
          if ((x + ky + kz) & 1) v = -v;
        } else {
          // shift by floor(n/2) along each axis: exp(+-2 pi i k s / n)
          double ph = (undo ? -2 : 2) * M_PI *
                      (double(x) * (nx / 2) / nx + (ny > 1 ? double(ky) * (ny / 2) / ny : 0) +
                       (nz > 1 ? double(kz) * (nz / 2) / nz : 0));
          v *= cfloat(float(std::cos(ph)), float(std::sin(ph)));
        }
      }
    }
  }
}

int fft_friendly_size(int m, bool even, int largest_prime) {
  const int step = even ? 2 : 1;
  int k = std::max(m, even ? 2 : 1);
  if (even && k % 2) ++k;
  for (;; k += step) {
    int r = k;
    for (int p : {2, 3, 5, 7})
      if (p <= largest_prime)
        while (r % p == 0) r /= p;
    if (r == 1) return k;
  }
}

}  // namespace regula

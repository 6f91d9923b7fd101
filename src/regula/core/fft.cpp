#include "regula/core/fft.hpp"

#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include <fftw3.h>

#include "regula/core/error.hpp"
#include "regula/core/parallel.hpp"

namespace regula {
namespace {

std::mutex g_plan_mu;
using Key = std::tuple<int, int, int, int, bool>;  // nx, ny, nz, threads, forward
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

fftwf_plan get_plan(int nx, int ny, int nz, int nthreads, bool forward) {
  std::lock_guard lk(g_plan_mu);
  static bool threads_init = [] { return fftwf_init_threads() != 0; }();
  (void)threads_init;
  if (nz == 1 && ny == 1 ) nthreads = 1;
  Key key{nx, ny, nz, nthreads, forward};
  auto it = plans().find(key);
  if (it != plans().end()) return it->second;
  int dims[3];
  int rank = rank_dims(nx, ny, nz, dims);
  size_t nreal = size_t(nx) * ny * nz;
  size_t ncplx = size_t(nx / 2 + 1) * ny * nz;
  float* r = fftwf_alloc_real(nreal);
  fftwf_complex* c = fftwf_alloc_complex(ncplx);
  fftwf_plan_with_nthreads(nthreads);
  unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
  fftwf_plan p = forward ? fftwf_plan_dft_r2c(rank, dims, r, c, flags)
                         : fftwf_plan_dft_c2r(rank, dims, c, r, flags | FFTW_DESTROY_INPUT);
  fftwf_free(r);
  fftwf_free(c);
  if (!p) runtime_error("FFTW could not plan a transform of {}x{}x{}", nx, ny, nz);
  plans()[key] = p;
  return p;
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

std::vector<Grid<cfloat>> fft_forward_cropped(int n, int m, int count,
                                              const std::function<void(int, float* const*)>& rows, int nthreads) {
  if (m > n || m < 2 || m % 2 || count < 1)
    runtime_error("fft_forward_cropped: cannot crop a transform of {} to {} ({} images)", n, m, count);
  const int hx = m / 2 + 1;  // kept columns
  const int nh = n / 2 + 1;
  // Columns kept, y contiguous: col[c][kx][y].
  std::vector<std::vector<cfloat>> col(size_t(count), std::vector<cfloat>(size_t(hx) * size_t(n)));
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

Grid<cfloat> fft_forward(const Grid<float>& in, int nthreads) {
  Grid<cfloat> out(in.nx() / 2 + 1, in.ny(), in.nz());
  if (in.empty()) return out;
  fftwf_plan p = get_plan(in.nx(), in.ny(), in.nz(), nthreads, true);
  // r2c does not modify its input.
  fftwf_execute_dft_r2c(p, const_cast<float*>(in.data()), reinterpret_cast<fftwf_complex*>(out.data()));
  return out;
}

Grid<float> fft_inverse(const Grid<cfloat>& in, int nx, int nthreads) {
  if (in.nx() != nx / 2 + 1) runtime_error("fft_inverse: half-complex width {} does not match nx {}", in.nx(), nx);
  Grid<float> out(nx, in.ny(), in.nz());
  if (in.empty()) return out;
  Grid<cfloat> tmp = in;  // c2r destroys its input
  fftwf_plan p = get_plan(nx, in.ny(), in.nz(), nthreads, false);
  fftwf_execute_dft_c2r(p, reinterpret_cast<fftwf_complex*>(tmp.data()), out.data());
  float s = 1.0f / float(double(nx) * in.ny() * in.nz());
  for (auto& v : out) v *= s;
  return out;
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

}  // namespace regula

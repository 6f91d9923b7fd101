// Dense 1D/2D/3D arrays in C order with x fastest: index = (z*ny + y)*nx + x.
// An image is a Grid with nz == 1; a stack of images is nz images of nx*ny.
// This matches the MRC section order (x fastest, then y, then z) and FFTW's
// row-major layout with the last (fastest) dimension x.
#pragma once
#include <algorithm>
#include <cassert>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "regula/core/big_vector.hpp"

namespace regula {

using cfloat = std::complex<float>;
using cdouble = std::complex<double>;

template <class T>
class Grid {
 public:
  Grid() = default;
  Grid(int nx, int ny = 1, int nz = 1, T fill = T{})
      : nx_(nx), ny_(ny), nz_(nz), data_(size_t(nx) * size_t(ny) * size_t(nz), fill) {
    assert(nx >= 0 && ny >= 0 && nz >= 0);
  }

  int nx() const { return nx_; }
  int ny() const { return ny_; }
  int nz() const { return nz_; }
  size_t size() const { return data_.size(); }
  bool empty() const { return data_.empty(); }

  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  BigVector<T>& vec() { return data_; }
  const BigVector<T>& vec() const { return data_; }
  auto begin() { return data_.begin(); }
  auto end() { return data_.end(); }
  auto begin() const { return data_.begin(); }
  auto end() const { return data_.end(); }

  size_t index(int x, int y = 0, int z = 0) const {
    assert(x >= 0 && x < nx_ && y >= 0 && y < ny_ && z >= 0 && z < nz_);
    return (size_t(z) * size_t(ny_) + size_t(y)) * size_t(nx_) + size_t(x);
  }
  T& operator()(int x, int y = 0, int z = 0) { return data_[index(x, y, z)]; }
  const T& operator()(int x, int y = 0, int z = 0) const { return data_[index(x, y, z)]; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

  void fill(T v) { std::fill(data_.begin(), data_.end(), v); }
  // Pointer to section z (an image of a stack, or a z-slice of a volume).
  T* section(int z) { return data_.data() + size_t(z) * size_t(nx_) * size_t(ny_); }
  const T* section(int z) const { return data_.data() + size_t(z) * size_t(nx_) * size_t(ny_); }

  bool same_shape(const Grid& o) const { return nx_ == o.nx_ && ny_ == o.ny_ && nz_ == o.nz_; }

 private:
  int nx_ = 0, ny_ = 0, nz_ = 0;
  BigVector<T> data_;
};

using Image = Grid<float>;   // nz == 1
using Volume = Grid<float>;  // nx == ny == nz for maps
using FourierImage = Grid<cfloat>;  // half-complex: nx = n/2+1
using FourierVolume = Grid<cfloat>;

}  // namespace regula

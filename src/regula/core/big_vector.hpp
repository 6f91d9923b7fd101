// std::vector storage for large arrays (maps, Fourier lattices, back-projector sums) on transparent
// huge pages: blocks of 4 MB and more are aligned to 2 MB and advised MADV_HUGEPAGE (Linux), so
// that touching them the first time costs one page fault per 2 MB instead of one per 4 kB (on this
// project's test machine a 242 MB grid took 0.67 s of page faults, 0.02-0.04 s on huge pages; a
// refinement iteration at box 192 allocates several GB). Advice only: where huge pages are not
// available the memory is ordinary. Smaller blocks come from operator new as usual.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

#include <sys/mman.h>

namespace regula {

template <class T>
struct BigAllocator {
  using value_type = T;
  static constexpr size_t kHuge = size_t(2) << 20;
  static constexpr size_t kThreshold = size_t(4) << 20;

  BigAllocator() = default;
  template <class U>
  BigAllocator(const BigAllocator<U>&) noexcept {}

  static size_t rounded(size_t bytes) { return (bytes + kHuge - 1) / kHuge * kHuge; }

  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    const size_t bytes = n * sizeof(T);
    if (bytes < kThreshold) return static_cast<T*>(::operator new(bytes, std::align_val_t(alignof(T) > 16 ? alignof(T) : 16)));
    void* p = std::aligned_alloc(kHuge, rounded(bytes));
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(p, rounded(bytes), MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept {
    const size_t bytes = n * sizeof(T);
    if (bytes < kThreshold)
      ::operator delete(p, std::align_val_t(alignof(T) > 16 ? alignof(T) : 16));
    else
      std::free(p);
  }
  template <class U>
  bool operator==(const BigAllocator<U>&) const noexcept { return true; }
};

template <class T>
using BigVector = std::vector<T, BigAllocator<T>>;

}  // namespace regula

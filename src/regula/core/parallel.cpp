#include "regula/core/parallel.hpp"

#include <algorithm>

#include "regula/core/blas.hpp"

namespace regula {

ThreadPool::ThreadPool(int nthreads) : nthreads_(std::max(1, nthreads)) {
  // The library parallelises over its own work units: OpenBLAS's threads inside them would compete
  // with the pool's (measured: a third of multi-body refinement's time went to their hand-offs).
  set_blas_single_threaded();
  for (int i = 1; i < nthreads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run_chunks(int id) {
  for (;;) {
    size_t b, e;
    {
      std::lock_guard lk(mu_);
      if (next_ >= end_ || error_) return;
      b = next_;
      e = std::min(end_, next_ + grain_);
      next_ = e;
    }
    try {
      for (size_t i = b; i < e; ++i) (*job_)(i, id);
    } catch (...) {
      std::lock_guard lk(mu_);
      if (!error_) error_ = std::current_exception();
      return;
    }
  }
}

void ThreadPool::worker(int id) {
  unsigned seen = 0;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_chunks(id);
    {
      std::lock_guard lk(mu_);
      if (--active_ == 0) cv_done_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(size_t begin, size_t end, const std::function<void(size_t, int)>& fn,
                              size_t grain) {
  if (begin >= end) return;
  if (nthreads_ == 1 || end - begin == 1) {
    for (size_t i = begin; i < end; ++i) fn(i, 0);
    return;
  }
  {
    std::lock_guard lk(mu_);
    job_ = &fn;
    next_ = begin;
    end_ = end;
    grain_ = std::max<size_t>(1, grain);
    error_ = nullptr;
    active_ = nthreads_ - 1;
    ++generation_;
  }
  cv_start_.notify_all();
  run_chunks(0);
  std::exception_ptr err;
  {
    std::unique_lock lk(mu_);
    cv_done_.wait(lk, [&] { return active_ == 0; });
    job_ = nullptr;
    err = error_;
    error_ = nullptr;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace regula

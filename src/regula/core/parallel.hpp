// One small threading primitive: parallel_for over a pool owned by a context.
// Work items are assigned to threads in contiguous blocks; callers that reduce
// must use per-thread (or per-block) buffers reduced in a fixed order so that
// results do not depend on the thread count.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace regula {

class ThreadPool {
 public:
  explicit ThreadPool(int nthreads = 1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return nthreads_; }

  // Calls fn(i, thread) for i in [begin, end). Items are handed out dynamically
  // in chunks of `grain`; `thread` in [0, size()) identifies a per-thread buffer.
  // Exceptions thrown by fn are rethrown (the first one) after all work stops.
  void parallel_for(size_t begin, size_t end, const std::function<void(size_t, int)>& fn,
                    size_t grain = 1);

 private:
  void worker(int id);
  int nthreads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(size_t, int)>* job_ = nullptr;
  size_t next_ = 0, end_ = 0, grain_ = 1;
  int active_ = 0;
  unsigned generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  void run_chunks(int id);
};

}  // namespace regula

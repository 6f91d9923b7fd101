#include "regula/core/mpi.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>

#ifdef REGULA_HAVE_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only (no deprecated C++ bindings)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace regula::mpi {

namespace {
bool g_active = false;
int g_rank = 0, g_size = 1;

#ifdef REGULA_HAVE_MPI
void finalize_at_exit() {
  int done = 0;
  MPI_Finalized(&done);
  if (!done) MPI_Finalize();
}
#endif
}  // namespace

void init_if_launched(int* argc, char*** argv) {
#ifdef REGULA_HAVE_MPI
  if (g_active) return;
  if (!std::getenv("OMPI_COMM_WORLD_SIZE") && !std::getenv("PMI_SIZE")) return;
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_active = g_size > 1;
  std::atexit(finalize_at_exit);
#else
  (void)argc;
  (void)argv;
#endif
}

bool active() { return g_active; }
int rank() { return g_rank; }
int size() { return g_size; }

void bcast(void* data, size_t bytes, int root) {
#ifdef REGULA_HAVE_MPI
  if (!g_active) return;
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const size_t chunk = std::min(bytes, size_t(1) << 30);
    MPI_Bcast(p, int(chunk), MPI_BYTE, root, MPI_COMM_WORLD);
    p += chunk;
    bytes -= chunk;
  }
#else
  (void)data;
  (void)bytes;
  (void)root;
#endif
}

namespace {
#ifdef REGULA_HAVE_MPI
template <class T>
void allreduce_chunks(T* data, size_t count, MPI_Datatype type) {
  if (!g_active) return;
  // In place, in chunks of 8 M values (the count argument is an int; memory for MPI's buffers).
  while (count > 0) {
    const size_t chunk = std::min(count, size_t(1) << 23);
    MPI_Allreduce(MPI_IN_PLACE, data, int(chunk), type, MPI_SUM, MPI_COMM_WORLD);
    data += chunk;
    count -= chunk;
  }
}
#endif
}  // namespace

void allreduce_sum(int64_t* data, size_t count) {
#ifdef REGULA_HAVE_MPI
  allreduce_chunks(data, count, MPI_INT64_T);
#else
  (void)data;
  (void)count;
#endif
}

void allreduce_sum(double* data, size_t count) {
#ifdef REGULA_HAVE_MPI
  allreduce_chunks(data, count, MPI_DOUBLE);
#else
  (void)data;
  (void)count;
#endif
}

void barrier() {
#ifdef REGULA_HAVE_MPI
  if (g_active) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void abort_all(int code) {
#ifdef REGULA_HAVE_MPI
  if (g_active) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

}  // namespace regula::mpi

// MPI for more than one machine (OpenMPI from Debian), kept behind a few calls so that the rest of
// the library never includes mpi.h. The same binary runs alone or under `mpirun -np N`: MPI is
// started only when the process was launched by mpirun (OMPI_COMM_WORLD_SIZE or PMI_SIZE in the
// environment) and Regula was built with MPI (REGULA_HAVE_MPI); otherwise rank() is 0, size() is 1
// and the collectives do nothing.
//
// Jobs split their particles across ranks and combine partial sums so that a run under mpirun gives
// the same numbers as one process: exact (integer or ExactSum) partial sums are summed over all
// ranks with allreduce_sum, whose result does not depend on the order; per-particle values are
// filled by their owner and summed with zeros from the others.
#pragma once
#include <cstddef>
#include <cstdint>

namespace regula::mpi {

// Starts MPI if launched by mpirun (idempotent); registers finalisation at exit.
void init_if_launched(int* argc, char*** argv);
bool active();
int rank();
int size();
// Broadcasts `bytes` bytes from `root` to every rank (any size; split into chunks internally).
void bcast(void* data, size_t bytes, int root);
// In-place sums over all ranks (every rank gets the result). Integer sums are exact whatever the
// order; double sums are exact when at most one rank contributes a non-zero value per element.
void allreduce_sum(int64_t* data, size_t count);
void allreduce_sum(double* data, size_t count);
void barrier();
// Aborts all ranks (after an error on one rank that the others cannot know about).
[[noreturn]] void abort_all(int code);

}  // namespace regula::mpi

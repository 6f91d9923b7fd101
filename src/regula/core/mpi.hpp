// MPI for more than one machine (OpenMPI from Debian), kept behind a few calls so that the rest of
// the library never includes mpi.h. The same binary runs alone or under `mpirun -np N`: MPI is
// started only when the process was launched by mpirun (OMPI_COMM_WORLD_SIZE or PMI_SIZE in the
// environment) and Regula was built with MPI (REGULA_HAVE_MPI); otherwise rank() is 0, size() is 1
// and the collectives do nothing.
//
// Jobs split their particles across ranks and combine partial sums with ordered broadcasts (each
// partial sum is sent by its owner and added in a fixed order on every rank), so a run under mpirun
// gives the same numbers as one process.
#pragma once
#include <cstddef>

namespace regula::mpi {

// Starts MPI if launched by mpirun (idempotent); registers finalisation at exit.
void init_if_launched(int* argc, char*** argv);
bool active();
int rank();
int size();
// Broadcasts `bytes` bytes from `root` to every rank (any size; split into chunks internally).
void bcast(void* data, size_t bytes, int root);
void barrier();
// Aborts all ranks (after an error on one rank that the others cannot know about).
[[noreturn]] void abort_all(int code);

}  // namespace regula::mpi

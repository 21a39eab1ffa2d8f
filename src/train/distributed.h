// Data-parallel training over MPI: which rank this process is, and the gradient all-reduce.
//
// `mpirun -np N mixattn train ...` starts N copies; each computes the gradients of its share of
// every global batch and the ranks sum them with MPI_Allreduce, so all ranks take identical
// optimizer steps. A process not started by an MPI launcher never calls MPI_Init (OpenMPI's
// singleton start spawns a helper daemon and can be slow or fail in containers): it is rank 0 of
// a world of 1, and every collective is the identity. The launcher is recognised by the
// environment variables OpenMPI (OMPI_COMM_WORLD_SIZE), MPICH / Hydra (PMI_SIZE) and PMIx
// (PMIX_RANK) set.
#pragma once

#include <cstdint>

#include "model/weights.h"

namespace mixattn {

class Distributed {
 public:
  // Initialises MPI when launched by mpirun (once per process; later calls return the same
  // object). Throws Error if MPI fails to start.
  static Distributed& Get();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  // Element-wise sums over ranks, in place (identity in a world of 1).
  void SumInPlace(double* values, int64_t count) const;
  void SumInPlace(ModelWeights& grads) const;
  // Every rank leaves only when all have arrived.
  void Barrier() const;
  // Ends the MPI job from one rank after an error, so the others do not wait forever.
  [[noreturn]] void Abort(int exit_code) const;

  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;
  ~Distributed();

 private:
  Distributed();
  bool mpi_ = false;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace mixattn

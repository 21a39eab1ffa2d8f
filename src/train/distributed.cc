#include "train/distributed.h"

#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace mixattn {
namespace {

bool LaunchedByMpi() {
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(variable) != nullptr) return true;
  return false;
}

void Check(int status, const char* what) {
  if (status != MPI_SUCCESS) {
    char message[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(status, message, &length);
    Fail(what, " failed: ", std::string(message, static_cast<size_t>(length)));
  }
}

// MPI counts are ints: sums of more elements go in slices.
template <typename T>
void AllReduceSum(T* values, int64_t count, MPI_Datatype type) {
  constexpr int64_t kMaxSlice = INT_MAX / 2;
  for (int64_t begin = 0; begin < count; begin += kMaxSlice) {
    const auto n = static_cast<int>(std::min(kMaxSlice, count - begin));
    Check(MPI_Allreduce(MPI_IN_PLACE, values + begin, n, type, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  }
}

}  // namespace

Distributed& Distributed::Get() {
  static Distributed instance;
  return instance;
}

Distributed::Distributed() {
  if (!LaunchedByMpi()) return;
  int provided = 0;
  Check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  mpi_ = true;
  Check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  Check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
}

Distributed::~Distributed() {
  if (mpi_) MPI_Finalize();
}

void Distributed::SumInPlace(double* values, int64_t count) const {
  if (size_ > 1) AllReduceSum(values, count, MPI_DOUBLE);
}

void Distributed::SumInPlace(ModelWeights& grads) const {
  if (size_ == 1) return;
  ForEachTensor(grads, [](const std::string&, Tensor& t) {
    AllReduceSum(t.data.data(), t.size(), MPI_FLOAT);
  });
}

void Distributed::Barrier() const {
  if (size_ > 1) Check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void Distributed::Abort(int exit_code) const {
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);
}

}  // namespace mixattn

// SIGINT and SIGTERM, taken without a signal handler, for the commands that stop gracefully
// (`train` between steps, `serve` by draining its requests).
//
// No handler ever runs for them: oneDNN's JIT f32 GEMM (2.7, as Debian 12 ships it) points rsp
// into the heap while it runs, so a handler invoked there writes its signal frame over heap
// memory (oneDNN issue #4845, fixed in 3.11). Construct StopSignals before any thread exists
// (MPI's, OpenMP's, the server's): every thread inherits the blocked mask, the signals stay
// pending, and the command polls for them (Pending) or waits for one (Wait).
#pragma once

#include <signal.h>

namespace mixattn::cli {

class StopSignals {
 public:
  StopSignals();  // blocks SIGINT and SIGTERM in the calling thread
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // Takes any still pending (unblocked, one would kill the process with the default action
  // although nothing is left to stop), then restores the previous mask.
  ~StopSignals();

  bool Pending() const;  // whether SIGINT or SIGTERM has arrived and not been taken
  int Wait() const;      // blocks until one arrives, takes it and returns its number

 private:
  sigset_t signals_;
  sigset_t previous_;
};

}  // namespace mixattn::cli

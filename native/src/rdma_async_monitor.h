// Asynchronous verbs events (QP fatal, port down, device removed). A device
// context's async event fd is shared by every connection on that device in
// the process, and each event is read once: one monitor thread reads them all
// and fails the affected connections on their pumps' I/O threads (QP events:
// that QP's connection; port and device events: every connection on the device).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "rdma.h"

namespace sg {
class Pump;
namespace rdma {

class AsyncMonitor {
 public:
  static AsyncMonitor& get();
  void add(ibv_context* ctx, uint32_t qp_num, uint8_t port, Pump* pump, uint32_t id);
  // Returns once the thread no longer polls a context only this registration used.
  void remove(Pump* pump, uint32_t id);

 private:
  struct Reg {
    ibv_context* ctx;
    uint32_t qp_num;
    uint8_t port;
    Pump* pump;
    uint32_t id;
  };
  void rebuild(std::unique_lock<std::mutex>& g);
  void run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Reg> regs_;
  int wake_ = -1;
  bool started_ = false;
  uint64_t gen_ = 0, seen_ = 0;
};

}  // namespace rdma
}  // namespace sg

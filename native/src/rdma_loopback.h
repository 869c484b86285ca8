// A loopback exercise of the verbs layer and the RDMA.md data protocol: a
// server and a client endpoint on one verbs device connect through rdma_cm,
// and the client streams a buffer into the server's receive ring (slot 0) with
// RDMA writes + a cursor write-with-immediate; the server validates every
// cursor, copies the bytes out and returns consumer-cursor updates and receive
// credits with SENDs; EOF, then disconnect.
//
// Everything is driven by fd readiness (cm event channel, both completion
// channels) on one epoll loop, with the same non-blocking handlers the pump's
// I/O thread will call; no busy polling. Runs on the calling thread (a worker).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sg {
class PumpSource;
namespace rdma {

struct LoopbackOptions {
  std::string addr;          // IPv4 address of the verbs device (rxe0's eth0 address)
  uint16_t port = 0;         // rdma_cm port (0: 20000 + pid % 10000)
  std::string data;          // what the client sends
  uint32_t ring_log2 = 16;   // server receive ring
  uint32_t chunk = 16384;    // bytes per write burst
  uint32_t credits = 32;     // receive WRs each side posts
  uint32_t timeout_ms = 60000;
  // Tests of the receiver's validation: once the server has returned a cursor,
  // the client misbehaves. 1: a producer cursor beyond the ring; 2: a cursor
  // that goes backwards; 3: an immediate naming a slot that does not exist.
#ifdef SOCKGATE_TEST_HOOKS
  uint32_t hostile = 0;  // the test build only (rdma_loopback.cc)
#endif
};

struct LoopbackResult {
  int err = 0;               // -errno; 0 on success
  std::string io_thread;     // "pump" (the pump's I/O thread) or "worker" (its own epoll loop)
  std::string error;         // what failed
  std::string received;
  std::vector<std::string> cm_events;  // in order, "client:ESTABLISHED" etc.
  std::vector<std::string> trace;      // resource creation/destruction order
  uint64_t client_cq_events = 0, server_cq_events = 0;
  uint64_t writes = 0, wraps = 0, imms = 0, updates = 0, blocked = 0, credit_msgs = 0;
};

// Standalone: runs on the calling thread with its own epoll loop.
void run_loopback(const LoopbackOptions& o, LoopbackResult* r);

// On a pump: a PumpSource whose fds join the pump's epoll set; `done` runs
// once with the result (on the I/O thread, or wherever the source is dropped
// if it never attached). Check the options first (-EINVAL, r->error).
int check_loopback_options(const LoopbackOptions& o, LoopbackResult* r);
std::shared_ptr<PumpSource> make_loopback_source(LoopbackOptions o, std::function<void(LoopbackResult&&)> done);

}  // namespace rdma
}  // namespace sg

// The pump's private types, shared by its files (pump.cc: the owner-thread
// API; pump_loop.cc: the I/O thread's loop and sessions; pump_cmds.cc: the
// command queue; pump_ring_link.cc: ring and splice links; pump_attach.cc:
// the attach listener). Not for use outside the pump.
#pragma once

#include <time.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "pump.h"

namespace sg {
namespace pump_detail {

// What an epoll tag points at: kind in the top byte, then two ids.
enum Kind : uint64_t { kWake = 1, kSession = 2, kLinkFd = 3, kListener = 4, kConn = 5, kSource = 6 };

inline uint64_t tag(Kind k, uint32_t a, uint32_t b = 0) {
  return (uint64_t(k) << 56) | (uint64_t(a & 0xFFFFFF) << 32) | b;
}

inline int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

inline int64_t now_us() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace pump_detail

// One link, of one of two kinds: a ring link (a slot's rings <-> fd; the
// fields up to `stalls`) or a splice link (fd <-> fd; `relay` owns both fds).
struct Pump::Link {
  enum Kind { kRing, kSplice } kind = kRing;
  uint32_t id = 0;
  uint32_t rst_mask = 0;              // sides to close with RST when the link ends (bit 0: fd/client, bit 1: host)
  std::unique_ptr<SpliceRelay> relay; // kSplice only
  int fd = -1;                        // owned (kRing)
  std::shared_ptr<LinkFd> shared;     // kRing: the fd as JS sees it (closed under its mutex)
  std::shared_ptr<Region> region;
  uint32_t slot = 0;
  std::unique_ptr<ShmEndpoint> ep;
  std::string prefix;                 // delivered into the outbound ring first
  size_t prefix_off = 0;
  bool readable = true, writable = true;
  bool hup = false;                   // epoll said RDHUP/HUP/ERR: read on to EOF, a short read proves nothing
  bool shut_wr_req = false;           // shutdown(write) asked: FIN to the fd once the inbound ring is empty
  bool discard_in = false;            // after that FIN: inbound bytes are consumed and dropped
  bool rd_eof = false, wr_shut = false;
  bool queued = false, touched = false;
  uint64_t to_fd = 0, to_ring = 0;    // since the last progress event
  uint64_t total_fd = 0, total_ring = 0;
  uint32_t stalls = 0;
  int64_t progress_at = 0;            // ms of the last progress event
  bool progress_due = false;          // in progress_due_: counts wait for the interval
  // Gateway ring links: idle shrink (PumpOptions::shrink_idle_ms).
  uint32_t base_log2[2] = {0, 0};     // each ring's first size, by dir
  int64_t active_ms = 0;              // last round that moved bytes
  bool grown = false;                 // in grown_
  bool trim[2] = {false, false};      // shrunk: punch the arena tail once the smaller size is in use
  uint64_t bells_seen = 0;            // ep->bells already counted in the pump's stats
};

struct Pump::Session {
  std::shared_ptr<Region> region;
  std::unordered_map<uint32_t, uint32_t> slot_links;  // slot -> link id
  bool watched = false;   // client side: report hints to JS
  bool awake = false;     // our sleep flag is clear: the peer will not ring
  bool registered = false;
};

struct Pump::Conn {
  enum State { kHello, kDecide, kAttached } state = kHello;
  uint32_t id = 0;
  int fd = -1;  // owned
  std::string buf;
  int64_t deadline = 0;
  int pid = 0;
  uint32_t uid = 0, gid = 0;
};

struct Pump::Listener {
  uint32_t id = 0;
  int fd = -1;  // owned
  uint32_t next_conn = 1;
  std::unordered_map<uint32_t, std::unique_ptr<Conn>> conns;
};

struct Pump::Cmd {
  enum Type { kAddLink, kCloseLink, kResize, kWatch, kUnwatch, kAddListener, kCloseListener, kReply, kCloseConn, kShutdownHost, kAddSource, kRemoveSource, kRunOnSource } type;
  explicit Cmd(Type t) : type(t) {}
  std::unique_ptr<Link> link;
  uint32_t id = 0, conn = 0, dir = 0, log2 = 0;  // kShutdownHost: dir bit 0 = read, bit 1 = write
  uint16_t status = 0;                            // kCloseLink: 1 = reset
  int fd = -1;
  std::shared_ptr<Region> region;
  std::shared_ptr<EventFd> gw_bell, cl_bell;
  std::shared_ptr<PumpSource> source;  // kAddSource
  std::function<void(PumpSource*)> fn; // kRunOnSource
};

}  // namespace sg

// The rdma transport's connections (native/RDMA.md): an rdma_cm listener on
// the gateway, and RC connections (either role) that multiplex many sockets,
// one slot each, moving bytes between each slot's rings and the slot's kernel
// stream socket on the pump's I/O thread, without JS per chunk.
//
// Both are PumpSources: their fds (cm event channel, completion channel,
// timerfd, slot sockets) sit in the pump's epoll set, every verbs call runs on
// the I/O thread, and they talk to JS through pump events (kRdma) and
// Pump::run_on_source commands.
//
// Compiled only with the rdma-core headers (SG_WITH_RDMA).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "rdma.h"

namespace sg {
class Pump;
class PumpSource;
namespace rdma {

// Defaults as the gateway's transports.rdma (server/config.ts): a session
// pins slots x ring of receive rings and as much staging (native/RDMA.md "Memory").
struct RegionOpts {
  uint32_t ring_log2 = 20;  // each receive ring: 1 MiB
  uint32_t slots = 16;
  uint32_t credits = 64;
  uint32_t keepalive_ms = 5000;  // 0 = off
  // Busy-poll the CQ up to this long (µs, adaptive) before arming the
  // completion channel and sleeping (native/RDMA.md "Polling"); 0 = off.
  uint32_t poll_us = 0;
  // SOCKGATE_TRACE=rdma-flow, decided in TS (native/trace.ts): the flow state
  // on stderr at every keepalive tick.
  bool trace = false;
  // Live failover (native/RDMA.md "Live failover"): ask for the RESUME flag;
  // when both ends set it, a failing connection hands each open slot's fd,
  // positions and unconsumed bytes to JS (`suspended`) instead of closing it.
  bool resume = false;
  // Client: this connection carries sockets moved off a failed one (flag
  // MOVE, with `resume`); the connect's token is one of their resume tokens.
  // A gateway takes MOVE whenever it takes RESUME.
  bool move = false;
};

// A link that resumes a moved socket on a MOVE connection (native/RDMA.md
// "Moving to a new RDMA connection"). Client: BIND carries `position` (bytes
// of the gateway's stream already on the fd); the gateway's BOUND position
// must lie in [acked, sent], and `bytes` (ours from `acked` on) are sent from
// there before anything read from the fd. Gateway: BOUND carries `position`;
// `bytes` go first (the client's position is `out_base`).
struct LinkResume {
  uint64_t position = 0;
  uint64_t acked = 0, sent = 0;  // client
  uint64_t out_base = 0;         // gateway
  std::string bytes;
};

struct ConnectOpts {
  RegionOpts region;
  std::string addr;
  uint16_t port = 0;
  uint8_t token[kTokenBytes] = {};
  uint32_t timeout_ms = 10000;
#ifdef SOCKGATE_TEST_HOOKS
  // The test build only: 1 = every burst claims it wrapped, which never fits
  // (a hostile peer for the gateway's validation); 2 = announce protocol
  // version 1 (the listener refuses it; we report VERSION_MISMATCH); 3 = every
  // BIND carries a token with its first byte flipped (the gateway refuses it);
  // 4 = every RDMA write uses a wrong rkey (remote access error: QP errors);
  // 5 = likewise, once a slot has posted 1 MiB (a QP fatal mid-stream).
  uint32_t hostile = 0;
#endif
};

struct ListenOpts {
  RegionOpts region;  // defaults for accept()
  std::string addr;
  uint16_t port = 0;
  int backlog = 64;
};

// -EINVAL with *why when out of range.
int check_region(const RegionOpts& o, std::string* why);
// The largest poll_us: a spin longer than a millisecond only burns the core.
constexpr uint32_t kMaxPollUs = 1000;

// The client side: a source that resolves, routes and connects. Add it with
// Pump::add_source; its events carry the id add_source returned.
std::shared_ptr<PumpSource> make_client(const ConnectOpts& o);

// The listener: bound and listening once make_listener returns (so the port
// is known at once); its fds join the pump in on_attach. -errno + *why.
int make_listener(const ListenOpts& o, std::shared_ptr<PumpSource>* out, uint16_t* port, std::string* why);

// The server side of one accepted connection, made on the owner thread so JS
// holds it from the start; listener_accept attaches it under the id the
// request named.
std::shared_ptr<PumpSource> make_server_conn(const RegionOpts& o);

// I/O thread (inside Pump::run_on_source on the listener): accept or reject
// the pending request `conn` (the id its "request" event named).
void listener_accept(Pump& p, PumpSource* listener, uint32_t conn, std::shared_ptr<PumpSource> c);
void listener_reject(PumpSource* listener, uint32_t conn);

// I/O thread (inside Pump::run_on_source on a connection). `fd` is owned by
// the connection from here on (closed if the connection is gone: src null).
void conn_link(PumpSource* conn, uint32_t slot, int fd, const uint8_t* token /* null: no BIND */, const LinkResume* r = nullptr);
void conn_close_slot(PumpSource* conn, uint32_t slot, bool reset);
void conn_shutdown_slot(PumpSource* conn, uint32_t slot, bool rd, bool wr);
void conn_close(PumpSource* conn);
// Fail the connection with `code` (as an async event would): a resumable connection's open slots suspend.
void conn_async_fail(PumpSource* conn, const char* code, const std::string& detail);

// Any thread: setsockopt(int) on a linked slot's fd (guarded against the
// I/O thread closing it). false when the slot has no fd.
bool conn_set_sockopt(const std::shared_ptr<PumpSource>& conn, uint32_t slot, int level, int name, int value);

}  // namespace rdma
}  // namespace sg

// Inside the rdma connection (rdma_conn.h is the outside): the per-slot
// state, the Conn and Listener sources and the constants they share. Each
// concept has its own file: rdma_conn.cc (lifecycle: rdma_cm, verbs setup,
// teardown, commands from JS), rdma_conn_send.cc (moving bytes out: bursts,
// messages, slot endings), rdma_conn_recv.cc (receive validation),
// rdma_conn_keepalive.cc (keepalive, progress batches, flow tracing),
// rdma_listener.cc. Compiled only with the rdma-core headers (SG_WITH_RDMA).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "pump.h"
#include "rdma.h"
#include "rdma_conn.h"
#include "spin_policy.h"

namespace sg {
namespace rdma {

// wr_id: kind in the top byte, a count (send) or buffer index (receive) below.
constexpr uint64_t kWrRecv = 1ull << 56;
constexpr uint64_t kWrBurst = 2ull << 56;  // low bits (signaled WRs only): send WRs its completion frees
constexpr uint64_t kWrMsg = 3ull << 56;    // likewise
constexpr uint64_t kWrKind = 0xFFull << 56;
constexpr uint32_t kSendWr = 256;
// One send WR in this many is signaled (with the count it frees): a send
// completion per burst would wake the I/O thread once more per message. RC
// completes a QP's sends in order, so a signaled one frees every WR before
// it. Fewer than kSendWr: there is always a signaled WR outstanding when the
// queue is full.
constexpr uint32_t kSignalEvery = 32;
// A peer's receive region costs us as much staging memory: refuse more.
constexpr uint64_t kMaxPeerRegion = 256ull << 20;
constexpr uint64_t kSlotBudget = 1 << 20;  // bytes per direction per slot per round (fairness)
constexpr uint32_t kKeyCm = 1, kKeyCq = 2, kKeyTimer = 3, kKeyProgress = 4, kKeySlot = 16;
constexpr uint32_t kPendingTimeoutMs = 10000;
// Byte counts reach JS at most this often per connection (and once more with
// each slotEnd): an event per burst would wake the JS thread per message.
constexpr uint32_t kProgressMs = 250;

// How a connection fails: the one vocabulary, mapped in TS in one place
// (proto/rdma-failures.ts; test/native/rdma-vocabulary.test.ts keeps the
// two lists equal). Before established, a `failed` event carries a setup code;
// after, `closed` and `slotEnd` carry an ERR_SOCKGATE_RDMA_* code (an error
// class of proto/errors.ts), or "ok".
namespace fail {
constexpr const char* kAddrError = "ADDR_ERROR";
constexpr const char* kRouteError = "ROUTE_ERROR";
constexpr const char* kUnreachable = "UNREACHABLE";
constexpr const char* kRejected = "REJECTED";
constexpr const char* kConnectError = "CONNECT_ERROR";
constexpr const char* kTimeout = "TIMEOUT";
constexpr const char* kProtocol = "PROTOCOL";
constexpr const char* kNoDevice = "NO_DEVICE";
constexpr const char* kResource = "RESOURCE";
constexpr const char* kVersionMismatch = "VERSION_MISMATCH";
constexpr const char* kErrProtocol = "ERR_SOCKGATE_RDMA_PROTOCOL";
constexpr const char* kErrTimeout = "ERR_SOCKGATE_RDMA_TIMEOUT";
constexpr const char* kErrDeviceRemoved = "ERR_SOCKGATE_RDMA_DEVICE_REMOVED";
constexpr const char* kErrPortDown = "ERR_SOCKGATE_RDMA_PORT_DOWN";
constexpr const char* kErrQpFatal = "ERR_SOCKGATE_RDMA_QP_FATAL";
constexpr const char* kErrDisconnected = "ERR_SOCKGATE_RDMA_DISCONNECTED";
}  // namespace fail

// One socket's place on the connection. Its state is four small machines
// (phase, each direction, binding); the bools left are epoll readiness and
// bookkeeping, not state.
struct Slot {
  enum Phase : uint8_t {
    kFree,     // no socket, no bytes
    kOpen,     // linked, or the peer's bytes arrived first
    kClosing,  // our CLOSE sent; free again when the peer's CLOSE arrives
  } st = kFree;
  // fd -> peer.
  enum Out : uint8_t {
    kReading,  // the fd may give more bytes
    kFdEof,    // the fd gave EOF; EOF goes to the peer after the bytes before it
    kEofSent,  // EOF message posted (after the last burst)
  } out = kReading;
  // peer -> fd.
  enum In : uint8_t {
    kStreaming,  // the peer may send more
    kPeerEof,    // the peer's EOF arrived; SHUT_WR once our ring is drained
    kWrShut,     // shutdown(fd, SHUT_WR) done
  } in = kStreaming;
  // Whose socket the slot carries (native/RDMA.md "Binding later sockets").
  enum Bind : uint8_t {
    kUnbound,     // nothing announced
    kAnnounced,   // gateway: the client's BIND arrived; link() answers it
    kQueued,      // our BIND (client) or BOUND (gateway) is queued: no data of the slot before it
    kAwaitBound,  // client: BIND sent, the gateway's BOUND (or CLOSE) not yet here
    kBound,       // linked (and, on a client, bound)
  } bind = kUnbound;
  int fd = -1;  // owned; guarded by Conn::fd_mu_ for closing
  // What epoll said (EPOLLET: remembered until a read or write says EAGAIN).
  bool readable = false, writable = false;
  bool rd_hup = false;  // EPOLLRDHUP/HUP/ERR: read until EOF or the error, whatever the sizes
  bool update_due = false;    // a CONSUMED is owed
  bool peer_blocked = false;  // the peer's last immediate said BLOCKED
  bool touched = false;       // bytes moved since the last progress batch
  // Moved socket (MOVE connection): client, nothing is read from the fd until
  // BOUND says where the gateway resumes (`resume` holds our unacked bytes);
  // gateway, the client's BIND was a RESUME one (link must answer in kind).
  bool hold = false, resume_bind = false;
  LinkResume resume;
  // Where this slot's cursors start in the socket's stream (non-zero after a
  // move): suspend_slot reports stream positions, so a socket can move again.
  uint64_t in_base = 0, out_base = 0;
  // Inbound (our ring, the peer writes).
  uint64_t rprod = 0, rcons = 0, last_update = 0;
  // Outbound (our staging ring mirrors the peer's ring).
  uint64_t rd = 0, prod = 0, peer_cons = 0;
  uint64_t to_fd = 0, to_peer = 0, total_fd = 0, total_peer = 0;
  // How it ends (reported with slotEnd).
  const char* reason = "ok";
  int err = 0;
  std::string code;

  bool fd_eof() const { return out != kReading; }
  bool eof_sent() const { return out == kEofSent; }
  bool peer_eof() const { return in != kStreaming; }
  bool wr_shut() const { return in == kWrShut; }
  bool bind_pending() const { return bind == kQueued; }
};

class Conn final : public PumpSource {
 public:
  Conn(bool client, const RegionOpts& o) : client_(client), o_(o), poll_(o.poll_us) {}
  ~Conn() override { teardown(); }

  ConnectOpts copts;                  // client
  rdma_cm_id* pending_id = nullptr;   // server: the CONNECT_REQUEST's id, acked, not yet ours
  ConnParams peer;                    // server: from the request
  std::string peer_name;

  // PumpSource (rdma_conn.cc).
  int on_attach(Pump& p, uint32_t id) override;
  void on_ready(Pump&, uint32_t, uint32_t key, uint32_t events) override;
  void on_detach() override;
  // The spin before sleeping, when o_.poll_us > 0 (rdma_conn_recv.cc).
  uint32_t poll_budget_us() const override { return state_ == kEstablished ? poll_.budget() : 0; }
  bool poll(Pump&) override;
  bool before_sleep(Pump&) override;
  void woke(uint64_t waited_us, bool timed_out) override { poll_.woke(waited_us, timed_out); }

  // Commands from JS, on the I/O thread (rdma_conn.cc).
  void link(uint32_t slot, int fd, const uint8_t* token, const LinkResume* r = nullptr);
  void close_slot(uint32_t slot, bool reset);
  void shutdown_slot(uint32_t slot, bool rd, bool wr);
  void close_conn();
  void async_fail(const char* code, const std::string& detail);
  bool set_sockopt(uint32_t slot, int level, int name, int value);  // any thread

 private:
  enum State { kIdle, kResolving, kConnecting, kEstablished, kDead } state_ = kIdle;

  bool client_;
  RegionOpts o_;
  Pump* p_ = nullptr;
  uint32_t id_ = 0;
  int64_t deadline_ = 0;
  int64_t last_rx_ = 0, last_tx_ = 0;
  uint32_t keepalive_ms_ = 0;  // agreed with the peer (setup_peer)
  bool closing_ = false;
  bool connected_ = false;  // ESTABLISHED and the peer has not disconnected: teardown disconnects
  bool early_established_ = false;  // gateway: established by a receive before the cm event (ignored when it comes)
  bool resumable_ = false;  // both ends set RESUME: a failure suspends the open slots (suspend_slot)
  bool move_ = false;       // both ends set MOVE: RESUME-form BIND/BOUND allowed (moved sockets)
  uint8_t token_[kTokenBytes] = {};

  // Resources in creation order; teardown() releases them in reverse.
  EventChannel ch_;
  int timer_ = -1;           // connect deadline, then keepalive
  int progress_timer_ = -1;  // one-shot: byte counts due to JS
  CmId cm_;
  Mapping mem_;  // [slots receive rings][credits x receive buffers]
  ProtectionDomain pd_;
  CompletionChannel cc_;
  CompletionQueue cq_;
  QueuePair qp_;
  MemoryRegion mr_;       // receive rings: remote write
  MemoryRegion recv_mr_;  // receive buffers: local
  Mapping stage_;         // outbound staging, one ring per slot, mirroring the peer's rings
  MemoryRegion stage_mr_;
  bool monitored_ = false;
  SpinPolicy poll_;        // adaptive CQ poll budget (o_.poll_us; 0 = never poll)
  bool cq_unarmed_ = false;  // polling: completions taken without arming; before_sleep arms

  ConnParams local_;
  std::vector<Slot> slots_;
  std::mutex fd_mu_;
  std::vector<int> slot_fds_;  // mirror of slots_[i].fd for set_sockopt, guarded by fd_mu_
  uint32_t sq_used_ = 0;     // send WRs posted and not yet freed by a signaled completion
  uint32_t unsignaled_ = 0;  // of those, posted after the last signaled one (< kSignalEvery)
  uint32_t peer_credits_ = 0;
  uint32_t to_return_ = 0;
  std::deque<Msg> ctrl_;           // BIND, EOF, CLOSE in order
  std::vector<uint32_t> due_;      // slots owing a CONSUMED
  std::vector<uint32_t> again_;    // slots that used their budget this round
  bool progress_due_ = false;      // some slot moved bytes since the last progress events
  bool progress_armed_ = false;    // progress_timer_ runs (set with progress_due_, cleared when it fires)

  uint64_t ring_size() const { return uint64_t(1) << local_.ring_log2; }
  uint64_t peer_ring_size() const { return uint64_t(1) << peer.ring_log2; }
  uint8_t* ring(uint32_t slot) { return mem_.data() + (size_t(slot) << local_.ring_log2); }
  uint8_t* recv_buf(uint32_t i) { return mem_.data() + local_.region_bytes() + size_t(i) * Msg::kMaxBytes; }
  uint8_t* stage(uint32_t slot) { return stage_.data() + (size_t(slot) << peer.ring_log2); }

  // Lifecycle (rdma_conn.cc).
  void emit(const char* name, uint32_t slot = 0);
  void end_event(uint32_t slot, const char* reason, int err, const std::string& code, uint64_t to_fd, uint64_t to_peer);
  int fail_early(const char* code, int err, const std::string& what);
  void die(const char* code, int err, const std::string& detail);
  void teardown();
  int setup();
  int setup_peer();
  void become_established();
  void on_cm();

  // Keepalive, progress batches, tracing (rdma_conn_keepalive.cc).
  void on_timer();
  void on_progress_timer();
  void trace_state() const;

  // Sending and slot endings (rdma_conn_send.cc).
  int post_msg(Msg& m);
  int post_burst(uint32_t slot);
  int post_burst_wrs(Burst& b);
  bool signal_next(uint32_t k) const { return unsignaled_ + k >= kSignalEvery; }
  void flush();
  void maybe_eof(uint32_t slot);
  void maybe_done(uint32_t slot);
  void send_close(uint32_t slot);
  void close_slot_fd(uint32_t slot, bool reset);
  void abort_slot(uint32_t slot, bool reset, const char* reason, int err, const std::string& code);
  void finish_slot(uint32_t slot, bool reset, const char* reason, int err, const std::string& code);
  bool suspend_slot(uint32_t slot, const char* code);
  void flush_progress(uint32_t slot);
  void want_update(uint32_t slot);
  void run_slot(uint32_t slot);
  void after();

  // Receiving (rdma_conn_recv.cc).
  int post_recv(uint32_t i);
  void on_cq();
  int poll_cq(bool* any);
  void after_completions();
  int on_wc(const ibv_wc& wc);
  int protocol(const std::string& what);
  int on_imm(uint32_t imm, uint32_t byte_len);
  int on_msg(const uint8_t* buf, uint32_t len);
  int on_bound(uint32_t slot, const Msg& m);
};

// The gateway's rdma_cm listener (rdma_listener.cc).
class Listener final : public PumpSource {
 public:
  explicit Listener(const ListenOpts& o) : o_(o) {}
  ~Listener() override { teardown(); }

  int open(uint16_t* port, std::string* why);
  int on_attach(Pump& p, uint32_t id) override;
  void on_ready(Pump& p, uint32_t, uint32_t key, uint32_t) override;
  void on_detach() override { teardown(); }
  void accept(Pump& p, uint32_t conn, std::shared_ptr<Conn> c);
  void reject(uint32_t conn);

 private:
  struct Pending {
    rdma_cm_id* id;
    ConnParams params;
    std::string peer;
    int64_t since;
  };
  void expire_pending();
  void teardown();
  ListenOpts o_;
  Pump* p_ = nullptr;
  uint32_t lid_ = 0;
  EventChannel ch_;
  CmId id_;
  int timer_ = -1;
  std::unordered_map<uint32_t, Pending> pending_;
};

// From the async monitor's thread, via Pump::run_on_source.
void conn_async_fail(PumpSource* s, const char* code, const std::string& detail);

}  // namespace rdma
}  // namespace sg

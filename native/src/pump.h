// The native pump: one I/O thread (epoll) that moves bytes between ring
// endpoints and kernel stream fds (ring links) or between two stream fds
// (splice links, see splice.h), watches session doorbells, and serves the
// attach listener. JS talks to it through a command queue (in) and a batched
// event sink (out); the thread never blocks on anything but epoll_wait.
//
// Ownership: the pump owns each link's fds (closed when the link ends) and
// holds references to regions and eventfds while it uses them.
#pragma once

#include <sys/epoll.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "attach.h"
#include "endpoint.h"
#include "region.h"
#include "spin_policy.h"
#include "splice.h"

namespace sg {

struct PumpEvent {
  enum Type : uint8_t {
    // Splice links map the client's data connection onto the ring's role and
    // the host socket onto the fd's: a = bytes written to the host, b = bytes
    // written to the client (prefixes included), stalls = pipe-full count;
    // kFdEof = the host sent EOF, kRingEof = the client sent EOF (each passes
    // on as shutdown(other, SHUT_WR) once that direction's pipe is empty).
    kProgress = 1,   // id = link; a = bytes ring->fd, b = bytes fd->ring, stalls = ring-full count
    kFdEof = 2,      // id = link; the fd reached EOF, EOF set in the outbound ring
    kRingEof = 3,    // id = link; the inbound ring ended, shutdown(fd, SHUT_WR) done
    kEnd = 4,        // id = link; err = -errno or 0; code = "ok" | "error" | "corrupt" | "aborted"
    kCorrupt = 5,    // id = region; the session's shared memory failed validation
    kHints = 6,      // id = region; slots = slots with news (watched client regions)
    kAttach = 7,     // id = listener; conn, pid/uid/gid, version, flags, token
    kConnClosed = 8, // id = listener; conn; err
    // id = rdma listener or connection (a PumpSource); name = what happened
    // ("request", "established", "failed", "closed", "bind", "progress",
    // "fdEof", "peerEof", "slotEnd"); slot, conn, token, a/b (byte counts),
    // err, code and detail as native/index.ts's RdmaEvent describes.
    kRdma = 9,
  };
  explicit PumpEvent(Type t) : type(t) {}
  Type type;
  uint32_t id = 0;
  uint32_t conn = 0;
  uint64_t a = 0, b = 0;
  uint64_t c = 0, d = 0;  // kRdma "suspended": producer cursor sent and bytes read
  int32_t fd = -1;        // kRdma "suspended": the slot's descriptor, now JS's
  uint32_t stalls = 0;
  int32_t err = 0;
  std::string code;
  std::vector<uint32_t> slots;
  int32_t pid = 0;
  uint32_t uid = 0, gid = 0;
  uint16_t version = 0, flags = 0;
  std::string token;
  std::string name;    // kRdma
  std::string detail;  // kRdma: a message for humans
  uint32_t slot = 0;   // kRdma
};

using EventSink = std::function<void(std::vector<PumpEvent>&&)>;

// The host descriptor of a ring link, as the JS thread may touch it (socket
// options). The I/O thread closes the descriptor only under `mu`, so a
// JS-side call never reaches a closed (or already reused) descriptor number.
class LinkFd {
 public:
  // setsockopt/getsockopt(int) on the link's descriptor; -EBADF once closed.
  int set_opt(int level, int name, int value);
  int get_opt(int level, int name, int* value);

  // Byte totals (ring->fd, fd->ring), stored by the I/O thread once per
  // round: JS reads them on demand instead of taking an event per round.
  std::atomic<uint64_t> total_to_fd{0}, total_to_ring{0};
  // Set by JS: no progress events for this link (its counters are read on demand).
  std::atomic<bool> quiet{false};

 private:
  friend class Pump;
  std::mutex mu;
  int fd = -1;  // guarded by mu; -1 once the link closed it
};

class Pump;

// Work on the I/O thread other than links: a source's fds sit in the pump's
// epoll set and its handlers run on the I/O thread (the RDMA layer's rdma_cm
// event channel and completion channels). Handlers must not block.
class PumpSource {
 public:
  virtual ~PumpSource() = default;
  // Once, on the I/O thread: set up and watch fds (Pump::source_watch).
  // -errno refuses; on_detach follows at once.
  virtual int on_attach(Pump& p, uint32_t id) = 0;
  // On the I/O thread: the fd watched under `key` is ready.
  virtual void on_ready(Pump& p, uint32_t id, uint32_t key, uint32_t events) = 0;
  // Once, on the I/O thread (or the stopping thread when the pump stops):
  // removed by Pump::detach_source, remove_source or stop. Release the fds here.
  virtual void on_detach() = 0;
  // Optional busy polling (native/RDMA.md "Polling"), for a source that
  // called Pump::source_poll: before the I/O thread sleeps it spins for the
  // largest poll_budget_us() of its sources (and its own spin), calling poll()
  // (non-blocking; true = found work and handled it). before_sleep() comes
  // when the spin found nothing and the thread is about to block: re-enable
  // wake-ups (arm), true = news came meanwhile, do not sleep. woke() tells how
  // long the sleep lasted (µs, spin included) and whether a timeout ended it.
  virtual uint32_t poll_budget_us() const { return 0; }
  virtual bool poll(Pump&) { return false; }
  virtual bool before_sleep(Pump&) { return false; }
  virtual void woke(uint64_t, bool) {}
};

// What the I/O thread did, counted since the pump started (read on demand:
// tests and diagnostics see batching and spinning at work).
struct PumpStats {
  uint64_t wakeups = 0;    // sleeps in epoll_wait that ended with news
  uint64_t spins = 0;      // spins before sleeping
  uint64_t spin_hits = 0;  // ... that found news (no sleep, no doorbell)
  uint64_t doorbells = 0;  // doorbells this pump's ring links rang (the rest were suppressed)
  uint64_t fd_reads = 0;   // readv calls of ring links that took bytes
  uint64_t fd_writes = 0;  // writev calls of ring links that wrote bytes
  uint64_t shrinks = 0;    // rings shrunk back after an idle spell
  uint32_t spin_budget_us = 0;  // the adaptive budget now
  uint32_t spin_max_us = 0;     // the setting
};

struct PumpOptions {
  uint32_t spin_us = 0;            // adaptive spin before sleeping, at most this (µs); 0 = off
  uint32_t hello_timeout_ms = 5000;
  uint64_t link_budget = 1 << 20;  // bytes per direction per link per round (fairness)
  // At most one progress event per link per this many ms (a busy link would
  // otherwise wake JS once per round, i.e. per message); 0 = every round.
  uint32_t progress_ms = 10;
  // Gateway ring links: a ring grown past its first size goes back to it
  // after this long without traffic (ms); 0 = never.
  uint32_t shrink_idle_ms = 0;
};

class Pump {
 public:
  static int create(const PumpOptions& o, EventSink sink, std::unique_ptr<Pump>* out);
  ~Pump();  // stops the thread and releases everything (safety net)
  void stop();

  // All of these are called from the owner thread (JS); they queue a command.
  // add_link takes ownership of fd on success only.
  int add_link(std::shared_ptr<Region> region, uint32_t slot, int fd, std::string prefix, uint32_t* id,
               std::shared_ptr<LinkFd>* shared = nullptr);
  // A splice link between two stream sockets; takes ownership of both fds on
  // success only. *shared is what the JS thread may query (buffered bytes,
  // host socket options).
  int add_splice(int client_fd, int host_fd, std::string to_host_prefix, std::string to_client_prefix,
                 uint32_t pipe_bytes, bool copy, uint32_t* id, std::shared_ptr<SpliceShared>* shared);
  // Abort a link. `reset`: close its sockets with RST instead of FIN.
  void close_link(uint32_t id, bool reset = false);
  // Splice links: shutdown(2) of the host socket, in order with the pipes.
  void shutdown_host(uint32_t id, bool read, bool write);
  void resize_link(uint32_t id, uint32_t dir, uint32_t log2);
  int watch(std::shared_ptr<Region> region);
  void unwatch(uint32_t region_id);
  void add_listener(uint32_t id, int fd);  // takes ownership
  void close_listener(uint32_t id);
  void reply(uint32_t listener, uint32_t conn, uint16_t status, std::shared_ptr<Region> region,
             std::shared_ptr<EventFd> gw_bell, std::shared_ptr<EventFd> cl_bell);
  void close_conn(uint32_t listener, uint32_t conn);

  // Sources (see PumpSource). add_source/remove_source: owner thread.
  int add_source(std::shared_ptr<PumpSource> src, uint32_t* id);
  void remove_source(uint32_t id);
  // I/O thread only (inside a source's handlers): watch an fd for EPOLLIN
  // under `key` (< 2^24), stop watching, detach the source.
  int source_watch(uint32_t id, int fd, uint32_t key);
  void source_unwatch(int fd);
  void detach_source(uint32_t id);
  // I/O thread only: watch with explicit epoll events (EPOLLIN|EPOLLOUT|EPOLLET...).
  int source_watch_events(uint32_t id, int fd, uint32_t key, uint32_t events);
  // I/O thread only: take part in the spin before sleeping (PumpSource::poll).
  void source_poll(uint32_t id, bool on);
  // I/O thread only: hand an event to JS (batched like the pump's own).
  void source_emit(PumpEvent&& e) { emit(std::move(e)); }
  // I/O thread only: attach a source under an id from alloc_id() (a
  // connection an rdma listener accepted). -errno: on_detach has run.
  int attach_source_now(std::shared_ptr<PumpSource> src, uint32_t id);
  // Any thread: a fresh id for links and sources.
  uint32_t alloc_id() { return next_link_.fetch_add(1); }
  // Owner thread: run `fn` on the I/O thread with source `id` (nullptr when
  // that source is gone or the pump stopped before it ran: release what fn
  // owns then).
  void run_on_source(uint32_t id, std::function<void(PumpSource*)> fn);
  uint32_t live_sources() const { return live_sources_.load(); }

  uint32_t live_links() const { return live_links_.load(); }
  // Any thread: the spin setting from now on (a client learns its gateway's).
  void set_spin_us(uint32_t us) { spin_max_us_.store(us, std::memory_order_relaxed); }
  PumpStats stats() const;
  uint32_t live_watches() const { return live_watches_.load(); }

 public:
  struct Link;  // pump_internal.h; named by file-local helpers of the pump's files

 private:
  struct Session;
  struct Conn;
  struct Listener;
  struct Cmd;

  Pump() = default;
  void push(Cmd&& c);
  void run();
  void handle_cmds();
  void on_session(Session& s);
  void process_hints(Session& s);
  void run_link(Link& l);
  void run_ring(Link& l);
  void run_splice(Link& l);
  void queue(Link& l);
  void end_link(Link& l, int err, const char* code);
  // Close a ring link's fd (under its LinkFd mutex when JS holds one).
  static void close_ring_link_fd(Link& l);
  void corrupt_session(Session& s);
  void drop_session_if_idle(uint32_t region_id);
  Session* session_for(const std::shared_ptr<Region>& r, bool create);
  void flush_progress(Link& l, bool force = false);
  void on_listener(Listener& ls);
  void on_conn(Listener& ls, Conn& c, uint32_t events);
  void drop_conn(Listener& ls, uint32_t conn, int err, bool report);
  void sweep_conns(int64_t now);
  void emit(PumpEvent&& e) { out_.push_back(std::move(e)); }
  void flush_events();
  // Spin before sleeping (spin_policy.h): polls the awake sessions' hints and
  // the epoll set; returns how many epoll events it took into evs (or -1 when
  // a hint came), 0 when the budget ran out.
  int spin(struct epoll_event* evs, int max, uint32_t budget_us);
  // Sources in the spin (source_poll): polled, armed before sleeping, told how long the sleep lasted.
  uint32_t poll_budget() const;
  bool poll_sources();
  bool arm_sources();
  void sources_woke(uint64_t waited_us, bool timed_out);
  // Gateway ring links grown past their first size: shrink after an idle spell.
  void shrink_idle(int64_t now);
  int shrink_timeout(int64_t now) const;
  void after_round(Link& l, bool moved);

  PumpOptions opt_;
  EventSink sink_;
  int ep_ = -1;
  int wake_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Cmd>* cmds_ = nullptr;  // guarded by mu_
  std::atomic<bool> stopping_{false};
  std::atomic<uint32_t> next_link_{1};
  std::atomic<uint32_t> live_links_{0};
  std::atomic<uint32_t> live_watches_{0};
  std::atomic<uint32_t> live_sources_{0};
  // Thread-owned state.
  std::unordered_map<uint32_t, std::unique_ptr<Link>> links_;
  std::unordered_map<uint32_t, std::unique_ptr<Session>> sessions_;  // by region id
  std::unordered_map<uint32_t, std::unique_ptr<Listener>> listeners_;
  std::unordered_map<uint32_t, std::shared_ptr<PumpSource>> sources_;
  std::vector<uint32_t> pollers_;  // ids of sources in the spin (few: one per rdma connection that polls)
  std::vector<uint32_t> runq_;
  std::vector<uint32_t> progress_due_;  // links whose progress waits for its interval
  std::vector<PumpEvent> out_;
  std::vector<uint32_t> grown_;  // gateway ring links with a ring above its first size
  SpinPolicy spin_;
  std::atomic<uint32_t> spin_max_us_{0};
  // Counters (PumpStats), written by the I/O thread only.
  std::atomic<uint64_t> st_wakeups_{0}, st_spins_{0}, st_spin_hits_{0}, st_doorbells_{0}, st_fd_reads_{0},
      st_fd_writes_{0}, st_shrinks_{0};
  std::atomic<uint32_t> st_budget_{0};
};

}  // namespace sg

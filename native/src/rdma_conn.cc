#include "rdma_conn.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "pump.h"

namespace sg {
namespace rdma {

namespace {

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

int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  return 0;
}

// Close a socket with RST (SO_LINGER 0) or FIN.
void close_fd(int fd, bool reset) {
  if (fd < 0) return;
  if (reset) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  close(fd);
}

// Periodic, or once (`repeat` false); 0 disarms.
int arm_timer(int fd, uint32_t ms, bool repeat = true) {
  struct itimerspec ts = {};
  ts.it_value.tv_sec = ms / 1000;
  ts.it_value.tv_nsec = long(ms % 1000) * 1000000;
  if (repeat) ts.it_interval = ts.it_value;
  return timerfd_settime(fd, 0, &ts, nullptr) < 0 ? -errno : 0;
}

std::string addr_str(const sockaddr* sa) {
  if (!sa) return "";
  char buf[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    auto* in = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in->sin6_addr, buf, sizeof buf);
    port = ntohs(in->sin6_port);
  }
  return std::string(buf) + ":" + std::to_string(port);
}

int parse_addr(const std::string& addr, uint16_t port, sockaddr_storage* out) {
  memset(out, 0, sizeof *out);
  auto* in = reinterpret_cast<sockaddr_in*>(out);
  if (inet_pton(AF_INET, addr.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    return 0;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(out);
  if (inet_pton(AF_INET6, addr.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return 0;
  }
  return -EINVAL;
}

class Conn;
void conn_async_fail(PumpSource* s, const char* code, const std::string& detail);

// ---- asynchronous events ---------------------------------------------------------
//
// A device context's async event fd is shared by every connection on that
// device in the process, and each event is read once: one monitor thread
// reads them all and fails the affected connections on their pumps' I/O
// threads (QP events: that QP's connection; port and device events: every
// connection on the device).
class AsyncMonitor {
 public:
  static AsyncMonitor& get() {
    static AsyncMonitor* m = new AsyncMonitor();  // lives as long as the process
    return *m;
  }
  void add(ibv_context* ctx, uint32_t qp_num, uint8_t port, Pump* pump, uint32_t id) {
    std::unique_lock<std::mutex> g(mu_);
    if (!started_) {
      wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (wake_ < 0) return;  // no monitor: completions still report failures
      started_ = true;
      std::thread([this] { run(); }).detach();
    }
    set_nonblock(ctx->async_fd);
    regs_.push_back({ctx, qp_num, port, pump, id});
    rebuild(g);
  }
  // Returns once the thread no longer polls a context only this registration used.
  void remove(Pump* pump, uint32_t id) {
    std::unique_lock<std::mutex> g(mu_);
    ibv_context* ctx = nullptr;
    for (size_t i = 0; i < regs_.size(); i++)
      if (regs_[i].pump == pump && regs_[i].id == id) {
        ctx = regs_[i].ctx;
        regs_.erase(regs_.begin() + long(i));
        break;
      }
    if (!ctx) return;
    for (auto& r : regs_)
      if (r.ctx == ctx) return;  // still watched for others
    rebuild(g);
  }

 private:
  struct Reg {
    ibv_context* ctx;
    uint32_t qp_num;
    uint8_t port;
    Pump* pump;
    uint32_t id;
  };
  void rebuild(std::unique_lock<std::mutex>& g) {
    uint64_t want = ++gen_;
    uint64_t one = 1;
    ssize_t n = write(wake_, &one, sizeof one);
    (void)n;
    cv_.wait(g, [&] { return seen_ >= want; });
  }
  void run() {
    std::vector<ibv_context*> ctxs;
    for (;;) {
      std::vector<pollfd> pfds;
      {
        std::lock_guard<std::mutex> g(mu_);
        ctxs.clear();
        for (auto& r : regs_)
          if (std::find(ctxs.begin(), ctxs.end(), r.ctx) == ctxs.end()) ctxs.push_back(r.ctx);
        seen_ = gen_;
      }
      cv_.notify_all();
      pfds.push_back({wake_, POLLIN, 0});
      for (ibv_context* c : ctxs) pfds.push_back({c->async_fd, POLLIN, 0});
      int n = poll(pfds.data(), nfds_t(pfds.size()), -1);
      if (n < 0) continue;
      if (pfds[0].revents) {
        uint64_t v;
        ssize_t r = read(wake_, &v, sizeof v);
        (void)r;
      }
      std::lock_guard<std::mutex> g(mu_);
      if (gen_ != seen_) continue;  // a context may be going away: rebuild first
      for (size_t i = 1; i < pfds.size(); i++) {
        if (!(pfds[i].revents & POLLIN)) continue;
        ibv_context* ctx = ctxs[i - 1];
        for (int k = 0; k < 16; k++) {
          ibv_async_event ev;
          if (ibv_get_async_event(ctx, &ev) != 0) break;
          ibv_event_type type = ev.event_type;
          uint32_t qp_num = 0;
          uint8_t port = 0;
          if (type == IBV_EVENT_QP_FATAL || type == IBV_EVENT_QP_REQ_ERR || type == IBV_EVENT_QP_ACCESS_ERR)
            qp_num = ev.element.qp->qp_num;
          if (type == IBV_EVENT_PORT_ERR) port = uint8_t(ev.element.port_num);
          ibv_ack_async_event(&ev);
          const char* code = nullptr;
          if (qp_num) code = "ERR_SOCKGATE_RDMA_QP_FATAL";
          else if (type == IBV_EVENT_PORT_ERR) code = "ERR_SOCKGATE_RDMA_PORT_DOWN";
          else if (type == IBV_EVENT_DEVICE_FATAL) code = "ERR_SOCKGATE_RDMA_DEVICE_REMOVED";
          if (!code) continue;
          std::string detail = std::string("async event ") + ibv_event_type_str(type);
          for (auto& r : regs_) {
            if (r.ctx != ctx) continue;
            if (qp_num && r.qp_num != qp_num) continue;
            if (port && r.port && r.port != port) continue;
            r.pump->run_on_source(r.id, [code, detail](PumpSource* s) {
              if (s) conn_async_fail(s, code, detail);
            });
          }
        }
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Reg> regs_;
  int wake_ = -1;
  bool started_ = false;
  uint64_t gen_ = 0, seen_ = 0;
};

// ---- one connection ----------------------------------------------------------------

struct Slot {
  enum State : uint8_t { kFree, kOpen, kClosing } st = kFree;
  int fd = -1;                 // owned; guarded by Conn::fd_mu_ for closing
  bool readable = false, writable = false;
  bool rd_hup = false;         // epoll said EPOLLRDHUP/HUP/ERR: read until EOF or the error, whatever the sizes
  bool rd_eof = false;         // the fd gave EOF
  bool eof_sent = false;       // EOF message posted (after the last burst)
  bool peer_eof = false;       // the peer's EOF arrived
  bool wr_shut = false;        // shutdown(fd, SHUT_WR) done after the peer's EOF
  bool bind_pending = false;   // BIND (client) or BOUND (gateway) queued: no data of the slot before it
  bool await_bound = false;    // client: BIND sent, the gateway's BOUND (or CLOSE) not yet here
  bool update_due = false;     // a CONSUMED is owed
  bool peer_blocked = false;   // the peer's last immediate said BLOCKED
  bool touched = false;
  bool bound = false;          // linked, or announced by BIND (gateway)
  // Inbound (our ring, the peer writes).
  uint64_t rprod = 0, rcons = 0, last_update = 0;
  // Outbound (our staging ring mirrors the peer's ring).
  uint64_t rd = 0, prod = 0, peer_cons = 0;
  uint64_t to_fd = 0, to_peer = 0, total_fd = 0, total_peer = 0;
  // How it ends (reported with slotEnd).
  const char* reason = "ok";
  int err = 0;
  std::string code;
};

class Listener;

class Conn final : public PumpSource {
 public:
  Conn(bool client, const RegionOpts& o) : client_(client), o_(o) {}
  ~Conn() override { teardown(); }

  ConnectOpts copts;                  // client
  rdma_cm_id* pending_id = nullptr;   // server: the CONNECT_REQUEST's id, acked, not yet ours
  ConnParams peer;                    // server: from the request
  std::string peer_name;

  int on_attach(Pump& p, uint32_t id) override {
    p_ = &p;
    id_ = id;
    int err;
    if ((err = ch_.open())) return fail_early("RESOURCE", err, "rdma_create_event_channel");
    if ((err = p.source_watch(id, ch_.fd(), kKeyCm))) return fail_early("RESOURCE", err, "epoll_ctl");
    timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer_ < 0) return fail_early("RESOURCE", -errno, "timerfd_create");
    if ((err = p.source_watch(id, timer_, kKeyTimer))) return fail_early("RESOURCE", err, "epoll_ctl");
    progress_timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (progress_timer_ < 0) return fail_early("RESOURCE", -errno, "timerfd_create");
    if ((err = p.source_watch(id, progress_timer_, kKeyProgress))) return fail_early("RESOURCE", err, "epoll_ctl");
    if (client_) {
      memcpy(token_, copts.token, kTokenBytes);
      if ((err = arm_timer(timer_, copts.timeout_ms))) return fail_early("RESOURCE", err, "timerfd_settime");
      deadline_ = now_ms() + copts.timeout_ms;
      if ((err = cm_.create(ch_, nullptr))) return fail_early("RESOURCE", err, "rdma_create_id");
      sockaddr_storage sa;
      if (parse_addr(copts.addr, copts.port, &sa)) return fail_early("ADDR_ERROR", -EINVAL, "address " + copts.addr);
      if (rdma_resolve_addr(cm_.get(), nullptr, reinterpret_cast<sockaddr*>(&sa), int(copts.timeout_ms / 2)) != 0)
        return fail_early("ADDR_ERROR", -errno, "rdma_resolve_addr " + copts.addr);
      state_ = kResolving;
      return 0;
    }
    // Server: the request's id moves onto our own event channel.
    rdma_cm_id* cid = pending_id;
    pending_id = nullptr;
    if (rdma_migrate_id(cid, ch_.get()) != 0) {
      int e = -errno;
      rdma_reject(cid, nullptr, 0);
      rdma_destroy_id(cid);
      return fail_early("RESOURCE", e, "rdma_migrate_id");
    }
    cm_.adopt(cid);
    memcpy(token_, peer.token, kTokenBytes);
    if ((err = arm_timer(timer_, kPendingTimeoutMs))) return fail_early("RESOURCE", err, "timerfd_settime");
    deadline_ = now_ms() + kPendingTimeoutMs;
    if ((err = setup())) {
      rdma_reject(cm_.get(), nullptr, 0);
      return err;
    }
    if ((err = setup_peer())) {
      rdma_reject(cm_.get(), nullptr, 0);
      return err;
    }
    uint8_t b[ConnParams::kBytes];
    ConnParams mine = local_;
    mine.flags = ConnParams::kFlagAccept;
    mine.encode(b);
    rdma_conn_param cp = {};
    cp.private_data = b;
    cp.private_data_len = sizeof b;
    cp.responder_resources = 1;
    cp.initiator_depth = 1;
    cp.rnr_retry_count = 7;
    if (rdma_accept(cm_.get(), &cp) != 0) return fail_early("CONNECT_ERROR", -errno, "rdma_accept");
    state_ = kConnecting;
    return 0;
  }

  void on_ready(Pump&, uint32_t, uint32_t key, uint32_t events) override {
    if (state_ == kDead) return;
    if (key == kKeyCm) on_cm();
    else if (key == kKeyCq) on_cq();
    else if (key == kKeyTimer) on_timer();
    else if (key == kKeyProgress) on_progress_timer();
    else if (key >= kKeySlot && key - kKeySlot < slots_.size()) {
      Slot& s = slots_[key - kKeySlot];
      if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s.readable = true;
      if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s.rd_hup = true;
      if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) s.writable = true;
      run_slot(key - kKeySlot);
      flush();
    }
    after();
  }

  void on_detach() override {
    teardown();
    p_ = nullptr;
  }

  // ---- commands from JS (I/O thread) ----

  void link(uint32_t slot, int fd, const uint8_t* token) {
    if (state_ == kDead || slot >= slots_.size()) {
      close_fd(fd, true);
      end_event(slot, "error", -ENOTCONN, "ENOTCONN", 0, 0);
      return;
    }
    Slot& s = slots_[slot];
    if (s.fd >= 0 || s.st == Slot::kClosing) {
      close_fd(fd, true);
      end_event(slot, "error", -EBUSY, "EBUSY", 0, 0);
      return;
    }
    if (token && !client_) {  // only clients bind
      close_fd(fd, true);
      end_event(slot, "error", -EINVAL, "EINVAL", 0, 0);
      return;
    }
    // Gateway: a slot the client announced with BIND (not the first socket's, linked on accept) is answered with BOUND.
    const bool answer_bind = !client_ && s.bound;
    int err = set_nonblock(fd);
    if (!err) err = p_->source_watch_events(id_, fd, kKeySlot + slot, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
    if (err) {
      close_fd(fd, true);
      end_event(slot, "error", err, "", 0, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> g(fd_mu_);
      s.fd = fd;
      slot_fds_[slot] = fd;
    }
    s.st = Slot::kOpen;
    s.bound = true;
    s.readable = s.writable = true;
    if (token || answer_bind) {
      Msg m;
      m.type = token ? Msg::kBind : Msg::kBound;
      m.slot = uint16_t(slot);
      if (token) {
        memcpy(m.token, token, kTokenBytes);
        if (copts.hostile == 3) m.token[0] ^= 0xff;  // tests: a BIND the gateway cannot redeem
        s.await_bound = true;
      }
      s.bind_pending = true;
      ctrl_.push_back(m);
    }
    if (state_ == kEstablished) {
      run_slot(slot);
      flush();
    }
    after();
  }

  void close_slot(uint32_t slot, bool reset) {
    if (slot >= slots_.size()) return;
    Slot& s = slots_[slot];
    if (s.st == Slot::kFree && s.fd < 0) {
      end_event(slot, "aborted", 0, "", 0, 0);
      return;
    }
    abort_slot(slot, reset, "aborted", 0, "");
    flush();
    after();
  }

  void shutdown_slot(uint32_t slot, bool rd, bool wr) {
    if (slot >= slots_.size() || slots_[slot].fd < 0) return;
    shutdown(slots_[slot].fd, rd && wr ? SHUT_RDWR : rd ? SHUT_RD : SHUT_WR);
    Slot& s = slots_[slot];
    s.readable = s.writable = true;
    if (rd) s.rd_hup = true;  // read on to the EOF the shutdown makes
    run_slot(slot);
    flush();
    after();
  }

  void close_conn() {
    if (state_ == kDead) return;
    closing_ = true;
    die("ok", 0, "closed");
  }

  void async_fail(const char* code, const std::string& detail) {
    if (state_ == kDead) return;
    die(code, -EIO, detail);
  }

  bool set_sockopt(uint32_t slot, int level, int name, int value) {
    std::lock_guard<std::mutex> g(fd_mu_);
    if (slot >= slot_fds_.size() || slot_fds_[slot] < 0) return false;
    return setsockopt(slot_fds_[slot], level, name, &value, sizeof value) == 0;
  }

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
  bool progress_due_ = false;      // some slot moved bytes since the last progress events
  bool progress_armed_ = false;    // progress_timer_ runs (set with progress_due_, cleared when it fires)

  uint64_t ring_size() const { return uint64_t(1) << local_.ring_log2; }
  uint64_t peer_ring_size() const { return uint64_t(1) << peer.ring_log2; }
  uint8_t* ring(uint32_t slot) { return mem_.data() + (size_t(slot) << local_.ring_log2); }
  uint8_t* recv_buf(uint32_t i) { return mem_.data() + local_.region_bytes() + size_t(i) * Msg::kMaxBytes; }
  uint8_t* stage(uint32_t slot) { return stage_.data() + (size_t(slot) << peer.ring_log2); }

  void emit(const char* name, uint32_t slot = 0) {
    PumpEvent e(PumpEvent::kRdma);
    e.id = id_;
    e.name = name;
    e.slot = slot;
    p_->source_emit(std::move(e));
  }

  void end_event(uint32_t slot, const char* reason, int err, const std::string& code, uint64_t to_fd, uint64_t to_peer) {
    if (!p_) return;
    PumpEvent e(PumpEvent::kRdma);
    e.id = id_;
    e.name = "slotEnd";
    e.slot = slot;
    e.code = code.empty() && err ? (strerrorname_np(-err) ? strerrorname_np(-err) : "EIO") : code;
    e.detail = reason;
    e.err = err;
    e.a = to_fd;
    e.b = to_peer;
    p_->source_emit(std::move(e));
  }

  // Before established: report "failed" and let the pump detach us.
  int fail_early(const char* code, int err, const std::string& what) {
    if (state_ == kDead) return err ? err : -EIO;
    PumpEvent e(PumpEvent::kRdma);
    e.id = id_;
    e.name = "failed";
    e.code = code;
    e.err = err ? err : -EIO;
    e.detail = what + ": " + err_str(e.err);
    if (p_) p_->source_emit(std::move(e));
    state_ = kDead;
    return err ? err : -EIO;
  }

  // Ends the connection: every open slot ends with `code`, then "closed" (or
  // "failed" before established), then the pump detaches us (teardown).
  void die(const char* code, int err, const std::string& detail) {
    if (state_ == kDead) return;
    if (state_ != kEstablished) {
      fail_early(code, err, detail);
    } else {
      for (uint32_t i = 0; i < slots_.size(); i++) {
        Slot& s = slots_[i];
        if (s.st == Slot::kFree && s.fd < 0) continue;
        if (s.st == Slot::kClosing && std::string(s.reason) == "ok") {
          finish_slot(i, false, "ok", 0, "");  // finished; only the peer's CLOSE was missing
          continue;
        }
        bool ok = std::string(code) == "ok";
        finish_slot(i, true, ok ? "aborted" : "error", ok ? -ECONNABORTED : (err ? err : -EIO), ok ? "ECONNABORTED" : code);
      }
      PumpEvent e(PumpEvent::kRdma);
      e.id = id_;
      e.name = "closed";
      e.code = code;
      e.err = err;
      e.detail = detail;
      p_->source_emit(std::move(e));
      state_ = kDead;
    }
    p_->detach_source(id_);  // -> on_detach -> teardown (disconnects first)
  }

  void teardown() {
    // Still up (the pump is stopping, or JS dropped us): tell the peer, or it
    // would only notice by keepalive.
    if (connected_ && cm_.get()) rdma_disconnect(cm_.get());
    connected_ = false;
    state_ = kDead;
    if (monitored_) {
      AsyncMonitor::get().remove(p_, id_);
      monitored_ = false;
    }
    for (uint32_t i = 0; i < slots_.size(); i++)
      if (slots_[i].fd >= 0) {
        if (p_) p_->source_unwatch(slots_[i].fd);
        std::lock_guard<std::mutex> g(fd_mu_);
        close_fd(slots_[i].fd, true);
        slots_[i].fd = -1;
        slot_fds_[i] = -1;
      }
    if (pending_id) {
      rdma_reject(pending_id, nullptr, 0);
      rdma_destroy_id(pending_id);
      pending_id = nullptr;
    }
    // Reverse order of creation.
    stage_mr_.reset();
    stage_.reset();
    recv_mr_.reset();
    mr_.reset();
    qp_.reset();
    cq_.reset();
    if (cc_.fd() >= 0 && p_) p_->source_unwatch(cc_.fd());
    cc_.reset();
    pd_.reset();
    mem_.reset();
    cm_.reset();
    if (progress_timer_ >= 0) {
      if (p_) p_->source_unwatch(progress_timer_);
      close(progress_timer_);
      progress_timer_ = -1;
    }
    if (timer_ >= 0) {
      if (p_) p_->source_unwatch(timer_);
      close(timer_);
      timer_ = -1;
    }
    if (ch_.fd() >= 0 && p_) p_->source_unwatch(ch_.fd());
    ch_.reset();
  }

  int post_recv(uint32_t i) {
    ibv_sge sge = {reinterpret_cast<uintptr_t>(recv_buf(i)), uint32_t(Msg::kMaxBytes), recv_mr_.lkey()};
    ibv_recv_wr wr = {}, *bad = nullptr;
    wr.wr_id = kWrRecv | i;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    int rc = ibv_post_recv(qp_.get(), &wr, &bad);
    return rc ? -rc : 0;
  }

  // Our side's verbs resources, the receive region and the receive WRs.
  int setup() {
    ibv_context* ctx = cm_.verbs();
    if (!ctx) return fail_early("NO_DEVICE", -ENODEV, "no verbs device behind the address");
    if (client_ && copts.hostile == 2) local_.version = 1;  // tests: a client of protocol 1
    local_.slots = uint16_t(o_.slots);
    local_.ring_log2 = o_.ring_log2;
    local_.credits = uint16_t(o_.credits);
    local_.keepalive_ms = o_.keepalive_ms;
    memcpy(local_.token, token_, kTokenBytes);
    size_t bytes = local_.region_bytes() + size_t(o_.credits) * Msg::kMaxBytes;
    bytes = (bytes + 4095) & ~size_t(4095);
    int err;
    if ((err = mem_.open(bytes))) return fail_early("RESOURCE", err, "mmap receive region");
    if ((err = pd_.open(ctx))) return fail_early("RESOURCE", err, "ibv_alloc_pd");
    if ((err = cc_.open(ctx))) return fail_early("RESOURCE", err, "ibv_create_comp_channel");
    if ((err = cq_.open(ctx, cc_, int(kSendWr + o_.credits + 8)))) return fail_early("RESOURCE", err, "ibv_create_cq");
    QueuePair::Caps caps;
    caps.send_wr = kSendWr;
    caps.recv_wr = o_.credits;
    caps.inline_bytes = 64;
    if ((err = qp_.open(cm_, pd_, cq_, caps))) return fail_early("RESOURCE", err, "rdma_create_qp");
    if (qp_.max_inline() < Msg::kMaxBytes) return fail_early("RESOURCE", -ENOTSUP, "inline data (the device offers too little)");
    if ((err = mr_.open(pd_, mem_.data(), local_.region_bytes(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)))
      return fail_early("RESOURCE", err, "ibv_reg_mr");
    if ((err = recv_mr_.open(pd_, recv_buf(0), size_t(o_.credits) * Msg::kMaxBytes, IBV_ACCESS_LOCAL_WRITE)))
      return fail_early("RESOURCE", err, "ibv_reg_mr (receive buffers)");
    local_.addr = reinterpret_cast<uintptr_t>(mem_.data());
    local_.rkey = mr_.rkey();
    for (uint32_t i = 0; i < o_.credits; i++)
      if ((err = post_recv(i))) return fail_early("RESOURCE", err, "ibv_post_recv");
    if ((err = p_->source_watch(id_, cc_.fd(), kKeyCq))) return fail_early("RESOURCE", err, "epoll_ctl");
    AsyncMonitor::get().add(ctx, qp_.get()->qp_num, cm_.get()->port_num, p_, id_);
    monitored_ = true;
    return 0;
  }

  // Staging for the peer's rings, once its parameters are known.
  int setup_peer() {
    if (peer.region_bytes() > kMaxPeerRegion)
      return fail_early("RESOURCE", -E2BIG, "the peer's receive region is too large (" + std::to_string(peer.region_bytes()) + " bytes)");
    uint32_t n = std::min<uint32_t>(local_.slots, peer.slots);
    size_t bytes = size_t(n) << peer.ring_log2;
    int err;
    if ((err = stage_.open(bytes))) return fail_early("RESOURCE", err, "mmap staging");
    if ((err = stage_mr_.open(pd_, stage_.data(), bytes, IBV_ACCESS_LOCAL_WRITE))) return fail_early("RESOURCE", err, "ibv_reg_mr (staging)");
    slots_.assign(n, Slot());
    {
      std::lock_guard<std::mutex> g(fd_mu_);
      slot_fds_.assign(n, -1);
    }
    peer_credits_ = peer.credits;
    // Both sides keep alive at the smaller interval either asked for, so
    // neither times out a peer that was told to send less often.
    uint32_t a = o_.keepalive_ms, b = peer.keepalive_ms;
    keepalive_ms_ = a && b ? std::min(a, b) : (a ? a : b);
    return 0;
  }

  void on_timer() {
    uint64_t v;
    ssize_t r = read(timer_, &v, sizeof v);
    (void)r;
    int64_t now = now_ms();
    if (state_ != kEstablished) {
      if (now >= deadline_) die("TIMEOUT", -ETIMEDOUT, client_ ? "rdma connect" : "rdma accept");
      return;
    }
    if (trace_enabled()) trace_state();
    if (!keepalive_ms_) return;
    if (now - last_rx_ > int64_t(keepalive_ms_) * 3) {
      die("ERR_SOCKGATE_RDMA_TIMEOUT", -ETIMEDOUT, "nothing heard from the peer for " + std::to_string(now - last_rx_) + " ms");
      return;
    }
    if (now - last_tx_ >= int64_t(keepalive_ms_)) {
      Msg m;
      m.type = Msg::kKeepalive;
      post_msg(m);
    }
    after();
  }

  // SOCKGATE_RDMA_TRACE=1: every keepalive tick, the connection's flow state
  // on stderr (diagnosing a stalled transfer; off by default).
  static bool trace_enabled() {
    static const bool on = [] {
      const char* v = getenv("SOCKGATE_RDMA_TRACE");
      return v && *v && strcmp(v, "0") != 0;
    }();
    return on;
  }
  void trace_state() const {
    fprintf(stderr, "rdma-trace conn %u %s: peer_credits %u to_return %u sq_used %u unsignaled %u ctrl %zu due %zu\n", id_,
            client_ ? "client" : "server", peer_credits_, to_return_, sq_used_, unsignaled_, ctrl_.size(), due_.size());
    for (uint32_t i = 0; i < slots_.size(); i++) {
      const Slot& t = slots_[i];
      if (t.st == Slot::kFree && t.fd < 0) continue;
      fprintf(stderr,
              "rdma-trace   slot %u st %d fd %d r%d w%d hup%d eof%d eofsent%d peereof%d wrshut%d bindp%d due%d pblk%d"
              " rprod %llu rcons %llu lastupd %llu rd %llu prod %llu peercons %llu\n",
              i, int(t.st), t.fd, t.readable, t.writable, t.rd_hup, t.rd_eof, t.eof_sent, t.peer_eof, t.wr_shut, t.bind_pending,
              t.update_due, t.peer_blocked, (unsigned long long)t.rprod, (unsigned long long)t.rcons,
              (unsigned long long)t.last_update, (unsigned long long)t.rd, (unsigned long long)t.prod,
              (unsigned long long)t.peer_cons);
    }
  }

  // Byte counts of every slot that moved some since the last time.
  void on_progress_timer() {
    uint64_t v;
    ssize_t r = read(progress_timer_, &v, sizeof v);
    (void)r;
    progress_armed_ = false;
    progress_due_ = false;
    for (uint32_t i = 0; i < slots_.size(); i++)
      if (slots_[i].touched) {
        slots_[i].touched = false;
        flush_progress(i);
      }
  }

  void on_cm() {
    for (;;) {
      if (state_ == kDead) return;
      rdma_cm_event* ev = nullptr;
      int err = ch_.next(&ev);
      if (err == -EAGAIN || err == -EWOULDBLOCK) return;
      if (err) return die("RESOURCE", err, "rdma_get_cm_event");
      rdma_cm_event_type type = ev->event;
      int status = ev->status;
      uint8_t pd[64] = {};
      size_t pd_len = 0;
      if (ev->param.conn.private_data && ev->param.conn.private_data_len) {
        pd_len = std::min<size_t>(ev->param.conn.private_data_len, sizeof pd);
        memcpy(pd, ev->param.conn.private_data, pd_len);
      }
      EventChannel::ack(ev);
      std::string st = std::string("rdma_cm ") + rdma_event_str(type) + (status ? " (status " + std::to_string(status) + ")" : "");
      switch (type) {
        case RDMA_CM_EVENT_ADDR_RESOLVED:
          if (!client_ || state_ != kResolving) return die("PROTOCOL", -EPROTO, "unexpected " + st);
          if (setup()) return die("RESOURCE", -EIO, "setup");
          if (rdma_resolve_route(cm_.get(), int(copts.timeout_ms / 2)) != 0) return die("ROUTE_ERROR", -errno, "rdma_resolve_route");
          break;
        case RDMA_CM_EVENT_ROUTE_RESOLVED: {
          if (!client_ || state_ != kResolving) return die("PROTOCOL", -EPROTO, "unexpected " + st);
          uint8_t b[ConnParams::kBytes];
          local_.encode(b);
          rdma_conn_param cp = {};
          cp.private_data = b;
          cp.private_data_len = sizeof b;
          cp.responder_resources = 1;
          cp.initiator_depth = 1;
          cp.retry_count = 7;
          cp.rnr_retry_count = 7;
          if (rdma_connect(cm_.get(), &cp) != 0) return die("CONNECT_ERROR", -errno, "rdma_connect");
          state_ = kConnecting;
          break;
        }
        case RDMA_CM_EVENT_ESTABLISHED: {
          if (state_ != kConnecting) return die("PROTOCOL", -EPROTO, "unexpected " + st);
          if (client_) {
            ConnParams pp;
            int derr = ConnParams::decode(pd, pd_len, &pp);
            if (!derr && !(pp.flags & ConnParams::kFlagAccept)) derr = -EBADMSG;
            if (!derr && memcmp(pp.token, token_, kTokenBytes) != 0) derr = -EACCES;
            if (derr == -EPROTONOSUPPORT) return die("VERSION_MISMATCH", derr, "the gateway accepted with another rdma protocol version");
            if (derr) return die("PROTOCOL", derr, "the gateway's accept private data");
            peer = pp;
            if (setup_peer()) return die("RESOURCE", -EIO, "setup");
          }
          state_ = kEstablished;
          connected_ = true;
          last_rx_ = last_tx_ = now_ms();
          // Ticks at half the interval: a keepalive goes out between 1 and
          // 1.5 intervals after our last message, well inside the peer's 3.
          arm_timer(timer_, keepalive_ms_ ? std::max<uint32_t>(keepalive_ms_ / 2, 1) : 0);
          emit("established");
          for (uint32_t i = 0; i < slots_.size(); i++)
            if (slots_[i].fd >= 0) run_slot(i);
          flush();
          after();
          break;
        }
        case RDMA_CM_EVENT_DISCONNECTED:
          connected_ = false;
          rdma_disconnect(cm_.get());  // answer the peer's
          return die(closing_ ? "ok" : "ERR_SOCKGATE_RDMA_DISCONNECTED", closing_ ? 0 : -ECONNRESET, "the peer disconnected");
        case RDMA_CM_EVENT_DEVICE_REMOVAL:
          return die("ERR_SOCKGATE_RDMA_DEVICE_REMOVED", -ENODEV, st);
        case RDMA_CM_EVENT_ADDR_ERROR:
          return die("ADDR_ERROR", status < 0 ? status : -EHOSTUNREACH, st);
        case RDMA_CM_EVENT_ROUTE_ERROR:
          return die("ROUTE_ERROR", status < 0 ? status : -EHOSTUNREACH, st);
        case RDMA_CM_EVENT_UNREACHABLE:
          return die("UNREACHABLE", status < 0 ? status : -EHOSTUNREACH, st);
        case RDMA_CM_EVENT_REJECTED: {
          // A listener that refuses our version says which one it speaks.
          uint16_t v = decode_version_reject(pd, pd_len);
          if (v && v != local_.version)
            return die("VERSION_MISMATCH", -EPROTONOSUPPORT,
                       "the gateway speaks rdma protocol version " + std::to_string(v) + ", this side " + std::to_string(local_.version));
          return die("REJECTED", -ECONNREFUSED, st);
        }
        case RDMA_CM_EVENT_CONNECT_ERROR:
          return die(state_ == kEstablished ? "ERR_SOCKGATE_RDMA_DISCONNECTED" : "CONNECT_ERROR", status < 0 ? status : -ECONNRESET, st);
        case RDMA_CM_EVENT_TIMEWAIT_EXIT:
        default:
          break;
      }
    }
  }

  // ---- sending ----

  // A two-sided message; the last credit is kept for one that returns credits.
  int post_msg(Msg& m) {
    m.credits = to_return_;
    if (peer_credits_ == 0 || (peer_credits_ == 1 && m.credits == 0)) return -EAGAIN;
    if (sq_used_ + 1 > kSendWr) return -EAGAIN;
    uint8_t b[Msg::kMaxBytes];
    m.encode(b);
    ibv_sge sge = {reinterpret_cast<uintptr_t>(b), uint32_t(m.size()), 0};
    ibv_send_wr wr = {}, *bad = nullptr;
    bool sig = signal_next(1);
    wr.wr_id = kWrMsg | (sig ? unsignaled_ + 1 : 0);
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_INLINE | (sig ? IBV_SEND_SIGNALED : 0);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    int rc = ibv_post_send(qp_.get(), &wr, &bad);
    if (rc) {
      die("ERR_SOCKGATE_RDMA_QP_FATAL", -rc, "ibv_post_send (message)");
      return -rc;
    }
    sq_used_++;
    unsignaled_ = sig ? 0 : unsignaled_ + 1;
    peer_credits_--;
    to_return_ = 0;
    last_tx_ = now_ms();
    return 0;
  }

  // RDMA-write the staged bytes [prod, rd) at the peer's cursor: one
  // write-with-immediate naming the slot, after a plain write up to the
  // ring's end when the span wraps (rdma.h post_burst).
  int post_burst(uint32_t slot) {
    Slot& s = slots_[slot];
    if (s.prod == s.rd || s.bind_pending) return 0;
    if (peer_credits_ < 2 || sq_used_ + 2 > kSendWr) return -EAGAIN;
    const uint64_t size = peer_ring_size(), mask = size - 1;
    Burst b;
    b.prod = s.prod;
    b.n = s.rd - s.prod;
    b.ring_size = size;
    b.tail = stage(slot) + (s.prod & mask);
    b.head = stage(slot);
    b.lkey = stage_mr_.lkey();
    b.ring_addr = peer.addr + (uint64_t(slot) << peer.ring_log2);
    b.rkey = peer.rkey;
    b.slot = uint16_t(slot);
    bool blocked = s.rd - s.peer_cons == size && !s.rd_eof;
    b.flags = blocked ? kImmBlocked : 0;
    // Tests: every burst claims it wrapped (more bytes than the free space, or a wrap from offset 0).
    if (client_ && copts.hostile == 1) b.flags |= kImmWrap;
    // Tests: writes with a key the peer never issued (its responder refuses them: a QP error on both ends).
    if (client_ && copts.hostile == 4) b.rkey = ~b.rkey;
    b.max_inline = qp_.max_inline();
    b.wr_id_plain = kWrBurst;
    int k = post_burst_wrs(b);
    if (k < 0) {
      die("ERR_SOCKGATE_RDMA_QP_FATAL", k, "ibv_post_send (RDMA write)");
      return k;
    }
    peer_credits_--;
    s.to_peer += b.n;
    s.total_peer += b.n;
    s.prod = s.rd;
    s.touched = true;
    progress_due_ = true;
    last_tx_ = now_ms();
    return 0;
  }

  // Posts a burst; signaled or not (signal_next), as sq_used_ says.
  int post_burst_wrs(Burst& b) {
    const uint64_t off = b.prod & (b.ring_size - 1);
    const uint32_t k = b.n > b.ring_size - off ? 2 : 1;
    b.signaled = signal_next(k);
    b.wr_id = kWrBurst | (b.signaled ? unsignaled_ + k : 0);
    int rc = rdma::post_burst(qp_.get(), b);
    if (rc > 0) {
      sq_used_ += uint32_t(rc);
      unsignaled_ = b.signaled ? 0 : unsignaled_ + uint32_t(rc);
    }
    return rc;
  }

  // Whether the next send of `k` WRs is signaled: every kSignalEvery WRs.
  bool signal_next(uint32_t k) const { return unsignaled_ + k >= kSignalEvery; }

  // Queued messages first (in order), then owed cursor updates, then data.
  void flush() {
    while (!ctrl_.empty() && state_ == kEstablished) {
      Msg m = ctrl_.front();
      if (post_msg(m)) break;
      ctrl_.pop_front();
      if (m.type == Msg::kBind || m.type == Msg::kBound) {
        slots_[m.slot].bind_pending = false;
        post_burst(m.slot);  // data may have waited behind the BIND or BOUND
      }
    }
    if (state_ != kEstablished) return;
    if (!ctrl_.empty()) return;  // keep the order: an EOF never overtakes its slot's data, nor a CLOSE its EOF
    std::vector<uint32_t> due;
    due.swap(due_);
    for (size_t i = 0; i < due.size(); i++) {
      uint32_t slot = due[i];
      Slot& s = slots_[slot];
      if (!s.update_due) continue;
      if (s.st != Slot::kOpen) {
        s.update_due = false;
        continue;
      }
      Msg m;
      m.type = Msg::kConsumed;
      m.slot = uint16_t(slot);
      m.value = s.rcons;
      if (post_msg(m)) {
        due_.insert(due_.end(), due.begin() + long(i), due.end());
        break;
      }
      s.update_due = false;
      s.peer_blocked = false;
      s.last_update = s.rcons;
      maybe_done(slot);
    }
    if (state_ != kEstablished) return;
    for (uint32_t i = 0; i < slots_.size(); i++) {
      Slot& s = slots_[i];
      if (s.st != Slot::kOpen) continue;
      if (s.prod != s.rd && post_burst(i)) break;
      if (state_ != kEstablished) return;
      maybe_eof(i);
      if (state_ != kEstablished) return;
    }
    // Credits owed and nothing else carried them back.
    if (state_ == kEstablished && to_return_ * 2 >= o_.credits) {
      Msg m;
      m.type = Msg::kCredits;
      post_msg(m);
    }
  }

  // The fd ended and every byte before it is posted: EOF (once).
  void maybe_eof(uint32_t slot) {
    Slot& s = slots_[slot];
    if (s.st != Slot::kOpen || !s.rd_eof || s.eof_sent || s.prod != s.rd || s.bind_pending) return;
    Msg m;
    m.type = Msg::kEof;
    m.slot = uint16_t(slot);
    m.value = s.prod;
    s.eof_sent = true;
    // At once when nothing waits before it (flush() may already have run this round).
    bool posted = ctrl_.empty() && post_msg(m) == 0;
    if (!posted && state_ == kEstablished) ctrl_.push_back(m);
    emit("fdEof", slot);
    maybe_done(slot);
  }

  // Both directions finished: CLOSE; the slot is free once the peer's CLOSE came too.
  void maybe_done(uint32_t slot) {
    Slot& s = slots_[slot];
    if (s.st != Slot::kOpen || !s.eof_sent || !s.wr_shut || s.peer_cons != s.prod || s.fd < 0) return;
    // Our final cursor update goes first: the peer's CLOSE handler checks it.
    if (s.update_due || s.last_update != s.rcons) return;
    close_slot_fd(slot, false);
    send_close(slot);
    s.st = Slot::kClosing;
    s.reason = "ok";
  }

  void send_close(uint32_t slot) {
    Msg m;
    m.type = Msg::kClose;
    m.slot = uint16_t(slot);
    ctrl_.push_back(m);
  }

  void close_slot_fd(uint32_t slot, bool reset) {
    Slot& s = slots_[slot];
    if (s.fd < 0) return;
    p_->source_unwatch(s.fd);
    std::lock_guard<std::mutex> g(fd_mu_);
    close_fd(s.fd, reset);
    s.fd = -1;
    slot_fds_[slot] = -1;
  }

  // Abort: fd closed, CLOSE to the peer; the slot frees when the peer's CLOSE arrives.
  void abort_slot(uint32_t slot, bool reset, const char* reason, int err, const std::string& code) {
    Slot& s = slots_[slot];
    close_slot_fd(slot, reset);
    if (s.st == Slot::kOpen) {
      s.st = Slot::kClosing;
      s.reason = reason;
      s.err = err;
      s.code = code;
      // Anything still queued for the slot is moot.
      for (auto it = ctrl_.begin(); it != ctrl_.end();)
        it = it->slot == slot && it->type != Msg::kClose ? ctrl_.erase(it) : it + 1;
      s.bind_pending = false;
      send_close(slot);
    } else if (s.st == Slot::kFree) {
      finish_slot(slot, reset, reason, err, code);
    }
  }

  // The slot is free again; report how it ended.
  void finish_slot(uint32_t slot, bool reset, const char* reason, int err, const std::string& code) {
    Slot& s = slots_[slot];
    close_slot_fd(slot, reset);
    uint64_t fd = s.total_fd, peer_bytes = s.total_peer;
    flush_progress(slot);
    s = Slot();
    end_event(slot, reason, err, code, fd, peer_bytes);
  }

  void flush_progress(uint32_t slot) {
    Slot& s = slots_[slot];
    if (!s.to_fd && !s.to_peer) return;
    PumpEvent e(PumpEvent::kRdma);
    e.id = id_;
    e.name = "progress";
    e.slot = slot;
    e.a = s.to_fd;
    e.b = s.to_peer;
    s.to_fd = s.to_peer = 0;
    p_->source_emit(std::move(e));
  }

  void want_update(uint32_t slot) {
    Slot& s = slots_[slot];
    if (s.update_due) return;
    s.update_due = true;
    due_.push_back(slot);
  }

  // Moves bytes: our ring -> fd, fd -> staging; then bursts and messages follow in flush().
  void run_slot(uint32_t slot) {
    if (state_ != kEstablished) return;
    Slot& s = slots_[slot];
    if (s.st != Slot::kOpen || s.fd < 0) return;
    const uint64_t size = ring_size(), mask = size - 1;
    uint64_t moved = 0;
    while (s.writable && s.rcons < s.rprod && moved < kSlotBudget) {
      uint64_t off = s.rcons & mask, n = s.rprod - s.rcons;
      struct iovec iov[2];
      iov[0].iov_base = ring(slot) + off;
      iov[0].iov_len = size_t(std::min(n, size - off));
      iov[1].iov_base = ring(slot);
      iov[1].iov_len = size_t(n - iov[0].iov_len);
      ssize_t w = writev(s.fd, iov, iov[1].iov_len ? 2 : 1);
      if (w < 0) {
        if (errno == EAGAIN) { s.writable = false; break; }
        if (errno == EINTR) continue;
        int e = -errno;
        abort_slot(slot, true, "error", e, "");
        return;
      }
      s.rcons += uint64_t(w);
      s.to_fd += uint64_t(w);
      s.total_fd += uint64_t(w);
      moved += uint64_t(w);
      s.touched = true;
      progress_due_ = true;
    }
    if (s.rcons != s.last_update && ((s.rcons - s.last_update) * 10 > size || s.peer_blocked || (s.peer_eof && s.rcons == s.rprod)))
      want_update(slot);
    if (s.peer_eof && s.rcons == s.rprod && !s.wr_shut) {
      if (shutdown(s.fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        abort_slot(slot, true, "error", -errno, "");
        return;
      }
      s.wr_shut = true;
      emit("peerEof", slot);
    }
    if (moved >= kSlotBudget) again_.push_back(slot);
    // fd -> staging (mirrors the peer's ring: the same offsets).
    const uint64_t psize = peer_ring_size(), pmask = psize - 1;
    moved = 0;
    while (s.readable && !s.rd_eof && moved < kSlotBudget) {
      uint64_t space = psize - (s.rd - s.peer_cons);
      if (space == 0) break;
      uint64_t off = s.rd & pmask;
      struct iovec iov[2];
      iov[0].iov_base = stage(slot) + off;
      iov[0].iov_len = size_t(std::min(space, psize - off));
      iov[1].iov_base = stage(slot);
      iov[1].iov_len = size_t(space - iov[0].iov_len);
      ssize_t r = readv(s.fd, iov, iov[1].iov_len ? 2 : 1);
      if (r < 0) {
        if (errno == EAGAIN) { s.readable = false; break; }
        if (errno == EINTR) continue;
        abort_slot(slot, true, "error", -errno, "");
        return;
      }
      if (r == 0) {
        s.rd_eof = true;
        break;
      }
      s.rd += uint64_t(r);
      moved += uint64_t(r);
      // Less than asked for: the socket is drained; more data (or its FIN)
      // arriving from now on is a new edge (EPOLLET), so skip the read that
      // would only say EAGAIN. Not once epoll reported a hangup: the FIN may
      // already be queued behind these bytes, and no new edge would come.
      if (uint64_t(r) < space && !s.rd_hup) {
        s.readable = false;
        break;
      }
    }
    if (moved >= kSlotBudget) again_.push_back(slot);
    maybe_eof(slot);
    maybe_done(slot);
  }
  std::vector<uint32_t> again_;

  // End of a handler: more rounds for busy slots; the progress timer when bytes moved.
  void after() {
    for (int round = 0; round < 64 && !again_.empty() && state_ == kEstablished; round++) {
      std::vector<uint32_t> q;
      q.swap(again_);
      std::sort(q.begin(), q.end());
      q.erase(std::unique(q.begin(), q.end()), q.end());
      for (uint32_t i : q) run_slot(i);
      flush();
    }
    // Whatever is still busy waits for its fd, credits or the peer's cursor.
    again_.clear();
    if (state_ == kDead || !p_) return;
    // Byte counts go to JS later, in one batch per kProgressMs.
    if (progress_due_ && !progress_armed_ && arm_timer(progress_timer_, kProgressMs, false) == 0) progress_armed_ = true;
  }

  // ---- receiving ----

  void on_cq() {
    // One arm, one event: take it (a second read would only say EAGAIN).
    const char* failed = nullptr;
    int rc = cq_.drain(1, &failed, [this](const ibv_wc& wc) { return on_wc(wc); });
    if (failed) return die("ERR_SOCKGATE_RDMA_QP_FATAL", rc, failed);
    if (rc) return;  // on_wc ended the connection
    // Credits and space may have come back: let every open slot move.
    for (uint32_t i = 0; i < slots_.size() && state_ == kEstablished; i++)
      if (slots_[i].st == Slot::kOpen && slots_[i].fd >= 0) run_slot(i);
    flush();
  }

  // One work completion; non-zero once the connection has ended.
  int on_wc(const ibv_wc& wc) {
    if (state_ == kDead) return 1;
    if (wc.status != IBV_WC_SUCCESS) {
      if (wc.status == IBV_WC_WR_FLUSH_ERR && closing_) return 0;
      return die("ERR_SOCKGATE_RDMA_QP_FATAL", -EIO, std::string("work completion: ") + ibv_wc_status_str(wc.status)), 1;
    }
    uint64_t kind = wc.wr_id & kWrKind;
    uint32_t low = uint32_t(wc.wr_id & 0xFFFFFFFF);
    if (kind == kWrBurst || kind == kWrMsg) {
      sq_used_ -= std::min(sq_used_, low);
      return 0;
    }
    if (kind != kWrRecv || low >= o_.credits) return die("ERR_SOCKGATE_RDMA_PROTOCOL", -EPROTO, "bad wr_id"), 1;
    last_rx_ = now_ms();
    if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
      if (on_imm(ntohl(wc.imm_data), wc.byte_len)) return 1;
    } else if (wc.opcode == IBV_WC_RECV) {
      if (on_msg(recv_buf(low), wc.byte_len)) return 1;
    } else {
      return die("ERR_SOCKGATE_RDMA_PROTOCOL", -EPROTO, "unexpected receive opcode"), 1;
    }
    if (int err = post_recv(low)) return die("ERR_SOCKGATE_RDMA_QP_FATAL", err, "ibv_post_recv"), 1;
    to_return_++;
    return 0;
  }

  int protocol(const std::string& what) {
    die("ERR_SOCKGATE_RDMA_PROTOCOL", -EBADMSG, "the peer broke the protocol: " + what);
    return -EBADMSG;
  }

  // A burst's write-with-immediate completed: its bytes are in the ring.
  int on_imm(uint32_t imm, uint32_t byte_len) {
    uint32_t slot = imm >> 16, flags = imm & 0xFFFF;
    if (state_ != kEstablished) return protocol("data before the connection was established");
    if (slot >= slots_.size()) return protocol("immediate names slot " + std::to_string(slot));
    Slot& s = slots_[slot];
    if (s.st == Slot::kClosing) {
      // We closed it; the peer had not seen our CLOSE yet. Its cursors restart at 0.
      if (flags & ~kImmFlags) return protocol("unknown immediate flags");
      return 0;
    }
    if (s.peer_eof) return protocol("data after EOF on slot " + std::to_string(slot));
    uint64_t adv = 0;
    const char* why = "";
    if (burst_advance(s.rprod, s.rcons, ring_size(), flags, byte_len, &adv, &why))
      return protocol(std::string(why) + " on slot " + std::to_string(slot) + " (" + std::to_string(byte_len) + " bytes" +
                      (flags & kImmWrap ? ", wrapped" : "") + ")");
    s.st = Slot::kOpen;
    s.rprod += adv;
    if (flags & kImmBlocked) s.peer_blocked = true;
    if (s.peer_blocked && s.rcons == s.rprod) want_update(slot);
    run_slot(slot);
    return 0;
  }

  int on_msg(const uint8_t* buf, uint32_t len) {
    Msg m;
    if (Msg::decode(buf, len, &m)) return protocol("undecodable message");
    if (m.credits > peer.credits || peer_credits_ + m.credits > peer.credits) return protocol("too many credits returned");
    peer_credits_ += m.credits;
    if (m.type == Msg::kKeepalive || m.type == Msg::kCredits) return 0;
    if (m.slot >= slots_.size()) return protocol("message names slot " + std::to_string(m.slot));
    Slot& s = slots_[m.slot];
    switch (m.type) {
      case Msg::kConsumed:
        if (s.st == Slot::kClosing) return 0;
        if (s.st == Slot::kFree) return protocol("cursor update for a free slot");
        if (m.value < s.peer_cons || m.value > s.prod) return protocol("bad consumer cursor on slot " + std::to_string(m.slot));
        s.peer_cons = m.value;
        run_slot(m.slot);
        maybe_done(m.slot);
        return 0;
      case Msg::kEof:
        if (s.st == Slot::kClosing) return 0;
        if (s.peer_eof || m.value != s.rprod) return protocol("EOF cursor does not match on slot " + std::to_string(m.slot));
        s.st = Slot::kOpen;
        s.peer_eof = true;
        run_slot(m.slot);
        maybe_done(m.slot);
        return 0;
      case Msg::kClose:
        if (s.st == Slot::kClosing) {
          finish_slot(m.slot, false, s.reason, s.err, s.code);
        } else if (s.st == Slot::kOpen || s.fd >= 0) {
          bool graceful = s.eof_sent && s.wr_shut && s.peer_cons == s.prod;
          // Reply CLOSE: the slot is then free on both sides.
          Msg c;
          c.type = Msg::kClose;
          c.slot = m.slot;
          ctrl_.push_back(c);
          finish_slot(m.slot, !graceful, graceful ? "ok" : "reset", graceful ? 0 : -ECONNRESET, graceful ? "" : "ECONNRESET");
        } else {
          return protocol("CLOSE for a free slot");
        }
        return 0;
      case Msg::kBind:
        if (client_) return protocol("BIND sent to the client");
        if (s.st == Slot::kClosing) return 0;  // we refused it already
        if (s.bound || s.fd >= 0) return protocol("BIND for a busy slot " + std::to_string(m.slot));
        s.st = Slot::kOpen;
        s.bound = true;
        {
          PumpEvent e(PumpEvent::kRdma);
          e.id = id_;
          e.name = "bind";
          e.slot = m.slot;
          e.token.assign(reinterpret_cast<const char*>(m.token), kTokenBytes);
          p_->source_emit(std::move(e));
        }
        return 0;
      case Msg::kBound:
        if (!client_) return protocol("BOUND sent to the gateway");
        if (s.st == Slot::kClosing) return 0;  // we gave the slot up meanwhile
        if (!s.await_bound) return protocol("BOUND for slot " + std::to_string(m.slot) + ", which awaits none");
        s.await_bound = false;
        {
          PumpEvent e(PumpEvent::kRdma);
          e.id = id_;
          e.name = "bound";
          e.slot = m.slot;
          p_->source_emit(std::move(e));
        }
        return 0;
      default:
        return protocol("unexpected message type");
    }
  }

};

// ---- the listener ------------------------------------------------------------------

class Listener final : public PumpSource {
 public:
  explicit Listener(const ListenOpts& o) : o_(o) {}
  ~Listener() override { teardown(); }

  int open(uint16_t* port, std::string* why) {
    int err;
    if ((err = ch_.open())) return *why = "rdma_create_event_channel: " + err_str(err), err;
    if ((err = id_.create(ch_, nullptr))) return *why = "rdma_create_id: " + err_str(err), err;
    sockaddr_storage sa;
    if (parse_addr(o_.addr, o_.port, &sa)) return *why = "bad address " + o_.addr, -EINVAL;
    if (rdma_bind_addr(id_.get(), reinterpret_cast<sockaddr*>(&sa)) != 0) {
      err = -errno;
      return *why = "rdma_bind_addr " + o_.addr + ": " + err_str(err), err;
    }
    if (!id_.verbs())
      return *why = "no RDMA device behind " + o_.addr + " (rdma_bind_addr found no verbs device; e.g. rdma link add rxe0 type rxe netdev eth0)", -ENODEV;
    if (rdma_listen(id_.get(), o_.backlog) != 0) {
      err = -errno;
      return *why = "rdma_listen: " + err_str(err), err;
    }
    *port = ntohs(rdma_get_src_port(id_.get()));
    return 0;
  }

  int on_attach(Pump& p, uint32_t id) override {
    p_ = &p;
    lid_ = id;
    int err = p.source_watch(id, ch_.fd(), kKeyCm);
    if (err) return err;
    timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer_ < 0) return -errno;
    if ((err = arm_timer(timer_, 1000))) return err;
    return p.source_watch(id, timer_, kKeyTimer);
  }

  void on_ready(Pump& p, uint32_t, uint32_t key, uint32_t) override {
    if (key == kKeyTimer) {
      uint64_t v;
      ssize_t r = read(timer_, &v, sizeof v);
      (void)r;
      int64_t now = now_ms();
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (now - it->second.since > int64_t(kPendingTimeoutMs)) {
          rdma_reject(it->second.id, nullptr, 0);
          rdma_destroy_id(it->second.id);
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      return;
    }
    for (int i = 0; i < 64; i++) {
      rdma_cm_event* ev = nullptr;
      if (ch_.next(&ev)) return;
      rdma_cm_event_type type = ev->event;
      rdma_cm_id* cid = ev->id;
      if (type != RDMA_CM_EVENT_CONNECT_REQUEST) {
        // DEVICE_REMOVAL on the listening id: nothing to fail here (the
        // connections get their own); JS learns from "closed" on them.
        EventChannel::ack(ev);
        continue;
      }
      ConnParams pp;
      int derr = ConnParams::decode(ev->param.conn.private_data, ev->param.conn.private_data_len, &pp);
      std::string peer = addr_str(rdma_get_peer_addr(cid));
      EventChannel::ack(ev);
      if (derr == -EPROTONOSUPPORT) {
        // Another protocol version: say which one we speak (the client reports VERSION_MISMATCH).
        uint8_t rej[kRejectBytes];
        encode_version_reject(rej);
        rdma_reject(cid, rej, sizeof rej);
        rdma_destroy_id(cid);
        continue;
      }
      if (derr || pending_.size() >= 1024) {
        // Garbage or a flood: refuse before anything is allocated.
        rdma_reject(cid, nullptr, 0);
        rdma_destroy_id(cid);
        continue;
      }
      uint32_t conn = p.alloc_id();
      pending_[conn] = Pending{cid, pp, peer, now_ms()};
      PumpEvent e(PumpEvent::kRdma);
      e.id = lid_;
      e.name = "request";
      e.conn = conn;
      e.token.assign(reinterpret_cast<const char*>(pp.token), kTokenBytes);
      e.detail = peer;
      p.source_emit(std::move(e));
    }
  }

  void on_detach() override { teardown(); }

  void accept(Pump& p, uint32_t conn, std::shared_ptr<Conn> c) {
    auto it = pending_.find(conn);
    if (it == pending_.end()) {
      // Timed out or unknown: the connection reports failure at once.
      PumpEvent e(PumpEvent::kRdma);
      e.id = conn;
      e.name = "failed";
      e.code = "TIMEOUT";
      e.err = -ETIMEDOUT;
      e.detail = "no pending rdma connection request " + std::to_string(conn);
      p.source_emit(std::move(e));
      return;
    }
    c->pending_id = it->second.id;
    c->peer = it->second.params;
    c->peer_name = it->second.peer;
    pending_.erase(it);
    p.attach_source_now(c, conn);
  }

  void reject(uint32_t conn) {
    auto it = pending_.find(conn);
    if (it == pending_.end()) return;
    rdma_reject(it->second.id, nullptr, 0);
    rdma_destroy_id(it->second.id);
    pending_.erase(it);
  }

 private:
  struct Pending {
    rdma_cm_id* id;
    ConnParams params;
    std::string peer;
    int64_t since;
  };
  void teardown() {
    for (auto& kv : pending_) {
      rdma_reject(kv.second.id, nullptr, 0);
      rdma_destroy_id(kv.second.id);
    }
    pending_.clear();
    if (timer_ >= 0) {
      if (p_) p_->source_unwatch(timer_);
      close(timer_);
      timer_ = -1;
    }
    if (ch_.fd() >= 0 && p_) p_->source_unwatch(ch_.fd());
    id_.reset();
    ch_.reset();
  }
  ListenOpts o_;
  Pump* p_ = nullptr;
  uint32_t lid_ = 0;
  EventChannel ch_;
  CmId id_;
  int timer_ = -1;
  std::unordered_map<uint32_t, Pending> pending_;
};

void conn_async_fail(PumpSource* s, const char* code, const std::string& detail) {
  static_cast<Conn*>(s)->async_fail(code, detail);
}

}  // namespace

int check_region(const RegionOpts& o, std::string* why) {
  if (o.ring_log2 < kMinRingLog2 || o.ring_log2 > 26) return *why = "ringLog2 must be in [12, 26]", -EINVAL;
  if (o.slots < 1 || o.slots > kMaxSlots) return *why = "slots must be in [1, 4096]", -EINVAL;
  if (o.credits < 4 || o.credits > 1024) return *why = "credits must be in [4, 1024]", -EINVAL;
  if ((uint64_t(o.slots) << o.ring_log2) > kMaxPeerRegion)
    return *why = "slots x ring size must stay within " + std::to_string(kMaxPeerRegion >> 20) + " MiB", -EINVAL;
  return 0;
}

std::shared_ptr<PumpSource> make_client(const ConnectOpts& o) {
  auto c = std::make_shared<Conn>(true, o.region);
  c->copts = o;
  return c;
}

std::shared_ptr<PumpSource> make_server_conn(const RegionOpts& o) { return std::make_shared<Conn>(false, o); }


int make_listener(const ListenOpts& o, std::shared_ptr<PumpSource>* out, uint16_t* port, std::string* why) {
  auto l = std::make_shared<Listener>(o);
  int err = l->open(port, why);
  if (err) return err;
  *out = l;
  return 0;
}

void listener_accept(Pump& p, PumpSource* listener, uint32_t conn, std::shared_ptr<PumpSource> c) {
  static_cast<Listener*>(listener)->accept(p, conn, std::static_pointer_cast<Conn>(c));
}

void listener_reject(PumpSource* listener, uint32_t conn) { static_cast<Listener*>(listener)->reject(conn); }

void conn_link(PumpSource* conn, uint32_t slot, int fd, const uint8_t* token) {
  if (!conn) {
    close_fd(fd, true);
    return;
  }
  static_cast<Conn*>(conn)->link(slot, fd, token);
}

void conn_close_slot(PumpSource* conn, uint32_t slot, bool reset) {
  if (conn) static_cast<Conn*>(conn)->close_slot(slot, reset);
}

void conn_shutdown_slot(PumpSource* conn, uint32_t slot, bool rd, bool wr) {
  if (conn) static_cast<Conn*>(conn)->shutdown_slot(slot, rd, wr);
}

void conn_close(PumpSource* conn) {
  if (conn) static_cast<Conn*>(conn)->close_conn();
}

bool conn_set_sockopt(const std::shared_ptr<PumpSource>& conn, uint32_t slot, int level, int name, int value) {
  return conn && static_cast<Conn*>(conn.get())->set_sockopt(slot, level, name, value);
}

}  // namespace rdma
}  // namespace sg

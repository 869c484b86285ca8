// rdma connections, their lifecycle: rdma_cm events, verbs setup and teardown,
// the commands JS posts, and how a connection ends (rdma_conn_impl.h lists the
// other rooms). The entry points of rdma_conn.h are at the end.

#include "rdma_conn_impl.h"

#include <sys/epoll.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "rdma_async_monitor.h"
#include "rdma_sys.h"

namespace sg {
namespace rdma {

int Conn::on_attach(Pump& p, uint32_t id) {
  p_ = &p;
  id_ = id;
  // In the spin before sleeping from the start: a completion can come before ESTABLISHED.
  if (o_.poll_us > 0) p.source_poll(id, true);
  int err;
  if ((err = ch_.open())) return fail_early(fail::kResource, err, "rdma_create_event_channel");
  if ((err = p.source_watch(id, ch_.fd(), kKeyCm))) return fail_early(fail::kResource, err, "epoll_ctl");
  timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer_ < 0) return fail_early(fail::kResource, -errno, "timerfd_create");
  if ((err = p.source_watch(id, timer_, kKeyTimer))) return fail_early(fail::kResource, err, "epoll_ctl");
  progress_timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (progress_timer_ < 0) return fail_early(fail::kResource, -errno, "timerfd_create");
  if ((err = p.source_watch(id, progress_timer_, kKeyProgress))) return fail_early(fail::kResource, err, "epoll_ctl");
  if (client_) {
    memcpy(token_, copts.token, kTokenBytes);
    if ((err = arm_timer(timer_, copts.timeout_ms))) return fail_early(fail::kResource, err, "timerfd_settime");
    deadline_ = now_ms() + copts.timeout_ms;
    if ((err = cm_.create(ch_, nullptr))) return fail_early(fail::kResource, err, "rdma_create_id");
    sockaddr_storage sa;
    if (parse_addr(copts.addr, copts.port, &sa)) return fail_early(fail::kAddrError, -EINVAL, "address " + copts.addr);
    if (rdma_resolve_addr(cm_.get(), nullptr, reinterpret_cast<sockaddr*>(&sa), int(copts.timeout_ms / 2)) != 0)
      return fail_early(fail::kAddrError, -errno, "rdma_resolve_addr " + copts.addr);
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
    return fail_early(fail::kResource, e, "rdma_migrate_id");
  }
  cm_.adopt(cid);
  memcpy(token_, peer.token, kTokenBytes);
  if ((err = arm_timer(timer_, kPendingTimeoutMs))) return fail_early(fail::kResource, err, "timerfd_settime");
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
  // RESUME only when the client asked for it (an older client refuses unknown flags).
  resumable_ = o_.resume && (peer.flags & ConnParams::kFlagResume);
  // MOVE likewise, and only with RESUME (JS matched the request's resume token).
  move_ = resumable_ && (peer.flags & ConnParams::kFlagMove);
  mine.flags = ConnParams::kFlagAccept | (resumable_ ? ConnParams::kFlagResume : 0) | (move_ ? ConnParams::kFlagMove : 0);
  mine.encode(b);
  rdma_conn_param cp = {};
  cp.private_data = b;
  cp.private_data_len = sizeof b;
  cp.responder_resources = 1;
  cp.initiator_depth = 1;
  cp.rnr_retry_count = 7;
  if (rdma_accept(cm_.get(), &cp) != 0) return fail_early(fail::kConnectError, -errno, "rdma_accept");
  state_ = kConnecting;
  return 0;
}

void Conn::on_ready(Pump&, uint32_t, uint32_t key, uint32_t events) {
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

void Conn::on_detach() {
  teardown();
  p_ = nullptr;
}

void Conn::link(uint32_t slot, int fd, const uint8_t* token, const LinkResume* r) {
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
  // Only clients bind; a resume link needs a MOVE connection, the gateway's
  // only for a RESUME BIND (and a plain link never answers one), and the bytes
  // to send first must fit the peer's ring (they are staged there).
  const bool bad_resume = r ? (!move_ || state_ != kEstablished || r->bytes.size() > peer_ring_size() || (client_ ? !token : !s.resume_bind))
                            : (!client_ && s.resume_bind);
  if ((token && !client_) || bad_resume) {
    close_fd(fd, true);
    end_event(slot, "error", -EINVAL, "EINVAL", 0, 0);
    return;
  }
  // Gateway: a slot the client announced with BIND (not the first socket's, linked on accept) is answered with BOUND.
  const bool answer_bind = !client_ && s.bind != Slot::kUnbound;
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
  s.bind = Slot::kBound;
  s.readable = s.writable = true;
  if (r) {
    s.in_base = r->position;
    if (client_) {
      s.hold = true;  // nothing from the fd before BOUND says where the gateway resumes (on_bound)
      s.resume = *r;
    } else {
      // The client's stream resumes at its position: our unacked bytes from there go first.
      s.out_base = r->out_base;
      if (!r->bytes.empty()) memcpy(stage(slot), r->bytes.data(), r->bytes.size());
      s.rd = r->bytes.size();
    }
  }
  if (token || answer_bind) {
    Msg m;
    m.type = token ? Msg::kBind : Msg::kBound;
    m.slot = uint16_t(slot);
    if (r) {
      m.flags = Msg::kFlagResume;
      m.value = r->position;
    }
    if (token) {
      memcpy(m.token, token, kTokenBytes);
#ifdef SOCKGATE_TEST_HOOKS
      if (copts.hostile == 3) m.token[0] ^= 0xff;  // tests: a BIND the gateway cannot redeem
#endif
    }
    s.bind = Slot::kQueued;  // then kAwaitBound (BIND) or kBound (BOUND) once posted
    ctrl_.push_back(m);
  }
  if (state_ == kEstablished) {
    run_slot(slot);
    flush();
  }
  after();
}

void Conn::close_slot(uint32_t slot, bool reset) {
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

void Conn::shutdown_slot(uint32_t slot, bool rd, bool wr) {
  if (slot >= slots_.size() || slots_[slot].fd < 0) return;
  shutdown(slots_[slot].fd, rd && wr ? SHUT_RDWR : rd ? SHUT_RD : SHUT_WR);
  Slot& s = slots_[slot];
  s.readable = s.writable = true;
  if (rd) s.rd_hup = true;  // read on to the EOF the shutdown makes
  run_slot(slot);
  flush();
  after();
}

void Conn::close_conn() {
  if (state_ == kDead) return;
  closing_ = true;
  die("ok", 0, "closed");
}

void Conn::async_fail(const char* code, const std::string& detail) {
  if (state_ == kDead) return;
  die(code, -EIO, detail);
}

bool Conn::set_sockopt(uint32_t slot, int level, int name, int value) {
  std::lock_guard<std::mutex> g(fd_mu_);
  if (slot >= slot_fds_.size() || slot_fds_[slot] < 0) return false;
  return setsockopt(slot_fds_[slot], level, name, &value, sizeof value) == 0;
}

void Conn::emit(const char* name, uint32_t slot) {
  PumpEvent e(PumpEvent::kRdma);
  e.id = id_;
  e.name = name;
  e.slot = slot;
  p_->source_emit(std::move(e));
}

void Conn::end_event(uint32_t slot, const char* reason, int err, const std::string& code, uint64_t to_fd, uint64_t to_peer) {
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
int Conn::fail_early(const char* code, int err, const std::string& what) {
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
void Conn::die(const char* code, int err, const std::string& detail) {
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
      // Live failover: the fd, positions and unconsumed bytes go to JS; the slot ends without closing it.
      if (!ok && resumable_ && suspend_slot(i, code)) {
        finish_slot(i, false, "suspended", err ? err : -EIO, code);
        continue;
      }
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

void Conn::teardown() {
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

// Our side's verbs resources, the receive region and the receive WRs.
int Conn::setup() {
  ibv_context* ctx = cm_.verbs();
  if (!ctx) return fail_early(fail::kNoDevice, -ENODEV, "no verbs device behind the address");
#ifdef SOCKGATE_TEST_HOOKS
  if (client_ && copts.hostile == 2) local_.version = 1;  // tests: a client of protocol 1
#endif
  local_.slots = uint16_t(o_.slots);
  local_.ring_log2 = o_.ring_log2;
  local_.credits = uint16_t(o_.credits);
  local_.keepalive_ms = o_.keepalive_ms;
  if (client_ && o_.resume) local_.flags = ConnParams::kFlagResume | (o_.move ? ConnParams::kFlagMove : 0);  // the request asks; the accept answers
  memcpy(local_.token, token_, kTokenBytes);
  size_t bytes = local_.region_bytes() + size_t(o_.credits) * Msg::kMaxBytes;
  bytes = (bytes + 4095) & ~size_t(4095);
  int err;
  if ((err = mem_.open(bytes))) return fail_early(fail::kResource, err, "mmap receive region");
  if ((err = pd_.open(ctx))) return fail_early(fail::kResource, err, "ibv_alloc_pd");
  if ((err = cc_.open(ctx))) return fail_early(fail::kResource, err, "ibv_create_comp_channel");
  if ((err = cq_.open(ctx, cc_, int(kSendWr + o_.credits + 8)))) return fail_early(fail::kResource, err, "ibv_create_cq");
  QueuePair::Caps caps;
  caps.send_wr = kSendWr;
  caps.recv_wr = o_.credits;
  caps.inline_bytes = 64;
  if ((err = qp_.open(cm_, pd_, cq_, caps))) return fail_early(fail::kResource, err, "rdma_create_qp");
  if (qp_.max_inline() < Msg::kMaxBytes) return fail_early(fail::kResource, -ENOTSUP, "inline data (the device offers too little)");
  if ((err = mr_.open(pd_, mem_.data(), local_.region_bytes(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE)))
    return fail_early(fail::kResource, err, "ibv_reg_mr");
  if ((err = recv_mr_.open(pd_, recv_buf(0), size_t(o_.credits) * Msg::kMaxBytes, IBV_ACCESS_LOCAL_WRITE)))
    return fail_early(fail::kResource, err, "ibv_reg_mr (receive buffers)");
  local_.addr = reinterpret_cast<uintptr_t>(mem_.data());
  local_.rkey = mr_.rkey();
  for (uint32_t i = 0; i < o_.credits; i++)
    if ((err = post_recv(i))) return fail_early(fail::kResource, err, "ibv_post_recv");
  if ((err = p_->source_watch(id_, cc_.fd(), kKeyCq))) return fail_early(fail::kResource, err, "epoll_ctl");
  AsyncMonitor::get().add(ctx, qp_.get()->qp_num, cm_.get()->port_num, p_, id_);
  monitored_ = true;
  return 0;
}

// Staging for the peer's rings, once its parameters are known.
int Conn::setup_peer() {
  if (peer.region_bytes() > kMaxPeerRegion)
    return fail_early(fail::kResource, -E2BIG, "the peer's receive region is too large (" + std::to_string(peer.region_bytes()) + " bytes)");
  uint32_t n = std::min<uint32_t>(local_.slots, peer.slots);
  size_t bytes = size_t(n) << peer.ring_log2;
  int err;
  if ((err = stage_.open(bytes))) return fail_early(fail::kResource, err, "mmap staging");
  if ((err = stage_mr_.open(pd_, stage_.data(), bytes, IBV_ACCESS_LOCAL_WRITE))) return fail_early(fail::kResource, err, "ibv_reg_mr (staging)");
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

// Keepalive ticks from now on, and JS is told; the caller moves the slots' bytes.
void Conn::become_established() {
  state_ = kEstablished;
  connected_ = true;
  last_rx_ = last_tx_ = now_ms();
  // Ticks at half the interval: a keepalive goes out between 1 and
  // 1.5 intervals after our last message, well inside the peer's 3.
  arm_timer(timer_, keepalive_ms_ ? std::max<uint32_t>(keepalive_ms_ / 2, 1) : 0);
  emit("established");
}

void Conn::on_cm() {
  for (;;) {
    if (state_ == kDead) return;
    rdma_cm_event* ev = nullptr;
    int err = ch_.next(&ev);
    if (err == -EAGAIN || err == -EWOULDBLOCK) return;
    if (err) return die(fail::kResource, err, "rdma_get_cm_event");
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
        if (!client_ || state_ != kResolving) return die(fail::kProtocol, -EPROTO, "unexpected " + st);
        if (setup()) return die(fail::kResource, -EIO, "setup");
        if (rdma_resolve_route(cm_.get(), int(copts.timeout_ms / 2)) != 0) return die(fail::kRouteError, -errno, "rdma_resolve_route");
        break;
      case RDMA_CM_EVENT_ROUTE_RESOLVED: {
        if (!client_ || state_ != kResolving) return die(fail::kProtocol, -EPROTO, "unexpected " + st);
        uint8_t b[ConnParams::kBytes];
        local_.encode(b);
        rdma_conn_param cp = {};
        cp.private_data = b;
        cp.private_data_len = sizeof b;
        cp.responder_resources = 1;
        cp.initiator_depth = 1;
        cp.retry_count = 7;
        cp.rnr_retry_count = 7;
        if (rdma_connect(cm_.get(), &cp) != 0) return die(fail::kConnectError, -errno, "rdma_connect");
        state_ = kConnecting;
        break;
      }
      case RDMA_CM_EVENT_ESTABLISHED: {
        if (early_established_) {  // a receive completion said so first (on_wc)
          early_established_ = false;
          break;
        }
        if (state_ != kConnecting) return die(fail::kProtocol, -EPROTO, "unexpected " + st);
        if (client_) {
          ConnParams pp;
          int derr = ConnParams::decode(pd, pd_len, &pp);
          if (!derr && !(pp.flags & ConnParams::kFlagAccept)) derr = -EBADMSG;
          if (!derr && memcmp(pp.token, token_, kTokenBytes) != 0) derr = -EACCES;
          if (derr == -EPROTONOSUPPORT) return die(fail::kVersionMismatch, derr, "the gateway accepted with another rdma protocol version");
          if (derr) return die(fail::kProtocol, derr, "the gateway's accept private data");
          peer = pp;
          resumable_ = o_.resume && (pp.flags & ConnParams::kFlagResume);
          move_ = o_.resume && o_.move && (pp.flags & ConnParams::kFlagMove);
          // A gateway that does not take moved sockets accepted without MOVE: fail, the client resumes on tcp.
          if (o_.move && !move_) return die(fail::kVersionMismatch, -EPROTONOSUPPORT, "the gateway does not take moved sockets (no MOVE in its accept)");
          if (setup_peer()) return die(fail::kResource, -EIO, "setup");
        }
        become_established();
        for (uint32_t i = 0; i < slots_.size(); i++)
          if (slots_[i].fd >= 0) run_slot(i);
        flush();
        after();
        break;
      }
      case RDMA_CM_EVENT_DISCONNECTED:
        connected_ = false;
        rdma_disconnect(cm_.get());  // answer the peer's
        return die(closing_ ? "ok" : fail::kErrDisconnected, closing_ ? 0 : -ECONNRESET, "the peer disconnected");
      case RDMA_CM_EVENT_DEVICE_REMOVAL:
        return die(fail::kErrDeviceRemoved, -ENODEV, st);
      case RDMA_CM_EVENT_ADDR_ERROR:
        return die(fail::kAddrError, status < 0 ? status : -EHOSTUNREACH, st);
      case RDMA_CM_EVENT_ROUTE_ERROR:
        return die(fail::kRouteError, status < 0 ? status : -EHOSTUNREACH, st);
      case RDMA_CM_EVENT_UNREACHABLE:
        return die(fail::kUnreachable, status < 0 ? status : -EHOSTUNREACH, st);
      case RDMA_CM_EVENT_REJECTED: {
        // A listener that refuses our version says which one it speaks.
        uint16_t v = decode_version_reject(pd, pd_len);
        if (v && v != local_.version)
          return die(fail::kVersionMismatch, -EPROTONOSUPPORT,
                     "the gateway speaks rdma protocol version " + std::to_string(v) + ", this side " + std::to_string(local_.version));
        return die(fail::kRejected, -ECONNREFUSED, st);
      }
      case RDMA_CM_EVENT_CONNECT_ERROR:
        return die(state_ == kEstablished ? fail::kErrDisconnected : fail::kConnectError, status < 0 ? status : -ECONNRESET, st);
      case RDMA_CM_EVENT_TIMEWAIT_EXIT:
      default:
        break;
    }
  }
}

void conn_async_fail(PumpSource* s, const char* code, const std::string& detail) {
  static_cast<Conn*>(s)->async_fail(code, detail);
}

int check_region(const RegionOpts& o, std::string* why) {
  if (o.ring_log2 < kMinRingLog2 || o.ring_log2 > 26) return *why = "ringLog2 must be in [12, 26]", -EINVAL;
  if (o.slots < 1 || o.slots > kMaxSlots) return *why = "slots must be in [1, 4096]", -EINVAL;
  if (o.credits < 4 || o.credits > 1024) return *why = "credits must be in [4, 1024]", -EINVAL;
  if (o.poll_us > kMaxPollUs) return *why = "pollUs must be in [0, " + std::to_string(kMaxPollUs) + "]", -EINVAL;
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

void conn_link(PumpSource* conn, uint32_t slot, int fd, const uint8_t* token, const LinkResume* r) {
  if (!conn) {
    close_fd(fd, true);
    return;
  }
  static_cast<Conn*>(conn)->link(slot, fd, token, r);
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

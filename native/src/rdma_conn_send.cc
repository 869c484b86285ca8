// rdma connections, sending: RDMA-write bursts and two-sided messages under
// the peer's credits, the order they go out in, moving bytes between a slot's
// fd and its rings, and how a slot ends (CLOSE, slotEnd).

#include "rdma_conn_impl.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "rdma_sys.h"

namespace sg {
namespace rdma {

// A two-sided message; the last credit is kept for one that returns credits.
int Conn::post_msg(Msg& m) {
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
    die(fail::kErrQpFatal, -rc, "ibv_post_send (message)");
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
int Conn::post_burst(uint32_t slot) {
  Slot& s = slots_[slot];
  if (s.prod == s.rd || s.bind_pending()) return 0;
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
  bool blocked = s.rd - s.peer_cons == size && !s.fd_eof();
  b.flags = blocked ? kImmBlocked : 0;
#ifdef SOCKGATE_TEST_HOOKS
  // Tests: every burst claims it wrapped (more bytes than the free space, or a wrap from offset 0).
  if (client_ && copts.hostile == 1) b.flags |= kImmWrap;
  // Tests: writes with a key the peer never issued (its responder refuses them: a QP error on both ends).
  if (client_ && copts.hostile == 4) b.rkey = ~b.rkey;
  // Tests: the same once this slot has posted 1 MiB (a QP fatal in the middle of a transfer).
  if (client_ && copts.hostile == 5 && s.total_peer >= (1u << 20)) b.rkey = ~b.rkey;
#endif
  b.max_inline = qp_.max_inline();
  b.wr_id_plain = kWrBurst;
  int k = post_burst_wrs(b);
  if (k < 0) {
    die(fail::kErrQpFatal, k, "ibv_post_send (RDMA write)");
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
int Conn::post_burst_wrs(Burst& b) {
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

// Queued messages first (in order), then owed cursor updates, then data.
void Conn::flush() {
  while (!ctrl_.empty() && state_ == kEstablished) {
    Msg m = ctrl_.front();
    if (post_msg(m)) break;
    ctrl_.pop_front();
    if (m.type == Msg::kBind || m.type == Msg::kBound) {
      slots_[m.slot].bind = m.type == Msg::kBind ? Slot::kAwaitBound : Slot::kBound;
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
void Conn::maybe_eof(uint32_t slot) {
  Slot& s = slots_[slot];
  if (s.st != Slot::kOpen || s.out != Slot::kFdEof || s.prod != s.rd || s.bind_pending()) return;
  Msg m;
  m.type = Msg::kEof;
  m.slot = uint16_t(slot);
  m.value = s.prod;
  s.out = Slot::kEofSent;
  // At once when nothing waits before it (flush() may already have run this round).
  bool posted = ctrl_.empty() && post_msg(m) == 0;
  if (!posted && state_ == kEstablished) ctrl_.push_back(m);
  emit("fdEof", slot);
  maybe_done(slot);
}

// Both directions finished: CLOSE; the slot is free once the peer's CLOSE came too.
void Conn::maybe_done(uint32_t slot) {
  Slot& s = slots_[slot];
  if (s.st != Slot::kOpen || !s.eof_sent() || !s.wr_shut() || s.peer_cons != s.prod || s.fd < 0) return;
  // Our final cursor update goes first: the peer's CLOSE handler checks it.
  if (s.update_due || s.last_update != s.rcons) return;
  close_slot_fd(slot, false);
  send_close(slot);
  s.st = Slot::kClosing;
  s.reason = "ok";
}

void Conn::send_close(uint32_t slot) {
  Msg m;
  m.type = Msg::kClose;
  m.slot = uint16_t(slot);
  ctrl_.push_back(m);
}

void Conn::close_slot_fd(uint32_t slot, bool reset) {
  Slot& s = slots_[slot];
  if (s.fd < 0) return;
  p_->source_unwatch(s.fd);
  std::lock_guard<std::mutex> g(fd_mu_);
  close_fd(s.fd, reset);
  s.fd = -1;
  slot_fds_[slot] = -1;
}

// Abort: fd closed, CLOSE to the peer; the slot frees when the peer's CLOSE arrives.
void Conn::abort_slot(uint32_t slot, bool reset, const char* reason, int err, const std::string& code) {
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
    if (s.bind == Slot::kQueued) s.bind = Slot::kBound;  // its BIND or BOUND is dropped above
    send_close(slot);
  } else if (s.st == Slot::kFree) {
    finish_slot(slot, reset, reason, err, code);
  }
}

// The slot is free again; report how it ended.
void Conn::finish_slot(uint32_t slot, bool reset, const char* reason, int err, const std::string& code) {
  Slot& s = slots_[slot];
  close_slot_fd(slot, reset);
  uint64_t fd = s.total_fd, peer_bytes = s.total_peer;
  flush_progress(slot);
  s = Slot();
  end_event(slot, reason, err, code, fd, peer_bytes);
}

// Live failover (native/RDMA.md "Live failover"): the connection failed under
// an open, bound slot. Its fd leaves the epoll set unclosed and goes to JS with
// the positions both ends can agree on and our bytes the peer has not
// acknowledged: the staging ring still holds [peer_cons, rd), since a read
// never overwrites what the peer's last CONSUMED does not cover. Bytes in our
// receive ring not yet written to the fd are dropped: the peer sends them
// again from our position (rcons). False: not resumable; the caller closes.
bool Conn::suspend_slot(uint32_t slot, const char* code) {
  Slot& s = slots_[slot];
  if (s.st != Slot::kOpen || s.fd < 0 || s.bind != Slot::kBound || s.hold || !p_) return false;
  const uint64_t psize = peer_ring_size(), pmask = psize - 1, n = s.rd - s.peer_cons;
  if (n > psize) return false;  // cannot happen (reads are bounded by the peer's free space)
  PumpEvent e(PumpEvent::kRdma);
  e.id = id_;
  e.name = "suspended";
  e.slot = slot;
  e.code = code;
  e.fd = s.fd;
  // Stream positions: a slot that resumes a moved socket starts at its bases.
  e.a = s.in_base + s.rcons;
  e.b = s.out_base + s.peer_cons;
  e.c = s.out_base + s.prod;
  e.d = s.out_base + s.rd;
  e.flags = uint16_t((s.fd_eof() ? 1 : 0) | (s.peer_eof() ? 2 : 0) | (s.wr_shut() ? 4 : 0));
  e.token.resize(size_t(n));
  uint64_t off = s.peer_cons & pmask, first = std::min(n, psize - off);
  if (n) {
    memcpy(&e.token[0], stage(slot) + off, size_t(first));
    if (n > first) memcpy(&e.token[size_t(first)], stage(slot), size_t(n - first));
  }
  p_->source_unwatch(s.fd);
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    s.fd = -1;
    slot_fds_[slot] = -1;
  }
  p_->source_emit(std::move(e));
  return true;
}

void Conn::flush_progress(uint32_t slot) {
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

void Conn::want_update(uint32_t slot) {
  Slot& s = slots_[slot];
  if (s.update_due) return;
  s.update_due = true;
  due_.push_back(slot);
}

// Moves bytes: our ring -> fd, fd -> staging; then bursts and messages follow in flush().
void Conn::run_slot(uint32_t slot) {
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
  if (s.rcons != s.last_update && ((s.rcons - s.last_update) * 10 > size || s.peer_blocked || (s.peer_eof() && s.rcons == s.rprod)))
    want_update(slot);
  if (s.in == Slot::kPeerEof && s.rcons == s.rprod) {
    if (shutdown(s.fd, SHUT_WR) < 0 && errno != ENOTCONN) {
      abort_slot(slot, true, "error", -errno, "");
      return;
    }
    s.in = Slot::kWrShut;
    emit("peerEof", slot);
  }
  if (moved >= kSlotBudget) again_.push_back(slot);
  // fd -> staging (mirrors the peer's ring: the same offsets).
  const uint64_t psize = peer_ring_size(), pmask = psize - 1;
  moved = 0;
  while (s.readable && !s.fd_eof() && !s.hold && moved < kSlotBudget) {
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
      s.out = Slot::kFdEof;
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

// End of a handler: more rounds for busy slots; the progress timer when bytes moved.
void Conn::after() {
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

}  // namespace rdma
}  // namespace sg

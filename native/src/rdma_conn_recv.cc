// rdma connections, receiving: work completions, and the validation of every
// immediate and message the peer sends (a peer that breaks the protocol ends
// only its own connection: ERR_SOCKGATE_RDMA_PROTOCOL).

#include "rdma_conn_impl.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "rdma_sys.h"

namespace sg {
namespace rdma {

int Conn::post_recv(uint32_t i) {
  ibv_sge sge = {reinterpret_cast<uintptr_t>(recv_buf(i)), uint32_t(Msg::kMaxBytes), recv_mr_.lkey()};
  ibv_recv_wr wr = {}, *bad = nullptr;
  wr.wr_id = kWrRecv | i;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  int rc = ibv_post_recv(qp_.get(), &wr, &bad);
  return rc ? -rc : 0;
}

void Conn::on_cq() {
  const char* failed = nullptr;
  if (o_.poll_us > 0) {
    // Polling: take the event and the completions, but leave the CQ unarmed;
    // the pump's spin polls it and before_sleep() arms it (native/RDMA.md "Polling").
    int n = cq_.take_events(1);
    if (n < 0) return die(fail::kErrQpFatal, n, "ibv_get_cq_event");
    cq_unarmed_ = true;
    bool any = false;
    if (poll_cq(&any)) return;
    return after_completions();
  }
  // One arm, one event: take it (a second read would only say EAGAIN).
  int rc = cq_.drain(1, &failed, [this](const ibv_wc& wc) { return on_wc(wc); });
  if (failed) return die(fail::kErrQpFatal, rc, failed);
  if (rc) return;  // on_wc ended the connection
  after_completions();
}

void Conn::after_completions() {
  // Credits and space may have come back: let every open slot move.
  for (uint32_t i = 0; i < slots_.size() && state_ == kEstablished; i++)
    if (slots_[i].st == Slot::kOpen && slots_[i].fd >= 0) run_slot(i);
  flush();
}

// Poll the CQ until empty (no arming); non-zero once the connection ended.
int Conn::poll_cq(bool* any) {
  ibv_wc wc[32];
  for (;;) {
    int got = cq_.poll(wc, 32);
    if (got < 0) return die(fail::kErrQpFatal, -EIO, "ibv_poll_cq"), -EIO;
    if (got == 0) return 0;
    *any = true;
    for (int i = 0; i < got; i++)
      if (int rc = on_wc(wc[i])) return rc;
  }
}

// The pump's spin: completions without an event (the CQ stays unarmed).
bool Conn::poll(Pump&) {
  if (state_ != kEstablished || !cq_.get()) return false;
  bool any = false;
  if (poll_cq(&any)) return true;  // ended: the loop looks again
  if (!any) return false;
  cq_unarmed_ = true;
  after_completions();
  after();
  return true;
}

// About to sleep: arm, then poll once more (a completion between the last
// poll and the arm raises no event). true = work found: no sleep.
bool Conn::before_sleep(Pump&) {
  if (!cq_unarmed_ || state_ == kDead || !cq_.get()) return false;
  cq_unarmed_ = false;
  if (int err = cq_.arm()) return die(fail::kErrQpFatal, err, "ibv_req_notify_cq"), true;
  bool any = false;
  if (poll_cq(&any)) return true;
  if (!any) return false;
  after_completions();
  after();
  return true;
}

// One work completion; non-zero once the connection has ended.
int Conn::on_wc(const ibv_wc& wc) {
  if (state_ == kDead) return 1;
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status == IBV_WC_WR_FLUSH_ERR && closing_) return 0;
    return die(fail::kErrQpFatal, -EIO, std::string("work completion: ") + ibv_wc_status_str(wc.status)), 1;
  }
  uint64_t kind = wc.wr_id & kWrKind;
  uint32_t low = uint32_t(wc.wr_id & 0xFFFFFFFF);
  if (kind == kWrBurst || kind == kWrMsg) {
    sq_used_ -= std::min(sq_used_, low);
    return 0;
  }
  if (kind != kWrRecv || low >= o_.credits) return die(fail::kErrProtocol, -EPROTO, "bad wr_id"), 1;
  // The gateway's first receive can overtake its ESTABLISHED event (the
  // client sends once it has its own; the accepted QP is ready): that is
  // establishment, and the late cm event is then ignored.
  if (state_ == kConnecting && !client_) {
    early_established_ = true;
    become_established();
  }
  last_rx_ = now_ms();
  if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
    if (on_imm(ntohl(wc.imm_data), wc.byte_len)) return 1;
  } else if (wc.opcode == IBV_WC_RECV) {
    if (on_msg(recv_buf(low), wc.byte_len)) return 1;
  } else {
    return die(fail::kErrProtocol, -EPROTO, "unexpected receive opcode"), 1;
  }
  if (int err = post_recv(low)) return die(fail::kErrQpFatal, err, "ibv_post_recv"), 1;
  to_return_++;
  return 0;
}

int Conn::protocol(const std::string& what) {
  die(fail::kErrProtocol, -EBADMSG, "the peer broke the protocol: " + what);
  return -EBADMSG;
}

// A burst's write-with-immediate completed: its bytes are in the ring.
int Conn::on_imm(uint32_t imm, uint32_t byte_len) {
  uint32_t slot = imm >> 16, flags = imm & 0xFFFF;
  if (state_ != kEstablished) return protocol("data before the connection was established");
  if (slot >= slots_.size()) return protocol("immediate names slot " + std::to_string(slot));
  Slot& s = slots_[slot];
  if (s.st == Slot::kClosing) {
    // We closed it; the peer had not seen our CLOSE yet. Its cursors restart at 0.
    if (flags & ~kImmFlags) return protocol("unknown immediate flags");
    return 0;
  }
  if (s.peer_eof()) return protocol("data after EOF on slot " + std::to_string(slot));
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

int Conn::on_msg(const uint8_t* buf, uint32_t len) {
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
      if (s.peer_eof() || m.value != s.rprod) return protocol("EOF cursor does not match on slot " + std::to_string(m.slot));
      s.st = Slot::kOpen;
      s.in = Slot::kPeerEof;
      run_slot(m.slot);
      maybe_done(m.slot);
      return 0;
    case Msg::kClose:
      if (s.st == Slot::kClosing) {
        finish_slot(m.slot, false, s.reason, s.err, s.code);
      } else if (s.st == Slot::kOpen || s.fd >= 0) {
        bool graceful = s.eof_sent() && s.wr_shut() && s.peer_cons == s.prod;
        // Reply CLOSE: the slot is then free on both sides.
        Msg c;
        c.type = Msg::kClose;
        c.slot = m.slot;
        ctrl_.push_back(c);
        finish_slot(m.slot, !graceful, graceful ? "ok" : "reset", graceful ? 0 : -ECONNRESET, graceful ? "" : "ECONNRESET");
      } else if (!client_) {
        // The client gives back a slot pre-issued to it that nothing was linked
        // to (native/RDMA.md "Pre-issued slots"): answer CLOSE (its slot is
        // closing), tell the gateway's JS so its book frees the number.
        Msg c;
        c.type = Msg::kClose;
        c.slot = m.slot;
        ctrl_.push_back(c);
        end_event(m.slot, "aborted", 0, "", 0, 0);
      } else {
        return protocol("CLOSE for a free slot");
      }
      return 0;
    case Msg::kBind:
      if (client_) return protocol("BIND sent to the client");
      if (m.flags && !move_) return protocol("a RESUME BIND on a connection without MOVE");
      if (s.st == Slot::kClosing) return 0;  // we refused it already
      if (s.bind != Slot::kUnbound || s.fd >= 0) return protocol("BIND for a busy slot " + std::to_string(m.slot));
      s.st = Slot::kOpen;
      s.bind = Slot::kAnnounced;
      s.resume_bind = m.flags != 0;
      {
        PumpEvent e(PumpEvent::kRdma);
        e.id = id_;
        e.name = "bind";
        e.slot = m.slot;
        e.token.assign(reinterpret_cast<const char*>(m.token), kTokenBytes);
        // A moved socket: its resume token and the client's position.
        e.flags = s.resume_bind ? 1 : 0;
        e.a = m.value;
        p_->source_emit(std::move(e));
      }
      return 0;
    case Msg::kBound:
      if (!client_) return protocol("BOUND sent to the gateway");
      if (s.st == Slot::kClosing) return 0;  // we gave the slot up meanwhile
      if (s.bind != Slot::kAwaitBound) return protocol("BOUND for slot " + std::to_string(m.slot) + ", which awaits none");
      return on_bound(m.slot, m);
    default:
      return protocol("unexpected message type");
  }
}

// The gateway's answer to our BIND. For a moved socket (hold) its position
// says which of our unacked bytes it lacks: anything outside [acked, sent]
// would lose or double bytes, and ends the slot (the socket then resumes on
// tcp, or ends) with nothing read from its fd.
int Conn::on_bound(uint32_t slot, const Msg& m) {
  Slot& s = slots_[slot];
  if ((m.flags != 0) != s.hold) return protocol("BOUND of the wrong form for slot " + std::to_string(slot));
  if (s.hold) {
    const LinkResume& r = s.resume;
    const uint64_t p = m.value;
    if (p < r.acked || p > r.sent || p - r.acked > r.bytes.size() || r.bytes.size() - (p - r.acked) > peer_ring_size()) {
      abort_slot(slot, false, "error", -ERANGE, "ERANGE");
      flush();
      return 0;
    }
    const size_t skip = size_t(p - r.acked), n = r.bytes.size() - skip;
    if (n) memcpy(stage(slot), r.bytes.data() + skip, n);
    s.out_base = p;
    s.rd = n;
    s.hold = false;
    s.resume = LinkResume();
  }
  s.bind = Slot::kBound;
  PumpEvent e(PumpEvent::kRdma);
  e.id = id_;
  e.name = "bound";
  e.slot = slot;
  e.a = s.out_base;
  p_->source_emit(std::move(e));
  run_slot(slot);
  return 0;
}

}  // namespace rdma
}  // namespace sg

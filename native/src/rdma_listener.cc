// The gateway's rdma_cm listener: CONNECT_REQUESTs become "request" events;
// JS accepts (a Conn takes the request's id) or rejects; unanswered requests
// expire after kPendingTimeoutMs.

#include "rdma_conn_impl.h"

#include <cerrno>

#include "rdma_sys.h"

namespace sg {
namespace rdma {

int Listener::open(uint16_t* port, std::string* why) {
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

int Listener::on_attach(Pump& p, uint32_t id) {
  p_ = &p;
  lid_ = id;
  int err = p.source_watch(id, ch_.fd(), kKeyCm);
  if (err) return err;
  timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer_ < 0) return -errno;
  if ((err = arm_timer(timer_, 1000))) return err;
  return p.source_watch(id, timer_, kKeyTimer);
}

void Listener::on_ready(Pump& p, uint32_t, uint32_t key, uint32_t) {
  if (key == kKeyTimer) return expire_pending();
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
    e.flags = pp.flags;  // MOVE: the token is a resume token (JS matches it to a suspended socket)
    e.detail = peer;
    p.source_emit(std::move(e));
  }
}

// Requests JS left unanswered for kPendingTimeoutMs are refused.
void Listener::expire_pending() {
  drain_timer(timer_);
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
}

void Listener::accept(Pump& p, uint32_t conn, std::shared_ptr<Conn> c) {
  auto it = pending_.find(conn);
  if (it == pending_.end()) {
    // Timed out or unknown: the connection reports failure at once.
    PumpEvent e(PumpEvent::kRdma);
    e.id = conn;
    e.name = "failed";
    e.code = fail::kTimeout;
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

void Listener::reject(uint32_t conn) {
  auto it = pending_.find(conn);
  if (it == pending_.end()) return;
  rdma_reject(it->second.id, nullptr, 0);
  rdma_destroy_id(it->second.id);
  pending_.erase(it);
}

void Listener::teardown() {
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

}  // namespace rdma
}  // namespace sg

#include "rdma_loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <memory>

#include "pump.h"
#include "rdma.h"

namespace sg {
namespace rdma {

namespace {

// wr_id: kind in the top byte, a count or index below.
constexpr uint64_t kWrRecv = 1ull << 56;
constexpr uint64_t kWrChunk = 2ull << 56;  // low bits: WRs in the burst (freed by its signaled tail)
constexpr uint64_t kWrMsg = 3ull << 56;
constexpr uint64_t kWrKind = 0xFFull << 56;
constexpr uint32_t kSendWr = 64;

int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// One end of the connection. Members in creation order; destroyed in reverse
// (source MR, source memory, ring MR, QP, CQ, channel, PD, id, ring memory).
struct Endpoint {
  const char* name = "";
  Mapping mem;  // [slots rings][recv buffers]
  CmId id;
  ProtectionDomain pd;
  CompletionChannel cc;
  CompletionQueue cq;
  QueuePair qp;
  MemoryRegion mr;       // rings: remote write
  MemoryRegion recv_mr;  // receive buffers: local only
  Mapping src;  // client: the bytes to send (an outbound ring in the transport)
  MemoryRegion src_mr;

  ConnParams local, peer;
  bool ready = false;         // resources set up
  bool established = false;
  bool disconnected = false;
  uint32_t sq_used = 0;       // send WRs not yet known complete
  uint32_t peer_credits = 0;  // receive WRs the peer has posted for us
  uint32_t to_return = 0;     // our receive WRs re-posted but not yet reported
  // Sender state (client, slot 0 of the peer).
  uint64_t prod = 0;          // bytes written into the peer's ring
  uint64_t peer_cons = 0;     // the peer's consumer cursor, as it reported it
  bool eof_sent = false;
  // Receiver state (server, slot 0 of our region).
  uint64_t rprod = 0, rcons = 0, last_update = 0;
  bool eof_seen = false;

  uint8_t* ring(uint32_t slot) { return mem.data() + (size_t(slot) << local.ring_log2); }
  uint8_t* recv_buf(uint32_t i) { return mem.data() + local.region_bytes() + size_t(i) * Msg::kBytes; }
};

struct Loop {
  const LoopbackOptions& o;
  LoopbackResult* r;
  int ep = -1;  // run() only; on a pump, watch_fn puts fds in the pump's epoll set
  std::function<int(int fd, uint64_t key)> watch_fn;
  EventChannel ch;
  CmId listener;
  Endpoint srv, cli;
  uint8_t token[kTokenBytes];
  uint32_t ring_size;

  Loop(const LoopbackOptions& opts, LoopbackResult* res) : o(opts), r(res) {}
  ~Loop() {
    if (ep >= 0) close(ep);
  }

  int fail(int err, const std::string& what) {
    if (!r->err) {
      r->err = err ? err : -EIO;
      r->error = what + ": " + err_str(r->err);
    }
    return r->err;
  }

  int watch(int fd, uint64_t tag) {
    if (watch_fn) return watch_fn(fd, tag);
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
  }

  int post_recv(Endpoint& e, uint32_t i) {
    ibv_sge sge = {reinterpret_cast<uintptr_t>(e.recv_buf(i)), Msg::kBytes, e.recv_mr.lkey()};
    ibv_recv_wr wr = {}, *bad = nullptr;
    wr.wr_id = kWrRecv | i;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    int rc = ibv_post_recv(e.qp.get(), &wr, &bad);
    return rc ? -rc : 0;
  }

  // PD, completion channel, CQ, QP, MR over the ring memory, receive WRs.
  int setup(Endpoint& e, uint64_t tag) {
    Trace* t = &r->trace;
    ibv_context* ctx = e.id.verbs();
    e.local.slots = 1;
    e.local.ring_log2 = e.name[0] == 's' ? o.ring_log2 : kMinRingLog2;
    e.local.credits = uint16_t(o.credits);
    memcpy(e.local.token, token, kTokenBytes);
    size_t bytes = e.local.region_bytes() + size_t(o.credits) * Msg::kBytes;
    bytes = (bytes + 4095) & ~size_t(4095);
    int err;
    if ((err = e.mem.open(bytes, t))) return fail(err, "mmap ring memory");
    if ((err = e.pd.open(ctx, t))) return fail(err, "ibv_alloc_pd");
    if ((err = e.cc.open(ctx, t))) return fail(err, "ibv_create_comp_channel");
    if ((err = e.cq.open(ctx, e.cc, int(kSendWr + o.credits), t))) return fail(err, "ibv_create_cq");
    QueuePair::Caps caps;
    caps.send_wr = kSendWr;
    caps.recv_wr = o.credits;
    caps.inline_bytes = 64;
    if ((err = e.qp.open(e.id, e.pd, e.cq, caps, t))) return fail(err, "rdma_create_qp");
    if (e.qp.max_inline() < Msg::kBytes) return fail(-ENOTSUP, "inline data (the device offers too little)");
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    if ((err = e.mr.open(e.pd, e.mem.data(), e.local.region_bytes(), access, t))) return fail(err, "ibv_reg_mr");
    if ((err = e.recv_mr.open(e.pd, e.recv_buf(0), size_t(o.credits) * Msg::kBytes, IBV_ACCESS_LOCAL_WRITE, t)))
      return fail(err, "ibv_reg_mr (receive buffers)");
    if (&e == &cli) {
      // The client's source bytes (an outbound ring in the transport).
      size_t len = (o.data.size() + 4095) & ~size_t(4095);
      if ((err = e.src.open(len, t))) return fail(err, "mmap source");
      memcpy(e.src.data(), o.data.data(), o.data.size());
      if ((err = e.src_mr.open(e.pd, e.src.data(), e.src.size(), IBV_ACCESS_LOCAL_WRITE, t)))
        return fail(err, "ibv_reg_mr (source)");
    }
    e.local.addr = reinterpret_cast<uintptr_t>(e.mem.data());
    e.local.rkey = e.mr.rkey();
    for (uint32_t i = 0; i < o.credits; i++)
      if ((err = post_recv(e, i))) return fail(err, "ibv_post_recv");
    if ((err = watch(e.cc.fd(), tag))) return fail(err, "epoll_ctl");
    e.ready = true;
    return 0;
  }

  int post_msg(Endpoint& e, const Msg& m) {
    // The last credit is kept for a message that returns credits (no deadlock
    // when both sides wait for credits).
    if (e.peer_credits == 0 || (e.peer_credits == 1 && m.credits == 0)) return -EAGAIN;
    if (e.sq_used + 1 > kSendWr) return -EAGAIN;
    uint8_t b[Msg::kMaxBytes];
    m.encode(b);
    ibv_sge sge = {reinterpret_cast<uintptr_t>(b), Msg::kBytes, 0};
    ibv_send_wr wr = {}, *bad = nullptr;
    wr.wr_id = kWrMsg | 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_INLINE | IBV_SEND_SIGNALED;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    int rc = ibv_post_send(e.qp.get(), &wr, &bad);
    if (rc) return -rc;
    e.sq_used++;
    e.peer_credits--;
    return 0;
  }

  // The client's sender: RDMA-write what fits at the peer's producer cursor,
  // the last write with an immediate that names the slot (rdma.h post_burst).
  int pump_send(Endpoint& e) {
    if (&e != &cli || !e.established) return 0;
    const uint64_t total = o.data.size();
    const uint64_t size = uint64_t(1) << e.peer.ring_log2;
    const uint64_t mask = size - 1;
    while (e.prod < total) {
      uint64_t space = size - (e.prod - e.peer_cons);
      if (space == 0) return 0;  // the last burst said "blocked"
      if (e.peer_credits < 2 || e.sq_used + 2 > kSendWr) return 0;
      uint64_t n = total - e.prod;
      if (n > o.chunk) n = o.chunk;
      if (n > space) n = space;
      uint64_t off = e.prod & mask;
      uint64_t first = n < size - off ? n : size - off;
      uint64_t next = e.prod + n;
      Burst b;
      b.prod = e.prod;
      b.n = n;
      b.ring_size = size;
      b.tail = e.src.data() + e.prod;
      b.head = e.src.data() + e.prod + first;
      b.lkey = e.src_mr.lkey();
      b.ring_addr = e.peer.addr;  // slot 0's ring
      b.rkey = e.peer.rkey;
      bool blocked = next - e.peer_cons == size && next < total;
      b.flags = blocked ? kImmBlocked : 0;
#ifdef SOCKGATE_TEST_HOOKS
      if (o.hostile && e.peer_cons > 0) {  // the receiver has seen valid bursts first
        if (o.hostile == 1) b.n = first = 0;      // an empty burst
        if (o.hostile == 2) b.flags |= 0x8000;    // an unknown flag
        if (o.hostile == 3) b.slot = 7;
      }
#endif
      b.max_inline = e.qp.max_inline();
      b.wr_id_plain = kWrChunk;
      int k = b.n > first ? 2 : 1;
      b.wr_id = kWrChunk | uint64_t(k);
      int rc = post_burst(e.qp.get(), b);
      if (rc < 0) return fail(rc, "ibv_post_send (RDMA write)");
      e.sq_used += uint32_t(rc);
      e.peer_credits--;
      e.prod = next;
      r->writes += uint64_t(rc);
      if (rc == 2) r->wraps++;
      r->imms++;
      if (blocked) r->blocked++;
    }
    if (!e.eof_sent) {  // after the last cursor write (RC keeps the order)
      Msg m;
      m.type = Msg::kEof;
      m.value = e.prod;
      m.credits = e.to_return;
      int err = post_msg(e, m);
      if (err == -EAGAIN) return 0;
      if (err) return fail(err, "ibv_post_send (EOF)");
      e.to_return = 0;
      e.eof_sent = true;
    }
    return 0;
  }

  // The receiver: a burst's write-with-immediate arrived for a slot.
  int on_imm(Endpoint& e, uint32_t imm, uint32_t byte_len) {
    uint32_t slot = imm >> 16, flags = imm & 0xFFFF;
    if (slot >= e.local.slots || (flags & ~kImmFlags)) return fail(-EBADMSG, "peer sent a bad immediate");
    const uint64_t size = uint64_t(1) << e.local.ring_log2;
    uint64_t adv = 0;
    const char* why = "";
    if (e.eof_seen) return fail(-EBADMSG, "peer wrote a burst after EOF");
    if (burst_advance(e.rprod, e.rcons, size, flags, byte_len, &adv, &why)) return fail(-EBADMSG, std::string("peer wrote a bad burst: ") + why);
    e.rprod += adv;
    const uint64_t mask = size - 1;
    while (e.rcons < e.rprod) {
      uint64_t off = e.rcons & mask;
      uint64_t n = e.rprod - e.rcons;
      if (n > size - off) n = size - off;
      r->received.append(reinterpret_cast<const char*>(e.ring(slot) + off), size_t(n));
      e.rcons += n;
    }
    bool want = (e.rcons - e.last_update) * 10 > size || (flags & kImmBlocked) || e.to_return * 2 >= o.credits;
    if (want) return send_update(e, slot);
    return 0;
  }

  int send_update(Endpoint& e, uint32_t slot) {
    Msg m;
    m.type = Msg::kConsumed;
    m.slot = uint16_t(slot);
    m.value = e.rcons;
    m.credits = e.to_return;
    int err = post_msg(e, m);
    if (err == -EAGAIN) return 0;  // retried on the next completion
    if (err) return fail(err, "ibv_post_send (cursor update)");
    e.to_return = 0;
    e.last_update = e.rcons;
    r->updates++;
    return 0;
  }

  int on_msg(Endpoint& e, const uint8_t* buf, uint32_t len) {
    Msg m;
    if (Msg::decode(buf, len, &m)) return fail(-EBADMSG, "peer sent a bad message");
    if (m.credits > e.peer.credits || e.peer_credits + m.credits > e.peer.credits) return fail(-EBADMSG, "peer returned too many credits");
    e.peer_credits += m.credits;
    if (m.slot >= 1) return fail(-EBADMSG, "peer named a bad slot");
    switch (m.type) {
      case Msg::kConsumed:
        if (m.value < e.peer_cons || m.value > e.prod) return fail(-EBADMSG, "peer returned a bad consumer cursor");
        e.peer_cons = m.value;
        return pump_send(e);
      case Msg::kCredits:
      case Msg::kKeepalive:
        return pump_send(e);
      case Msg::kEof:
        if (m.value != e.rprod) return fail(-EBADMSG, "peer's EOF cursor does not match");
        e.eof_seen = true;
        // The stream is complete: close the connection (a transport would
        // pass the half-close on and keep the connection for other slots).
        if (rdma_disconnect(e.id.get()) != 0) return fail(-errno, "rdma_disconnect");
        return 0;
      default:
        return fail(-EBADMSG, "peer sent an unexpected message");
    }
  }

  // One work completion of `e`; non-zero (an error) stops the drain.
  int on_wc(Endpoint& e, const ibv_wc& wc) {
    if (wc.status != IBV_WC_SUCCESS) {
      bool ending = e.disconnected || e.eof_seen || e.eof_sent;
      if (wc.status == IBV_WC_WR_FLUSH_ERR && ending) return 0;  // flushed at teardown
      return fail(-EIO, std::string(e.name) + " completion: " + ibv_wc_status_str(wc.status));
    }
    uint64_t kind = wc.wr_id & kWrKind;
    uint32_t low = uint32_t(wc.wr_id & 0xFFFFFFFF);
    if (kind == kWrChunk || kind == kWrMsg) {
      e.sq_used -= low;
      return 0;
    }
    if (kind != kWrRecv || low >= o.credits) return fail(-EPROTO, "bad wr_id");
    int err = post_recv(e, low);
    if (err) return fail(err, "ibv_post_recv");
    e.to_return++;
    if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
      if (e.name[0] != 's') return fail(-EBADMSG, "unexpected immediate");
      return on_imm(e, ntohl(wc.imm_data), wc.byte_len);
    }
    if (wc.opcode == IBV_WC_RECV) return on_msg(e, e.recv_buf(low), wc.byte_len);
    return fail(-EPROTO, "unexpected receive opcode");
  }

  int on_cq(Endpoint& e) {
    const char* failed = nullptr;
    int rc = e.cq.drain(1 << 30, &failed, [&](const ibv_wc& wc) { return on_wc(e, wc); });
    if (failed) return fail(rc, failed);
    if (rc) return rc;
    // Credits may have come back without a cursor update: return ours.
    if (e.to_return * 2 >= o.credits && e.established && !e.disconnected) {
      Msg m;
      m.type = Msg::kCredits;
      m.credits = e.to_return;
      if (e.name[0] == 's') return send_update(e, 0);
      int err = post_msg(e, m);
      if (err == 0) {
        e.to_return = 0;
        r->credit_msgs++;
      } else if (err != -EAGAIN) {
        return fail(err, "ibv_post_send (credits)");
      }
    }
    if (e.name[0] == 'c' && e.established) return pump_send(e);
    return 0;
  }

  int on_cm() {
    for (;;) {
      rdma_cm_event* ev = nullptr;
      int err = ch.next(&ev);
      if (err == -EAGAIN || err == -EWOULDBLOCK) return 0;
      if (err) return fail(err, "rdma_get_cm_event");
      // Copy what we need, ack at once (rdma_destroy_id waits for acks).
      rdma_cm_event_type type = ev->event;
      int status = ev->status;
      rdma_cm_id* id = ev->id;
      rdma_cm_id* listen_id = ev->listen_id;
      uint8_t pd[64] = {};
      size_t pd_len = 0;
      if (ev->param.conn.private_data && ev->param.conn.private_data_len) {
        pd_len = ev->param.conn.private_data_len < sizeof pd ? ev->param.conn.private_data_len : sizeof pd;
        memcpy(pd, ev->param.conn.private_data, pd_len);
      }
      Endpoint* e = id == cli.id.get() ? &cli : id == srv.id.get() ? &srv : nullptr;
      const char* who = e ? e->name : (listen_id == listener.get() || id == listener.get()) ? "listener" : "?";
      r->cm_events.push_back(std::string(who) + ":" + rdma_event_str(type));
      if (type != RDMA_CM_EVENT_CONNECT_REQUEST) EventChannel::ack(ev);
      switch (type) {
        case RDMA_CM_EVENT_ADDR_RESOLVED:
          if (e != &cli) return fail(-EPROTO, "unexpected ADDR_RESOLVED");
          if ((err = setup(cli, 2))) return err;
          if (rdma_resolve_route(cli.id.get(), int(o.timeout_ms / 4)) != 0) return fail(-errno, "rdma_resolve_route");
          break;
        case RDMA_CM_EVENT_ROUTE_RESOLVED: {
          if (e != &cli) return fail(-EPROTO, "unexpected ROUTE_RESOLVED");
          uint8_t b[ConnParams::kBytes];
          cli.local.encode(b);
          rdma_conn_param cp = {};
          cp.private_data = b;
          cp.private_data_len = sizeof b;
          cp.responder_resources = 1;
          cp.initiator_depth = 1;
          cp.retry_count = 7;
          cp.rnr_retry_count = 7;
          if (rdma_connect(cli.id.get(), &cp) != 0) return fail(-errno, "rdma_connect");
          break;
        }
        case RDMA_CM_EVENT_CONNECT_REQUEST: {
          ConnParams peer;
          int derr = ConnParams::decode(pd, pd_len, &peer);
          if (!derr && memcmp(peer.token, token, kTokenBytes) != 0) derr = -EACCES;
          if (derr || srv.id.get()) {
            // A bad or second request: refuse it (no QP was made for it).
            rdma_reject(id, nullptr, 0);
            EventChannel::ack(ev);
            rdma_destroy_id(id);
            return derr ? fail(derr, "connect request private data") : 0;
          }
          srv.id.adopt(id, &r->trace);
          EventChannel::ack(ev);
          srv.peer = peer;
          srv.peer_credits = peer.credits;
          if ((err = setup(srv, 3))) return err;
          uint8_t b[ConnParams::kBytes];
          srv.local.flags = ConnParams::kFlagAccept;
          srv.local.encode(b);
          rdma_conn_param cp = {};
          cp.private_data = b;
          cp.private_data_len = sizeof b;
          cp.responder_resources = 1;
          cp.initiator_depth = 1;
          cp.rnr_retry_count = 7;
          if (rdma_accept(srv.id.get(), &cp) != 0) return fail(-errno, "rdma_accept");
          break;
        }
        case RDMA_CM_EVENT_ESTABLISHED:
          if (!e) return fail(-EPROTO, "ESTABLISHED for an unknown id");
          e->established = true;
          if (e == &cli) {
            ConnParams peer;
            int derr = ConnParams::decode(pd, pd_len, &peer);
            if (!derr && !(peer.flags & ConnParams::kFlagAccept)) derr = -EBADMSG;
            if (!derr && memcmp(peer.token, token, kTokenBytes) != 0) derr = -EACCES;
            if (derr) return fail(derr, "accept private data");
            cli.peer = peer;
            cli.peer_credits = peer.credits;
            if ((err = pump_send(cli))) return err;
          }
          break;
        case RDMA_CM_EVENT_DISCONNECTED:
          if (!e) return fail(-EPROTO, "DISCONNECTED for an unknown id");
          e->disconnected = true;
          if (e == &cli) rdma_disconnect(cli.id.get());  // answer the peer's disconnect
          break;
        case RDMA_CM_EVENT_ADDR_ERROR:
        case RDMA_CM_EVENT_ROUTE_ERROR:
        case RDMA_CM_EVENT_UNREACHABLE:
        case RDMA_CM_EVENT_REJECTED:
        case RDMA_CM_EVENT_CONNECT_ERROR:
        case RDMA_CM_EVENT_DEVICE_REMOVAL:
          return fail(status < 0 ? status : -ECONNREFUSED, std::string("rdma_cm ") + rdma_event_str(type));
        default:
          break;
      }
    }
  }

  bool finished() const { return r->err != 0 || (cli.disconnected && srv.disconnected); }

  // Key 1: the cm event channel; 2: the client's completion channel; 3: the server's.
  void step(uint64_t key) {
    if (key == 1) on_cm();
    else if (key == 2) on_cq(cli);
    else if (key == 3) on_cq(srv);
    r->client_cq_events = cli.cq.events();
    r->server_cq_events = srv.cq.events();
  }

  // Event channel, listener, client id, address resolution; the rest follows events.
  int start() {
    int err;
    ring_size = 1u << o.ring_log2;
    for (size_t i = 0; i < kTokenBytes; i++) token[i] = uint8_t(0xA5 ^ (i * 29));
    srv.name = "server";
    cli.name = "client";
    if ((err = ch.open(&r->trace))) return fail(err, "rdma_create_event_channel");
    if ((err = watch(ch.fd(), 1))) return fail(err, "epoll_ctl");
    sockaddr_in sa = {};
    sa.sin_family = AF_INET;
    if (inet_pton(AF_INET, o.addr.c_str(), &sa.sin_addr) != 1) return fail(-EINVAL, "address " + o.addr);
    sa.sin_port = htons(o.port ? o.port : uint16_t(20000 + getpid() % 10000));
    if ((err = listener.create(ch, nullptr, &r->trace))) return fail(err, "rdma_create_id (listener)");
    if (rdma_bind_addr(listener.get(), reinterpret_cast<sockaddr*>(&sa)) != 0 || rdma_listen(listener.get(), 4) != 0)
      return fail(-errno, "rdma_bind_addr/rdma_listen");
    if ((err = cli.id.create(ch, nullptr, &r->trace))) return fail(err, "rdma_create_id (client)");
    if (rdma_resolve_addr(cli.id.get(), nullptr, reinterpret_cast<sockaddr*>(&sa), int(o.timeout_ms / 4)) != 0)
      return fail(-errno, "rdma_resolve_addr");
    return 0;
  }

  // Standalone: its own epoll loop on the calling thread.
  void run() {
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
      fail(-errno, "epoll_create1");
      return;
    }
    if (start()) return;
    int64_t deadline = now_ms() + o.timeout_ms;
    while (!finished()) {
      int64_t left = deadline - now_ms();
      if (left <= 0) {
        fail(-ETIMEDOUT, "loopback transfer");
        break;
      }
      struct epoll_event evs[8];
      int n = epoll_wait(ep, evs, 8, int(left < 1000 ? left : 1000));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail(-errno, "epoll_wait");
        break;
      }
      for (int i = 0; i < n && !r->err; i++) step(evs[i].data.u64);
    }
  }
};

int check_options(const LoopbackOptions& o, LoopbackResult* r) {
  if (o.ring_log2 < kMinRingLog2 || o.ring_log2 > 26 || o.chunk == 0 || o.credits < 4 || o.credits > 1024
#ifdef SOCKGATE_TEST_HOOKS
      || o.hostile > 3
#endif
  ) {
    r->err = -EINVAL;
    r->error = "bad loopback options";
    return r->err;
  }
  if (o.data.empty()) {
    r->err = -EINVAL;
    r->error = "nothing to send";
    return r->err;
  }
  return 0;
}

// The loopback as a pump source: the cm event channel, both completion
// channels and a timeout timerfd in the pump's epoll set; all verbs work on
// the pump's I/O thread; `done` gets the result there, once.
class LoopbackSource final : public PumpSource {
 public:
  LoopbackSource(LoopbackOptions o, std::function<void(LoopbackResult&&)> done) : o_(std::move(o)), done_(std::move(done)) {}
  ~LoopbackSource() override { on_detach(); }
  int on_attach(Pump& p, uint32_t id) override {
    r_.io_thread = "pump";
    loop_.reset(new Loop(o_, &r_));
    loop_->watch_fn = [&p, id](int fd, uint64_t key) { return p.source_watch(id, fd, uint32_t(key)); };
    timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer_ < 0) return loop_->fail(-errno, "timerfd_create");
    struct itimerspec ts = {};
    ts.it_value.tv_sec = o_.timeout_ms / 1000;
    ts.it_value.tv_nsec = long(o_.timeout_ms % 1000) * 1000000;
    if (timerfd_settime(timer_, 0, &ts, nullptr) < 0) return loop_->fail(-errno, "timerfd_settime");
    int err = p.source_watch(id, timer_, kTimerKey);
    if (err) return loop_->fail(err, "epoll_ctl (timer)");
    return loop_->start();
  }
  void on_ready(Pump& p, uint32_t id, uint32_t key, uint32_t) override {
    if (!loop_) return;
    if (key == kTimerKey) loop_->fail(-ETIMEDOUT, "loopback transfer");
    else loop_->step(key);
    if (loop_->finished()) p.detach_source(id);
  }
  void on_detach() override {
    // Verbs resources first (reverse order), then the timer, then report.
    loop_.reset();
    if (timer_ >= 0) close(timer_);
    timer_ = -1;
    if (done_) {
      if (!r_.err && r_.received.size() != o_.data.size()) {
        r_.err = -ECANCELED;
        r_.error = "loopback ended early (pump stopped)";
      }
      auto d = std::move(done_);
      done_ = nullptr;
      d(std::move(r_));
    }
  }

 private:
  static constexpr uint32_t kTimerKey = 4;
  LoopbackOptions o_;
  std::function<void(LoopbackResult&&)> done_;  // called once, from on_detach
  LoopbackResult r_;
  std::unique_ptr<Loop> loop_;  // created and destroyed on the I/O thread
  int timer_ = -1;
};

}  // namespace

std::shared_ptr<PumpSource> make_loopback_source(LoopbackOptions o, std::function<void(LoopbackResult&&)> done) {
  return std::make_shared<LoopbackSource>(std::move(o), std::move(done));
}

int check_loopback_options(const LoopbackOptions& o, LoopbackResult* r) { return check_options(o, r); }

void run_loopback(const LoopbackOptions& o, LoopbackResult* r) {
  if (check_options(o, r)) return;
  r->io_thread = "worker";
  std::unique_ptr<Loop> l(new Loop(o, r));
  l->run();
  // ~Loop: endpoints (client, then server) release in reverse creation order,
  // then the listener id, then the event channel, then the epoll fd.
}

}  // namespace rdma
}  // namespace sg

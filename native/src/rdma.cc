#include "rdma.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

namespace sg {
namespace rdma {

namespace {

void note(Trace* t, const char* what) {
  if (t) t->push_back(what);
}

int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  return 0;
}

uint32_t be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }
uint16_t be16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
void put32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}
void put16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}

std::string hex_gid(const ibv_gid& g) {
  char buf[48];
  int n = 0;
  for (int i = 0; i < 16; i += 2) n += snprintf(buf + n, sizeof buf - n, i ? ":%02x%02x" : "%02x%02x", g.raw[i], g.raw[i + 1]);
  return std::string(buf, size_t(n));
}

}  // namespace

uint64_t load_be64(const void* p) {
  const volatile uint8_t* b = static_cast<const volatile uint8_t*>(p);
  uint8_t c[8];
  for (int i = 0; i < 8; i++) c[i] = b[i];
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | c[i];
  return v;
}

void store_be64(void* p, uint64_t v) {
  uint8_t* b = static_cast<uint8_t*>(p);
  for (int i = 7; i >= 0; i--, v >>= 8) b[i] = uint8_t(v);
}

std::string err_str(int err) {
  int e = err < 0 ? -err : err;
  const char* n = strerrorname_np(e);
  return std::string(strerror(e)) + " (" + (n ? n : "?") + ")";
}

// ---- devices ------------------------------------------------------------------

int list_devices(std::vector<DeviceInfo>* out) {
  out->clear();
  int n = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return errno == ENOSYS ? 0 : -(errno ? errno : EIO);  // ENOSYS: no uverbs in the kernel
  for (int i = 0; i < n; i++) {
    DeviceInfo d;
    d.name = ibv_get_device_name(list[i]);
    char guid[24];
    snprintf(guid, sizeof guid, "%016llx", (unsigned long long)be64toh(ibv_get_device_guid(list[i])));
    d.node_guid = guid;
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx) {
      ibv_device_attr da;
      if (ibv_query_device(ctx, &da) == 0) {
        for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
          ibv_port_attr pa;
          if (ibv_query_port(ctx, p, &pa) != 0) continue;
          PortInfo pi;
          pi.num = p;
          pi.state = ibv_port_state_str(pa.state);
          pi.active = pa.state == IBV_PORT_ACTIVE;
          pi.active_mtu = 128u << pa.active_mtu;  // IBV_MTU_256 == 1
          pi.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET     ? "ethernet"
                          : pa.link_layer == IBV_LINK_LAYER_INFINIBAND ? "infiniband"
                                                                       : "unspecified";
          int gl = pa.gid_tbl_len < 16 ? pa.gid_tbl_len : 16;
          for (int g = 0; g < gl; g++) {
            ibv_gid gid;
            if (ibv_query_gid(ctx, p, g, &gid) != 0) break;
            bool zero = true;
            for (uint8_t b : gid.raw) zero = zero && b == 0;
            if (!zero) pi.gids.push_back(hex_gid(gid));
          }
          d.ports.push_back(std::move(pi));
        }
      }
      ibv_close_device(ctx);
    }
    out->push_back(std::move(d));
  }
  ibv_free_device_list(list);
  return 0;
}

// ---- rdma_cm ------------------------------------------------------------------

void EventChannel::reset() {
  if (!ch_) return;
  rdma_destroy_event_channel(ch_);
  ch_ = nullptr;
  note(trace_, "-event_channel");
}

int EventChannel::open(Trace* t) {
  trace_ = t;
  errno = 0;
  ch_ = rdma_create_event_channel();
  if (!ch_) return -(errno ? errno : ENODEV);
  int err = set_nonblock(ch_->fd);
  if (err) {
    rdma_destroy_event_channel(ch_);
    ch_ = nullptr;
    return err;
  }
  note(t, "+event_channel");
  return 0;
}

int EventChannel::next(rdma_cm_event** ev) {
  if (rdma_get_cm_event(ch_, ev) == 0) return 0;
  return -(errno ? errno : EIO);
}

void CmId::reset() {
  if (!id_) return;
  rdma_destroy_id(id_);
  id_ = nullptr;
  note(trace_, "-cm_id");
}

int CmId::create(EventChannel& ch, void* context, Trace* t) {
  trace_ = t;
  if (rdma_create_id(ch.get(), &id_, context, RDMA_PS_TCP) != 0) {
    id_ = nullptr;
    return -(errno ? errno : EIO);
  }
  note(t, "+cm_id");
  return 0;
}

void CmId::adopt(rdma_cm_id* id, Trace* t) {
  trace_ = t;
  id_ = id;
  note(t, "+cm_id");
}

// ---- verbs --------------------------------------------------------------------

void ProtectionDomain::reset() {
  if (!pd_) return;
  ibv_dealloc_pd(pd_);
  pd_ = nullptr;
  note(trace_, "-pd");
}

int ProtectionDomain::open(ibv_context* ctx, Trace* t) {
  trace_ = t;
  if (!ctx) return -ENODEV;
  errno = 0;
  pd_ = ibv_alloc_pd(ctx);
  if (!pd_) return -(errno ? errno : ENOMEM);
  note(t, "+pd");
  return 0;
}

void CompletionChannel::reset() {
  if (!ch_) return;
  ibv_destroy_comp_channel(ch_);
  ch_ = nullptr;
  note(trace_, "-comp_channel");
}

int CompletionChannel::open(ibv_context* ctx, Trace* t) {
  trace_ = t;
  if (!ctx) return -ENODEV;
  errno = 0;
  ch_ = ibv_create_comp_channel(ctx);
  if (!ch_) return -(errno ? errno : ENOMEM);
  int err = set_nonblock(ch_->fd);
  if (err) {
    ibv_destroy_comp_channel(ch_);
    ch_ = nullptr;
    return err;
  }
  note(t, "+comp_channel");
  return 0;
}

void CompletionQueue::reset() {
  if (!cq_) return;
  if (unacked_) ibv_ack_cq_events(cq_, unacked_);
  ibv_destroy_cq(cq_);
  cq_ = nullptr;
  ch_ = nullptr;
  unacked_ = 0;
  events_ = 0;
  note(trace_, "-cq");
}

int CompletionQueue::open(ibv_context* ctx, CompletionChannel& ch, int depth, Trace* t) {
  trace_ = t;
  if (!ctx) return -ENODEV;
  errno = 0;
  cq_ = ibv_create_cq(ctx, depth, this, ch.get(), 0);
  if (!cq_) return -(errno ? errno : ENOMEM);
  ch_ = ch.get();
  note(t, "+cq");
  return arm();
}

int CompletionQueue::take_events(int max) {
  int n = 0;
  while (n < max) {
    ibv_cq* cq = nullptr;
    void* ctx = nullptr;
    if (ibv_get_cq_event(ch_, &cq, &ctx) != 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return -(errno ? errno : EIO);
    }
    if (cq != cq_) return -EPROTO;  // one CQ per channel here
    n++;
  }
  events_ += uint64_t(n);
  // Acked at once: nothing is left for teardown to wait on. (Batching would
  // save a mutex per wakeup; events are per wakeup, not per completion.)
  if (n) ibv_ack_cq_events(cq_, unsigned(n));
  return n;
}

void QueuePair::reset() {
  rdma_cm_id* id = id_;
  id_ = nullptr;
  max_inline_ = 0;
  if (!id || !id->qp) return;
  rdma_destroy_qp(id);
  note(trace_, "-qp");
}

int QueuePair::open(CmId& id, ProtectionDomain& pd, CompletionQueue& cq, const Caps& caps, Trace* t) {
  trace_ = t;
  ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = cq.get();
  a.recv_cq = cq.get();
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;
  a.cap.max_send_wr = caps.send_wr;
  a.cap.max_recv_wr = caps.recv_wr;
  a.cap.max_send_sge = 2;
  a.cap.max_recv_sge = 1;
  a.cap.max_inline_data = caps.inline_bytes;
  if (rdma_create_qp(id.get(), pd.get(), &a) != 0) return -(errno ? errno : EIO);
  id_ = id.get();
  max_inline_ = a.cap.max_inline_data;
  note(t, "+qp");
  return 0;
}

void MemoryRegion::reset() {
  if (!mr_) return;
  ibv_dereg_mr(mr_);
  mr_ = nullptr;
  note(trace_, "-mr");
}

int MemoryRegion::open(ProtectionDomain& pd, void* addr, size_t len, int access, Trace* t) {
  trace_ = t;
  errno = 0;
  mr_ = ibv_reg_mr(pd.get(), addr, len, access);
  if (!mr_) return -(errno ? errno : ENOMEM);
  note(t, "+mr");
  return 0;
}

void Mapping::reset() {
  if (!p_) return;
  munmap(p_, len_);
  p_ = nullptr;
  len_ = 0;
  note(trace_, "-memory");
}

int Mapping::open(size_t len, Trace* t) {
  trace_ = t;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return -errno;
  p_ = static_cast<uint8_t*>(p);
  len_ = len;
  note(t, "+memory");
  return 0;
}

// ---- wire formats ---------------------------------------------------------------

// Offsets of ConnParams (RDMA.md "Connection parameters").
//  0 magic u32 | 4 version u16 | 6 flags u16 | 8 addr u64 | 16 rkey u32 |
// 20 ring_log2 u8 | 21 reserved u8 | 22 slots u16 | 24 credits u16 |
// 26 reserved u16 | 28 reserved u32 | 32 token[16]
void ConnParams::encode(uint8_t out[kBytes]) const {
  memset(out, 0, kBytes);
  put32(out, kMagic);
  put16(out + 4, version);
  put16(out + 6, flags);
  store_be64(out + 8, addr);
  put32(out + 16, rkey);
  out[20] = uint8_t(ring_log2);
  put16(out + 22, slots);
  put16(out + 24, credits);
  put32(out + 28, keepalive_ms);
  memcpy(out + 32, token, kTokenBytes);
}

int ConnParams::decode(const void* p, size_t len, ConnParams* o) {
  // rdma_cm may pad private data (IB CM fixed sizes): longer is fine, shorter is not.
  if (!p || len < kBytes) return -EPROTO;
  uint8_t b[kBytes];
  memcpy(b, p, kBytes);  // one copy, then validate the copy
  if (be32(b) != kMagic) return -EPROTO;
  o->version = be16(b + 4);
  if (o->version != kVersion) return -EPROTONOSUPPORT;
  o->flags = be16(b + 6);
  if (o->flags & ~(kFlagAccept | kFlagResume | kFlagMove)) return -EBADMSG;
  o->addr = load_be64(b + 8);
  o->rkey = be32(b + 16);
  o->ring_log2 = b[20];
  if (b[21] != 0 || be16(b + 26) != 0) return -EBADMSG;
  o->keepalive_ms = be32(b + 28);
  if (o->keepalive_ms > kMaxKeepaliveMs) return -EBADMSG;
  o->slots = be16(b + 22);
  o->credits = be16(b + 24);
  memcpy(o->token, b + 32, kTokenBytes);
  if (o->ring_log2 < kMinRingLog2 || o->ring_log2 > kMaxRingLog2) return -EBADMSG;
  if (o->slots == 0 || o->slots > kMaxSlots) return -EBADMSG;
  if (o->credits < 2) return -EBADMSG;  // one is reserved for credit returns
  uint64_t bytes = o->region_bytes();
  if (o->addr + bytes < o->addr) return -EBADMSG;  // wraps the address space
  return 0;
}

void encode_version_reject(uint8_t out[kRejectBytes]) {
  memset(out, 0, kRejectBytes);
  put32(out, kMagic);
  put16(out + 4, kVersion);
}

uint16_t decode_version_reject(const void* p, size_t len) {
  if (!p || len < kRejectBytes) return 0;
  uint8_t b[kRejectBytes];
  memcpy(b, p, kRejectBytes);
  return be32(b) == kMagic ? be16(b + 4) : 0;
}

// ---- bursts ---------------------------------------------------------------------

int post_burst(ibv_qp* qp, const Burst& b) {
  const uint64_t off = b.prod & (b.ring_size - 1);
  const uint64_t first = std::min(b.n, b.ring_size - off);
  const bool wrap = b.n > first;
  ibv_sge s1 = {reinterpret_cast<uintptr_t>(b.tail), uint32_t(first), b.lkey};
  ibv_sge s2 = {reinterpret_cast<uintptr_t>(b.head), uint32_t(b.n - first), b.lkey};
  ibv_send_wr w[2] = {}, *bad = nullptr;
  ibv_send_wr& imm = w[wrap ? 1 : 0];
  if (wrap) {
    w[0].wr_id = b.wr_id_plain;
    w[0].opcode = IBV_WR_RDMA_WRITE;
    w[0].sg_list = &s1;
    w[0].num_sge = 1;
    w[0].wr.rdma.remote_addr = b.ring_addr + off;
    w[0].wr.rdma.rkey = b.rkey;
    w[0].next = &w[1];
  }
  imm.wr_id = b.wr_id;
  imm.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  imm.imm_data = htonl(imm_encode(b.slot, uint16_t(b.flags | (wrap ? kImmWrap : 0))));
  imm.sg_list = wrap ? &s2 : &s1;
  imm.num_sge = b.n ? 1 : 0;  // n == 0: tests of the receiver's checks only
  imm.wr.rdma.remote_addr = wrap ? b.ring_addr : b.ring_addr + off;
  imm.wr.rdma.rkey = b.rkey;
  if (b.signaled) imm.send_flags |= IBV_SEND_SIGNALED;
  if (!wrap && b.n <= b.max_inline) imm.send_flags |= IBV_SEND_INLINE;
  int rc = ibv_post_send(qp, &w[0], &bad);
  return rc ? -rc : wrap ? 2 : 1;
}

int burst_advance(uint64_t prod, uint64_t cons, uint64_t ring_size, uint32_t flags, uint32_t byte_len, uint64_t* advance, const char** why) {
  const uint64_t off = prod & (ring_size - 1);
  if (flags & ~kImmFlags) return *why = "unknown immediate flags", -EBADMSG;
  if (byte_len == 0) return *why = "an empty burst", -EBADMSG;
  uint64_t adv;
  if (flags & kImmWrap) {
    if (off == 0) return *why = "a wrapped burst from the ring's start", -EBADMSG;
    adv = (ring_size - off) + byte_len;
  } else {
    if (byte_len > ring_size - off) return *why = "a burst past the ring's end", -EBADMSG;
    adv = byte_len;
  }
  // prod - cons <= ring_size holds for the receiver's own cursors.
  if (adv > ring_size - (prod - cons)) return *why = "a burst larger than the free space", -EBADMSG;
  *advance = adv;
  return 0;
}

//  0 type u8 | 1 flags u8 | 2 slot u16 | 4 credits u32 | 8 value u64
void Msg::encode(uint8_t out[kMaxBytes]) const {
  out[0] = type;
  out[1] = flags;
  put16(out + 2, slot);
  put32(out + 4, credits);
  store_be64(out + 8, value);
  if (type == kBind) memcpy(out + kBytes, token, kTokenBytes);
}

int Msg::decode(const void* p, size_t len, Msg* o) {
  if (len != kBytes && len != kBindBytes) return -EBADMSG;
  uint8_t b[kMaxBytes];
  memcpy(b, p, len);  // once: the buffer is ours, but the bytes are the peer's
  o->type = b[0];
  if (o->type < kConsumed || o->type > kBound) return -EBADMSG;
  if (len != (o->type == kBind ? kBindBytes : kBytes)) return -EBADMSG;
  o->flags = b[1];
  // RESUME only on BIND and BOUND (whether the connection allows it is the receiver's check).
  if (o->flags != 0 && !(o->flags == kFlagResume && (o->type == kBind || o->type == kBound))) return -EBADMSG;
  o->slot = be16(b + 2);
  o->credits = be32(b + 4);
  o->value = load_be64(b + 8);
  if (o->type == kBind) memcpy(o->token, b + kBytes, kTokenBytes);
  return 0;
}

}  // namespace rdma
}  // namespace sg

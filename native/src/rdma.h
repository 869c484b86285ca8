// The verbs layer: one class per rdma-core resource, each owning exactly one
// handle, destroyed in its destructor; owners declare them in creation order so
// C++ tears them down in reverse (MR, QP, CQ, completion channel, PD, cm id,
// event channel). Functions return 0 or -errno and keep the first error.
//
// Nothing here blocks: the cm event channel and the completion channels are
// non-blocking fds meant for an epoll set (the pump's I/O thread; see
// native/RDMA.md "Threading"), and handlers drain them when they turn readable.
//
// Compiled only when binding.gyp found the rdma-core headers (SG_WITH_RDMA).
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace sg {
namespace rdma {

// Records the creation and destruction of resources (tests check the order).
using Trace = std::vector<std::string>;

// ---- device enumeration -------------------------------------------------------

struct PortInfo {
  uint8_t num = 0;
  std::string state;       // ibv_port_state_str: "PORT_ACTIVE", "PORT_DOWN", ...
  bool active = false;
  uint32_t active_mtu = 0; // bytes
  std::string link_layer;  // "ethernet" | "infiniband" | "unspecified"
  std::vector<std::string> gids;  // non-zero GIDs of the first table entries, "fe80:0000:..."
};

struct DeviceInfo {
  std::string name;
  std::string node_guid;   // 16 hex digits
  std::vector<PortInfo> ports;
};

// Lists the verbs devices and their ports. -errno only when the listing itself
// fails; an empty list is not an error (no device, or no provider loaded).
int list_devices(std::vector<DeviceInfo>* out);

// ---- rdma_cm ------------------------------------------------------------------

// rdma_event_channel; fd() is non-blocking. Destroyed after every id on it.
class EventChannel {
 public:
  EventChannel() = default;
  ~EventChannel() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  EventChannel(const EventChannel&) = delete;
  EventChannel& operator=(const EventChannel&) = delete;
  int open(Trace* t = nullptr);
  int fd() const { return ch_ ? ch_->fd : -1; }
  rdma_event_channel* get() const { return ch_; }
  // Next event or -EAGAIN. The caller copies what it needs and calls ack().
  int next(rdma_cm_event** ev);
  static void ack(rdma_cm_event* ev) { rdma_ack_cm_event(ev); }

 private:
  rdma_event_channel* ch_ = nullptr;
  Trace* trace_ = nullptr;
};

// rdma_cm_id (RDMA_PS_TCP, i.e. RC). Owns the id; a QueuePair created on it
// must be destroyed first (QueuePair holds a pointer to this).
class CmId {
 public:
  CmId() = default;
  ~CmId() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  CmId(const CmId&) = delete;
  CmId& operator=(const CmId&) = delete;
  int create(EventChannel& ch, void* context, Trace* t = nullptr);
  // Adopts the id a CONNECT_REQUEST event created (server side).
  void adopt(rdma_cm_id* id, Trace* t = nullptr);
  rdma_cm_id* get() const { return id_; }
  ibv_context* verbs() const { return id_ ? id_->verbs : nullptr; }

 private:
  rdma_cm_id* id_ = nullptr;
  Trace* trace_ = nullptr;
};

// ---- verbs --------------------------------------------------------------------

class ProtectionDomain {
 public:
  ProtectionDomain() = default;
  ~ProtectionDomain() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  ProtectionDomain(const ProtectionDomain&) = delete;
  ProtectionDomain& operator=(const ProtectionDomain&) = delete;
  int open(ibv_context* ctx, Trace* t = nullptr);
  ibv_pd* get() const { return pd_; }

 private:
  ibv_pd* pd_ = nullptr;
  Trace* trace_ = nullptr;
};

// ibv_comp_channel; fd() is non-blocking and goes into the I/O thread's epoll set.
class CompletionChannel {
 public:
  CompletionChannel() = default;
  ~CompletionChannel() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  CompletionChannel(const CompletionChannel&) = delete;
  CompletionChannel& operator=(const CompletionChannel&) = delete;
  int open(ibv_context* ctx, Trace* t = nullptr);
  int fd() const { return ch_ ? ch_->fd : -1; }
  ibv_comp_channel* get() const { return ch_; }

 private:
  ibv_comp_channel* ch_ = nullptr;
  Trace* trace_ = nullptr;
};

// A CQ bound to a completion channel. Events taken from the channel are acked
// as they are taken, so teardown never waits on an unacked event.
class CompletionQueue {
 public:
  CompletionQueue() = default;
  ~CompletionQueue() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;
  int open(ibv_context* ctx, CompletionChannel& ch, int depth, Trace* t = nullptr);
  ibv_cq* get() const { return cq_; }
  int arm() { return -ibv_req_notify_cq(cq_, 0); }
  // Takes up to `max` pending channel events (non-blocking); returns how
  // many, or -errno. The caller then polls until empty, arms, and polls once
  // more (the race between the last poll and the arm). Each arm yields at
  // most one event, so a caller that arms once per wakeup can take one (the
  // fd is level-triggered in epoll: anything left wakes it again).
  int take_events(int max = 1 << 30);
  int poll(ibv_wc* wc, int n) { return ibv_poll_cq(cq_, n, wc); }
  uint64_t events() const { return events_; }
  // One wakeup of the completion channel: take up to `take` events, poll
  // until empty, arm, poll once more (a completion between the last poll and
  // the arm raises no event). Each completion goes to on_wc(const ibv_wc&),
  // which returns 0 to go on; anything else stops the drain and is returned
  // as is. A failed verbs call returns -errno with *failed naming it
  // (*failed stays null otherwise).
  template <class OnWc>
  int drain(int take, const char** failed, OnWc&& on_wc) {
    *failed = nullptr;
    int n = take_events(take);
    if (n < 0) return *failed = "ibv_get_cq_event", n;
    for (int round = 0; round < 2; round++) {
      ibv_wc wc[32];
      for (;;) {
        int got = poll(wc, 32);
        if (got < 0) return *failed = "ibv_poll_cq", -EIO;
        if (got == 0) break;
        for (int i = 0; i < got; i++)
          if (int rc = on_wc(wc[i])) return rc;
      }
      if (round == 0)
        if (int err = arm()) return *failed = "ibv_req_notify_cq", err;
    }
    return 0;
  }

 private:
  ibv_cq* cq_ = nullptr;
  ibv_comp_channel* ch_ = nullptr;
  unsigned unacked_ = 0;
  uint64_t events_ = 0;
  Trace* trace_ = nullptr;
};

// An RC QP created through rdma_cm on a CmId (rdma_create_qp), so rdma_cm
// drives its state transitions. Destroyed before the id.
class QueuePair {
 public:
  QueuePair() = default;
  ~QueuePair() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;
  struct Caps {
    uint32_t send_wr = 64, recv_wr = 64, inline_bytes = 64;
  };
  int open(CmId& id, ProtectionDomain& pd, CompletionQueue& cq, const Caps& caps, Trace* t = nullptr);
  ibv_qp* get() const { return id_ ? id_->qp : nullptr; }
  uint32_t max_inline() const { return max_inline_; }

 private:
  rdma_cm_id* id_ = nullptr;  // not owned; the CmId outlives this
  uint32_t max_inline_ = 0;
  Trace* trace_ = nullptr;
};

// A memory region over memory the caller owns (ring memory); deregistered
// before that memory is unmapped.
class MemoryRegion {
 public:
  MemoryRegion() = default;
  ~MemoryRegion() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  int open(ProtectionDomain& pd, void* addr, size_t len, int access, Trace* t = nullptr);
  ibv_mr* get() const { return mr_; }
  uint32_t lkey() const { return mr_->lkey; }
  uint32_t rkey() const { return mr_->rkey; }

 private:
  ibv_mr* mr_ = nullptr;
  Trace* trace_ = nullptr;
};

// Page-aligned anonymous memory (ring memory for an MR).
class Mapping {
 public:
  Mapping() = default;
  ~Mapping() { reset(); }
  // Releases the handle now (idempotent); the object can be opened again.
  void reset();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  int open(size_t len, Trace* t = nullptr);
  uint8_t* data() const { return p_; }
  size_t size() const { return len_; }

 private:
  uint8_t* p_ = nullptr;
  size_t len_ = 0;
  Trace* trace_ = nullptr;
};

// ---- wire formats (native/RDMA.md) ---------------------------------------------

constexpr uint32_t kMagic = 0x53475244;  // "SGRD"
constexpr uint16_t kVersion = 3;         // 2: the last data write of a burst carries the immediate (no cursor lines); 3: BOUND answers BIND
constexpr uint32_t kMinRingLog2 = 12;    // 4 KiB
constexpr uint32_t kMaxRingLog2 = 30;    // 1 GiB
constexpr uint32_t kMaxSlots = 4096;
constexpr size_t kTokenBytes = 16;

// Connection parameters in rdma_cm private data (connect and accept), 48
// bytes, big-endian; fits the 56 bytes an RC connect request carries.
struct ConnParams {
  static constexpr size_t kBytes = 48;
  uint16_t version = kVersion;
  uint16_t flags = 0;          // kFlag*
  uint64_t addr = 0;           // start of the sender's region: its receive rings, slot 0 first
  uint32_t rkey = 0;
  uint32_t ring_log2 = 0;      // each slot's receive ring is 1 << ring_log2 bytes
  uint16_t slots = 0;          // receive rings in the region
  uint16_t credits = 0;        // receive WRs posted for the peer's sends and immediates
  uint32_t keepalive_ms = 0;   // the sender's keepalive interval, 0 = none (both use the smaller)
  uint8_t token[kTokenBytes] = {};
  static constexpr uint16_t kFlagAccept = 1;  // set in the accept reply
  static constexpr uint16_t kFlagResume = 2;  // this end suspends its slots on failure (live failover)
  static constexpr uint16_t kFlagMove = 4;    // moved sockets resume here (RESUME-form BIND/BOUND; token = a resume token)
  static constexpr uint32_t kMaxKeepaliveMs = 3600 * 1000;
  void encode(uint8_t out[kBytes]) const;
  // Validates everything: magic, version, reserved bytes, ring size range,
  // slot count, credits, region bounds. -EPROTO / -EBADMSG on garbage.
  static int decode(const void* p, size_t len, ConnParams* out);
  uint64_t region_bytes() const { return uint64_t(slots) << ring_log2; }
};

// What a listener puts in rdma_reject's private data when it refuses a
// request for its protocol version: magic, then the version it speaks (8
// bytes, big-endian, the rest reserved 0). The client reports VERSION_MISMATCH.
constexpr size_t kRejectBytes = 8;
void encode_version_reject(uint8_t out[kRejectBytes]);
// The version a reject names, or 0 when it is not ours (no magic, too short).
uint16_t decode_version_reject(const void* p, size_t len);

// A control message (a two-sided SEND), 16 bytes, big-endian.
// BIND is the one longer message: 16 bytes as above, then the attach token.
struct Msg {
  static constexpr size_t kBytes = 16;
  static constexpr size_t kBindBytes = kBytes + kTokenBytes;
  static constexpr size_t kMaxBytes = kBindBytes;  // receive buffers are this big
  enum Type : uint8_t { kConsumed = 1, kEof = 2, kClose = 3, kKeepalive = 4, kCredits = 5, kBind = 6, kBound = 7 };
  uint8_t type = 0;
  uint8_t flags = 0;
  uint16_t slot = 0;
  uint32_t credits = 0;  // receive WRs re-posted since the last message
  uint64_t value = 0;    // kConsumed: consumer cursor; kEof: final producer cursor
  uint8_t token[kTokenBytes] = {};  // kBind only
  // Flag of BIND and BOUND on a MOVE connection: the slot resumes a moved
  // socket; BIND's value is the client's position, BOUND's the gateway's.
  static constexpr uint8_t kFlagResume = 1;
  size_t size() const { return type == kBind ? kBindBytes : kBytes; }
  void encode(uint8_t out[kMaxBytes]) const;  // writes size() bytes
  static int decode(const void* p, size_t len, Msg* out);
};

// Immediate data of a burst's write-with-immediate: slot << 16 | flags.
constexpr uint32_t kImmBlocked = 1;  // the writer is out of ring space: return the cursor at once
constexpr uint32_t kImmWrap = 2;     // a plain RDMA WRITE filled the ring up to its end first; this one starts at offset 0
constexpr uint32_t kImmFlags = kImmBlocked | kImmWrap;
inline uint32_t imm_encode(uint16_t slot, uint16_t flags) { return (uint32_t(slot) << 16) | flags; }

// The sending side of one burst (native/RDMA.md "Data"): `n` (>= 1) bytes
// for the peer's ring at free-running cursor `prod`. `tail` holds the bytes
// for offsets (prod & mask) .. the ring's end, `head` those for offset 0 on
// (only read when the burst wraps); both lie in the local MR `lkey`.
struct Burst {
  uint64_t prod = 0, n = 0, ring_size = 0;
  const uint8_t* tail = nullptr;
  const uint8_t* head = nullptr;
  uint32_t lkey = 0;
  uint64_t ring_addr = 0;  // the peer's ring of this slot
  uint32_t rkey = 0;
  uint16_t slot = 0;
  uint16_t flags = 0;        // kImmBlocked; kImmWrap is added when the burst wraps
  uint32_t max_inline = 0;   // a single-write burst this small goes inline
  uint64_t wr_id = 0;        // of the write-with-immediate (the plain write's wr_id is wr_id_plain)
  uint64_t wr_id_plain = 0;
  bool signaled = true;      // the write-with-immediate is signaled
};
// Posts the burst: one RDMA_WRITE_WITH_IMM, or a plain RDMA_WRITE up to the
// ring's end then the RDMA_WRITE_WITH_IMM of the rest at offset 0. Returns the
// number of work requests posted (1 or 2), or -errno from ibv_post_send.
// (n == 0 posts an empty burst, which receivers refuse: tests only.)
int post_burst(ibv_qp* qp, const Burst& b);

// The receiving side: a burst's immediate with `flags` and the completion's
// byte_len arrived for a ring at cursors prod/cons of `ring_size` bytes.
// Sets *advance (how far the producer cursor moves) or returns -EBADMSG with
// *why: unknown flags, an empty burst, a write past the ring's end, a WRAP
// from offset 0, more bytes than the free space.
int burst_advance(uint64_t prod, uint64_t cons, uint64_t ring_size, uint32_t flags, uint32_t byte_len, uint64_t* advance, const char** why);

uint64_t load_be64(const void* p);
void store_be64(void* p, uint64_t v);

// "<name> (<errno name>)" for error messages.
std::string err_str(int err);

}  // namespace rdma
}  // namespace sg

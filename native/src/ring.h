// SPSC byte ring over a RingCtl and a data arena, with the private state of
// one side. Both sides validate every shared value they read (the peer may be
// hostile): a value is fetched once into a local through barrier.h, checked,
// then used. An invalid value latches -EBADMSG in `err` and the ring is dead.
#pragma once

#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "barrier.h"
#include "layout.h"

namespace sg {

struct RingView {
  shm::RingCtl* ctl = nullptr;  // shared control block (peer-writable)
  uint8_t* data = nullptr;      // arena of (1 << arena_log2) bytes
  uint32_t arena_log2 = 0;      // the largest size this ring may ever use
  bool strict = false;          // true on the gateway: sizes only from its own grants
  bool open = false;
  uint32_t slot_gen = 0;    // the slot's open generation this view belongs to

  // Private state: never read back from shared memory.
  uint64_t pos = 0;        // our cursor: tail if we produce, head if we consume
  uint64_t peer = 0;       // last validated peer cursor
  uint32_t size_log2 = 0;  // size in use
  uint32_t gen = 0;        // its generation
  uint32_t grant_log2 = 0; // strict side: the last size we granted
  uint32_t grant_gen = 0;  //   and its generation
  bool eof = false;        // consumer: producer's EOF seen; producer: EOF sent
  int err = 0;             // first error, sticky

  uint64_t size() const { return uint64_t(1) << size_log2; }
  bool resize_pending() const { return strict && grant_gen != gen; }
};

// Open a view on a freshly opened slot: cursors 0, generation 1.
inline void ring_init(RingView& r, shm::RingCtl* ctl, uint8_t* data, uint32_t arena_log2, bool strict,
                      uint32_t size_log2) {
  r = RingView{};
  r.ctl = ctl;
  r.data = data;
  r.arena_log2 = arena_log2;
  r.strict = strict;
  r.size_log2 = size_log2;
  r.gen = 1;
  r.grant_log2 = size_log2;
  r.grant_gen = 1;
  r.open = true;
}

inline int ring_fail(RingView& r, int e) {
  if (r.err == 0) r.err = e;
  return r.err;
}

inline bool valid_log2(const RingView& r, uint32_t l) {
  return l >= shm::kMinRingLog2 && l <= r.arena_log2;
}

// ---- producer -------------------------------------------------------------

// Fill iov[0..1] with the free space (two parts across the wrap) and return
// the number of free bytes, or a negative errno. Reloads the consumer's head
// only if the cached view has less than `want` bytes free.
inline int64_t prod_reserve(RingView& r, struct iovec iov[2], uint64_t want = ~uint64_t(0)) {
  if (r.err) return r.err;
  uint64_t used = r.pos - r.peer;
  if (r.size() - used < want || used == 0) {
    uint64_t h = load_acquire(&r.ctl->head);
    // Monotonic and never past our tail: peer <= h <= pos.
    if (h - r.peer > r.pos - r.peer) return ring_fail(r, -EBADMSG);
    r.peer = h;
    used = r.pos - h;
  }
  if (used == 0) {
    // Empty: the only point where a size change may take effect.
    uint32_t ggen, glog2;
    if (r.strict) {
      ggen = r.grant_gen;
      glog2 = r.grant_log2;
    } else {
      ggen = load_acquire(&r.ctl->grant_gen);
      glog2 = load_relaxed(&r.ctl->grant_log2);
    }
    if (ggen != r.gen) {
      if (!valid_log2(r, glog2)) return ring_fail(r, -EBADMSG);
      r.gen = ggen;
      r.size_log2 = glog2;
      store_relaxed(&r.ctl->size_log2, glog2);
      store_relaxed(&r.ctl->size_gen, ggen);  // published by the next tail store
    }
  }
  const uint64_t size = r.size();
  const uint64_t free = size - used;
  const uint64_t off = r.pos & (size - 1);
  const uint64_t first = free < size - off ? free : size - off;
  iov[0].iov_base = r.data + off;
  iov[0].iov_len = first;
  iov[1].iov_base = r.data;
  iov[1].iov_len = free - first;
  return int64_t(free);
}

// Publish n bytes written into the space from prod_reserve.
inline void prod_commit(RingView& r, uint64_t n) {
  r.pos += n;
  store_release(&r.ctl->tail, r.pos);
}

// After a commit: does the consumer want a notification? Clears its flag.
inline bool prod_should_notify(RingView& r) {
  full_barrier();  // our tail store before the flag load (pairs with cons_arm)
  if (load_relaxed(&r.ctl->need_data) == 0) return false;
  return exchange(&r.ctl->need_data, 0u) != 0;
}

// Ring was full: flag that we wait for space, then re-check. Returns true if
// space appeared (the caller goes on; no doorbell will come for it).
inline bool prod_arm_space(RingView& r) {
  store_relaxed(&r.ctl->need_space, 1u);
  full_barrier();  // flag before head re-load (pairs with cons_should_notify)
  struct iovec iov[2] = {};
  return prod_reserve(r, iov, 1) > 0;
}

// Copy len bytes in; returns bytes copied (may be short) or a negative errno.
inline int64_t prod_write(RingView& r, const void* src, uint64_t len) {
  struct iovec iov[2] = {};
  int64_t free = prod_reserve(r, iov, len);
  if (free < 0) return free;
  uint64_t n = len < uint64_t(free) ? len : uint64_t(free);
  uint64_t a = n < iov[0].iov_len ? n : iov[0].iov_len;
  memcpy(iov[0].iov_base, src, a);
  if (n > a) memcpy(iov[1].iov_base, static_cast<const uint8_t*>(src) + a, n - a);
  if (n) prod_commit(r, n);
  return int64_t(n);
}

// Mark end of stream after the last tail store.
inline void prod_set_eof(RingView& r) {
  r.eof = true;
  store_release(&r.ctl->eof, shm::kEofSet);
}

// ---- consumer -------------------------------------------------------------

// Fill iov with the readable bytes and return their count, 0 if empty, or a
// negative errno. Reloads the tail only if fewer than `want` bytes are known.
inline int64_t cons_peek(RingView& r, struct iovec iov[2], uint64_t want = ~uint64_t(0)) {
  if (r.err) return r.err;
  uint64_t avail = r.peer - r.pos;
  if (avail < want || avail == 0) {
    uint64_t t = load_acquire(&r.ctl->tail);
    // Monotonic: peer <= t; and never more than a ring ahead (checked below).
    if (t - r.pos < r.peer - r.pos) return ring_fail(r, -EBADMSG);
    uint32_t g = load_relaxed(&r.ctl->size_gen);  // ordered by the tail acquire
    if (g != r.gen) {
      // A new size starts only on an empty ring: we must have consumed all
      // we had seen.
      if (r.peer != r.pos) return ring_fail(r, -EBADMSG);
      uint32_t l;
      if (r.strict) {
        if (g != r.grant_gen) return ring_fail(r, -EBADMSG);
        l = r.grant_log2;
      } else {
        l = load_relaxed(&r.ctl->size_log2);
        if (!valid_log2(r, l)) return ring_fail(r, -EBADMSG);
      }
      r.gen = g;
      r.size_log2 = l;
    }
    if (t - r.pos > r.size()) return ring_fail(r, -EBADMSG);
    r.peer = t;
    avail = t - r.pos;
  }
  const uint64_t size = r.size();
  const uint64_t off = r.pos & (size - 1);
  const uint64_t first = avail < size - off ? avail : size - off;
  iov[0].iov_base = r.data + off;
  iov[0].iov_len = first;
  iov[1].iov_base = r.data;
  iov[1].iov_len = avail - first;
  return int64_t(avail);
}

// Release n consumed bytes to the producer.
inline void cons_release(RingView& r, uint64_t n) {
  r.pos += n;
  store_release(&r.ctl->head, r.pos);
}

// After a release: does the producer wait for space? Clears its flag.
inline bool cons_should_notify(RingView& r) {
  full_barrier();  // head store before flag load (pairs with prod_arm_space)
  if (load_relaxed(&r.ctl->need_space) == 0) return false;
  return exchange(&r.ctl->need_space, 0u) != 0;
}

// Ring was empty: flag that we wait for data, re-check. True if data (or EOF)
// appeared; then no doorbell will come for it.
inline bool cons_arm_data(RingView& r) {
  store_relaxed(&r.ctl->need_data, 1u);
  full_barrier();  // flag before tail re-load (pairs with prod_should_notify)
  struct iovec iov[2] = {};
  int64_t n = cons_peek(r, iov, 1);
  if (n != 0) return true;  // data, or an error the caller must see
  uint32_t e = load_acquire(&r.ctl->eof);
  return e != shm::kEofNone;
}

// Ring empty: has the producer ended the stream? Negative errno if corrupt.
// Loads eof (acquire) then the tail again, so a final tail is never missed.
inline int cons_check_eof(RingView& r) {
  if (r.err) return r.err;
  if (r.eof) return 1;
  uint32_t e = load_acquire(&r.ctl->eof);
  if (e == shm::kEofNone) return 0;
  if (e != shm::kEofSet) return ring_fail(r, -EBADMSG);
  struct iovec iov[2] = {};
  int64_t n = cons_peek(r, iov, 1);
  if (n < 0) return int(n);
  if (n > 0) return 0;  // bytes before EOF still to read
  r.eof = true;
  return 1;
}

// Copy up to len bytes out; returns bytes copied or a negative errno.
inline int64_t cons_read(RingView& r, void* dst, uint64_t len) {
  struct iovec iov[2] = {};
  int64_t avail = cons_peek(r, iov, len);
  if (avail <= 0) return avail;
  uint64_t n = len < uint64_t(avail) ? len : uint64_t(avail);
  uint64_t a = n < iov[0].iov_len ? n : iov[0].iov_len;
  memcpy(dst, iov[0].iov_base, a);
  if (n > a) memcpy(static_cast<uint8_t*>(dst) + a, iov[1].iov_base, n - a);
  cons_release(r, n);
  return int64_t(n);
}

}  // namespace sg

// What the pump needs from "a ring pair": an inbound ring (bytes for the fd)
// and an outbound ring (bytes from the fd). The shm rings implement it today;
// the RDMA rings will implement it later, over the same pump.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>

#include "region.h"
#include "ring.h"

namespace sg {

class RingEndpoint {
 public:
  virtual ~RingEndpoint() = default;
  // Inbound (ring -> fd). Negative results are -errno; -EBADMSG = corrupt.
  virtual int64_t in_peek(struct iovec iov[2]) = 0;
  virtual int in_release(uint64_t n) = 0;  // tells the peer if it waits for space
  virtual int in_eof() = 0;                // 1 when empty and ended, 0, or -errno
  virtual bool in_arm() = 0;               // ask for a doorbell; true if data came meanwhile
  // Outbound (fd -> ring).
  virtual int64_t out_reserve(struct iovec iov[2]) = 0;
  virtual int out_commit(uint64_t n) = 0;  // tells the peer if it waits for data
  virtual bool out_arm() = 0;              // ask for a doorbell; true if space came meanwhile
  virtual int out_eof() = 0;               // end of stream after the last byte
  // Doorbells written to the peer so far (the rest were suppressed: it was awake).
  uint64_t bells = 0;
};

// The gateway's end of one shm slot. Holds the region (mapping) alive; the
// pump has claimed the slot, so nobody else touches these views.
class ShmEndpoint final : public RingEndpoint {
 public:
  ShmEndpoint(std::shared_ptr<Region> region, uint32_t slot)
      : region_(std::move(region)), slot_(slot), in_(region_->consumer(slot)), out_(region_->producer(slot)) {}
  bool ok() const { return in_ && out_; }
  Region* region() const { return region_.get(); }
  uint32_t slot() const { return slot_; }
  RingView* inbound() const { return in_; }
  RingView* outbound() const { return out_; }

  int64_t in_peek(struct iovec iov[2]) override { return cons_peek(*in_, iov); }
  int in_release(uint64_t n) override {
    cons_release(*in_, n);
    return cons_should_notify(*in_) ? notify() : 0;
  }
  int in_eof() override { return cons_check_eof(*in_); }
  bool in_arm() override { return cons_arm_data(*in_); }
  int64_t out_reserve(struct iovec iov[2]) override { return prod_reserve(*out_, iov); }
  int out_commit(uint64_t n) override {
    prod_commit(*out_, n);
    return prod_should_notify(*out_) ? notify() : 0;
  }
  bool out_arm() override { return prod_arm_space(*out_); }
  int out_eof() override {
    prod_set_eof(*out_);
    full_barrier();
    // The consumer may sleep waiting for data: EOF is news too.
    if (exchange(&out_->ctl->need_data, 0u) != 0) return notify();
    return 0;
  }

 private:
  int notify() {
    bool rang = false;
    int err = region_->notify_peer(slot_, &rang);
    if (rang) bells++;
    return err;
  }
  std::shared_ptr<Region> region_;
  uint32_t slot_;
  RingView* in_;
  RingView* out_;
};

}  // namespace sg

// A shared-memory region: one sealed memfd, mapped once, holding the header,
// the slot table, the notification bitmaps and one ring arena per slot and
// direction. One region per client session. The region owns the memfd and the
// mapping (not the doorbell eventfds, which it only references).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "layout.h"
#include "ring.h"

namespace sg {

// An eventfd, owned; closed by the destructor. Shared by the JS object, the
// regions that ring it and the pump that waits on it.
class EventFd {
 public:
  static int create(std::shared_ptr<EventFd>* out);
  static int adopt(int fd, std::shared_ptr<EventFd>* out);  // takes ownership
  ~EventFd();
  int fd() const { return fd_; }
  int signal() const;          // add 1; never blocks
  int64_t drain() const;       // read and reset; 0 if nothing pending
 private:
  explicit EventFd(int fd) : fd_(fd) {}
  int fd_;
};

enum class Role { Gateway, Client };

struct RegionParams {
  uint32_t slots = 64;
  uint32_t max_ring_log2 = 20;      // 1 MiB arena per ring
  uint64_t byte_limit = ~uint64_t(0);  // granted ring bytes this region may hold
};

// Gateway-wide cap on granted ring bytes, across regions.
void set_gateway_ring_limit(uint64_t bytes);
uint64_t gateway_ring_bytes();
uint64_t gateway_ring_limit();

class Region {
 public:
  static int create(const RegionParams& p, std::shared_ptr<Region>* out);
  // Client side: validate and map a memfd received from the gateway. Takes
  // ownership of fd even on failure.
  static int attach(int fd, std::shared_ptr<Region>* out);
  ~Region();

  Role role() const { return role_; }
  uint32_t id() const { return id_; }
  int fd() const { return fd_; }
  uint64_t size() const { return geo_.region_size; }
  uint32_t slot_count() const { return geo_.slot_count; }
  uint32_t max_ring_log2() const { return geo_.max_ring_log2; }
  uint8_t* base() const { return base_; }
  const shm::Geometry& geometry() const { return geo_; }
  uint64_t granted_bytes() const { return granted_.load(); }
  uint64_t byte_limit() const { return params_.byte_limit; }

  // Doorbells: `local` is the one we wait on, `peer` the one we ring.
  void set_doorbells(std::shared_ptr<EventFd> local, std::shared_ptr<EventFd> peer);
  const std::shared_ptr<EventFd>& local_doorbell() const { return local_; }
  const std::shared_ptr<EventFd>& peer_doorbell() const { return peer_; }

  // Gateway: open a slot with both rings at 1 << log2 bytes (charged against
  // the limits), close it (pages punched out of the memfd).
  int open_slot(uint32_t slot, uint32_t log2);
  int close_slot(uint32_t slot);
  bool slot_open(uint32_t slot) const;
  // Gateway: grant a new size for one ring; takes effect when it is empty.
  // -EBUSY while an earlier grant is pending.
  int request_resize(uint32_t slot, uint32_t dir, uint32_t log2);
  // Gateway: once a ring runs at a smaller size than its arena, give the
  // arena's unused tail back to the system (pages punched out of the memfd).
  int trim_ring(uint32_t slot, uint32_t dir);

  // The ring this side produces into / consumes from, for a slot. The client
  // opens its views lazily from the shared slot state. nullptr if not open.
  RingView* producer(uint32_t slot);
  RingView* consumer(uint32_t slot);
  uint32_t produce_dir() const { return role_ == Role::Gateway ? shm::kDirG2C : shm::kDirC2G; }
  uint32_t consume_dir() const { return role_ == Role::Gateway ? shm::kDirC2G : shm::kDirG2C; }

  // Tell the peer something changed for `slot` (bitmap hint + doorbell if it
  // sleeps). Returns -errno of the eventfd write, 0 otherwise; *rang tells
  // whether the doorbell was written (the peer slept) or suppressed.
  int notify_peer(uint32_t slot, bool* rang = nullptr);
  // Take the hints the peer left for us; calls fn(slot) for each valid one.
  // Returns the number of hints (bits outside slot_count are ignored).
  uint32_t take_hints(const std::function<void(uint32_t)>& fn);
  // Before sleeping: set our sleep flag, barrier, and report whether hints
  // arrived meanwhile (then do not sleep). clear_sleeping() when awake.
  bool prepare_sleep();
  // Hints waiting for us? Reads the summary words only (no flag, no barrier):
  // the spinning side polls this while its sleep flag stays clear.
  bool has_hints() const;
  void clear_sleeping();

  // Gateway: compare the immutable header with what we wrote.
  bool header_intact() const;

  // Exclusive use of a slot's rings by one owner (the pump, or JS calls).
  bool claim(uint32_t slot);
  void unclaim(uint32_t slot);
  bool claimed(uint32_t slot) const;

  // Latched on corruption (gateway): the session is dead.
  std::atomic<bool> corrupt{false};

 private:
  Region() = default;
  int map(int prot);
  shm::RegionHeader* header() const { return reinterpret_cast<shm::RegionHeader*>(base_); }
  shm::SlotCtl* slots() const { return reinterpret_cast<shm::SlotCtl*>(base_ + geo_.slot_table_off); }
  uint8_t* arena(uint32_t slot, uint32_t dir) const {
    return base_ + geo_.ring_area_off + ((uint64_t(slot) * 2 + dir) << geo_.max_ring_log2);
  }
  uint64_t* summary(int target) const;
  uint64_t* words(int target) const;
  int charge(uint64_t bytes);
  void uncharge(uint64_t bytes);
  RingView* view(uint32_t slot, uint32_t dir);

  Role role_ = Role::Gateway;
  uint32_t id_ = 0;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  shm::Geometry geo_;
  RegionParams params_;
  shm::RegionHeader expected_{};          // gateway: the header as written
  std::vector<RingView> views_;           // [slot * 2 + dir], private state
  std::unique_ptr<std::atomic<uint8_t>[]> claims_;
  std::atomic<uint64_t> granted_{0};
  std::shared_ptr<EventFd> local_, peer_;
};

}  // namespace sg

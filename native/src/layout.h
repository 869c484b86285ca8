// Shared-memory region layout (see native/SHM.md). Host byte order, which
// sockgate requires to be little-endian; every offset and size is explicit.
#pragma once

#include <cstddef>
#include <cstdint>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "sockgate shm layout is little-endian");

namespace sg::shm {

constexpr uint64_t kRegionMagic = 0x3152474D48534753ull;  // "SGSHMGR1" in memory order
constexpr uint32_t kRegionVersion = 1;
constexpr size_t kCacheLine = 64;
constexpr size_t kPage = 4096;
constexpr uint32_t kMinRingLog2 = 12;   // 4 KiB: one page
constexpr uint32_t kMaxRingLog2 = 26;   // 64 MiB: the largest arena a slot may reserve
constexpr uint32_t kMaxSlots = 65536;

// Directions of the two rings of a slot.
constexpr uint32_t kDirC2G = 0;  // client produces, gateway consumes
constexpr uint32_t kDirG2C = 1;  // gateway produces, client consumes

// Values of RingCtl::eof (written by the producer).
constexpr uint32_t kEofNone = 0;
constexpr uint32_t kEofSet = 1;

// One ring's control block: four cache lines, each with a single writer.
struct alignas(kCacheLine) RingCtl {
  // Line 0, written by the producer.
  uint64_t tail;        // free-running count of bytes produced
  uint32_t size_gen;    // generation of the size the producer is using
  uint32_t size_log2;   // log2 of that size
  uint32_t eof;         // kEofSet after the last tail store
  uint32_t need_space;  // producer found the ring full and waits (consumer clears)
  uint8_t pad0[kCacheLine - 24];
  // Line 1, written by the consumer.
  uint64_t head;        // free-running count of bytes consumed
  uint32_t need_data;   // consumer found the ring empty and waits (producer clears)
  uint32_t reserved1;
  uint8_t pad1[kCacheLine - 16];
  // Line 2, written by the gateway only.
  uint32_t grant_gen;   // size generation the gateway grants next
  uint32_t grant_log2;  // log2 of the granted size
  uint32_t slot_state;  // 0 closed, else the slot's open generation
  uint32_t reserved2;
  uint8_t pad2[kCacheLine - 16];
  // Line 3, reserved (zero).
  uint8_t reserved3[kCacheLine];
};
static_assert(sizeof(RingCtl) == 256, "RingCtl is four cache lines");
static_assert(offsetof(RingCtl, tail) == 0, "layout");
static_assert(offsetof(RingCtl, head) == 64, "layout");
static_assert(offsetof(RingCtl, grant_gen) == 128, "layout");

struct SlotCtl {
  RingCtl ring[2];  // [kDirC2G], [kDirG2C]
};
static_assert(sizeof(SlotCtl) == 512, "SlotCtl is two rings");

// Page 0 of the region.
struct alignas(kCacheLine) RegionHeader {
  // Line 0: immutable after the gateway creates the region.
  uint64_t magic;           // kRegionMagic
  uint32_t version;         // kRegionVersion
  uint32_t flags;           // 0; unknown bits make the attacher refuse
  uint64_t region_size;     // bytes, equals the sealed memfd size
  uint32_t slot_count;
  uint32_t max_ring_log2;   // arena size per ring
  uint64_t slot_table_off;  // SlotCtl[slot_count]
  uint64_t notify_off;      // notification bitmaps
  uint64_t ring_area_off;   // arenas: (slot * 2 + dir) << max_ring_log2
  uint8_t pad0[kCacheLine - 56];
  // Line 1: written by the gateway.
  uint32_t gw_sleeping;     // gateway is about to sleep on its doorbell
  uint32_t reserved1;
  uint8_t pad1[kCacheLine - 8];
  // Line 2: written by the client.
  uint32_t cl_sleeping;     // client is about to sleep on its doorbell
  uint32_t reserved2;
  uint8_t pad2[kCacheLine - 8];
};
static_assert(sizeof(RegionHeader) == 192, "header is three cache lines");
static_assert(offsetof(RegionHeader, gw_sleeping) == 64, "layout");
static_assert(offsetof(RegionHeader, cl_sleeping) == 128, "layout");

// Geometry derived from (slot_count, max_ring_log2); both sides compute it and
// the attacher compares it with what the header claims.
struct Geometry {
  uint32_t slot_count = 0;
  uint32_t max_ring_log2 = 0;
  uint64_t slot_table_off = 0;
  uint64_t notify_off = 0;
  uint64_t hint_words = 0;     // u64 words per bitmap
  uint64_t summary_words = 0;  // u64 words per summary
  uint64_t notify_bytes = 0;   // both directions
  uint64_t ring_area_off = 0;
  uint64_t region_size = 0;
};

inline uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Notification area: for each target side (0 = to gateway, 1 = to client):
// summary[summary_words] then words[hint_words], each part cache-line aligned.
inline uint64_t notify_part_bytes(uint64_t words) { return round_up(words * 8, kCacheLine); }

inline int compute_geometry(uint32_t slots, uint32_t max_log2, Geometry* g) {
  if (slots == 0 || slots > kMaxSlots) return -22;
  if (max_log2 < kMinRingLog2 || max_log2 > kMaxRingLog2) return -22;
  g->slot_count = slots;
  g->max_ring_log2 = max_log2;
  g->slot_table_off = kPage;
  uint64_t table = round_up(uint64_t(slots) * sizeof(SlotCtl), kPage);
  g->notify_off = g->slot_table_off + table;
  g->hint_words = (slots + 63) / 64;
  g->summary_words = (g->hint_words + 63) / 64;
  g->notify_bytes = 2 * (notify_part_bytes(g->summary_words) + notify_part_bytes(g->hint_words));
  g->ring_area_off = round_up(g->notify_off + g->notify_bytes, kPage);
  g->region_size = g->ring_area_off + (uint64_t(slots) * 2 << max_log2);
  return 0;
}

}  // namespace sg::shm

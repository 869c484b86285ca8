#include "region.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "barrier.h"

namespace sg {

namespace {
std::atomic<uint32_t> g_next_region_id{1};
std::atomic<uint64_t> g_gateway_bytes{0};
std::atomic<uint64_t> g_gateway_limit{~uint64_t(0)};
constexpr int kToGateway = 0;
constexpr int kToClient = 1;
}  // namespace

void set_gateway_ring_limit(uint64_t bytes) { g_gateway_limit.store(bytes); }
uint64_t gateway_ring_bytes() { return g_gateway_bytes.load(); }
uint64_t gateway_ring_limit() { return g_gateway_limit.load(); }

// ---- EventFd ----------------------------------------------------------------

int EventFd::create(std::shared_ptr<EventFd>* out) {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return -errno;
  out->reset(new EventFd(fd));
  return 0;
}

int EventFd::adopt(int fd, std::shared_ptr<EventFd>* out) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  out->reset(new EventFd(fd));
  return 0;
}

EventFd::~EventFd() {
  if (fd_ >= 0) close(fd_);
}

int EventFd::signal() const {
  uint64_t one = 1;
  ssize_t n = write(fd_, &one, sizeof one);
  if (n == sizeof one) return 0;
  if (n < 0 && errno == EAGAIN) return 0;  // counter saturated: already pending
  return n < 0 ? -errno : -EIO;
}

int64_t EventFd::drain() const {
  uint64_t v = 0;
  ssize_t n = read(fd_, &v, sizeof v);
  if (n == sizeof v) return int64_t(v);
  if (n < 0 && errno == EAGAIN) return 0;
  return n < 0 ? -errno : -EIO;
}

// ---- Region -----------------------------------------------------------------

int Region::map(int prot) {
  void* p = mmap(nullptr, geo_.region_size, prot, MAP_SHARED | MAP_NORESERVE, fd_, 0);
  if (p == MAP_FAILED) return -errno;
  base_ = static_cast<uint8_t*>(p);
  views_.assign(size_t(geo_.slot_count) * 2, RingView{});
  claims_.reset(new std::atomic<uint8_t>[geo_.slot_count]);
  for (uint32_t i = 0; i < geo_.slot_count; i++) claims_[i].store(0);
  return 0;
}

int Region::create(const RegionParams& p, std::shared_ptr<Region>* out) {
  std::shared_ptr<Region> r(new Region());
  int err = compute_geometry(p.slots, p.max_ring_log2, &r->geo_);
  if (err) return err;
  r->params_ = p;
  r->role_ = Role::Gateway;
  r->id_ = g_next_region_id.fetch_add(1);
  r->fd_ = memfd_create("sockgate-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (r->fd_ < 0) return -errno;
  // Sparse: ftruncate allocates nothing; pages appear when first touched.
  if (ftruncate(r->fd_, off_t(r->geo_.region_size)) < 0) return -errno;
  // The client must not be able to shrink the file under our mapping (SIGBUS).
  if (fcntl(r->fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) return -errno;
  if ((err = r->map(PROT_READ | PROT_WRITE))) return err;
  shm::RegionHeader& h = r->expected_;
  h.magic = shm::kRegionMagic;
  h.version = shm::kRegionVersion;
  h.flags = 0;
  h.region_size = r->geo_.region_size;
  h.slot_count = r->geo_.slot_count;
  h.max_ring_log2 = r->geo_.max_ring_log2;
  h.slot_table_off = r->geo_.slot_table_off;
  h.notify_off = r->geo_.notify_off;
  h.ring_area_off = r->geo_.ring_area_off;
  memcpy(r->base_, &h, offsetof(shm::RegionHeader, pad0));
  *out = std::move(r);
  return 0;
}

int Region::attach(int fd, std::shared_ptr<Region>* out) {
  std::shared_ptr<Region> r(new Region());
  r->fd_ = fd;  // owned from here: the destructor closes it on every path
  r->role_ = Role::Client;
  r->id_ = g_next_region_id.fetch_add(1);
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return -errno;
  if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) return -EPERM;
  if (uint64_t(st.st_size) < shm::kPage) return -EPROTO;
  shm::RegionHeader h;
  if (pread(fd, &h, sizeof h, 0) != ssize_t(sizeof h)) return -EPROTO;
  if (h.magic != shm::kRegionMagic) return -EPROTO;
  if (h.version != shm::kRegionVersion) return -EPROTONOSUPPORT;
  if (h.flags != 0) return -EPROTONOSUPPORT;
  int err = compute_geometry(h.slot_count, h.max_ring_log2, &r->geo_);
  if (err) return -EPROTO;
  if (h.region_size != r->geo_.region_size || h.region_size != uint64_t(st.st_size) ||
      h.slot_table_off != r->geo_.slot_table_off || h.notify_off != r->geo_.notify_off ||
      h.ring_area_off != r->geo_.ring_area_off)
    return -EPROTO;
  if ((err = r->map(PROT_READ | PROT_WRITE))) return err;
  *out = std::move(r);
  return 0;
}

Region::~Region() {
  // Reverse order of creation: give back the charge, unmap, close the memfd.
  uint64_t g = granted_.exchange(0);
  if (g) g_gateway_bytes.fetch_sub(g);
  if (base_) munmap(base_, geo_.region_size);
  if (fd_ >= 0) close(fd_);
}

void Region::set_doorbells(std::shared_ptr<EventFd> local, std::shared_ptr<EventFd> peer) {
  local_ = std::move(local);
  peer_ = std::move(peer);
}

int Region::charge(uint64_t bytes) {
  uint64_t cur = granted_.load();
  do {
    if (cur + bytes > params_.byte_limit) return -ENOBUFS;
  } while (!granted_.compare_exchange_weak(cur, cur + bytes));
  uint64_t g = g_gateway_bytes.load();
  do {
    if (g + bytes > g_gateway_limit.load()) {
      granted_.fetch_sub(bytes);
      return -ENOBUFS;
    }
  } while (!g_gateway_bytes.compare_exchange_weak(g, g + bytes));
  return 0;
}

void Region::uncharge(uint64_t bytes) {
  granted_.fetch_sub(bytes);
  g_gateway_bytes.fetch_sub(bytes);
}

RingView* Region::view(uint32_t slot, uint32_t dir) {
  if (slot >= geo_.slot_count || dir > 1) return nullptr;
  RingView& v = views_[size_t(slot) * 2 + dir];
  if (role_ == Role::Gateway) return v.open ? &v : nullptr;
  // Client: follow the slot the gateway opened (and reopened: a new open
  // generation means fresh cursors).
  shm::RingCtl* ctl = &slots()[slot].ring[dir];
  uint32_t state = load_acquire(&ctl->slot_state);
  if (v.open && state == v.slot_gen) return &v;
  v.open = false;
  if (state == 0) return nullptr;
  uint32_t l = load_relaxed(&ctl->size_log2);
  if (l < shm::kMinRingLog2 || l > geo_.max_ring_log2) return nullptr;
  ring_init(v, ctl, arena(slot, dir), geo_.max_ring_log2, false, l);
  v.slot_gen = state;
  return &v;
}

RingView* Region::producer(uint32_t slot) { return view(slot, produce_dir()); }
RingView* Region::consumer(uint32_t slot) { return view(slot, consume_dir()); }

bool Region::slot_open(uint32_t slot) const {
  return slot < geo_.slot_count && views_[size_t(slot) * 2].open;
}

int Region::open_slot(uint32_t slot, uint32_t log2) {
  if (role_ != Role::Gateway) return -EPERM;
  if (slot >= geo_.slot_count) return -ERANGE;
  if (log2 < shm::kMinRingLog2 || log2 > geo_.max_ring_log2) return -EINVAL;
  if (views_[size_t(slot) * 2].open) return -EEXIST;
  int err = charge(2 * (uint64_t(1) << log2));
  if (err) return err;
  static std::atomic<uint32_t> open_gen{1};
  uint32_t state = open_gen.fetch_add(1) | 1u;
  for (uint32_t dir = 0; dir < 2; dir++) {
    shm::RingCtl* ctl = &slots()[slot].ring[dir];
    store_relaxed(&ctl->tail, uint64_t(0));
    store_relaxed(&ctl->head, uint64_t(0));
    store_relaxed(&ctl->eof, 0u);
    store_relaxed(&ctl->need_space, 0u);
    store_relaxed(&ctl->need_data, 0u);
    store_relaxed(&ctl->size_log2, log2);
    store_relaxed(&ctl->size_gen, 1u);
    store_relaxed(&ctl->grant_log2, log2);
    store_relaxed(&ctl->grant_gen, 1u);
    store_release(&ctl->slot_state, state);  // the client opens its view after this
    ring_init(views_[size_t(slot) * 2 + dir], ctl, arena(slot, dir), geo_.max_ring_log2, true, log2);
  }
  return 0;
}

int Region::close_slot(uint32_t slot) {
  if (role_ != Role::Gateway) return -EPERM;
  if (slot >= geo_.slot_count) return -ERANGE;
  if (!views_[size_t(slot) * 2].open) return 0;  // idempotent
  if (claimed(slot)) return -EBUSY;
  uint64_t bytes = 0;
  for (uint32_t dir = 0; dir < 2; dir++) {
    RingView& v = views_[size_t(slot) * 2 + dir];
    // What is charged is the last grant (a grow charges at the request, a
    // shrink gives back at the request), adopted or not.
    bytes += uint64_t(1) << v.grant_log2;
    store_release(&v.ctl->slot_state, 0u);
    v = RingView{};
  }
  uncharge(bytes);
  // Give the arena pages back to the system: both rings are contiguous.
  uint64_t off = geo_.ring_area_off + ((uint64_t(slot) * 2) << geo_.max_ring_log2);
  uint64_t len = uint64_t(2) << geo_.max_ring_log2;
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(off), off_t(len)) < 0) {
    int e = errno;
    if (madvise(base_ + off, len, MADV_REMOVE) < 0) return -e;
  }
  return 0;
}

int Region::request_resize(uint32_t slot, uint32_t dir, uint32_t log2) {
  if (role_ != Role::Gateway) return -EPERM;
  if (slot >= geo_.slot_count || dir > 1) return -ERANGE;
  RingView& v = views_[size_t(slot) * 2 + dir];
  if (!v.open) return -ENOTCONN;
  if (log2 < shm::kMinRingLog2 || log2 > geo_.max_ring_log2) return -EINVAL;
  if (v.resize_pending()) return -EBUSY;
  if (log2 == v.size_log2) return 0;
  if (log2 > v.size_log2) {
    int err = charge((uint64_t(1) << log2) - v.size());
    if (err) return err;
  } else {
    uncharge(v.size() - (uint64_t(1) << log2));
  }
  v.grant_log2 = log2;
  v.grant_gen = v.gen + 1;
  if (v.grant_gen == 0) v.grant_gen = 1;
  store_relaxed(&v.ctl->grant_log2, log2);
  store_release(&v.ctl->grant_gen, v.grant_gen);  // the client producer adopts after this
  return 0;
}

int Region::trim_ring(uint32_t slot, uint32_t dir) {
  if (role_ != Role::Gateway) return -EPERM;
  if (slot >= geo_.slot_count || dir > 1) return -ERANGE;
  RingView& v = views_[size_t(slot) * 2 + dir];
  if (!v.open || v.gen != v.grant_gen) return -EBUSY;  // the larger size may still be in use
  uint64_t keep = uint64_t(1) << v.size_log2;
  uint64_t len = (uint64_t(1) << geo_.max_ring_log2) - keep;
  if (len == 0) return 0;
  uint64_t off = geo_.ring_area_off + ((uint64_t(slot) * 2 + dir) << geo_.max_ring_log2) + keep;
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(off), off_t(len)) < 0) {
    int e = errno;
    if (madvise(base_ + off, len, MADV_REMOVE) < 0) return -e;
  }
  return 0;
}

uint64_t* Region::summary(int target) const {
  uint64_t part = shm::notify_part_bytes(geo_.summary_words) + shm::notify_part_bytes(geo_.hint_words);
  return reinterpret_cast<uint64_t*>(base_ + geo_.notify_off + part * uint64_t(target));
}

uint64_t* Region::words(int target) const {
  return reinterpret_cast<uint64_t*>(reinterpret_cast<uint8_t*>(summary(target)) +
                                     shm::notify_part_bytes(geo_.summary_words));
}

int Region::notify_peer(uint32_t slot, bool* rang) {
  int target = role_ == Role::Gateway ? kToClient : kToGateway;
  uint32_t w = slot / 64;
  fetch_or(&words(target)[w], uint64_t(1) << (slot % 64));
  fetch_or(&summary(target)[w / 64], uint64_t(1) << (w % 64));  // also a full barrier
  uint32_t* peer_sleep = role_ == Role::Gateway ? &header()->cl_sleeping : &header()->gw_sleeping;
  if (load_relaxed(peer_sleep) == 0 || !peer_) return 0;
  if (rang) *rang = true;
  return peer_->signal();
}

uint32_t Region::take_hints(const std::function<void(uint32_t)>& fn) {
  int target = role_ == Role::Gateway ? kToGateway : kToClient;
  uint64_t* sum = summary(target);
  uint64_t* wd = words(target);
  uint32_t n = 0;
  for (uint64_t i = 0; i < geo_.summary_words; i++) {
    if (load_relaxed(&sum[i]) == 0) continue;
    uint64_t s = exchange(&sum[i], uint64_t(0));
    while (s) {
      uint64_t b = uint64_t(__builtin_ctzll(s));
      s &= s - 1;
      uint64_t w = i * 64 + b;
      if (w >= geo_.hint_words) continue;  // hostile bit: ignore
      uint64_t bits = exchange(&wd[w], uint64_t(0));
      while (bits) {
        uint64_t k = uint64_t(__builtin_ctzll(bits));
        bits &= bits - 1;
        uint64_t slot = w * 64 + k;
        if (slot < geo_.slot_count) {
          n++;
          fn(uint32_t(slot));
        }
      }
    }
  }
  return n;
}

bool Region::prepare_sleep() {
  uint32_t* mine = role_ == Role::Gateway ? &header()->gw_sleeping : &header()->cl_sleeping;
  store_relaxed(mine, 1u);
  full_barrier();  // flag before the bitmap re-check (pairs with notify_peer)
  int target = role_ == Role::Gateway ? kToGateway : kToClient;
  uint64_t* sum = summary(target);
  for (uint64_t i = 0; i < geo_.summary_words; i++)
    if (load_relaxed(&sum[i]) != 0) return true;
  return false;
}

bool Region::has_hints() const {
  uint64_t* sum = summary(role_ == Role::Gateway ? kToGateway : kToClient);
  for (uint64_t i = 0; i < geo_.summary_words; i++)
    if (load_relaxed(&sum[i]) != 0) return true;
  return false;
}

void Region::clear_sleeping() {
  uint32_t* mine = role_ == Role::Gateway ? &header()->gw_sleeping : &header()->cl_sleeping;
  store_relaxed(mine, 0u);
}

bool Region::header_intact() const {
  return memcmp(base_, &expected_, offsetof(shm::RegionHeader, pad0)) == 0;
}

bool Region::claim(uint32_t slot) {
  if (slot >= geo_.slot_count) return false;
  uint8_t z = 0;
  return claims_[slot].compare_exchange_strong(z, 1);
}

void Region::unclaim(uint32_t slot) {
  if (slot < geo_.slot_count) claims_[slot].store(0);
}

bool Region::claimed(uint32_t slot) const { return slot < geo_.slot_count && claims_[slot].load() != 0; }

}  // namespace sg

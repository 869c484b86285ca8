// Ring and region unit tests: plain asserts, no framework. Run by run.sh
// (optionally under -fsanitize=address,undefined). Every loop is bounded.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "../src/region.h"
#include "../src/ring.h"

using namespace sg;

#define CHECK(c)                                                             \
  do {                                                                       \
    if (!(c)) {                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                               \
    }                                                                        \
  } while (0)

static int g_scale = 1;  // divides the big counts under sanitizers

// A standalone ring pair over heap memory (exactly sized, so ASan catches any
// access outside the arena).
struct HeapRing {
  std::unique_ptr<shm::RingCtl> ctl{new shm::RingCtl()};
  std::vector<uint8_t> arena;
  RingView prod, cons;
  HeapRing(uint32_t log2, uint32_t arena_log2, bool strict_consumer = false) : arena(size_t(1) << arena_log2) {
    memset(ctl.get(), 0, sizeof(shm::RingCtl));
    ctl->size_log2 = log2;
    ctl->size_gen = 1;
    ctl->grant_log2 = log2;
    ctl->grant_gen = 1;
    ring_init(prod, ctl.get(), arena.data(), arena_log2, false, log2);
    ring_init(cons, ctl.get(), arena.data(), arena_log2, strict_consumer, log2);
  }
  // Start both cursors at `at` (to test counters near 2^64 and every offset).
  void start_at(uint64_t at) {
    ctl->tail = ctl->head = at;
    prod.pos = prod.peer = at;
    cons.pos = cons.peer = at;
  }
};

static uint8_t pattern(uint64_t i) { return uint8_t((i * 2654435761u) >> 13); }

static void test_wrap_every_offset() {
  const uint32_t log2 = 12;
  const uint64_t size = 1u << log2;
  std::vector<uint8_t> in(size), out(size);
  for (uint64_t i = 0; i < size; i++) in[i] = pattern(i);
  const uint64_t lens[] = {1, 7, size / 2, size - 1, size};
  for (uint64_t base : {uint64_t(0), ~uint64_t(0) - size * 2}) {
    for (uint64_t off = 0; off < size; off++) {
      HeapRing r(log2, log2);
      r.start_at(base + off);
      for (uint64_t len : lens) {
        CHECK(prod_write(r.prod, in.data(), len) == int64_t(len));
        memset(out.data(), 0, len);
        CHECK(cons_read(r.cons, out.data(), size) == int64_t(len));
        CHECK(memcmp(in.data(), out.data(), len) == 0);
      }
    }
  }
  printf("ok wraparound at every offset (size %lu, incl. counters near 2^64)\n", (unsigned long)size);
}

static void test_full_empty_larger() {
  HeapRing r(12, 14);
  const uint64_t size = 4096;
  std::vector<uint8_t> buf(3 * size + 5);
  for (size_t i = 0; i < buf.size(); i++) buf[i] = pattern(i);
  struct iovec iov[2];
  CHECK(cons_peek(r.cons, iov) == 0);                          // empty
  CHECK(cons_read(r.cons, buf.data(), 10) == 0);
  CHECK(prod_write(r.prod, buf.data(), buf.size()) == int64_t(size));  // larger than ring: short
  CHECK(prod_write(r.prod, buf.data(), 1) == 0);               // full
  CHECK(prod_reserve(r.prod, iov) == 0);
  CHECK(!prod_arm_space(r.prod));
  CHECK(r.ctl->need_space == 1);
  std::vector<uint8_t> out(buf.size());
  CHECK(cons_read(r.cons, out.data(), 100) == 100);
  CHECK(cons_should_notify(r.cons));  // producer was waiting: notify once
  CHECK(!cons_should_notify(r.cons));
  CHECK(cons_read(r.cons, out.data() + 100, out.size()) == int64_t(size - 100));
  CHECK(memcmp(out.data(), buf.data(), size) == 0);
  // Stream a buffer larger than the ring through it.
  uint64_t w = size, rd = size;
  for (int guard = 0; rd < buf.size() && guard < 100; guard++) {
    int64_t n = prod_write(r.prod, buf.data() + w, buf.size() - w);
    CHECK(n >= 0);
    w += uint64_t(n);
    n = cons_read(r.cons, out.data() + rd, 1000);
    CHECK(n >= 0);
    rd += uint64_t(n);
  }
  CHECK(rd == buf.size() && memcmp(out.data(), buf.data(), buf.size()) == 0);
  // EOF after the last byte.
  CHECK(cons_check_eof(r.cons) == 0);
  CHECK(prod_write(r.prod, "xy", 2) == 2);
  prod_set_eof(r.prod);
  CHECK(cons_check_eof(r.cons) == 0);  // bytes before EOF first
  char two[2];
  CHECK(cons_read(r.cons, two, 2) == 2);
  CHECK(cons_check_eof(r.cons) == 1);
  printf("ok full, empty, larger-than-ring, eof\n");
}

static void test_resize() {
  // Client producer, gateway (strict) consumer; the gateway grants sizes.
  HeapRing r(12, 16, true);
  std::vector<uint8_t> buf(1 << 16), out(1 << 16);
  for (size_t i = 0; i < buf.size(); i++) buf[i] = pattern(i);
  CHECK(prod_write(r.prod, buf.data(), 100) == 100);
  // Grant 64 KiB while not empty: not adopted until empty.
  r.cons.grant_log2 = 16;
  r.cons.grant_gen = 2;
  r.ctl->grant_log2 = 16;
  store_release(&r.ctl->grant_gen, 2u);
  CHECK(prod_write(r.prod, buf.data() + 100, 1 << 16) == 4096 - 100);
  CHECK(cons_read(r.cons, out.data(), 1 << 16) == 4096);
  CHECK(r.cons.size_log2 == 12);
  CHECK(prod_write(r.prod, buf.data(), 1 << 16) == 1 << 16);  // adopted: 64 KiB now
  CHECK(r.prod.size_log2 == 16 && r.ctl->size_gen == 2);
  CHECK(cons_read(r.cons, out.data(), 1 << 16) == 1 << 16);
  CHECK(r.cons.size_log2 == 16 && !r.cons.resize_pending());
  CHECK(memcmp(buf.data(), out.data(), 1 << 16) == 0);
  // A producer claiming a generation the gateway never granted is corrupt.
  HeapRing bad(12, 16, true);
  CHECK(prod_write(bad.prod, buf.data(), 10) == 10);
  CHECK(cons_read(bad.cons, out.data(), 10) == 10);
  bad.ctl->size_gen = 7;
  bad.ctl->size_log2 = 16;
  bad.ctl->tail += 10;
  CHECK(cons_read(bad.cons, out.data(), 10) == -EBADMSG);
  printf("ok resize protocol (grant, adopt on empty, reject ungranted)\n");
}

static void test_hostile_values() {
  std::mt19937_64 rng(42);
  std::vector<uint8_t> out(1 << 14);
  int corrupt = 0;
  // Targeted cases.
  {
    HeapRing r(12, 12, true);
    r.ctl->tail = 4097;  // more than a ring ahead
    CHECK(cons_read(r.cons, out.data(), 10) == -EBADMSG);
    CHECK(cons_read(r.cons, out.data(), 10) == -EBADMSG);  // sticky
  }
  {
    HeapRing r(12, 12, true);
    CHECK(prod_write(r.prod, "abcdef", 6) == 6);
    CHECK(cons_read(r.cons, out.data(), 1) == 1);
    struct iovec iov[2];
    CHECK(cons_peek(r.cons, iov, 1) == 5);
    r.ctl->tail = 3;  // backwards
    CHECK(cons_peek(r.cons, iov) == -EBADMSG);
  }
  {
    HeapRing r(12, 12, true);
    r.ctl->head = 5;  // consumer claims to have read unwritten bytes
    struct iovec iov[2];
    CHECK(prod_reserve(r.prod, iov) == -EBADMSG);
  }
  {
    HeapRing r(12, 12, false);
    r.ctl->grant_gen = 9;
    r.ctl->grant_log2 = 40;  // client producer: a grant outside the arena
    struct iovec iov[2];
    CHECK(prod_reserve(r.prod, iov) == -EBADMSG);
  }
  {
    HeapRing r(12, 12, true);
    r.ctl->eof = 0x55;
    CHECK(cons_check_eof(r.cons) == -EBADMSG);
  }
  // Random scribbling: every op either works within bounds or reports
  // EBADMSG; ASan checks we never touch memory outside the arena.
  const int rounds = 200000 / g_scale;
  for (int i = 0; i < rounds; i++) {
    HeapRing r(12, 13, (i & 1) != 0);
    uint64_t* words = reinterpret_cast<uint64_t*>(r.ctl.get());
    for (int k = 0; k < 8; k++) {
      struct iovec iov[2];
      int64_t a = prod_reserve(r.prod, iov, 1);
      if (a > 0) {
        CHECK(iov[0].iov_len + iov[1].iov_len == uint64_t(a));
        CHECK(static_cast<uint8_t*>(iov[0].iov_base) >= r.arena.data());
        CHECK(static_cast<uint8_t*>(iov[0].iov_base) + iov[0].iov_len <= r.arena.data() + r.arena.size());
        CHECK(iov[1].iov_len <= r.arena.size());
        memset(iov[0].iov_base, 0xAB, iov[0].iov_len);
        memset(iov[1].iov_base, 0xAB, iov[1].iov_len);
        prod_commit(r.prod, uint64_t(a) / 2);
      }
      int64_t n = cons_read(r.cons, out.data(), out.size());
      if (n == -EBADMSG) corrupt++;
      CHECK(n >= 0 || n == -EBADMSG);
      (void)cons_check_eof(r.cons);
      // Scribble one random word of the control block.
      size_t w = rng() % (sizeof(shm::RingCtl) / 8);
      switch (rng() % 4) {
        case 0: words[w] = rng(); break;
        case 1: words[w] += rng() % 8192; break;
        case 2: words[w] -= rng() % 8192; break;
        default: words[w] = rng() % 32; break;
      }
    }
  }
  CHECK(corrupt > 0);
  printf("ok hostile control values (%d rounds, %d detected corrupt)\n", rounds, corrupt);
}

// Concurrent producer/consumer threads: length-prefixed messages with content
// derived from the sequence number; optional doorbells and resizes.
struct Msg {
  static uint32_t len_of(uint64_t seq) { return 1 + uint32_t((seq * 7919) % 200); }
  static uint8_t byte(uint64_t seq, uint32_t i) { return uint8_t(seq * 31 + i * 7); }
};

static void wait_fd(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  int r = poll(&p, 1, 10000);
  CHECK(r == 1);  // a lost wakeup would hang here: fail after 10 s instead
  uint64_t v;
  CHECK(read(fd, &v, 8) == 8);
}

static void test_threads(bool doorbells, uint64_t count) {
  HeapRing r(12, 16, true);
  std::shared_ptr<EventFd> to_prod, to_cons;
  CHECK(EventFd::create(&to_prod) == 0);
  CHECK(EventFd::create(&to_cons) == 0);
  std::atomic<bool> failed{false};
  auto t0 = std::chrono::steady_clock::now();
  std::thread producer([&] {
    std::vector<uint8_t> m(256);
    for (uint64_t seq = 0; seq < count; seq++) {
      uint32_t len = Msg::len_of(seq);
      memcpy(m.data(), &len, 4);
      for (uint32_t i = 0; i < len; i++) m[4 + i] = Msg::byte(seq, i);
      uint64_t done = 0;
      for (int spins = 0; done < len + 4;) {
        int64_t n = prod_write(r.prod, m.data() + done, len + 4 - done);
        if (n < 0) { failed = true; return; }
        if (n > 0) {
          done += uint64_t(n);
          if (doorbells && prod_should_notify(r.prod)) to_cons->signal();
          continue;
        }
        if (!doorbells) { if (++spins > 100) { std::this_thread::yield(); spins = 0; } continue; }
        if (!prod_arm_space(r.prod)) wait_fd(to_prod->fd());
      }
    }
    prod_set_eof(r.prod);
    if (doorbells) { full_barrier(); to_cons->signal(); }
  });
  uint64_t got = 0, bytes = 0, resizes = 0;
  std::vector<uint8_t> m(256);
  uint64_t have = 0;
  for (;;) {
    int64_t n = cons_read(r.cons, m.data() + have, 4 + 200 - have);
    CHECK(n >= 0);
    if (n == 0) {
      if (cons_check_eof(r.cons) == 1) break;
      if (doorbells) {
        if (!cons_arm_data(r.cons)) wait_fd(to_cons->fd());
      } else {
        std::this_thread::yield();
      }
      continue;
    }
    if (doorbells && cons_should_notify(r.cons)) to_prod->signal();
    have += uint64_t(n);
    bytes += uint64_t(n);
    for (;;) {
      if (have < 4) break;
      uint32_t len;
      memcpy(&len, m.data(), 4);
      CHECK(len == Msg::len_of(got));
      if (have < 4 + len) break;
      for (uint32_t i = 0; i < len; i++) CHECK(m[4 + i] == Msg::byte(got, i));
      memmove(m.data(), m.data() + 4 + len, have - 4 - len);
      have -= 4 + len;
      got++;
    }
    // The consumer (gateway side) grants a new size now and then.
    if ((got & 0x3FFF) == 0 && !r.cons.resize_pending()) {
      uint32_t l = 12 + uint32_t((got >> 14) % 5);
      if (l != r.cons.size_log2) {
        r.cons.grant_log2 = l;
        r.cons.grant_gen = r.cons.gen + 1;
        store_relaxed(&r.ctl->grant_log2, l);
        store_release(&r.ctl->grant_gen, r.cons.grant_gen);
        resizes++;
      }
    }
  }
  producer.join();
  CHECK(!failed);
  CHECK(got == count && have == 0);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  printf("ok threads %s: %lu messages, %lu bytes, %lu resizes, %.2f s\n", doorbells ? "doorbell" : "spin",
         (unsigned long)got, (unsigned long)bytes, (unsigned long)resizes, s);
}

static void test_region() {
  RegionParams p;
  p.slots = 130;
  p.max_ring_log2 = 16;
  p.byte_limit = 6 * 65536 + 8192 + 4096;
  std::shared_ptr<Region> gw;
  CHECK(Region::create(p, &gw) == 0);
  // Seals: the client cannot shrink or grow the file.
  CHECK(ftruncate(gw->fd(), 4096) < 0 && errno == EPERM);
  std::shared_ptr<Region> cl;
  CHECK(Region::attach(dup(gw->fd()), &cl) == 0);
  CHECK(cl->slot_count() == 130 && cl->size() == gw->size());
  std::shared_ptr<EventFd> gw_bell, cl_bell;
  CHECK(EventFd::create(&gw_bell) == 0 && EventFd::create(&cl_bell) == 0);
  gw->set_doorbells(gw_bell, cl_bell);
  cl->set_doorbells(cl_bell, gw_bell);

  CHECK(cl->producer(129) == nullptr);  // not open yet
  CHECK(gw->open_slot(129, 12) == 0);
  CHECK(gw->open_slot(129, 12) == -EEXIST);
  CHECK(gw->open_slot(130, 12) == -ERANGE);
  CHECK(gw->open_slot(1, 17) == -EINVAL);
  CHECK(gw->open_slot(2, 16) == 0);
  CHECK(gw->open_slot(3, 16) == 0);
  CHECK(gw->open_slot(4, 16) == 0);
  CHECK(gw->open_slot(5, 12) == -ENOBUFS);  // byte limit: 6 x 64 KiB + 2 x 4 KiB granted
  CHECK(gw->close_slot(4) == 0);
  CHECK(gw->close_slot(4) == 0);  // idempotent
  CHECK(gw->open_slot(5, 12) == 0);

  RingView* cp = cl->producer(129);
  RingView* gc = gw->consumer(129);
  CHECK(cp && gc && gc->strict && !cp->strict);
  CHECK(prod_write(*cp, "hello", 5) == 5);
  // The gateway is awake: the hint is left, no doorbell.
  CHECK(cl->notify_peer(129) == 0);
  CHECK(gw_bell->drain() == 0);
  std::vector<uint32_t> seen;
  CHECK(gw->take_hints([&](uint32_t s) { seen.push_back(s); }) == 1 && seen[0] == 129);
  CHECK(gw->take_hints([&](uint32_t) { CHECK(false); }) == 0);
  // The gateway sleeps: the doorbell rings.
  CHECK(!gw->prepare_sleep());
  CHECK(cl->notify_peer(129) == 0);
  CHECK(gw_bell->drain() == 1);
  CHECK(gw->prepare_sleep());  // the hint is pending: do not sleep
  gw->clear_sleeping();
  char buf[8];
  CHECK(cons_read(*gc, buf, 8) == 5 && memcmp(buf, "hello", 5) == 0);

  // Hostile hint bits outside slot_count are ignored.
  uint8_t* base = cl->base();
  uint64_t* sum = reinterpret_cast<uint64_t*>(base + cl->geometry().notify_off);
  sum[0] = ~uint64_t(0);
  uint64_t* wd = sum + shm::notify_part_bytes(cl->geometry().summary_words) / 8;
  wd[0] = ~uint64_t(0);
  wd[1] = ~uint64_t(0);
  wd[2] = ~uint64_t(0);
  uint32_t hints = gw->take_hints([&](uint32_t s) { CHECK(s < 130); });
  CHECK(hints == 130);

  // Touch a 64 KiB ring, then close: its pages leave the memfd.
  RingView* gp = gw->producer(2);
  std::vector<uint8_t> big(65536, 0x5A);
  CHECK(prod_write(*gp, big.data(), big.size()) == 65536);
  struct stat st1, st2;
  CHECK(fstat(gw->fd(), &st1) == 0);
  CHECK(gw->close_slot(2) == 0);
  CHECK(fstat(gw->fd(), &st2) == 0);
  CHECK(st1.st_blocks - st2.st_blocks >= 65536 / 512);
  CHECK(gw->header_intact());
  reinterpret_cast<shm::RegionHeader*>(cl->base())->slot_count = 5;
  CHECK(!gw->header_intact());

  // Attach refuses a bad header and an unsealed memfd.
  int bad = memfd_create("bad", MFD_ALLOW_SEALING);
  CHECK(ftruncate(bad, 1 << 20) == 0);
  CHECK(fcntl(bad, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  std::shared_ptr<Region> r2;
  CHECK(Region::attach(bad, &r2) == -EPROTO);  // takes ownership of bad
  int unsealed = memfd_create("u", 0);
  CHECK(ftruncate(unsealed, 1 << 20) == 0);
  CHECK(Region::attach(unsealed, &r2) == -EPERM);
  printf("ok region: seals, slots, limits, hints, doorbell suppression, punch hole, attach validation\n");
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (const char* s = getenv("SOCKGATE_TEST_SCALE")) g_scale = atoi(s) > 0 ? atoi(s) : 1;
  test_wrap_every_offset();
  test_full_empty_larger();
  test_resize();
  test_hostile_values();
  test_region();
  test_threads(false, 4000000 / g_scale);
  test_threads(true, 2000000 / g_scale);
  printf("all ring tests passed\n");
  return 0;
}

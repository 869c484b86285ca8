// Ring-cursor fuzzer: random ring sizes, starting cursors (near 0, near 2^64,
// anywhere), random write/read lengths, and a hostile peer that now and then
// scribbles a cursor or another control word. Honest rounds must deliver the
// exact byte stream; once the peer lied, every call must stay inside the
// arena and either work or report -EBADMSG (ASan checks the bounds under
// `run.sh asan`). Seeded: SOCKGATE_FUZZ_SEED=<n> replays a run, else a random
// seed is printed; rounds are bounded (SOCKGATE_FUZZ_ROUNDS, default 3000).
#include <sys/uio.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "../src/ring.h"

using namespace sg;

static unsigned long long g_seed = 0;

#define CHECK(c)                                                                                     \
  do {                                                                                               \
    if (!(c)) {                                                                                      \
      fprintf(stderr, "%s:%d: CHECK failed: %s\nring fuzz seed %llu; reproduce with: "              \
                      "SOCKGATE_FUZZ_SEED=%llu sh native/test/run.sh\n",                             \
              __FILE__, __LINE__, #c, g_seed, g_seed);                                               \
      abort();                                                                                       \
    }                                                                                                \
  } while (0)

// One ring: control block and arena on the heap, exactly sized (ASan sees any overrun).
struct HeapRing {
  std::unique_ptr<shm::RingCtl> ctl{new shm::RingCtl()};
  std::vector<uint8_t> arena;
  RingView prod, cons;
  HeapRing(uint32_t log2, uint32_t arena_log2, bool strict_consumer, uint64_t at) : arena(size_t(1) << arena_log2) {
    memset(ctl.get(), 0, sizeof(shm::RingCtl));
    ctl->size_log2 = log2;
    ctl->size_gen = 1;
    ctl->grant_log2 = log2;
    ctl->grant_gen = 1;
    ring_init(prod, ctl.get(), arena.data(), arena_log2, false, log2);
    ring_init(cons, ctl.get(), arena.data(), arena_log2, strict_consumer, log2);
    ctl->tail = ctl->head = at;
    prod.pos = prod.peer = at;
    cons.pos = cons.peer = at;
  }
};

// The byte at stream offset i (relative to the round's first byte).
static uint8_t byte_at(uint64_t i, uint64_t salt) { return uint8_t(((i + salt) * 2654435761u) >> 11); }

static bool in_arena(const HeapRing& r, const struct iovec& v) {
  const uint8_t* b = static_cast<const uint8_t*>(v.iov_base);
  if (v.iov_len == 0) return true;
  return b >= r.arena.data() && b + v.iov_len <= r.arena.data() + r.arena.size();
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const char* env = getenv("SOCKGATE_FUZZ_SEED");
  if (env && *env) g_seed = strtoull(env, nullptr, 10);
  else g_seed = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
  int rounds = 3000;
  if (const char* r = getenv("SOCKGATE_FUZZ_ROUNDS")) rounds = atoi(r) > 0 ? atoi(r) : rounds;
  if (const char* s = getenv("SOCKGATE_TEST_SCALE")) rounds /= atoi(s) > 0 ? atoi(s) : 1;
  printf("ring fuzz: seed %llu, %d rounds (reproduce with: SOCKGATE_FUZZ_SEED=%llu sh native/test/run.sh)\n", g_seed, rounds, g_seed);
  std::mt19937_64 rng(g_seed);
  std::vector<uint8_t> buf(1 << 16), out(1 << 16);
  long honest_bytes = 0, lies = 0, detected = 0;
  for (int round = 0; round < rounds; round++) {
    const uint32_t arena_log2 = shm::kMinRingLog2 + uint32_t(rng() % 5);
    const uint32_t log2 = shm::kMinRingLog2 + uint32_t(rng() % (arena_log2 - shm::kMinRingLog2 + 1));
    uint64_t at;
    switch (rng() % 3) {
      case 0: at = rng() % 4096; break;
      case 1: at = ~uint64_t(0) - rng() % (uint64_t(1) << (log2 + 1)); break;  // wraps 2^64 during the round
      default: at = rng(); break;
    }
    HeapRing r(log2, arena_log2, (rng() & 1) != 0, at);
    const uint64_t salt = rng();
    uint64_t written = 0, read = 0;
    bool lied = false;
    const int ops = 20 + int(rng() % 60);
    for (int op = 0; op < ops; op++) {
      const uint64_t w = rng() % (r.arena.size() + 64);
      if (rng() % 4 != 0) {
        for (uint64_t i = 0; i < w && i < buf.size(); i++) buf[i] = byte_at(written + i, salt);
        int64_t n = prod_write(r.prod, buf.data(), w < buf.size() ? w : buf.size());
        if (!lied) CHECK(n >= 0 && uint64_t(n) <= r.prod.size() - (written - read));
        else CHECK(n >= 0 || n == -EBADMSG);
        if (n > 0) written += uint64_t(n);
      } else {
        struct iovec iov[2] = {};
        int64_t n = prod_reserve(r.prod, iov, 1);
        CHECK(n >= 0 || n == -EBADMSG);
        if (n > 0) {
          CHECK(in_arena(r, iov[0]) && in_arena(r, iov[1]) && iov[0].iov_len + iov[1].iov_len == uint64_t(n));
          const uint64_t c = rng() % (uint64_t(n) + 1);
          uint64_t k = 0;
          for (int p = 0; p < 2; p++)
            for (uint64_t i = 0; i < iov[p].iov_len && k < c; i++, k++) static_cast<uint8_t*>(iov[p].iov_base)[i] = byte_at(written + k, salt);
          prod_commit(r.prod, c);
          written += c;
        }
      }
      const uint64_t want = rng() % (r.arena.size() + 64);
      int64_t n = cons_read(r.cons, out.data(), want < out.size() ? want : out.size());
      if (!lied) {
        CHECK(n >= 0 && read + uint64_t(n) <= written);
        for (int64_t i = 0; i < n; i++) CHECK(out[size_t(i)] == byte_at(read + uint64_t(i), salt));
        honest_bytes += n;
      } else {
        CHECK(n >= 0 || n == -EBADMSG);
        if (n == -EBADMSG) detected++;
      }
      if (n > 0) read += uint64_t(n);
      int e = cons_check_eof(r.cons);
      CHECK(e == 0 || e == 1 || e == -EBADMSG);
      // The hostile peer: a lie about a cursor (mostly) or another control word.
      if (rng() % 16 == 0) {
        lied = true;
        lies++;
        switch (rng() % 8) {
          case 0: r.ctl->tail = rng(); break;
          case 1: r.ctl->tail += rng() % (r.arena.size() * 2); break;
          case 2: r.ctl->tail -= rng() % 64 + 1; break;
          case 3: r.ctl->head = rng(); break;
          case 4: r.ctl->head += rng() % (r.arena.size() * 2); break;
          case 5: r.ctl->head -= rng() % 64 + 1; break;
          case 6: r.ctl->size_log2 = uint32_t(rng() % 64); r.ctl->size_gen = uint32_t(rng() % 4); break;
          default: r.ctl->eof = uint32_t(rng() % 3); break;
        }
      }
    }
    if (!lied) {
      // Drain: an honest ring gives back exactly what was written, then EOF.
      prod_set_eof(r.prod);
      for (int guard = 0; read < written && guard < 1024; guard++) {
        int64_t n = cons_read(r.cons, out.data(), out.size());
        CHECK(n > 0);
        for (int64_t i = 0; i < n; i++) CHECK(out[size_t(i)] == byte_at(read + uint64_t(i), salt));
        read += uint64_t(n);
      }
      CHECK(read == written);
      CHECK(cons_check_eof(r.cons) == 1);
    }
  }
  CHECK(lies > 0 && honest_bytes > 0);
  printf("ok ring fuzz (seed %llu: %d rounds, %ld honest bytes checked, %ld lies, %ld detected)\n", g_seed, rounds, honest_bytes, lies, detected);
  return 0;
}

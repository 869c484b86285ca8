// Shared by the pump's and the splice relay's native tests: loopback TCP pairs, a patterned
// writer/reader (every byte checked), a gateway/client region pair on one
// memfd, and an event collector for a pump's sink. Every wait is bounded.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "../src/pump.h"

using namespace sg;

#define CHECK(c)                                                             \
  do {                                                                       \
    if (!(c)) {                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                               \
    }                                                                        \
  } while (0)

inline int g_scale = 1;  // divides the big counts under sanitizers

struct Events {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<PumpEvent> all;
  void add(std::vector<PumpEvent>&& b) {
    std::lock_guard<std::mutex> g(mu);
    for (auto& e : b) all.push_back(std::move(e));
    cv.notify_all();
  }
  bool end_of(uint32_t id, PumpEvent* out, int ms) {
    std::unique_lock<std::mutex> g(mu);
    return cv.wait_for(g, std::chrono::milliseconds(ms), [&] {
      for (auto& e : all)
        if (e.type == PumpEvent::kEnd && e.id == id) return *out = e, true;
      return false;
    });
  }
  // Bytes the progress events of link `id` reported, toward the host or the client.
  uint64_t progress(uint32_t id, bool to_host) {
    std::lock_guard<std::mutex> g(mu);
    uint64_t n = 0;
    for (auto& e : all)
      if (e.type == PumpEvent::kProgress && e.id == id) n += to_host ? e.a : e.b;
    return n;
  }
  int count(uint32_t id, PumpEvent::Type t) {
    std::lock_guard<std::mutex> g(mu);
    int n = 0;
    for (auto& e : all) n += e.type == t && e.id == id;
    return n;
  }
};

inline void tcp_pair(int* a, int* b) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(ls >= 0);
  struct sockaddr_in sa = {};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  CHECK(listen(ls, 1) == 0);
  socklen_t l = sizeof sa;
  CHECK(getsockname(ls, reinterpret_cast<sockaddr*>(&sa), &l) == 0);
  *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(*a >= 0);
  CHECK(connect(*a, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  *b = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  CHECK(*b >= 0);
  close(ls);
}

inline uint8_t pattern(uint64_t i, uint32_t seed) { return uint8_t((i * 2654435761u + seed) >> 7); }

inline void writer(int fd, uint64_t n, uint32_t seed) {
  std::vector<uint8_t> buf(1 << 16);
  for (uint64_t off = 0; off < n;) {
    size_t k = size_t(n - off < buf.size() ? n - off : buf.size());
    for (size_t i = 0; i < k; i++) buf[i] = pattern(off + i, seed);
    ssize_t w = send(fd, buf.data(), k, MSG_NOSIGNAL);
    CHECK(w > 0);
    off += uint64_t(w);
  }
  CHECK(shutdown(fd, SHUT_WR) == 0);
}

// Read to EOF checking `prefix`, then the pattern; bytes read (prefix
// included), or -errno / -EBADMSG.
inline int64_t reader(int fd, uint32_t seed, const std::string& prefix = std::string()) {
  std::vector<uint8_t> buf(1 << 16);
  uint64_t got = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 20000) != 1) return -ETIMEDOUT;
    ssize_t r = recv(fd, buf.data(), buf.size(), 0);
    if (r < 0) return -errno;
    if (r == 0) return int64_t(got);
    for (ssize_t i = 0; i < r; i++, got++) {
      uint8_t want = got < prefix.size() ? uint8_t(prefix[got]) : pattern(got - prefix.size(), seed);
      if (buf[i] != want) return -EBADMSG;
    }
  }
}

struct Pair {
  std::shared_ptr<Region> gw, cl;
};

inline Pair region_pair() {
  Pair p;
  RegionParams rp;
  rp.slots = 4;
  rp.max_ring_log2 = 20;
  CHECK(Region::create(rp, &p.gw) == 0);
  CHECK(Region::attach(dup(p.gw->fd()), &p.cl) == 0);
  std::shared_ptr<EventFd> gb, cb;
  CHECK(EventFd::create(&gb) == 0);
  CHECK(EventFd::create(&cb) == 0);
  p.gw->set_doorbells(gb, cb);
  p.cl->set_doorbells(cb, gb);
  return p;
}

// Ring link tests on both ends of one slot: a gateway pump links the slot to
// a "host" TCP socket, a client pump links the same slot (Role::Client) to an
// "app" TCP socket. Plain asserts; run by run.sh (also under ASan/UBSan);
// every wait is bounded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
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

static int g_scale = 1;

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
  int count(uint32_t id, PumpEvent::Type t) {
    std::lock_guard<std::mutex> g(mu);
    int n = 0;
    for (auto& e : all) n += e.type == t && e.id == id;
    return n;
  }
};

static void tcp_pair(int* a, int* b) {
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

static uint8_t pattern(uint64_t i, uint32_t seed) { return uint8_t((i * 2654435761u + seed) >> 7); }

static void writer(int fd, uint64_t n, uint32_t seed) {
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

// Read to EOF checking the pattern; bytes read, or -errno / -EBADMSG.
static int64_t reader(int fd, uint32_t seed) {
  std::vector<uint8_t> buf(1 << 16);
  uint64_t got = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 20000) != 1) return -ETIMEDOUT;
    ssize_t r = recv(fd, buf.data(), buf.size(), 0);
    if (r < 0) return -errno;
    if (r == 0) return int64_t(got);
    for (ssize_t i = 0; i < r; i++, got++)
      if (buf[i] != pattern(got, seed)) return -EBADMSG;
  }
}

struct Pair {
  std::shared_ptr<Region> gw, cl;
};

static Pair region_pair() {
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

// Bulk both ways with half-close through both links; totals read on demand.
static void test_bulk(Pump& gp, Pump& cp, Events& gev, Events& cev) {
  Pair r = region_pair();
  CHECK(r.gw->open_slot(1, 14) == 0);
  int host, host_gw, app, app_cl;
  tcp_pair(&host, &host_gw);
  tcp_pair(&app, &app_cl);
  uint32_t gid = 0, cid = 0;
  std::shared_ptr<LinkFd> cfd;
  CHECK(cp.add_link(r.cl, 3, app_cl, "", &cid, &cfd) == -ENOTCONN);  // a slot the gateway never opened
  CHECK(gp.add_link(r.gw, 1, host_gw, "", &gid) == 0);
  CHECK(cp.add_link(r.cl, 1, app_cl, "", &cid, &cfd) == 0);
  cfd->quiet.store(true);
  CHECK(cp.add_link(r.cl, 1, app_cl, "", &cid, &cfd) == -EBUSY);  // claimed
  const uint64_t n = uint64_t(24 << 20) / uint64_t(g_scale);
  std::thread w1(writer, app, n, 1), w2(writer, host, n, 2);
  int64_t at_host = 0, at_app = 0;
  std::thread r1([&] { at_host = reader(host, 1); }), r2([&] { at_app = reader(app, 2); });
  w1.join(), w2.join(), r1.join(), r2.join();
  CHECK(at_host == int64_t(n));
  CHECK(at_app == int64_t(n));
  PumpEvent ge(PumpEvent::kEnd), ce(PumpEvent::kEnd);
  CHECK(gev.end_of(gid, &ge, 10000) && std::string(ge.code) == "ok");
  CHECK(cev.end_of(cid, &ce, 10000) && std::string(ce.code) == "ok");
  CHECK(ce.a == n && ce.b == n);
  CHECK(cfd->total_to_fd.load() == n && cfd->total_to_ring.load() == n);
  CHECK(cev.count(cid, PumpEvent::kProgress) == 0);  // quiet
  CHECK(cev.count(cid, PumpEvent::kRingEof) == 1 && cev.count(cid, PumpEvent::kFdEof) == 1);
  close(host), close(app);
  CHECK(r.gw->close_slot(1) == 0);
  printf("ok bulk both ways, half-close through a client and a gateway ring link\n");
}

// A host reset ends the gateway link with an error and puts no EOF in the
// ring: the client side sees no clean end; closing it with reset resets the app.
static void test_reset(Pump& gp, Pump& cp, Events& gev, Events& cev) {
  Pair r = region_pair();
  CHECK(r.gw->open_slot(2, 14) == 0);
  int host, host_gw, app, app_cl;
  tcp_pair(&host, &host_gw);
  tcp_pair(&app, &app_cl);
  uint32_t gid = 0, cid = 0;
  CHECK(gp.add_link(r.gw, 2, host_gw, "", &gid) == 0);
  CHECK(cp.add_link(r.cl, 2, app_cl, "", &cid) == 0);
  struct linger lg = {1, 0};
  CHECK(setsockopt(host, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  close(host);  // RST
  PumpEvent ge(PumpEvent::kEnd), ce(PumpEvent::kEnd);
  CHECK(gev.end_of(gid, &ge, 10000) && std::string(ge.code) == "error");
  // No EOF reached the app: a poll shows nothing to read for a while.
  struct pollfd p = {app, POLLIN, 0};
  CHECK(poll(&p, 1, 200) == 0);
  cp.close_link(cid, true);
  CHECK(cev.end_of(cid, &ce, 10000) && std::string(ce.code) == "aborted");
  char b;
  CHECK(poll(&p, 1, 5000) == 1);
  CHECK(recv(app, &b, 1, 0) < 0 && errno == ECONNRESET);
  close(app);
  CHECK(r.gw->close_slot(2) == 0);
  printf("ok a reset passes as an error (no EOF in the ring), then as a reset\n");
}

int main() {
  signal(SIGPIPE, SIG_IGN);
  if (const char* s = getenv("SOCKGATE_TEST_SCALE")) g_scale = atoi(s) > 0 ? atoi(s) : 1;
  Events gev, cev;
  std::unique_ptr<Pump> gp, cp;
  PumpOptions o;
  CHECK(Pump::create(o, [&](std::vector<PumpEvent>&& b) { gev.add(std::move(b)); }, &gp) == 0);
  CHECK(Pump::create(o, [&](std::vector<PumpEvent>&& b) { cev.add(std::move(b)); }, &cp) == 0);
  test_bulk(*gp, *cp, gev, cev);
  test_reset(*gp, *cp, gev, cev);
  gp->stop();
  cp->stop();
  gp.reset();
  cp.reset();
  printf("all ring link tests passed\n");
  return 0;
}

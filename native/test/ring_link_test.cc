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

#include "link_harness.h"

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

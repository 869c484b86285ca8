// Splice link tests through the Pump: plain asserts, no framework. Run by
// run.sh (optionally under -fsanitize=address,undefined). TCP loopback pairs;
// every wait is bounded by a deadline.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "link_harness.h"

struct Rig {
  int client_peer = -1, host_peer = -1;  // the test's ends
  uint32_t id = 0;
  std::shared_ptr<SpliceShared> shared;
};

static Rig make(Pump& p, std::string to_host, std::string to_client, uint32_t pipe_bytes, bool copy) {
  Rig r;
  int c_gw, h_gw;
  tcp_pair(&r.client_peer, &c_gw);
  tcp_pair(&h_gw, &r.host_peer);
  CHECK(p.add_splice(c_gw, h_gw, to_host, to_client, pipe_bytes, copy, &r.id, &r.shared) == 0);
  return r;
}

static void test_bulk(Pump& p, Events& ev, bool copy) {
  const uint64_t n = (uint64_t(32) << 20) / uint64_t(g_scale) + 7;
  std::string hp = "to-host prefix|", cp(100000, 'c');
  Rig r = make(p, hp, cp, 1 << 18, copy);
  int64_t up = 0, down = 0;
  std::thread w1(writer, r.client_peer, n, 1u), w2(writer, r.host_peer, n, 2u);
  std::thread r1([&] { up = reader(r.host_peer, 1u, hp); });
  std::thread r2([&] { down = reader(r.client_peer, 2u, cp); });
  w1.join();
  w2.join();
  r1.join();
  r2.join();
  CHECK(up == int64_t(n + hp.size()));
  CHECK(down == int64_t(n + cp.size()));
  PumpEvent e(PumpEvent::kEnd);
  CHECK(ev.end_of(r.id, &e, 10000));
  CHECK(e.err == 0 && e.code == "ok");
  CHECK(e.a == n + hp.size() && e.b == n + cp.size());
  CHECK(ev.progress(r.id, true) == e.a && ev.progress(r.id, false) == e.b);
  CHECK(r.shared->buffered() == 0);
  close(r.client_peer);
  close(r.host_peer);
  printf("ok %s: %lu bytes each way with prefixes, totals and progress agree\n", copy ? "copy fallback" : "splice", (unsigned long)n);
}

static void test_backpressure_and_reset(Pump& p, Events& ev) {
  const uint32_t pipe = 1 << 16;
  Rig r = make(p, "", "", pipe, false);
  // The host peer never reads: the client writes until its socket is full.
  int fl = 1;
  CHECK(setsockopt(r.client_peer, IPPROTO_TCP, TCP_NODELAY, &fl, sizeof fl) == 0);
  std::vector<uint8_t> buf(1 << 16, 0x5a);
  uint64_t sent = 0, max_buffered = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < until) {
    ssize_t w = send(r.client_peer, buf.data(), buf.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      sent += uint64_t(w);
      continue;
    }
    CHECK(errno == EAGAIN);
    uint64_t b = r.shared->buffered();
    if (b > max_buffered) max_buffered = b;
    struct pollfd pf = {r.client_peer, POLLOUT, 0};
    if (poll(&pf, 1, 300) == 0) break;  // stalled for 300 ms: everything is full
  }
  uint64_t b = r.shared->buffered();
  if (b > max_buffered) max_buffered = b;
  CHECK(max_buffered > 0 && max_buffered <= pipe);
  // The host peer resets: the link ends with an error and resets the client.
  struct linger lg = {1, 0};
  CHECK(setsockopt(r.host_peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  close(r.host_peer);
  PumpEvent e(PumpEvent::kEnd);
  CHECK(ev.end_of(r.id, &e, 10000));
  CHECK(e.code == "error" && (e.err == -ECONNRESET || e.err == -EPIPE));
  // The client sees a reset (after any bytes in flight), not a clean end.
  int64_t got = 0;
  for (int i = 0; i < 10000; i++) {
    struct pollfd pf = {r.client_peer, POLLIN, 0};
    CHECK(poll(&pf, 1, 5000) == 1);
    ssize_t k = recv(r.client_peer, buf.data(), buf.size(), 0);
    if (k > 0) continue;
    got = k < 0 ? -errno : 0;
    break;
  }
  CHECK(got == -ECONNRESET);
  close(r.client_peer);
  printf("ok backpressure (%lu bytes sent, at most %lu buffered, pipe %u) and reset propagation\n", (unsigned long)sent,
         (unsigned long)max_buffered, pipe);
}

static void test_shutdown_abort(Pump& p, Events& ev) {
  Rig r = make(p, "", "", 0, false);
  CHECK(r.shared->watermark() == SpliceRelay::kDefaultPipeBytes || r.shared->watermark() == pipe_max_size());
  CHECK(send(r.client_peer, "abc", 3, MSG_NOSIGNAL) == 3);
  char buf[16];
  struct pollfd pf = {r.host_peer, POLLIN, 0};
  CHECK(poll(&pf, 1, 5000) == 1 && recv(r.host_peer, buf, sizeof buf, 0) == 3);
  p.shutdown_host(r.id, false, true);
  CHECK(poll(&pf, 1, 5000) == 1 && recv(r.host_peer, buf, sizeof buf, 0) == 0);  // FIN at the host peer
  int v = 0;
  CHECK(r.shared->set_host_opt(SOL_SOCKET, SO_SNDBUF, 65536) == 0);
  CHECK(r.shared->get_host_opt(SOL_SOCKET, SO_SNDBUF, &v) == 0 && v == 131072);
  p.close_link(r.id, true);
  p.close_link(r.id, true);  // twice: harmless
  PumpEvent e(PumpEvent::kEnd);
  CHECK(ev.end_of(r.id, &e, 5000));
  CHECK(e.code == "aborted");
  CHECK(r.shared->set_host_opt(SOL_SOCKET, SO_SNDBUF, 65536) == -EBADF);
  CHECK(r.shared->buffered() == 0);
  struct pollfd pc = {r.client_peer, POLLIN, 0};
  CHECK(poll(&pc, 1, 5000) == 1);
  CHECK(recv(r.client_peer, buf, sizeof buf, 0) < 0 && errno == ECONNRESET);
  close(r.client_peer);
  close(r.host_peer);
  // Refusals leave the fds with the caller.
  int a, b;
  tcp_pair(&a, &b);
  int sp[2];
  CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sp) == 0);
  uint32_t id;
  std::shared_ptr<SpliceShared> sh;
  CHECK(p.add_splice(a, sp[0], "", "", 0, false, &id, &sh) == -EPROTOTYPE);
  CHECK(p.add_splice(a, a, "", "", 0, false, &id, &sh) == -EINVAL);
  CHECK(fcntl(a, F_GETFD) >= 0 && fcntl(sp[0], F_GETFD) >= 0);
  close(a);
  close(b);
  close(sp[0]);
  close(sp[1]);
  printf("ok shutdown_host, socket options, abort with reset, refusals\n");
}

int main() {
  signal(SIGPIPE, SIG_IGN);  // as in Node: a gone peer is EPIPE
  if (const char* s = getenv("SOCKGATE_TEST_SCALE")) g_scale = atoi(s) > 0 ? atoi(s) : 1;
  Events ev;
  std::unique_ptr<Pump> p;
  PumpOptions o;
  CHECK(Pump::create(o, [&](std::vector<PumpEvent>&& b) { ev.add(std::move(b)); }, &p) == 0);
  test_bulk(*p, ev, false);
  test_bulk(*p, ev, true);
  test_backpressure_and_reset(*p, ev);
  test_shutdown_abort(*p, ev);
  // A link still open when the pump stops is closed by it (ASan checks nothing leaks).
  Rig r = make(*p, "x", "y", 4096, false);
  p->stop();
  CHECK(p->live_links() == 0);
  close(r.client_peer);
  close(r.host_peer);
  p.reset();
  printf("ok pump stop with a live splice link\n");
  return 0;
}

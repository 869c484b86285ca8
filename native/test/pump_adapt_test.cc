// The pump's adaptive parts: the spin budget (spin_policy.h), the idle shrink
// of grown rings (bytes exact across grow and shrink, charges and memory
// given back), and batching (a burst of small writes rides one read, one
// doorbell, one write, counted by the pump's stats). Plain asserts; run by
// run.sh (also under ASan/UBSan); every wait is bounded.
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/stat.h>

#include <string>
#include <thread>

#include "../src/spin_policy.h"
#include "link_harness.h"

static void test_spin_policy() {
  SpinPolicy s(0);
  CHECK(s.budget() == 0);
  s.woke(1, false);
  CHECK(s.budget() == 0);  // off stays off
  s.set_max(100);
  CHECK(s.budget() == 100);  // a new setting starts at full budget
  // Idle: every wait longer than the setting halves the budget, down to 0.
  for (int i = 0; i < 6; i++) s.woke(50000, false);
  CHECK(s.budget() == 0);
  // A timer's wake-up is no news: it backs off too.
  s.set_max(0);
  s.set_max(100);
  s.woke(10, true);
  CHECK(s.budget() == 50);
  // Busy again: wake-ups within the setting grow it back, capped at the setting.
  s.set_max(0);
  s.set_max(100);
  for (int i = 0; i < 8; i++) s.woke(50000, false);
  CHECK(s.budget() == 0);
  s.woke(30, false);
  CHECK(s.budget() == SPIN_START_US);
  for (int i = 0; i < 10; i++) s.woke(30, false);
  CHECK(s.budget() == 100);
  s.hit();
  CHECK(s.budget() == 100);
  printf("ok spin policy: grows on quick wake-ups, backs off to 0 when idle\n");
}

// Writes n1 patterned bytes, pauses, writes n2 more (one stream), then FIN.
static void phased_writer(int fd, uint64_t n1, int pause_ms, uint64_t n2, uint32_t seed) {
  std::vector<uint8_t> buf(1 << 16);
  for (uint64_t off = 0; off < n1 + n2;) {
    if (off == n1) std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    uint64_t lim = off < n1 ? n1 : n1 + n2;
    size_t k = size_t(lim - off < buf.size() ? lim - off : buf.size());
    for (size_t i = 0; i < k; i++) buf[i] = pattern(off + i, seed);
    ssize_t w = send(fd, buf.data(), k, MSG_NOSIGNAL);
    CHECK(w > 0);
    off += uint64_t(w);
  }
  CHECK(shutdown(fd, SHUT_WR) == 0);
}

static int count_code(Events& ev, uint32_t id, const char* code) {
  std::lock_guard<std::mutex> g(ev.mu);
  int n = 0;
  for (auto& e : ev.all) n += e.type == PumpEvent::kProgress && e.id == id && e.code == code;
  return n;
}

static uint64_t memfd_bytes(int fd) {
  struct stat st;
  CHECK(fstat(fd, &st) == 0);
  return uint64_t(st.st_blocks) * 512;
}

// Rings grown under load go back to their first size after an idle spell:
// one patterned stream each way spans the grow and the shrink, every byte checked.
static void test_idle_shrink() {
  Events gev, cev;
  std::unique_ptr<Pump> gp, cp;
  PumpOptions go;
  go.shrink_idle_ms = 100;
  CHECK(Pump::create(go, [&](std::vector<PumpEvent>&& b) { gev.add(std::move(b)); }, &gp) == 0);
  CHECK(Pump::create(PumpOptions(), [&](std::vector<PumpEvent>&& b) { cev.add(std::move(b)); }, &cp) == 0);
  Pair r = region_pair();
  CHECK(r.gw->open_slot(1, 12) == 0);
  CHECK(r.gw->granted_bytes() == 2 * 4096);
  int host, host_gw, app, app_cl;
  tcp_pair(&host, &host_gw);
  tcp_pair(&app, &app_cl);
  uint32_t gid = 0, cid = 0;
  CHECK(gp->add_link(r.gw, 1, host_gw, "", &gid) == 0);
  CHECK(cp->add_link(r.cl, 1, app_cl, "", &cid) == 0);
  const uint64_t n1 = uint64_t(8 << 20) / uint64_t(g_scale), n2 = uint64_t(4 << 20) / uint64_t(g_scale);
  std::thread w1(phased_writer, app, n1, 600, n2, 1), w2(phased_writer, host, n1, 600, n2, 2);
  int64_t at_host = 0, at_app = 0;
  std::thread r1([&] { at_host = reader(host, 1); }), r2([&] { at_app = reader(app, 2); });
  // Grants while bytes flow (as TS would on the stall counters): both rings to 256 KiB.
  gp->resize_link(gid, 0, 18);
  gp->resize_link(gid, 1, 18);
  // The pause: both rings go back to 4 KiB, their charge with them.
  auto t0 = std::chrono::steady_clock::now();
  while (count_code(gev, gid, "shrink") < 2 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(count_code(gev, gid, "resize") == 2);
  CHECK(count_code(gev, gid, "shrink") == 2);
  CHECK(r.gw->granted_bytes() == 2 * 4096);
  w1.join(), w2.join(), r1.join(), r2.join();
  CHECK(at_host == int64_t(n1 + n2));  // every byte, in order, across grow and shrink
  CHECK(at_app == int64_t(n1 + n2));
  PumpEvent ge(PumpEvent::kEnd), ce(PumpEvent::kEnd);
  CHECK(gev.end_of(gid, &ge, 10000) && std::string(ge.code) == "ok");
  CHECK(cev.end_of(cid, &ce, 10000) && std::string(ce.code) == "ok");
  CHECK(gp->stats().shrinks == 2);
  // The small size ran phase 2, and the arenas' tails went back to the system.
  RingView* in = r.gw->consumer(1);
  RingView* out = r.gw->producer(1);
  CHECK(in->size_log2 == 12 && out->size_log2 == 12);
  CHECK(memfd_bytes(r.gw->fd()) < 128 * 1024);
  close(host), close(app);
  CHECK(r.gw->close_slot(1) == 0);
  CHECK(r.gw->granted_bytes() == 0);  // nothing charged twice or left behind
  gp->stop(), cp->stop();
  printf("ok idle shrink: 2 x %lu bytes exact across grow and shrink, rings back to 4 KiB, charge and pages given back\n",
         (unsigned long)(n1 + n2));
}

// A burst of small writes that lands at once rides one read, one doorbell and
// one write; spaced writes each ring (the counters are live).
static void test_burst_batching() {
  Events gev, cev;
  std::unique_ptr<Pump> gp, cp;
  CHECK(Pump::create(PumpOptions(), [&](std::vector<PumpEvent>&& b) { gev.add(std::move(b)); }, &gp) == 0);
  CHECK(Pump::create(PumpOptions(), [&](std::vector<PumpEvent>&& b) { cev.add(std::move(b)); }, &cp) == 0);
  Pair r = region_pair();
  CHECK(r.gw->open_slot(1, 14) == 0);
  int host, host_gw, app, app_cl;
  tcp_pair(&host, &host_gw);
  tcp_pair(&app, &app_cl);
  uint32_t gid = 0, cid = 0;
  CHECK(gp->add_link(r.gw, 1, host_gw, "", &gid) == 0);
  CHECK(cp->add_link(r.cl, 1, app_cl, "", &cid) == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // both pumps asleep
  const int kMsgs = 50, kLen = 64;
  uint64_t off = 0;
  auto burst = [&](bool corked) {
    int one = 1, zero = 0;
    if (corked) CHECK(setsockopt(app, IPPROTO_TCP, TCP_CORK, &one, sizeof one) == 0);
    for (int m = 0; m < kMsgs; m++) {
      uint8_t b[kLen];
      for (int i = 0; i < kLen; i++) b[i] = pattern(off + uint64_t(i), 7);
      CHECK(send(app, b, kLen, MSG_NOSIGNAL) == kLen);
      off += kLen;
      if (!corked) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (corked) CHECK(setsockopt(app, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero) == 0);
  };
  auto drain = [&](uint64_t from, uint64_t n) {
    std::vector<uint8_t> buf(n);
    for (uint64_t got = 0; got < n;) {
      struct pollfd p = {host, POLLIN, 0};
      CHECK(poll(&p, 1, 10000) == 1);
      ssize_t k = recv(host, buf.data() + got, n - got, 0);
      CHECK(k > 0);
      got += uint64_t(k);
    }
    for (uint64_t i = 0; i < n; i++) CHECK(buf[i] == pattern(from + i, 7));
  };
  PumpStats c0 = cp->stats(), g0 = gp->stats();
  burst(true);
  drain(0, kMsgs * kLen);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  PumpStats c1 = cp->stats(), g1 = gp->stats();
  printf("  burst of %d x %d B: client reads %lu, doorbells %lu; gateway wake-ups %lu, writes %lu\n", kMsgs, kLen,
         (unsigned long)(c1.fd_reads - c0.fd_reads), (unsigned long)(c1.doorbells - c0.doorbells),
         (unsigned long)(g1.wakeups - g0.wakeups), (unsigned long)(g1.fd_writes - g0.fd_writes));
  CHECK(c1.fd_reads - c0.fd_reads == 1);
  CHECK(c1.doorbells - c0.doorbells <= 1);
  CHECK(g1.wakeups - g0.wakeups <= 2);
  CHECK(g1.fd_writes - g0.fd_writes == 1);
  // The same writes spaced out: each is its own round trip through the doorbell.
  burst(false);
  drain(uint64_t(kMsgs) * kLen, kMsgs * kLen);
  PumpStats c2 = cp->stats();
  printf("  %d spaced writes: client reads %lu, doorbells %lu\n", kMsgs, (unsigned long)(c2.fd_reads - c1.fd_reads),
         (unsigned long)(c2.doorbells - c1.doorbells));
  CHECK(c2.doorbells - c1.doorbells >= 10);
  gp->close_link(gid), cp->close_link(cid);
  PumpEvent e(PumpEvent::kEnd);
  CHECK(gev.end_of(gid, &e, 10000) && cev.end_of(cid, &e, 10000));
  close(host), close(app);
  CHECK(r.gw->close_slot(1) == 0);
  gp->stop(), cp->stop();
  printf("ok burst batching: one read, one doorbell, one write for a burst\n");
}

int main() {
  signal(SIGPIPE, SIG_IGN);
  if (const char* s = getenv("SOCKGATE_TEST_SCALE")) g_scale = atoi(s) > 0 ? atoi(s) : 1;
  test_spin_policy();
  test_idle_shrink();
  test_burst_batching();
  printf("all pump adapt tests passed\n");
  return 0;
}

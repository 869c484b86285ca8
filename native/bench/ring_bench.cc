// Ring microbenchmark: prints one JSON object. Two threads; throughput at 64 B,
// 4 KiB, 64 KiB messages against single-core memcpy bandwidth measured in the
// same run; 64 B ping-pong latency over rings (spin, doorbell) against TCP
// loopback and a Unix socketpair measured in the same run.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "../src/region.h"
#include "../src/ring.h"

using namespace sg;
using Clock = std::chrono::steady_clock;

static double cpu_now() {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

static double g_cpus = 0;  // CPUs this process actually got during the throughput runs

static double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Ring {
  std::unique_ptr<shm::RingCtl> ctl{new shm::RingCtl()};
  std::vector<uint8_t> arena;
  RingView prod, cons;
  explicit Ring(uint32_t log2) : arena(size_t(1) << log2) {
    memset(ctl.get(), 0, sizeof(shm::RingCtl));
    ctl->size_log2 = ctl->grant_log2 = log2;
    ctl->size_gen = ctl->grant_gen = 1;
    ring_init(prod, ctl.get(), arena.data(), log2, false, log2);
    ring_init(cons, ctl.get(), arena.data(), log2, true, log2);
  }
};

static double memcpy_gbps() {
  const size_t block = 64 * 1024, span = 8 << 20;
  std::vector<uint8_t> src(span, 1), dst(span);
  uint64_t bytes = 0;
  auto t0 = Clock::now();
  while (secs(t0, Clock::now()) < 0.5) {
    for (size_t off = 0; off < span; off += block) memcpy(dst.data() + off, src.data() + off, block);
    bytes += span;
  }
  volatile uint8_t sink = dst[12345];
  (void)sink;
  return double(bytes) / secs(t0, Clock::now()) / 1e9;
}

// Producer copies messages in, consumer copies them out (two copies per byte).
static void throughput(size_t msg, double* msgs_per_s, double* gbps) {
  Ring r(20);  // 1 MiB ring
  std::atomic<bool> stop{false};
  double c0 = cpu_now();
  std::vector<uint8_t> src(msg, 7);
  uint64_t produced = 0;
  std::thread p([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      if (prod_write(r.prod, src.data(), msg) == int64_t(msg)) produced++;
      else cpu_relax();
    }
  });
  // The consumer drains whatever is there (up to 256 KiB per call), like the pump.
  std::vector<uint8_t> dst(256 * 1024);
  uint64_t got = 0;
  auto t0 = Clock::now();
  double el = 0;
  while ((el = secs(t0, Clock::now())) < 0.7) {
    for (int i = 0; i < 256; i++) {
      int64_t n = cons_read(r.cons, dst.data(), dst.size());
      if (n > 0) got += uint64_t(n);
      else cpu_relax();
    }
  }
  stop = true;
  p.join();
  g_cpus = (cpu_now() - c0) / el;
  *msgs_per_s = double(got) / double(msg) / el;
  *gbps = double(got) / el / 1e9;
}

struct Lat { double p50_us, p99_us; };

static Lat summarize(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2] * 1e6, v[v.size() * 99 / 100] * 1e6};
}

static void wait_efd(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  poll(&p, 1, 1000);
  uint64_t v;
  ssize_t n = read(fd, &v, 8);
  (void)n;
}

// Round trip of a 64 B message over two rings; doorbell mode arms and sleeps.
static Lat ring_pingpong(bool doorbell, int iters) {
  Ring ab(16), ba(16);
  std::shared_ptr<EventFd> to_b, to_a;
  EventFd::create(&to_b);
  EventFd::create(&to_a);
  auto recv = [&](Ring& r, std::shared_ptr<EventFd>& bell, uint8_t* buf) {
    for (;;) {
      if (cons_read(r.cons, buf, 64) == 64) return;
      if (!doorbell) { cpu_relax(); continue; }
      if (!cons_arm_data(r.cons)) wait_efd(bell->fd());
    }
  };
  auto send = [&](Ring& r, std::shared_ptr<EventFd>& bell, const uint8_t* buf) {
    prod_write(r.prod, buf, 64);
    if (doorbell && prod_should_notify(r.prod)) bell->signal();
  };
  std::thread b([&] {
    uint8_t buf[64];
    for (int i = 0; i < iters + 100; i++) {
      recv(ab, to_b, buf);
      send(ba, to_a, buf);
    }
  });
  uint8_t msg[64] = {1};
  std::vector<double> lat;
  lat.reserve(size_t(iters));
  for (int i = 0; i < iters + 100; i++) {
    auto t0 = Clock::now();
    send(ab, to_b, msg);
    recv(ba, to_a, msg);
    if (i >= 100) lat.push_back(secs(t0, Clock::now()));
  }
  b.join();
  return summarize(lat);
}

static Lat socket_pingpong(int a, int b, int iters) {
  std::thread echo([&] {
    uint8_t buf[64];
    for (int i = 0; i < iters + 100; i++) {
      size_t got = 0;
      while (got < 64) { ssize_t n = read(b, buf + got, 64 - got); if (n <= 0) return; got += size_t(n); }
      if (write(b, buf, 64) != 64) return;
    }
  });
  uint8_t msg[64] = {1};
  std::vector<double> lat;
  for (int i = 0; i < iters + 100; i++) {
    auto t0 = Clock::now();
    if (write(a, msg, 64) != 64) break;
    size_t got = 0;
    while (got < 64) { ssize_t n = read(a, msg + got, 64 - got); if (n <= 0) break; got += size_t(n); }
    if (i >= 100) lat.push_back(secs(t0, Clock::now()));
  }
  echo.join();
  return summarize(lat);
}

static Lat tcp_pingpong(int iters) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  listen(l, 1);
  getsockname(l, reinterpret_cast<sockaddr*>(&sa), &len);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int s = accept(l, nullptr, nullptr);
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Lat r = socket_pingpong(c, s, iters);
  close(c);
  close(s);
  close(l);
  return r;
}

static Lat unix_pingpong(int iters) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  Lat r = socket_pingpong(sv[0], sv[1], iters);
  close(sv[0]);
  close(sv[1]);
  return r;
}

int main() {
  double mc = memcpy_gbps();
  double m64, g64, m4k, g4k, m64k, g64k;
  throughput(64, &m64, &g64);
  throughput(4096, &m4k, &g4k);
  throughput(65536, &m64k, &g64k);
  double cpus = g_cpus;  // of 2 wanted (two spinning threads)
  const int iters = 20000;
  Lat spin = ring_pingpong(false, iters);
  Lat bell = ring_pingpong(true, iters);
  Lat tcp = tcp_pingpong(iters);
  Lat uds = unix_pingpong(iters);
  printf("{\n");
  printf("  \"cores\": %u,\n", std::thread::hardware_concurrency());
  printf("  \"cpus_obtained_during_64KiB_run\": %.2f,\n", cpus);
  printf("  \"memcpy_single_core_GBps\": %.2f,\n", mc);
  printf("  \"ring_64B\": {\"msgs_per_s\": %.0f, \"GBps\": %.3f},\n", m64, g64);
  printf("  \"ring_4KiB\": {\"msgs_per_s\": %.0f, \"GBps\": %.2f, \"vs_memcpy\": %.2f},\n", m4k, g4k, g4k / mc);
  printf("  \"ring_64KiB\": {\"msgs_per_s\": %.0f, \"GBps\": %.2f, \"vs_memcpy\": %.2f},\n", m64k, g64k, g64k / mc);
  printf("  \"pingpong_64B_rtt_us\": {\n");
  printf("    \"ring_spin\": {\"p50\": %.2f, \"p99\": %.2f},\n", spin.p50_us, spin.p99_us);
  printf("    \"ring_doorbell\": {\"p50\": %.2f, \"p99\": %.2f},\n", bell.p50_us, bell.p99_us);
  printf("    \"tcp_loopback\": {\"p50\": %.2f, \"p99\": %.2f},\n", tcp.p50_us, tcp.p99_us);
  printf("    \"unix_socketpair\": {\"p50\": %.2f, \"p99\": %.2f}\n", uds.p50_us, uds.p99_us);
  printf("  },\n");
  printf("  \"goals\": {\"64KiB_ge_60pct_memcpy\": %s, \"64B_ge_10M_msgs\": %s, \"spin_p50_le_tcp_p50_div_10\": %s}\n",
         g64k / mc >= 0.6 ? "true" : "false", m64 >= 1e7 ? "true" : "false", spin.p50_us <= tcp.p50_us / 10 ? "true" : "false");
  printf("}\n");
  return 0;
}

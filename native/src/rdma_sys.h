// Small system helpers of the rdma connections (rdma_conn*.cc, rdma_listener.cc):
// a monotonic clock, fd flags and closing, timerfds and socket addresses.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace sg {
namespace rdma {

inline int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

inline int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  return 0;
}

// Close a socket with RST (SO_LINGER 0) or FIN.
inline void close_fd(int fd, bool reset) {
  if (fd < 0) return;
  if (reset) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  close(fd);
}

// Periodic, or once (`repeat` false); 0 disarms.
inline int arm_timer(int fd, uint32_t ms, bool repeat = true) {
  struct itimerspec ts = {};
  ts.it_value.tv_sec = ms / 1000;
  ts.it_value.tv_nsec = long(ms % 1000) * 1000000;
  if (repeat) ts.it_interval = ts.it_value;
  return timerfd_settime(fd, 0, &ts, nullptr) < 0 ? -errno : 0;
}

// Reads a timerfd's expiry count (the value is not needed, only the edge).
inline void drain_timer(int fd) {
  uint64_t v;
  ssize_t r = read(fd, &v, sizeof v);
  (void)r;
}

inline std::string addr_str(const sockaddr* sa) {
  if (!sa) return "";
  char buf[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    auto* in = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in->sin6_addr, buf, sizeof buf);
    port = ntohs(in->sin6_port);
  }
  return std::string(buf) + ":" + std::to_string(port);
}

inline int parse_addr(const std::string& addr, uint16_t port, sockaddr_storage* out) {
  memset(out, 0, sizeof *out);
  auto* in = reinterpret_cast<sockaddr_in*>(out);
  if (inet_pton(AF_INET, addr.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    return 0;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(out);
  if (inet_pton(AF_INET6, addr.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return 0;
  }
  return -EINVAL;
}

}  // namespace rdma
}  // namespace sg

// A non-blocking connect(2) finished on the calling (worker) thread: wait for
// POLLOUT up to a deadline and read the outcome from SO_ERROR. Shared by the
// AF_VSOCK and SMC connectors, which Node cannot connect for us.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>

namespace sg {

// 0 when connected, else -errno (-ETIMEDOUT past timeout_ms). The fd stays the caller's.
inline int connect_wait(int fd, const struct sockaddr* sa, socklen_t len, int timeout_ms) {
  if (connect(fd, sa, len) == 0) return 0;
  int err = -errno;
  if (err != -EINPROGRESS && err != -EINTR) return err;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return -ETIMEDOUT;
    struct pollfd p = {fd, POLLOUT, 0};
    int n = poll(&p, 1, int(left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -ETIMEDOUT;
    // POLLOUT (or POLLHUP for a reset): SO_ERROR says which.
    int so = 0;
    socklen_t l = sizeof so;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &l) < 0) return -errno;
    return so ? -so : 0;
  }
}

}  // namespace sg

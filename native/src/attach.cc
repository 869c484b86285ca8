#include "attach.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sg::attach {

namespace {

int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int make_addr(const std::string& path, struct sockaddr_un* a, socklen_t* len) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a->sun_path) return -ENAMETOOLONG;
  memcpy(a->sun_path, path.data(), path.size());
  *len = socklen_t(offsetof(struct sockaddr_un, sun_path) + path.size() + 1);
  return 0;
}

int wait_fd(int fd, short ev, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) return -ETIMEDOUT;
    struct pollfd p = {fd, ev, 0};
    int r = poll(&p, 1, int(left));
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return -errno;
  }
}

}  // namespace

int peer_cred(int fd, int* pid, uint32_t* uid, uint32_t* gid) {
  struct ucred c;
  socklen_t len = sizeof c;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) < 0) return -errno;
  *pid = c.pid;
  *uid = c.uid;
  *gid = c.gid;
  return 0;
}

int listen_unix(const std::string& path, int backlog, int* out_fd) {
  struct sockaddr_un a;
  socklen_t alen;
  int err = make_addr(path, &a, &alen);
  if (err) return err;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&a), alen) < 0 || listen(fd, backlog) < 0) {
    err = -errno;
    close(fd);
    return err;
  }
  *out_fd = fd;
  return 0;
}

int send_reply(int fd, const Reply& r, const int* fds, int nfds) {
  uint8_t buf[kReplySize];
  encode_reply(r, buf);
  struct iovec iov = {buf, sizeof buf};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kFdCount)];
  if (nfds > 0) {
    if (nfds > int(kFdCount)) return -EINVAL;
    memset(ctrl, 0, sizeof ctrl);
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * size_t(nfds));
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * size_t(nfds));
    memcpy(CMSG_DATA(c), fds, sizeof(int) * size_t(nfds));
  }
  // The socket buffer of a fresh Unix connection always takes 32 bytes; a
  // short or blocked send means the client misbehaves.
  ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) return -errno;
  return n == ssize_t(sizeof buf) ? 0 : -EIO;
}

int client_attach(const std::string& path, const Hello& hello, int timeout_ms, ClientResult* out) {
  const int64_t deadline = now_ms() + timeout_ms;
  struct sockaddr_un a;
  socklen_t alen;
  int err = make_addr(path, &a, &alen);
  if (err) return err;
  if (hello.token.empty() || hello.token.size() > kMaxToken) return -EINVAL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  std::string wire = encode_hello(hello);
  uint8_t buf[kReplySize];
  size_t got = 0;
  int fds[kFdCount] = {-1, -1, -1};
  int nfds = 0;
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&a), alen) < 0) { err = -errno; goto fail; }
  if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) { err = -errno; goto fail; }
  for (size_t sent = 0; sent < wire.size();) {
    ssize_t n = send(fd, wire.data() + sent, wire.size() - sent, MSG_NOSIGNAL);
    if (n > 0) { sent += size_t(n); continue; }
    if (n < 0 && errno == EAGAIN) { if ((err = wait_fd(fd, POLLOUT, deadline))) goto fail; continue; }
    if (n < 0 && errno == EINTR) continue;
    err = n < 0 ? -errno : -EIO;
    goto fail;
  }
  while (got < kReplySize) {
    struct iovec iov = {buf + got, kReplySize - got};
    alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kFdCount)];
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EAGAIN) { if ((err = wait_fd(fd, POLLIN, deadline))) goto fail; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) { err = n < 0 ? -errno : -ECONNRESET; goto fail; }
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(c);
      for (size_t i = 0; i < k; i++) {
        int v;
        memcpy(&v, data + i * sizeof(int), sizeof v);
        if (nfds < int(kFdCount)) fds[nfds++] = v;
        else close(v);  // more than we asked for: not ours to keep
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) { err = -EPROTO; goto fail; }
    got += size_t(n);
  }
  if (!decode_reply(buf, &out->reply)) { err = -EPROTO; goto fail; }
  if (out->reply.status == kStatusOk && (out->reply.fd_count != kFdCount || nfds != int(kFdCount))) {
    err = -EPROTO;
    goto fail;
  }
  if (out->reply.status != kStatusOk && nfds != 0) { err = -EPROTO; goto fail; }
  peer_cred(fd, &out->peer_pid, &out->peer_uid, &out->peer_gid);
  out->conn = fd;
  for (int i = 0; i < int(kFdCount); i++) out->fds[i] = fds[i];
  return 0;
fail:
  for (int i = nfds - 1; i >= 0; i--) close(fds[i]);
  close(fd);
  return err;
}

}  // namespace sg::attach

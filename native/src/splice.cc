#include "splice.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace sg {

namespace {

constexpr unsigned kSpliceFlags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;
// Bytes read and dropped per call in discard mode (after shutdownHost).
constexpr size_t kScratch = 16384;

// send() for sockets (MSG_NOSIGNAL: a gone peer is EPIPE, not SIGPIPE).
ssize_t send_some(int fd, const void* p, size_t n) {
  return send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

void close_fd(int fd, bool reset) {
  if (fd < 0) return;
  if (reset) {
    struct linger lg = {1, 0};  // close() then sends RST instead of FIN
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(fd);
}

}  // namespace

uint32_t pipe_max_size() {
  static std::once_flag once;
  static uint32_t value = 1u << 20;
  std::call_once(once, [] {
    FILE* f = fopen("/proc/sys/fs/pipe-max-size", "re");
    if (!f) return;
    unsigned long v = 0;
    if (fscanf(f, "%lu", &v) == 1 && v >= SpliceRelay::kMinPipeBytes && v <= (1ul << 31)) value = uint32_t(v);
    fclose(f);
  });
  return value;
}

// ---- Pipe -------------------------------------------------------------------

int Pipe::open(uint32_t want, uint32_t* got) {
  reset();
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) return -errno;
  rd_ = p[0];
  wr_ = p[1];
  // Over the per-user pipe page limits the kernel refuses the size (EPERM)
  // and the pipe keeps its default: slower, still correct.
  int sz = fcntl(wr_, F_SETPIPE_SZ, int(want));
  if (sz < 0) sz = fcntl(wr_, F_GETPIPE_SZ);
  if (sz <= 0) {
    int e = sz < 0 ? -errno : -EIO;
    reset();
    return e;
  }
  *got = uint32_t(sz);
  return 0;
}

void Pipe::reset() {
  if (rd_ >= 0) close(rd_);
  if (wr_ >= 0) close(wr_);
  rd_ = wr_ = -1;
}

// ---- SpliceShared (JS thread) ---------------------------------------------------

uint64_t SpliceShared::buffered() {
  uint64_t n = 0;
  {
    std::lock_guard<std::mutex> g(mu);
    if (host < 0) return 0;
    for (int fd : pipe_rd) {
      int v = 0;
      if (fd >= 0 && ioctl(fd, FIONREAD, &v) == 0 && v > 0) n += uint64_t(v);
    }
  }
  return n + held.load(std::memory_order_relaxed);
}

int SpliceShared::set_host_opt(int level, int name, int value) {
  std::lock_guard<std::mutex> g(mu);
  if (host < 0) return -EBADF;
  return setsockopt(host, level, name, &value, sizeof value) < 0 ? -errno : 0;
}

int SpliceShared::get_host_opt(int level, int name, int* value) {
  std::lock_guard<std::mutex> g(mu);
  if (host < 0) return -EBADF;
  socklen_t l = sizeof *value;
  return getsockopt(host, level, name, value, &l) < 0 ? -errno : 0;
}

// ---- SpliceRelay (I/O thread) ------------------------------------------------------

int SpliceRelay::create(int client_fd, int host_fd, std::string to_host_prefix, std::string to_client_prefix,
                        uint32_t pipe_bytes, bool copy, std::unique_ptr<SpliceRelay>* out) {
  if (client_fd < 0 || host_fd < 0 || client_fd == host_fd) return -EINVAL;
  int fds[2] = {client_fd, host_fd};
  int flags[2];
  for (int i = 0; i < 2; i++) {
    int ty = 0;
    socklen_t tl = sizeof ty;
    if (getsockopt(fds[i], SOL_SOCKET, SO_TYPE, &ty, &tl) < 0) return errno == ENOTSOCK ? -ENOTSOCK : -errno;
    if (ty != SOCK_STREAM) return -EPROTOTYPE;
    flags[i] = fcntl(fds[i], F_GETFL);
    if (flags[i] < 0) return -errno;
  }
  // Nothing is owned yet; only now change the descriptors.
  for (int i = 0; i < 2; i++)
    if (!(flags[i] & O_NONBLOCK) && fcntl(fds[i], F_SETFL, flags[i] | O_NONBLOCK) < 0) return -errno;
  std::unique_ptr<SpliceRelay> r(new SpliceRelay());
  r->fd_[kClient] = client_fd;
  r->fd_[kHost] = host_fd;
  uint32_t max = pipe_max_size();
  if (pipe_bytes == 0) pipe_bytes = kDefaultPipeBytes;
  r->cap_ = pipe_bytes < kMinPipeBytes ? kMinPipeBytes : pipe_bytes > max ? max : pipe_bytes;
  r->shared_ = std::make_shared<SpliceShared>();
  r->shared_->host = host_fd;
  r->shared_->cap_ = r->cap_;
  r->shared_->held.store(to_host_prefix.size() + to_client_prefix.size());
  Direction& c2h = r->dir_[kC2H];
  c2h.src = kClient;
  c2h.dst = kHost;
  c2h.prefix = std::move(to_host_prefix);
  Direction& h2c = r->dir_[kH2C];
  h2c.src = kHost;
  h2c.dst = kClient;
  h2c.prefix = std::move(to_client_prefix);
  if (copy) {
    r->to_copy_mode(c2h);
    r->to_copy_mode(h2c);
  }
  *out = std::move(r);
  return 0;
}

SpliceRelay::~SpliceRelay() { close_all(0); }

void SpliceRelay::close_all(uint32_t rst_mask) {
  std::lock_guard<std::mutex> g(shared_->mu);
  // Reverse order of creation: pipes (created lazily, last), then the sockets.
  for (int i = 1; i >= 0; i--) {
    shared_->pipe_rd[i] = -1;
    dir_[i].pipe.reset();
    dir_[i].fill = 0;
  }
  shared_->host = -1;
  for (int s = 1; s >= 0; s--) {
    close_fd(fd_[s], (rst_mask & (1u << s)) != 0);
    fd_[s] = -1;
  }
  shared_->held.store(0);
}

void SpliceRelay::on_events(Side s, uint32_t e) {
  if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) readable_[s] = true;
  if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) writable_[s] = true;
  if (e & EPOLLERR) err_seen_[s] = true;
}

void SpliceRelay::publish_pipe(Direction& d) {
  std::lock_guard<std::mutex> g(shared_->mu);
  shared_->pipe_rd[&d - dir_] = d.pipe.ok() ? d.pipe.rd() : -1;
}

int SpliceRelay::to_copy_mode(Direction& d) {
  if (d.copy) return 0;
  d.copy = true;
  d.buf.resize(cap_ < kMaxCopyBuffer ? cap_ : kMaxCopyBuffer);
  // Bytes already in the pipe are read into the buffer first (fill()).
  return 0;
}

// A socket reported EPOLLERR: pick up the pending error even when neither
// direction is about to touch it (e.g. a reset after its EOF).
int SpliceRelay::check_error(Side s) {
  err_seen_[s] = false;
  int err = 0;
  socklen_t l = sizeof err;
  if (getsockopt(fd_[s], SOL_SOCKET, SO_ERROR, &err, &l) < 0) return -errno;
  return err ? -err : 0;
}

void SpliceRelay::shutdown_host(bool read, bool write) {
  if (write) dir_[kC2H].discard = true;
  if (read) dir_[kH2C].discard = true;
}

// Write what the direction holds to dst: the prefix, then the pipe (or the
// copy buffer). Returns 0 or -errno (dst failed).
int SpliceRelay::flush(Direction& d, uint64_t* moved, SpliceStep* st, bool* progress) {
  int dst = fd_[d.dst];
  ssize_t n;
  bool from_held = false;
  if (d.prefix_off < d.prefix.size()) {
    n = send_some(dst, d.prefix.data() + d.prefix_off, d.prefix.size() - d.prefix_off);
    from_held = true;
  } else if (d.copy && d.blen > d.boff) {
    n = send_some(dst, d.buf.data() + d.boff, d.blen - d.boff);
    from_held = true;
  } else if (!d.copy && d.fill > 0) {
    n = splice(d.pipe.rd(), nullptr, dst, nullptr, d.fill, kSpliceFlags);
    if (n < 0 && errno == EINVAL) {  // dst cannot take spliced pages
      to_copy_mode(d);
      *progress = true;
      return 0;
    }
  } else {
    return 0;  // nothing to write
  }
  if (n < 0) {
    if (errno == EAGAIN) writable_[d.dst] = false;
    else if (errno == EINTR) *progress = true;
    else return -errno;
    return 0;
  }
  uint64_t k = uint64_t(n);
  if (d.prefix_off < d.prefix.size()) {
    d.prefix_off += k;
    if (d.prefix_off == d.prefix.size()) std::string().swap(d.prefix), d.prefix_off = 0;
  } else if (d.copy) {
    d.boff += k;
    if (d.boff == d.blen) d.boff = d.blen = 0;
  } else {
    d.fill -= k;
    d.pipe_full = false;  // room again: a deferred read may go on
  }
  if (from_held) shared_->held.fetch_sub(k, std::memory_order_relaxed);
  if (d.dst == kHost) st->to_host += k;
  else st->to_client += k;
  *moved += k;
  *progress = true;
  return 0;
}

// Read from src into the direction's pipe (or buffer), up to the watermark.
// Returns 0 or -errno (src failed).
int SpliceRelay::fill(Direction& d, uint64_t* moved, SpliceStep* st, bool* progress) {
  int src = fd_[d.src];
  if (d.copy && d.fill > 0) {
    // Left over from splice mode: the pipe's bytes go first, through the buffer.
    if (d.boff == d.blen) d.boff = d.blen = 0;
    size_t space = d.buf.size() - d.blen;
    if (space == 0) return 0;
    ssize_t n = read(d.pipe.rd(), d.buf.data() + d.blen, space < d.fill ? space : d.fill);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -errno;
    d.blen += size_t(n);
    d.fill -= uint64_t(n);
    shared_->held.fetch_add(uint64_t(n), std::memory_order_relaxed);
    *progress = n > 0;
    return 0;
  }
  if (d.src_eof || !readable_[d.src]) return 0;
  ssize_t n;
  if (d.discard) {
    char scratch[kScratch];
    n = read(src, scratch, sizeof scratch);
    if (n > 0) {
      *moved += uint64_t(n);
      *progress = true;
      return 0;
    }
  } else if (d.copy) {
    if (d.boff == d.blen) d.boff = d.blen = 0;
    size_t space = d.buf.size() - d.blen;
    if (space == 0) {
      st->stalls++;
      return 0;  // flush() makes room
    }
    n = read(src, d.buf.data() + d.blen, space);
    if (n > 0) {
      d.blen += size_t(n);
      shared_->held.fetch_add(uint64_t(n), std::memory_order_relaxed);
      *progress = true;
      return 0;
    }
  } else {
    if (!d.pipe.ok()) {
      uint32_t got = 0;
      if (d.pipe.open(cap_, &got) < 0) {
        to_copy_mode(d);  // out of descriptors or pipe memory: degrade, do not fail
        *progress = true;
        return 0;
      }
      publish_pipe(d);
    }
    if (d.fill >= cap_ || d.pipe_full) {
      st->stalls++;
      return 0;  // the watermark: wait for dst to drain the pipe
    }
    n = splice(src, nullptr, d.pipe.wr(), nullptr, cap_ - d.fill, kSpliceFlags);
    if (n > 0) {
      d.fill += uint64_t(n);
      *progress = true;
      return 0;
    }
    if (n < 0 && errno == EINVAL) {  // src cannot splice
      to_copy_mode(d);
      *progress = true;
      return 0;
    }
    if (n < 0 && errno == EAGAIN && d.fill > 0) {
      // Either src is empty or the pipe ran out of slots (partly filled
      // pages): keep src marked readable and retry once flush() drained some.
      d.pipe_full = true;
      st->stalls++;
      return 0;
    }
  }
  if (n == 0 && !d.copy && !d.discard) {
    // splice(2) also returns 0 with urgent data at the head of the queue;
    // only a real end of stream peeks as 0. Anything else: copy mode reads it.
    char c;
    if (recv(src, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
      to_copy_mode(d);
      *progress = true;
      return 0;
    }
  }
  if (n == 0) {
    d.src_eof = true;
    if (d.src == kHost) st->host_eof = true;
    else st->client_eof = true;
    *progress = true;
    return 0;
  }
  if (errno == EAGAIN) readable_[d.src] = false;  // wait for the next EPOLLIN edge
  else if (errno == EINTR) *progress = true;
  else return -errno;
  return 0;
}

int SpliceRelay::pump_dir(Direction& d, uint64_t budget, SpliceStep* st) {
  uint64_t moved = 0;
  // Each pass either moves bytes (or changes state) or ends the loop: no
  // spinning on a direction that waits for the kernel.
  for (;;) {
    if (moved >= budget) {
      st->more = true;
      return 0;
    }
    bool progress = false;
    int err;
    if (!d.dst_shut && writable_[d.dst] && (err = flush(d, &moved, st, &progress)) < 0) {
      st->err_side = d.dst;
      return err;
    }
    if ((err = fill(d, &moved, st, &progress)) < 0) {
      st->err_side = d.src;
      return err;
    }
    if ((d.src_eof || d.discard) && !d.dst_shut && d.empty()) {
      if (shutdown(fd_[d.dst], SHUT_WR) < 0 && errno != ENOTCONN) {
        st->err_side = d.dst;
        return -errno;
      }
      d.dst_shut = true;
      progress = true;
    }
    if (!progress) return 0;
  }
}

int SpliceRelay::run(uint64_t budget, SpliceStep* st) {
  if (fd_[kClient] < 0) return -EBADF;
  for (int s = 0; s < 2; s++) {
    if (!err_seen_[s]) continue;
    int err = check_error(Side(s));
    if (err < 0) {
      st->err_side = s;
      return err;
    }
  }
  for (Direction& d : dir_) {
    int err = pump_dir(d, budget, st);
    if (err < 0) return err;
  }
  return dir_[kC2H].done() && dir_[kH2C].done() ? 1 : 0;
}

}  // namespace sg

// Links on the I/O thread: a ring link (a slot's rings <-> an fd, either
// role: the gateway pumps its host socket, a client the caller's fd) and a
// splice link (fd <-> fd); their progress, end and counters.
#include "pump_internal.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sg {

using namespace pump_detail;

void Pump::close_ring_link_fd(Link& l) {
  if (!l.shared) {
    close(l.fd);
    return;
  }
  std::lock_guard<std::mutex> g(l.shared->mu);
  l.shared->fd = -1;
  close(l.fd);
}

int LinkFd::set_opt(int level, int name, int value) {
  std::lock_guard<std::mutex> g(mu);
  if (fd < 0) return -EBADF;
  return setsockopt(fd, level, name, &value, sizeof value) < 0 ? -errno : 0;
}

int LinkFd::get_opt(int level, int name, int* value) {
  std::lock_guard<std::mutex> g(mu);
  if (fd < 0) return -EBADF;
  socklen_t l = sizeof *value;
  return getsockopt(fd, level, name, value, &l) < 0 ? -errno : 0;
}

void Pump::flush_progress(Link& l, bool force) {
  if (!l.touched) return;
  l.touched = false;
  if (l.to_fd == 0 && l.to_ring == 0 && l.stalls == 0) return;
  bool quiet = false;
  if (l.kind == Link::kRing && l.shared) {
    l.shared->total_to_fd.store(l.total_fd, std::memory_order_relaxed);
    l.shared->total_to_ring.store(l.total_ring, std::memory_order_relaxed);
    quiet = l.shared->quiet.load(std::memory_order_relaxed);
  } else if (l.kind == Link::kSplice) {
    SpliceShared& sh = l.relay->shared_ref();
    sh.total_to_host.store(l.total_fd, std::memory_order_relaxed);
    sh.total_to_client.store(l.total_ring, std::memory_order_relaxed);
    quiet = sh.quiet.load(std::memory_order_relaxed);
  }
  if (quiet) {
    l.to_fd = l.to_ring = 0;
    l.stalls = 0;
    return;
  }
  if (!force && opt_.progress_ms > 0) {
    int64_t now = now_ms();
    if (now - l.progress_at < int64_t(opt_.progress_ms)) {
      // Too soon: the counts accumulate; run() emits them once the interval passed.
      if (!l.progress_due) {
        l.progress_due = true;
        progress_due_.push_back(l.id);
      }
      return;
    }
    l.progress_at = now;
  }
  PumpEvent e(PumpEvent::kProgress);
  e.id = l.id;
  e.a = l.to_fd;
  e.b = l.to_ring;
  e.stalls = l.stalls;
  l.to_fd = l.to_ring = 0;
  l.stalls = 0;
  emit(std::move(e));
}

void Pump::queue(Link& l) {
  if (l.queued) return;
  l.queued = true;
  runq_.push_back(l.id);
}

void Pump::end_link(Link& l, int err, const char* code) {
  l.touched = true;
  flush_progress(l, true);
  uint32_t rid = 0;
  if (l.kind == Link::kSplice) {
    // Stop polling, then close pipes and sockets (RST where rst_mask says).
    for (int side = 0; side < 2; side++) {
      int fd = l.relay->fd(SpliceRelay::Side(side));
      if (fd >= 0) epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    }
    l.relay->close_all(l.rst_mask);
  } else {
    // Reverse order: stop polling, close the fd, give the slot back, report.
    epoll_ctl(ep_, EPOLL_CTL_DEL, l.fd, nullptr);
    if (l.rst_mask) {
      struct linger lg = {1, 0};
      setsockopt(l.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close_ring_link_fd(l);
    l.region->unclaim(l.slot);
    rid = l.region->id();
    auto st = sessions_.find(rid);
    if (st != sessions_.end()) st->second->slot_links.erase(l.slot);
  }
  bool ring = l.kind == Link::kRing;
  PumpEvent e(PumpEvent::kEnd);
  e.id = l.id;
  e.err = err;
  e.code = code;
  e.a = l.total_fd;
  e.b = l.total_ring;
  uint32_t id = l.id;
  links_.erase(id);  // destroys l
  live_links_.fetch_sub(1);
  emit(std::move(e));
  if (ring) drop_session_if_idle(rid);
}

void Pump::run_link(Link& l) {
  if (l.kind == Link::kSplice) run_splice(l);
  else run_ring(l);
}

void Pump::run_splice(Link& l) {
  l.touched = true;
  SpliceStep st;
  int r = l.relay->run(opt_.link_budget, &st);
  l.to_fd += st.to_host;
  l.total_fd += st.to_host;
  l.to_ring += st.to_client;
  l.total_ring += st.to_client;
  l.stalls += st.stalls;
  if (st.host_eof) {
    PumpEvent ev(PumpEvent::kFdEof);
    ev.id = l.id;
    emit(std::move(ev));
  }
  if (st.client_eof) {
    PumpEvent ev(PumpEvent::kRingEof);
    ev.id = l.id;
    emit(std::move(ev));
  }
  if (r < 0) {
    // The peer of the side that failed must see a reset, not a clean FIN.
    l.rst_mask = st.err_side == SpliceRelay::kClient ? 2u : st.err_side == SpliceRelay::kHost ? 1u : 3u;
    return end_link(l, r, "error");
  }
  if (r == 1) return end_link(l, 0, "ok");
  if (st.more) queue(l);
}

void Pump::run_ring(Link& l) {
  RingEndpoint& ep = *l.ep;
  bool more = false;
  l.touched = true;
  auto corrupt = [&]() {
    auto it = sessions_.find(l.region->id());
    if (it != sessions_.end()) corrupt_session(*it->second);
  };
  const uint64_t before = l.total_fd + l.total_ring;
  // Inbound ring -> fd.
  uint64_t moved = 0;
  while (!l.wr_shut && (l.writable || l.discard_in)) {
    if (moved >= opt_.link_budget) { more = true; break; }
    struct iovec iov[2];
    int64_t n = ep.in_peek(iov);
    if (n < 0) return corrupt();
    if (n == 0) {
      int e = ep.in_eof();
      if (e < 0) return corrupt();
      if (e == 1) {
        if (!l.discard_in && shutdown(l.fd, SHUT_WR) < 0 && errno != ENOTCONN && errno != ENOTSOCK) return end_link(l, -errno, "error");
        l.wr_shut = true;
        PumpEvent ev(PumpEvent::kRingEof);
        ev.id = l.id;
        emit(std::move(ev));
        break;
      }
      if (l.shut_wr_req && !l.discard_in) {
        // shutdown(write) asked and the ring is drained: FIN now, drop what comes later.
        if (shutdown(l.fd, SHUT_WR) < 0 && errno != ENOTCONN && errno != ENOTSOCK) return end_link(l, -errno, "error");
        l.discard_in = true;
        continue;
      }
      if (ep.in_arm()) continue;
      break;
    }
    if (l.discard_in) {
      ep.in_release(uint64_t(n));
      moved += uint64_t(n);
      continue;
    }
    ssize_t w = writev(l.fd, iov, iov[1].iov_len ? 2 : 1);
    if (w > 0) st_fd_writes_.fetch_add(1, std::memory_order_relaxed);
    if (w < 0) {
      if (errno == EAGAIN) { l.writable = false; break; }
      if (errno == EINTR) continue;
      int e = -errno;
      // No EOF into the ring: an error is not a clean end. The peer learns
      // of it out of band (END from the gateway, ABORT from a client) and
      // passes it on as a reset.
      return end_link(l, e, "error");
    }
    ep.in_release(uint64_t(w));
    moved += uint64_t(w);
    l.to_fd += uint64_t(w);
    l.total_fd += uint64_t(w);
  }
  // fd (after the prefix) -> outbound ring.
  moved = 0;
  while (!l.rd_eof) {
    if (moved >= opt_.link_budget) { more = true; break; }
    struct iovec iov[2];
    int64_t n = ep.out_reserve(iov);
    if (n < 0) return corrupt();
    if (n == 0) {
      l.stalls++;
      if (ep.out_arm()) continue;
      break;
    }
    if (l.prefix_off < l.prefix.size()) {
      uint64_t k = l.prefix.size() - l.prefix_off;
      if (k > uint64_t(n)) k = uint64_t(n);
      uint64_t a = k < iov[0].iov_len ? k : iov[0].iov_len;
      memcpy(iov[0].iov_base, l.prefix.data() + l.prefix_off, a);
      if (k > a) memcpy(iov[1].iov_base, l.prefix.data() + l.prefix_off + a, k - a);
      l.prefix_off += k;
      if (l.prefix_off == l.prefix.size()) std::string().swap(l.prefix), l.prefix_off = 0;
      ep.out_commit(k);
      moved += k;
      l.to_ring += k;
      l.total_ring += k;
      continue;
    }
    if (!l.readable) break;
    ssize_t r = readv(l.fd, iov, iov[1].iov_len ? 2 : 1);
    if (r > 0) st_fd_reads_.fetch_add(1, std::memory_order_relaxed);
    if (r < 0) {
      if (errno == EAGAIN) { l.readable = false; break; }
      if (errno == EINTR) continue;
      int e = -errno;
      // No EOF into the ring: an error is not a clean end. The peer learns
      // of it out of band (END from the gateway, ABORT from a client) and
      // passes it on as a reset.
      return end_link(l, e, "error");
    }
    if (r == 0) {
      ep.out_eof();
      l.rd_eof = true;
      PumpEvent ev(PumpEvent::kFdEof);
      ev.id = l.id;
      emit(std::move(ev));
      break;
    }
    ep.out_commit(uint64_t(r));
    moved += uint64_t(r);
    l.to_ring += uint64_t(r);
    l.total_ring += uint64_t(r);
    // A short read drained the edge-triggered socket (new bytes raise a new
    // edge): no readv that only says EAGAIN, one syscall less per message.
    if (uint64_t(r) < uint64_t(n) && !l.hup) {
      l.readable = false;
      break;
    }
  }
  if (ep.bells != l.bells_seen) {
    st_doorbells_.fetch_add(ep.bells - l.bells_seen, std::memory_order_relaxed);
    l.bells_seen = ep.bells;
  }
  if (opt_.shrink_idle_ms && l.region->role() == Role::Gateway) after_round(l, l.total_fd + l.total_ring != before);
  if (l.rd_eof && l.wr_shut) return end_link(l, 0, "ok");
  if (more && !l.queued) {
    l.queued = true;
    runq_.push_back(l.id);
  }
}

// ---- idle shrink (gateway ring links) -----------------------------------------
// Rings grow under load (TS grants, on the stall counters); after
// shrink_idle_ms without traffic they go back to their first size, through
// the same grant as a grow: the producer adopts it only on an empty ring, so
// no byte is lost or reordered. Once the smaller size is in use the arena's
// tail is punched out of the memfd (the memory goes back, not only the charge).

static bool above_base(const Pump::Link& l) {
  const RingView* v[2] = {l.ep->inbound(), l.ep->outbound()};
  for (int i = 0; i < 2; i++) {
    uint32_t dir = i == 0 ? l.region->consume_dir() : l.region->produce_dir();
    if (v[i] && v[i]->grant_log2 > l.base_log2[dir]) return true;
  }
  return false;
}

void Pump::after_round(Link& l, bool moved) {
  if (moved) l.active_ms = now_ms();
  if (!l.grown && above_base(l)) {
    l.grown = true;
    l.active_ms = now_ms();  // the idle spell starts now
    grown_.push_back(l.id);
  }
  for (uint32_t dir = 0; dir < 2; dir++) {
    if (!l.trim[dir]) continue;
    const RingView* v = dir == l.region->consume_dir() ? l.ep->inbound() : l.ep->outbound();
    if (v->gen != v->grant_gen) continue;  // the smaller size is not in use yet
    l.trim[dir] = false;
    l.region->trim_ring(l.slot, dir);
  }
}

int Pump::shrink_timeout(int64_t now) const {
  int64_t next = INT64_MAX;
  for (uint32_t id : grown_) {
    auto it = links_.find(id);
    if (it == links_.end()) return 0;  // gone: shrink_idle drops it now
    int64_t due = it->second->active_ms + opt_.shrink_idle_ms;
    if (due < next) next = due;
  }
  int64_t wait = next - now;
  return wait < 0 ? 0 : wait > 60000 ? 60000 : int(wait);
}

void Pump::shrink_idle(int64_t now) {
  std::vector<uint32_t> keep;
  for (uint32_t id : grown_) {
    auto it = links_.find(id);
    if (it == links_.end()) continue;
    Link& l = *it->second;
    if (now - l.active_ms < int64_t(opt_.shrink_idle_ms)) {
      keep.push_back(id);
      continue;
    }
    l.grown = false;  // re-added by after_round if traffic grows it again
    for (uint32_t dir = 0; dir < 2; dir++) {
      RingView* v = dir == l.region->consume_dir() ? l.ep->inbound() : l.ep->outbound();
      if (!v || v->grant_log2 <= l.base_log2[dir]) continue;
      // A grant still pending (a grow the producer has not adopted): leave
      // it; the next traffic adopts it and starts a new idle spell.
      int err = l.region->request_resize(l.slot, dir, l.base_log2[dir]);
      if (err) continue;
      l.trim[dir] = true;
      st_shrinks_.fetch_add(1, std::memory_order_relaxed);
      PumpEvent e(PumpEvent::kProgress);
      e.id = l.id;
      e.code = "shrink";
      e.a = dir;
      e.b = l.base_log2[dir];
      emit(std::move(e));
    }
  }
  grown_.swap(keep);
}

}  // namespace sg

// The I/O thread: the epoll loop, sessions (doorbells, hints, sleep flags,
// the spin before sleeping) and teardown.
#include "pump_internal.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <sched.h>

namespace sg {

using namespace pump_detail;

// ---- the I/O thread --------------------------------------------------------

Pump::Session* Pump::session_for(const std::shared_ptr<Region>& r, bool create) {
  auto it = sessions_.find(r->id());
  if (it != sessions_.end()) return it->second.get();
  if (!create) return nullptr;
  std::unique_ptr<Session> s(new Session());
  s->region = r;
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = tag(kSession, r->id());
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, r->local_doorbell()->fd(), &ev) == 0) s->registered = true;
  s->awake = true;  // look at the hints once before the first sleep
  Session* raw = s.get();
  sessions_[r->id()] = std::move(s);
  return raw;
}

void Pump::drop_session_if_idle(uint32_t region_id) {
  auto it = sessions_.find(region_id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (!s.slot_links.empty() || s.watched) return;
  if (s.registered) epoll_ctl(ep_, EPOLL_CTL_DEL, s.region->local_doorbell()->fd(), nullptr);
  sessions_.erase(it);
}

void Pump::process_hints(Session& s) {
  if (s.watched) {
    // A watched (client) session: slots with a link here are pumped here,
    // the others are JS's.
    PumpEvent e(PumpEvent::kHints);
    e.id = s.region->id();
    s.region->take_hints([&](uint32_t slot) {
      auto it = s.slot_links.find(slot);
      if (it == s.slot_links.end()) return e.slots.push_back(slot);
      auto lt = links_.find(it->second);
      if (lt == links_.end() || lt->second->queued) return;
      lt->second->queued = true;
      runq_.push_back(it->second);
    });
    if (!e.slots.empty()) emit(std::move(e));
    return;
  }
  s.region->take_hints([&](uint32_t slot) {
    auto it = s.slot_links.find(slot);
    if (it == s.slot_links.end()) return;  // a hint for a slot we do not pump: ignore
    auto lt = links_.find(it->second);
    if (lt == links_.end() || lt->second->queued) return;
    lt->second->queued = true;
    runq_.push_back(it->second);
  });
}

void Pump::on_session(Session& s) {
  s.region->local_doorbell()->drain();
  s.region->clear_sleeping();
  s.awake = true;
  // The client can scribble the header at will; catching it here ends the
  // session early instead of letting it run on an inconsistent layout.
  if (!s.watched && s.region->role() == Role::Gateway && !s.region->header_intact()) corrupt_session(s);
}

void Pump::corrupt_session(Session& s) {
  uint32_t rid = s.region->id();
  s.region->corrupt.store(true);
  std::vector<uint32_t> ids;
  for (auto& kv : s.slot_links) ids.push_back(kv.second);
  PumpEvent e(PumpEvent::kCorrupt);
  e.id = rid;
  e.err = -EBADMSG;
  emit(std::move(e));
  for (uint32_t id : ids) {
    auto it = links_.find(id);
    if (it != links_.end()) end_link(*it->second, -EBADMSG, "corrupt");
  }
  // end_link dropped the session when its last link went (unless watched).
}

void Pump::flush_events() {
  if (out_.empty()) return;
  std::vector<PumpEvent> batch;
  batch.swap(out_);
  sink_(std::move(batch));
}

int Pump::spin(struct epoll_event* evs, int max, uint32_t budget_us) {
  // Sessions stay awake (flag clear) meanwhile: the peer leaves a hint and
  // rings no doorbell; polling sources keep their notifications unarmed.
  // Bounded by the budget (at most the largest setting, <= 1 ms).
  const int64_t until = now_us() + budget_us;
  st_spins_.fetch_add(1, std::memory_order_relaxed);
  for (;;) {
    for (auto& kv : sessions_)
      if (kv.second->awake && kv.second->region->has_hints()) return -1;
    if (!pollers_.empty() && poll_sources()) return -1;
    int n = epoll_wait(ep_, evs, max, 0);  // fds (host sockets, peers' doorbells, commands)
    if (n > 0) return n;
    if (stopping_.load(std::memory_order_relaxed) || now_us() >= until) return 0;
    // Give the core to a runnable thread (the app, the peer pump) if there is
    // one: on a small machine the spinner must not starve what it waits for.
    sched_yield();
  }
}

void Pump::run() {
  struct epoll_event evs[64];
  while (!stopping_.load()) {
    spin_.set_max(spin_max_us_.load(std::memory_order_relaxed));
    int timeout = runq_.empty() ? -1 : 0;
    bool pending_hello = false;
    for (auto& kv : listeners_)
      for (auto& c : kv.second->conns)
        if (c.second->state == Conn::kHello) pending_hello = true;
    int n = 0;
    bool spun = false;  // the spin found news: no sleep
    int64_t wait_from = 0;
    if (timeout < 0) {
      flush_events();  // JS hears what happened before we spin or sleep
      wait_from = now_us();
      const uint32_t budget = std::max(spin_.budget(), pollers_.empty() ? 0u : poll_budget());
      if (budget > 0) {
        int r = spin(evs, 64, budget);
        if (r != 0) {
          spun = true;
          n = r > 0 ? r : 0;
          st_spin_hits_.fetch_add(1, std::memory_order_relaxed);
          spin_.hit();
        }
      }
      // Going to sleep: every awake session sets its flag and re-checks.
      for (auto& kv : sessions_) {
        Session& s = *kv.second;
        if (spun || !s.awake) continue;
        if (s.region->prepare_sleep()) {
          s.region->clear_sleeping();
          timeout = 0;
        } else {
          s.awake = false;
        }
      }
    }
    // Polling sources re-arm their notifications (a completion may come meanwhile: then no sleep).
    if (timeout < 0 && !spun && !pollers_.empty() && arm_sources()) timeout = 0;
    st_budget_.store(spin_.budget(), std::memory_order_relaxed);
    if (pending_hello && timeout < 0) timeout = 250;
    if (!progress_due_.empty() && (timeout < 0 || timeout > int(opt_.progress_ms))) timeout = int(opt_.progress_ms);
    if (!grown_.empty()) {
      int st = shrink_timeout(now_ms());
      if (timeout < 0 || timeout > st) timeout = st;
    }
    flush_events();
    if (!spun) {
      n = epoll_wait(ep_, evs, 64, timeout);
      if (timeout != 0 && wait_from != 0) {
        if (n > 0) st_wakeups_.fetch_add(1, std::memory_order_relaxed);
        spin_.woke(uint64_t(now_us() - wait_from), n == 0);
        if (!pollers_.empty()) sources_woke(uint64_t(now_us() - wait_from), n == 0);
      }
    }
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      uint64_t t = evs[i].data.u64;
      uint32_t kind = uint32_t(t >> 56), a = uint32_t((t >> 32) & 0xFFFFFF), b = uint32_t(t);
      uint32_t e = evs[i].events;
      if (kind == kWake) {
        uint64_t v;
        ssize_t r = read(wake_, &v, sizeof v);
        (void)r;
      } else if (kind == kSession) {
        auto it = sessions_.find(a);
        if (it != sessions_.end()) on_session(*it->second);
      } else if (kind == kLinkFd) {
        auto it = links_.find(b);
        if (it == links_.end()) continue;
        Link& l = *it->second;
        if (l.kind == Link::kSplice) {
          if (a == 1 || a == 2) l.relay->on_events(SpliceRelay::Side(a - 1), e);
        } else {
          if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) l.readable = true;
          if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) l.hup = true;
          if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) l.writable = true;
        }
        queue(l);
      } else if (kind == kListener) {
        auto it = listeners_.find(a);
        if (it != listeners_.end()) on_listener(*it->second);
      } else if (kind == kSource) {
        auto it = sources_.find(b);
        if (it == sources_.end()) continue;  // detached earlier in this batch
        std::shared_ptr<PumpSource> src = it->second;
        src->on_ready(*this, b, a, e);
      } else if (kind == kConn) {
        auto it = listeners_.find(a);
        if (it == listeners_.end()) continue;
        auto ct = it->second->conns.find(b);
        if (ct != it->second->conns.end()) on_conn(*it->second, *ct->second, e);
      }
    }
    handle_cmds();
    if (pending_hello) sweep_conns(now_ms());
    // Awake sessions: the peer does not ring, so look at their hints.
    std::vector<uint32_t> awake;
    for (auto& kv : sessions_)
      if (kv.second->awake) awake.push_back(kv.first);
    for (uint32_t id : awake) {
      auto it = sessions_.find(id);
      if (it != sessions_.end()) process_hints(*it->second);
    }
    std::vector<uint32_t> q;
    q.swap(runq_);
    for (uint32_t id : q) {
      auto it = links_.find(id);
      if (it == links_.end()) continue;
      it->second->queued = false;
      run_link(*it->second);
    }
    for (uint32_t id : q) {
      auto it = links_.find(id);
      if (it != links_.end()) flush_progress(*it->second);
    }
    if (!progress_due_.empty()) {
      // Counts held back by the interval: out once it passed (the link may be idle by now).
      int64_t now = now_ms();
      std::vector<uint32_t> due;
      due.swap(progress_due_);
      for (uint32_t id : due) {
        auto it = links_.find(id);
        if (it == links_.end()) continue;
        Link& l = *it->second;
        l.progress_due = false;
        if (now - l.progress_at >= int64_t(opt_.progress_ms)) {
          l.touched = true;
          flush_progress(l, true);
          l.progress_at = now;
        } else {
          l.progress_due = true;
          progress_due_.push_back(id);
        }
      }
    }
    if (!grown_.empty()) shrink_idle(now_ms());
  }
  if (!out_.empty()) {
    std::vector<PumpEvent> batch;
    batch.swap(out_);
    sink_(std::move(batch));
  }
  // Teardown in reverse: links (fds, slots), sessions, listeners and conns.
  for (auto& kv : links_) {
    Link& l = *kv.second;
    if (l.kind == Link::kSplice) {
      for (int side = 0; side < 2; side++) {
        int fd = l.relay->fd(SpliceRelay::Side(side));
        if (fd >= 0) epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
      }
      l.relay->close_all(0);
      continue;
    }
    epoll_ctl(ep_, EPOLL_CTL_DEL, l.fd, nullptr);
    close_ring_link_fd(l);
    l.region->unclaim(l.slot);
  }
  live_links_.store(0);
  links_.clear();
  for (auto& kv : sessions_)
    if (kv.second->registered) epoll_ctl(ep_, EPOLL_CTL_DEL, kv.second->region->local_doorbell()->fd(), nullptr);
  sessions_.clear();
  live_watches_.store(0);
  for (auto& kv : listeners_) {
    for (auto& c : kv.second->conns) close(c.second->fd);
    close(kv.second->fd);
  }
  listeners_.clear();
  while (!sources_.empty()) detach_source(sources_.begin()->first);
}

}  // namespace sg

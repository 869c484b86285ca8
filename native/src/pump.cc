// The pump's owner-thread side: creation, stop, and the calls JS makes (each
// queues a command for the I/O thread, see pump_cmds.cc).
#include "pump_internal.h"

#include <algorithm>

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

int Pump::create(const PumpOptions& o, EventSink sink, std::unique_ptr<Pump>* out) {
  std::unique_ptr<Pump> p(new Pump());
  p->opt_ = o;
  p->sink_ = std::move(sink);
  p->spin_max_us_.store(o.spin_us);
  p->spin_.set_max(o.spin_us);
  p->cmds_ = new std::vector<Cmd>();
  p->ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (p->ep_ < 0) return -errno;
  p->wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->wake_ < 0) return -errno;
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = tag(kWake, 0);
  if (epoll_ctl(p->ep_, EPOLL_CTL_ADD, p->wake_, &ev) < 0) return -errno;
  p->thread_ = std::thread([raw = p.get()] { raw->run(); });
  *out = std::move(p);
  return 0;
}

Pump::~Pump() {
  stop();
  // Reverse order of creation: wake fd, epoll fd, command queue.
  if (wake_ >= 0) close(wake_);
  if (ep_ >= 0) close(ep_);
  delete cmds_;
}

void Pump::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  uint64_t one = 1;
  ssize_t n = write(wake_, &one, sizeof one);
  (void)n;
  thread_.join();
  // Commands queued after the thread ended: release what they own.
  std::vector<Cmd> rest;
  {
    std::lock_guard<std::mutex> g(mu_);
    rest.swap(*cmds_);
  }
  for (Cmd& c : rest) {
    if (c.link && c.link->kind == Link::kSplice) {
      c.link->relay->close_all(0);
    } else if (c.link) {
      close_ring_link_fd(*c.link);
      c.link->region->unclaim(c.link->slot);
    }
    if (c.type == Cmd::kAddListener && c.fd >= 0) close(c.fd);
    if (c.type == Cmd::kAddSource) {
      live_sources_.fetch_sub(1);
      c.source->on_detach();
    }
    if (c.type == Cmd::kRunOnSource && c.fn) c.fn(nullptr);
  }
}

int Pump::add_source(std::shared_ptr<PumpSource> src, uint32_t* id) {
  if (stopping_.load()) return -ESHUTDOWN;
  Cmd c(Cmd::kAddSource);
  c.id = next_link_.fetch_add(1);
  live_sources_.fetch_add(1);  // counted at once: the pump refuses to close while it exists
  c.source = std::move(src);
  *id = c.id;
  push(std::move(c));
  return 0;
}

void Pump::remove_source(uint32_t id) {
  Cmd c(Cmd::kRemoveSource);
  c.id = id;
  push(std::move(c));
}

void Pump::run_on_source(uint32_t id, std::function<void(PumpSource*)> fn) {
  if (stopping_.load()) {
    fn(nullptr);
    return;
  }
  Cmd c(Cmd::kRunOnSource);
  c.id = id;
  c.fn = std::move(fn);
  push(std::move(c));
}

int Pump::attach_source_now(std::shared_ptr<PumpSource> src, uint32_t id) {
  sources_[id] = src;
  live_sources_.fetch_add(1);
  int err = src->on_attach(*this, id);
  if (err) detach_source(id);
  return err;
}

int Pump::source_watch_events(uint32_t id, int fd, uint32_t key, uint32_t events) {
  struct epoll_event ev = {};
  ev.events = events;
  ev.data.u64 = tag(kSource, key, id);
  return epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int Pump::source_watch(uint32_t id, int fd, uint32_t key) {
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = tag(kSource, key, id);
  return epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

void Pump::source_unwatch(int fd) { epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr); }

void Pump::source_poll(uint32_t id, bool on) {
  auto it = std::find(pollers_.begin(), pollers_.end(), id);
  if (on && it == pollers_.end()) pollers_.push_back(id);
  if (!on && it != pollers_.end()) pollers_.erase(it);
}

uint32_t Pump::poll_budget() const {
  uint32_t b = 0;
  for (uint32_t id : pollers_) {
    auto it = sources_.find(id);
    if (it != sources_.end()) b = std::max(b, it->second->poll_budget_us());
  }
  return b;
}

// Each poller once; true when one found work. Copies: a poller may detach itself.
bool Pump::poll_sources() {
  bool hit = false;
  std::vector<uint32_t> ids(pollers_);
  for (uint32_t id : ids) {
    auto it = sources_.find(id);
    if (it == sources_.end()) continue;
    std::shared_ptr<PumpSource> src = it->second;
    if (src->poll(*this)) hit = true;
  }
  return hit;
}

bool Pump::arm_sources() {
  bool news = false;
  std::vector<uint32_t> ids(pollers_);
  for (uint32_t id : ids) {
    auto it = sources_.find(id);
    if (it == sources_.end()) continue;
    std::shared_ptr<PumpSource> src = it->second;
    if (src->before_sleep(*this)) news = true;
  }
  return news;
}

void Pump::sources_woke(uint64_t waited_us, bool timed_out) {
  for (uint32_t id : pollers_) {
    auto it = sources_.find(id);
    if (it != sources_.end()) it->second->woke(waited_us, timed_out);
  }
}

void Pump::detach_source(uint32_t id) {
  auto it = sources_.find(id);
  if (it == sources_.end()) return;
  std::shared_ptr<PumpSource> s = std::move(it->second);  // alive through on_detach
  sources_.erase(it);
  source_poll(id, false);
  live_sources_.fetch_sub(1);
  s->on_detach();
}

void Pump::push(Cmd&& c) {
  {
    std::lock_guard<std::mutex> g(mu_);
    cmds_->push_back(std::move(c));
  }
  uint64_t one = 1;
  ssize_t n = write(wake_, &one, sizeof one);
  (void)n;
}

int Pump::add_link(std::shared_ptr<Region> region, uint32_t slot, int fd, std::string prefix, uint32_t* id,
                   std::shared_ptr<LinkFd>* shared) {
  if (stopping_.load()) return -ESHUTDOWN;
  // Either end of a slot: the gateway pumps its host socket, a client pumps
  // the caller's descriptor (the mirror: it consumes g2c, produces c2g).
  const bool client = region->role() == Role::Client;
  if (region->corrupt.load()) return -EBADMSG;
  if (!region->local_doorbell() || !region->peer_doorbell()) return -ENOTCONN;
  if (!client && !region->slot_open(slot)) return -ENOTCONN;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  int ty = 0;
  socklen_t tl = sizeof ty;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &ty, &tl) == 0 && ty != SOCK_STREAM) return -EPROTOTYPE;
  if (!region->claim(slot)) return -EBUSY;
  // A client opens its views from the slot state the gateway published; only
  // with the slot claimed (no JS ring call can race this).
  if (client && (!region->producer(slot) || !region->consumer(slot))) {
    region->unclaim(slot);
    return -ENOTCONN;
  }
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    int e = -errno;
    region->unclaim(slot);
    return e;
  }
  std::unique_ptr<Link> l(new Link());
  l->id = next_link_.fetch_add(1);
  l->fd = fd;
  l->region = region;
  l->slot = slot;
  l->ep.reset(new ShmEndpoint(region, slot));
  l->prefix = std::move(prefix);
  if (shared) {
    l->shared = std::make_shared<LinkFd>();
    l->shared->fd = fd;
    *shared = l->shared;
  }
  *id = l->id;
  live_links_.fetch_add(1);
  Cmd c(Cmd::kAddLink);
  c.link = std::move(l);
  push(std::move(c));
  return 0;
}

int Pump::add_splice(int client_fd, int host_fd, std::string to_host_prefix, std::string to_client_prefix,
                     uint32_t pipe_bytes, bool copy, uint32_t* id, std::shared_ptr<SpliceShared>* shared) {
  if (stopping_.load()) return -ESHUTDOWN;
  std::unique_ptr<SpliceRelay> relay;
  int err = SpliceRelay::create(client_fd, host_fd, std::move(to_host_prefix), std::move(to_client_prefix), pipe_bytes,
                                copy, &relay);
  if (err) return err;  // the fds are still the caller's
  std::unique_ptr<Link> l(new Link());
  l->kind = Link::kSplice;
  l->id = next_link_.fetch_add(1);
  *shared = relay->shared();
  l->relay = std::move(relay);
  *id = l->id;
  live_links_.fetch_add(1);
  Cmd c(Cmd::kAddLink);
  c.link = std::move(l);
  push(std::move(c));
  return 0;
}

void Pump::close_link(uint32_t id, bool reset) {
  Cmd c(Cmd::kCloseLink);
  c.id = id;
  c.status = reset ? 1 : 0;
  push(std::move(c));
}

void Pump::shutdown_host(uint32_t id, bool read, bool write) {
  Cmd c(Cmd::kShutdownHost);
  c.id = id;
  c.dir = (read ? 1u : 0u) | (write ? 2u : 0u);
  push(std::move(c));
}

void Pump::resize_link(uint32_t id, uint32_t dir, uint32_t log2) {
  Cmd c(Cmd::kResize);
  c.id = id;
  c.dir = dir;
  c.log2 = log2;
  push(std::move(c));
}

int Pump::watch(std::shared_ptr<Region> region) {
  if (!region->local_doorbell()) return -ENOTCONN;
  live_watches_.fetch_add(1);
  Cmd c(Cmd::kWatch);
  c.region = std::move(region);
  push(std::move(c));
  return 0;
}

void Pump::unwatch(uint32_t region_id) {
  Cmd c(Cmd::kUnwatch);
  c.id = region_id;
  push(std::move(c));
}

void Pump::add_listener(uint32_t id, int fd) {
  Cmd c(Cmd::kAddListener);
  c.id = id;
  c.fd = fd;
  push(std::move(c));
}

void Pump::close_listener(uint32_t id) {
  Cmd c(Cmd::kCloseListener);
  c.id = id;
  push(std::move(c));
}

void Pump::reply(uint32_t listener, uint32_t conn, uint16_t status, std::shared_ptr<Region> region,
                 std::shared_ptr<EventFd> gw_bell, std::shared_ptr<EventFd> cl_bell) {
  Cmd c(Cmd::kReply);
  c.id = listener;
  c.conn = conn;
  c.status = status;
  c.region = std::move(region);
  c.gw_bell = std::move(gw_bell);
  c.cl_bell = std::move(cl_bell);
  push(std::move(c));
}

void Pump::close_conn(uint32_t listener, uint32_t conn) {
  Cmd c(Cmd::kCloseConn);
  c.id = listener;
  c.conn = conn;
  push(std::move(c));
}
PumpStats Pump::stats() const {
  PumpStats s;
  s.wakeups = st_wakeups_.load(std::memory_order_relaxed);
  s.spins = st_spins_.load(std::memory_order_relaxed);
  s.spin_hits = st_spin_hits_.load(std::memory_order_relaxed);
  s.doorbells = st_doorbells_.load(std::memory_order_relaxed);
  s.fd_reads = st_fd_reads_.load(std::memory_order_relaxed);
  s.fd_writes = st_fd_writes_.load(std::memory_order_relaxed);
  s.shrinks = st_shrinks_.load(std::memory_order_relaxed);
  s.spin_budget_us = st_budget_.load(std::memory_order_relaxed);
  s.spin_max_us = spin_max_us_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace sg

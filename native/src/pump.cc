#include "pump.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sg {

namespace {

enum Kind : uint64_t { kWake = 1, kSession = 2, kLinkFd = 3, kListener = 4, kConn = 5, kSource = 6 };

uint64_t tag(Kind k, uint32_t a, uint32_t b = 0) {
  return (uint64_t(k) << 56) | (uint64_t(a & 0xFFFFFF) << 32) | b;
}

int64_t now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_us() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace

// One link, of one of two kinds: a ring link (a slot's rings <-> fd; the
// fields up to `stalls`) or a splice link (fd <-> fd; `relay` owns both fds).
struct Pump::Link {
  enum Kind { kRing, kSplice } kind = kRing;
  uint32_t id = 0;
  uint32_t rst_mask = 0;              // sides to close with RST when the link ends (bit 0: fd/client, bit 1: host)
  std::unique_ptr<SpliceRelay> relay; // kSplice only
  int fd = -1;                        // owned (kRing)
  std::shared_ptr<LinkFd> shared;     // kRing: the fd as JS sees it (closed under its mutex)
  std::shared_ptr<Region> region;
  uint32_t slot = 0;
  std::unique_ptr<ShmEndpoint> ep;
  std::string prefix;                 // delivered into the outbound ring first
  size_t prefix_off = 0;
  bool readable = true, writable = true;
  bool hup = false;                   // epoll said RDHUP/HUP/ERR: read on to EOF, a short read proves nothing
  bool shut_wr_req = false;           // shutdown(write) asked: FIN to the fd once the inbound ring is empty
  bool discard_in = false;            // after that FIN: inbound bytes are consumed and dropped
  bool rd_eof = false, wr_shut = false;
  bool queued = false, touched = false;
  uint64_t to_fd = 0, to_ring = 0;    // since the last progress event
  uint64_t total_fd = 0, total_ring = 0;
  uint32_t stalls = 0;
  int64_t progress_at = 0;            // ms of the last progress event
  bool progress_due = false;          // in progress_due_: counts wait for the interval
};

struct Pump::Session {
  std::shared_ptr<Region> region;
  std::unordered_map<uint32_t, uint32_t> slot_links;  // slot -> link id
  bool watched = false;   // client side: report hints to JS
  bool awake = false;     // our sleep flag is clear: the peer will not ring
  bool registered = false;
};

struct Pump::Conn {
  enum State { kHello, kDecide, kAttached } state = kHello;
  uint32_t id = 0;
  int fd = -1;  // owned
  std::string buf;
  int64_t deadline = 0;
  int pid = 0;
  uint32_t uid = 0, gid = 0;
};

struct Pump::Listener {
  uint32_t id = 0;
  int fd = -1;  // owned
  uint32_t next_conn = 1;
  std::unordered_map<uint32_t, std::unique_ptr<Conn>> conns;
};

struct Pump::Cmd {
  enum Type { kAddLink, kCloseLink, kResize, kWatch, kUnwatch, kAddListener, kCloseListener, kReply, kCloseConn, kShutdownHost, kAddSource, kRemoveSource, kRunOnSource } type;
  explicit Cmd(Type t) : type(t) {}
  std::unique_ptr<Link> link;
  uint32_t id = 0, conn = 0, dir = 0, log2 = 0;  // kShutdownHost: dir bit 0 = read, bit 1 = write
  uint16_t status = 0;                            // kCloseLink: 1 = reset
  int fd = -1;
  std::shared_ptr<Region> region;
  std::shared_ptr<EventFd> gw_bell, cl_bell;
  std::shared_ptr<PumpSource> source;  // kAddSource
  std::function<void(PumpSource*)> fn; // kRunOnSource
};

int Pump::create(const PumpOptions& o, EventSink sink, std::unique_ptr<Pump>* out) {
  std::unique_ptr<Pump> p(new Pump());
  p->opt_ = o;
  p->sink_ = std::move(sink);
  p->spin_now_us_ = o.spin_us;
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

void Pump::detach_source(uint32_t id) {
  auto it = sources_.find(id);
  if (it == sources_.end()) return;
  std::shared_ptr<PumpSource> s = std::move(it->second);  // alive through on_detach
  sources_.erase(it);
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

void Pump::handle_cmds() {
  std::vector<Cmd> cmds;
  {
    std::lock_guard<std::mutex> g(mu_);
    cmds.swap(*cmds_);
  }
  for (Cmd& c : cmds) {
    switch (c.type) {
      case Cmd::kAddSource: {
        uint32_t id = c.id;
        sources_[id] = c.source;
        if (c.source->on_attach(*this, id) != 0) detach_source(id);
        break;
      }
      case Cmd::kRemoveSource:
        detach_source(c.id);
        break;
      case Cmd::kRunOnSource: {
        auto it = sources_.find(c.id);
        std::shared_ptr<PumpSource> src = it == sources_.end() ? nullptr : it->second;
        c.fn(src.get());
        break;
      }
      case Cmd::kAddLink: {
        if (c.link->kind == Link::kSplice) {
          uint32_t id = c.link->id;
          links_[id] = std::move(c.link);
          Link& ln = *links_[id];
          for (int side = 0; side < 2; side++) {
            struct epoll_event ev = {};
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
            ev.data.u64 = tag(kLinkFd, uint32_t(side + 1), id);
            if (epoll_ctl(ep_, EPOLL_CTL_ADD, ln.relay->fd(SpliceRelay::Side(side)), &ev) < 0) {
              int e = -errno;
              ln.rst_mask = 3;
              end_link(ln, e, "error");
              break;
            }
          }
          if (links_.count(id)) queue(ln);
          break;
        }
        Link& l = *c.link;
        Session* s = session_for(l.region, true);
        struct epoll_event ev = {};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.u64 = tag(kLinkFd, 0, l.id);
        uint32_t id = l.id;
        links_[id] = std::move(c.link);
        Link& ln = *links_[id];
        s->slot_links[ln.slot] = id;
        if (l.region->corrupt.load()) {
          end_link(ln, -EBADMSG, "corrupt");
          break;
        }
        if (epoll_ctl(ep_, EPOLL_CTL_ADD, ln.fd, &ev) < 0) {
          end_link(ln, -errno, "error");
          break;
        }
        ln.queued = true;
        runq_.push_back(id);
        break;
      }
      case Cmd::kCloseLink: {
        auto it = links_.find(c.id);
        if (it == links_.end()) break;
        if (c.status) it->second->rst_mask = 3;
        end_link(*it->second, 0, "aborted");
        break;
      }
      case Cmd::kShutdownHost: {
        auto it = links_.find(c.id);
        if (it == links_.end()) break;
        Link& ln = *it->second;
        if (ln.kind == Link::kSplice) {
          ln.relay->shutdown_host((c.dir & 1) != 0, (c.dir & 2) != 0);
        } else {
          if ((c.dir & 1) && !ln.rd_eof) {
            // Ring link, read side: stop taking bytes from the fd; the peer gets
            // EOF after what is already in the ring (a graceful close drains).
            ln.ep->out_eof();
            ln.rd_eof = true;
            shutdown(ln.fd, SHUT_RD);
            PumpEvent ev(PumpEvent::kFdEof);
            ev.id = ln.id;
            emit(std::move(ev));
          }
          // Write side: FIN to the fd after the bytes the ring holds (run_ring).
          if (c.dir & 2) ln.shut_wr_req = true;
        }
        queue(ln);
        break;
      }
      case Cmd::kResize: {
        auto it = links_.find(c.id);
        if (it == links_.end() || it->second->kind != Link::kRing) break;
        Link& l = *it->second;
        int err = l.region->request_resize(l.slot, c.dir, c.log2);
        PumpEvent e(PumpEvent::kProgress);
        e.id = l.id;
        e.err = err;
        e.code = "resize";
        e.a = c.dir;
        e.b = c.log2;
        emit(std::move(e));
        if (!l.queued) {
          l.queued = true;
          runq_.push_back(l.id);
        }
        break;
      }
      case Cmd::kWatch: {
        Session* s = session_for(c.region, true);
        if (!s->watched) s->watched = true;
        else live_watches_.fetch_sub(1);
        break;
      }
      case Cmd::kUnwatch: {
        auto it = sessions_.find(c.id);
        if (it != sessions_.end() && it->second->watched) {
          it->second->watched = false;
          live_watches_.fetch_sub(1);
          drop_session_if_idle(c.id);
        }
        break;
      }
      case Cmd::kAddListener: {
        std::unique_ptr<Listener> ls(new Listener());
        ls->id = c.id;
        ls->fd = c.fd;
        struct epoll_event ev = {};
        ev.events = EPOLLIN;
        ev.data.u64 = tag(kListener, c.id);
        epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
        listeners_[c.id] = std::move(ls);
        break;
      }
      case Cmd::kCloseListener: {
        auto it = listeners_.find(c.id);
        if (it == listeners_.end()) break;
        Listener& ls = *it->second;
        std::vector<uint32_t> ids;
        for (auto& kv : ls.conns) ids.push_back(kv.first);
        for (uint32_t id : ids) drop_conn(ls, id, 0, false);
        epoll_ctl(ep_, EPOLL_CTL_DEL, ls.fd, nullptr);
        close(ls.fd);
        listeners_.erase(it);
        break;
      }
      case Cmd::kReply: {
        auto it = listeners_.find(c.id);
        if (it == listeners_.end()) break;
        Listener& ls = *it->second;
        auto ct = ls.conns.find(c.conn);
        if (ct == ls.conns.end() || ct->second->state != Conn::kDecide) break;
        Conn& cn = *ct->second;
        attach::Reply r;
        r.status = c.status;
        int err;
        if (c.status == attach::kStatusOk && c.region && c.gw_bell && c.cl_bell) {
          r.fd_count = attach::kFdCount;
          r.region_size = c.region->size();
          r.slot_count = c.region->slot_count();
          int fds[3] = {c.region->fd(), c.gw_bell->fd(), c.cl_bell->fd()};
          err = attach::send_reply(cn.fd, r, fds, 3);
        } else {
          if (r.status == attach::kStatusOk) r.status = attach::kStatusProtocol;
          err = attach::send_reply(cn.fd, r, nullptr, 0);
        }
        if (err || r.status != attach::kStatusOk) drop_conn(ls, cn.id, err, err != 0);
        else cn.state = Conn::kAttached;
        break;
      }
      case Cmd::kCloseConn: {
        auto it = listeners_.find(c.id);
        if (it != listeners_.end()) drop_conn(*it->second, c.conn, 0, false);
        break;
      }
    }
  }
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
  if (l.rd_eof && l.wr_shut) return end_link(l, 0, "ok");
  if (more && !l.queued) {
    l.queued = true;
    runq_.push_back(l.id);
  }
}

// ---- attach listener ---------------------------------------------------------

void Pump::on_listener(Listener& ls) {
  for (int i = 0; i < 64; i++) {
    int fd = accept4(ls.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or a transient error: try on the next event
    std::unique_ptr<Conn> c(new Conn());
    c->id = ls.next_conn++;
    c->fd = fd;
    c->deadline = now_ms() + opt_.hello_timeout_ms;
    if (attach::peer_cred(fd, &c->pid, &c->uid, &c->gid) < 0) {
      close(fd);
      continue;
    }
    struct epoll_event ev = {};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = tag(kConn, ls.id, c->id);
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      close(fd);
      continue;
    }
    uint32_t cid = c->id;
    ls.conns[cid] = std::move(c);
    on_conn(ls, *ls.conns[cid], EPOLLIN);  // the hello may be there already
  }
}

void Pump::drop_conn(Listener& ls, uint32_t conn, int err, bool report) {
  auto it = ls.conns.find(conn);
  if (it == ls.conns.end()) return;
  epoll_ctl(ep_, EPOLL_CTL_DEL, it->second->fd, nullptr);
  close(it->second->fd);
  ls.conns.erase(it);
  if (report) {
    PumpEvent e(PumpEvent::kConnClosed);
    e.id = ls.id;
    e.conn = conn;
    e.err = err;
    emit(std::move(e));
  }
}

void Pump::on_conn(Listener& ls, Conn& c, uint32_t events) {
  (void)events;
  if (c.state != Conn::kHello) {
    // After the hello the client has nothing to say; EOF means it is gone.
    char scratch[256];
    for (int i = 0; i < 16; i++) {
      ssize_t n = recv(c.fd, scratch, sizeof scratch, MSG_DONTWAIT);
      if (n > 0) continue;  // ignored
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      return drop_conn(ls, c.id, n < 0 ? -errno : 0, true);
    }
    return;
  }
  uint8_t buf[attach::kHelloFixed + attach::kMaxToken];
  for (;;) {
    size_t have = c.buf.size();
    attach::Hello h;
    size_t total = attach::kHelloFixed;
    int r = attach::decode_hello(reinterpret_cast<const uint8_t*>(c.buf.data()), have, &h, &total);
    if (r < 0) {
      attach::Reply rep;
      rep.status = uint16_t(-r);
      attach::send_reply(c.fd, rep, nullptr, 0);
      return drop_conn(ls, c.id, 0, false);
    }
    if (r == 0) {
      if (have != total) {  // bytes after the hello before the reply: protocol error
        attach::Reply rep;
        rep.status = attach::kStatusProtocol;
        attach::send_reply(c.fd, rep, nullptr, 0);
        return drop_conn(ls, c.id, 0, false);
      }
      if (h.version != attach::kVersion || h.flags != 0) {
        attach::Reply rep;
        rep.status = attach::kStatusVersion;
        attach::send_reply(c.fd, rep, nullptr, 0);
        return drop_conn(ls, c.id, 0, false);
      }
      c.state = Conn::kDecide;
      std::string().swap(c.buf);
      PumpEvent e(PumpEvent::kAttach);
      e.id = ls.id;
      e.conn = c.id;
      e.pid = c.pid;
      e.uid = c.uid;
      e.gid = c.gid;
      e.version = h.version;
      e.flags = h.flags;
      e.token = std::move(h.token);
      emit(std::move(e));
      return;
    }
    ssize_t n = recv(c.fd, buf, total - have, MSG_DONTWAIT);
    if (n > 0) {
      c.buf.append(reinterpret_cast<const char*>(buf), size_t(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    return drop_conn(ls, c.id, 0, false);  // gone before saying hello
  }
}

void Pump::sweep_conns(int64_t now) {
  for (auto& kv : listeners_) {
    Listener& ls = *kv.second;
    std::vector<uint32_t> late;
    for (auto& c : ls.conns)
      if (c.second->state == Conn::kHello && c.second->deadline <= now) late.push_back(c.first);
    for (uint32_t id : late) {
      attach::Reply rep;
      rep.status = attach::kStatusTimeout;
      attach::send_reply(ls.conns[id]->fd, rep, nullptr, 0);
      drop_conn(ls, id, 0, false);
    }
  }
}

void Pump::run() {
  struct epoll_event evs[64];
  int idle_rounds = 0;
  while (!stopping_.load()) {
    int timeout = runq_.empty() ? -1 : 0;
    if (timeout < 0) {
      // Optional spin: look for hints without sleeping, adaptively.
      if (spin_now_us_ > 0) {
        int64_t until = now_us() + spin_now_us_;
        bool found = false;
        while (!found && now_us() < until) {
          for (auto& kv : sessions_)
            if (kv.second->awake && kv.second->region->prepare_sleep()) found = true;
          for (int i = 0; i < 32; i++) cpu_relax();
        }
        if (found) spin_now_us_ = opt_.spin_us;
        else spin_now_us_ /= 2;
      } else if (opt_.spin_us > 0 && ++idle_rounds % 64 == 0) {
        spin_now_us_ = opt_.spin_us;
      }
      // Going to sleep: every awake session sets its flag and re-checks.
      for (auto& kv : sessions_) {
        Session& s = *kv.second;
        if (!s.awake) continue;
        if (s.region->prepare_sleep()) {
          s.region->clear_sleeping();
          timeout = 0;
        } else {
          s.awake = false;
        }
      }
    }
    bool pending_hello = false;
    for (auto& kv : listeners_)
      for (auto& c : kv.second->conns)
        if (c.second->state == Conn::kHello) pending_hello = true;
    if (pending_hello && timeout < 0) timeout = 250;
    if (!progress_due_.empty() && (timeout < 0 || timeout > int(opt_.progress_ms))) timeout = int(opt_.progress_ms);
    if (!out_.empty()) {
      std::vector<PumpEvent> batch;
      batch.swap(out_);
      sink_(std::move(batch));
    }
    int n = epoll_wait(ep_, evs, 64, timeout);
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

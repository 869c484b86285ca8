// The attach listener on the I/O thread: accept, read the hello (bounded in
// time), hand JS an attach event, send its reply, watch for the hang-up.
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

}  // namespace sg

// The I/O thread's side of the command queue: what JS asked for (links,
// watches, listeners, sources, resizes), applied in order between rounds.
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
        if (ln.region->role() == Role::Gateway) {
          // The first sizes: an idle shrink goes back to them.
          ln.base_log2[ln.region->consume_dir()] = ln.ep->inbound()->grant_log2;
          ln.base_log2[ln.region->produce_dir()] = ln.ep->outbound()->grant_log2;
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

}  // namespace sg

#include "rdma_async_monitor.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>

#include "pump.h"
#include "rdma_conn_impl.h"
#include "rdma_sys.h"

namespace sg {
namespace rdma {

AsyncMonitor& AsyncMonitor::get() {
  static AsyncMonitor* m = new AsyncMonitor();  // lives as long as the process
  return *m;
}

void AsyncMonitor::add(ibv_context* ctx, uint32_t qp_num, uint8_t port, Pump* pump, uint32_t id) {
  std::unique_lock<std::mutex> g(mu_);
  if (!started_) {
    wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_ < 0) return;  // no monitor: completions still report failures
    started_ = true;
    std::thread([this] { run(); }).detach();
  }
  set_nonblock(ctx->async_fd);
  regs_.push_back({ctx, qp_num, port, pump, id});
  rebuild(g);
}

void AsyncMonitor::remove(Pump* pump, uint32_t id) {
  std::unique_lock<std::mutex> g(mu_);
  ibv_context* ctx = nullptr;
  for (size_t i = 0; i < regs_.size(); i++)
    if (regs_[i].pump == pump && regs_[i].id == id) {
      ctx = regs_[i].ctx;
      regs_.erase(regs_.begin() + long(i));
      break;
    }
  if (!ctx) return;
  for (auto& r : regs_)
    if (r.ctx == ctx) return;  // still watched for others
  rebuild(g);
}


void AsyncMonitor::rebuild(std::unique_lock<std::mutex>& g) {
  uint64_t want = ++gen_;
  uint64_t one = 1;
  ssize_t n = write(wake_, &one, sizeof one);
  (void)n;
  cv_.wait(g, [&] { return seen_ >= want; });
}

void AsyncMonitor::run() {
  std::vector<ibv_context*> ctxs;
  for (;;) {
    std::vector<pollfd> pfds;
    {
      std::lock_guard<std::mutex> g(mu_);
      ctxs.clear();
      for (auto& r : regs_)
        if (std::find(ctxs.begin(), ctxs.end(), r.ctx) == ctxs.end()) ctxs.push_back(r.ctx);
      seen_ = gen_;
    }
    cv_.notify_all();
    pfds.push_back({wake_, POLLIN, 0});
    for (ibv_context* c : ctxs) pfds.push_back({c->async_fd, POLLIN, 0});
    int n = poll(pfds.data(), nfds_t(pfds.size()), -1);
    if (n < 0) continue;
    if (pfds[0].revents) {
      uint64_t v;
      ssize_t r = read(wake_, &v, sizeof v);
      (void)r;
    }
    std::lock_guard<std::mutex> g(mu_);
    if (gen_ != seen_) continue;  // a context may be going away: rebuild first
    for (size_t i = 1; i < pfds.size(); i++) {
      if (!(pfds[i].revents & POLLIN)) continue;
      ibv_context* ctx = ctxs[i - 1];
      for (int k = 0; k < 16; k++) {
        ibv_async_event ev;
        if (ibv_get_async_event(ctx, &ev) != 0) break;
        ibv_event_type type = ev.event_type;
        uint32_t qp_num = 0;
        uint8_t port = 0;
        if (type == IBV_EVENT_QP_FATAL || type == IBV_EVENT_QP_REQ_ERR || type == IBV_EVENT_QP_ACCESS_ERR)
          qp_num = ev.element.qp->qp_num;
        if (type == IBV_EVENT_PORT_ERR) port = uint8_t(ev.element.port_num);
        ibv_ack_async_event(&ev);
        const char* code = nullptr;
        if (qp_num) code = fail::kErrQpFatal;
        else if (type == IBV_EVENT_PORT_ERR) code = fail::kErrPortDown;
        else if (type == IBV_EVENT_DEVICE_FATAL) code = fail::kErrDeviceRemoved;
        if (!code) continue;
        std::string detail = std::string("async event ") + ibv_event_type_str(type);
        for (auto& r : regs_) {
          if (r.ctx != ctx) continue;
          if (qp_num && r.qp_num != qp_num) continue;
          if (port && r.port && r.port != port) continue;
          r.pump->run_on_source(r.id, [code, detail](PumpSource* s) {
            if (s) conn_async_fail(s, code, detail);
          });
        }
      }
    }
  }
}

}  // namespace rdma
}  // namespace sg

// rdma connections, timers: the connect deadline, keepalive (3 silent
// intervals end the connection), batched progress events, and the flow trace
// (SOCKGATE_TRACE=rdma-flow, decided in TS: RegionOpts::trace).

#include "rdma_conn_impl.h"

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <string>

#include "rdma_sys.h"

namespace sg {
namespace rdma {

void Conn::on_timer() {
  drain_timer(timer_);
  int64_t now = now_ms();
  if (state_ != kEstablished) {
    if (now >= deadline_) die(fail::kTimeout, -ETIMEDOUT, client_ ? "rdma connect" : "rdma accept");
    return;
  }
  if (o_.trace) trace_state();
  if (!keepalive_ms_) return;
  if (now - last_rx_ > int64_t(keepalive_ms_) * 3) {
    die(fail::kErrTimeout, -ETIMEDOUT, "nothing heard from the peer for " + std::to_string(now - last_rx_) + " ms");
    return;
  }
  if (now - last_tx_ >= int64_t(keepalive_ms_)) {
    Msg m;
    m.type = Msg::kKeepalive;
    post_msg(m);
  }
  after();
}

namespace {

// One line in the format of native/trace.ts's tracers, so the flow trace reads
// as one log with the TS ones.
void trace_line(const std::string& text) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ | sockgate %d | rdma-flow | %s\n", when, ts.tv_nsec / 1000000, int(getpid()), text.c_str());
}

}  // namespace

// SOCKGATE_TRACE=rdma-flow (RegionOpts::trace, set by the TS callers): every
// keepalive tick, the connection's flow state (diagnosing a stalled transfer).
void Conn::trace_state() const {
  char b[512];
  snprintf(b, sizeof b, "conn %u %s: peer_credits %u to_return %u sq_used %u unsignaled %u ctrl %zu due %zu", id_,
           client_ ? "client" : "server", peer_credits_, to_return_, sq_used_, unsignaled_, ctrl_.size(), due_.size());
  trace_line(b);
  for (uint32_t i = 0; i < slots_.size(); i++) {
    const Slot& t = slots_[i];
    if (t.st == Slot::kFree && t.fd < 0) continue;
    snprintf(b, sizeof b,
             "  slot %u st %d out %d in %d bind %d fd %d r%d w%d hup%d due%d pblk%d"
             " rprod %llu rcons %llu lastupd %llu rd %llu prod %llu peercons %llu",
             i, int(t.st), int(t.out), int(t.in), int(t.bind), t.fd, t.readable, t.writable, t.rd_hup, t.update_due,
             t.peer_blocked, (unsigned long long)t.rprod, (unsigned long long)t.rcons, (unsigned long long)t.last_update,
             (unsigned long long)t.rd, (unsigned long long)t.prod, (unsigned long long)t.peer_cons);
    trace_line(b);
  }
}

// Byte counts of every slot that moved some since the last time.
void Conn::on_progress_timer() {
  drain_timer(progress_timer_);
  progress_armed_ = false;
  progress_due_ = false;
  for (uint32_t i = 0; i < slots_.size(); i++)
    if (slots_[i].touched) {
      slots_[i].touched = false;
      flush_progress(i);
    }
}

}  // namespace rdma
}  // namespace sg

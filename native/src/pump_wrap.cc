// The Pump and PumpLink ObjectWraps: the native pump (one epoll I/O thread,
// events batched to JS through one ThreadSafeFunction) and its ring links.
#include "pump_wrap.h"

#include <mutex>
#include <string>
#include <vector>

#include "js_util.h"
#include "pump_access.h"
#include "wrap_region.h"

namespace sg {
namespace js {

namespace {

// The longest spin a pump may be asked for (µs): beyond it a sleep is cheaper.
constexpr uint32_t MAX_SPIN_US = 1000;

struct SinkState {
  std::mutex mu;
  std::vector<PumpEvent> pending;
  bool scheduled = false;
};

Napi::Object EventToJs(Napi::Env env, const PumpEvent& e) {
  Napi::Object o = Napi::Object::New(env);
  static const char* names[] = {"", "progress", "fdEof", "ringEof", "end", "corrupt", "hints", "attach", "connClosed", "rdma"};
  o.Set("type", Napi::String::New(env, names[e.type]));
  switch (e.type) {
    case PumpEvent::kRdma:
      o.Set("rdma", Napi::Number::New(env, e.id));
      o.Set("event", Napi::String::New(env, e.name));
      if (e.name == "request") {
        o.Set("conn", Napi::Number::New(env, e.conn));
        o.Set("token", Napi::Buffer<char>::Copy(env, e.token.data(), e.token.size()));
        o.Set("peer", Napi::String::New(env, e.detail));
        o.Set("move", Napi::Boolean::New(env, (e.flags & 4) != 0));
      } else if (e.name == "failed" || e.name == "closed") {
        o.Set("code", Napi::String::New(env, e.code));
        o.Set("errno", Napi::Number::New(env, e.err));
        o.Set("message", Napi::String::New(env, e.detail));
      } else if (e.name == "bind") {
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("token", Napi::Buffer<char>::Copy(env, e.token.data(), e.token.size()));
        // A moved socket's RESUME BIND: the client's stream position.
        if (e.flags & 1) o.Set("position", Napi::BigInt::New(env, e.a));
      } else if (e.name == "bound") {
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("position", Napi::BigInt::New(env, e.a));
      } else if (e.name == "progress") {
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("toFd", Napi::Number::New(env, double(e.a)));
        o.Set("toPeer", Napi::Number::New(env, double(e.b)));
      } else if (e.name == "suspended") {
        // Live failover: the fd is JS's now; positions as bigints (exact); tail = unacknowledged bytes.
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("code", Napi::String::New(env, e.code));
        o.Set("fd", Napi::Number::New(env, e.fd));
        o.Set("inPos", Napi::BigInt::New(env, e.a));
        o.Set("outAcked", Napi::BigInt::New(env, e.b));
        o.Set("outSent", Napi::BigInt::New(env, e.c));
        o.Set("outPos", Napi::BigInt::New(env, e.d));
        o.Set("fdEof", Napi::Boolean::New(env, (e.flags & 1) != 0));
        o.Set("peerEof", Napi::Boolean::New(env, (e.flags & 2) != 0));
        o.Set("wrShut", Napi::Boolean::New(env, (e.flags & 4) != 0));
        o.Set("tail", Napi::Buffer<char>::Copy(env, e.token.data(), e.token.size()));
      } else if (e.name == "slotEnd") {
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("reason", Napi::String::New(env, e.detail));
        o.Set("errno", Napi::Number::New(env, e.err));
        o.Set("code", Napi::String::New(env, e.code));
        o.Set("totalToFd", Napi::Number::New(env, double(e.a)));
        o.Set("totalToPeer", Napi::Number::New(env, double(e.b)));
      } else if (e.name != "established") {
        o.Set("slot", Napi::Number::New(env, e.slot));
      }
      break;
    case PumpEvent::kProgress:
      o.Set("link", Napi::Number::New(env, e.id));
      if (e.code == "resize" || e.code == "shrink") {
        o.Set("type", Napi::String::New(env, "resized"));
        // An idle shrink is the pump's own grant (native/SHM.md), not an answer to resize().
        if (e.code == "shrink") o.Set("idle", Napi::Boolean::New(env, true));
        o.Set("dir", Napi::Number::New(env, double(e.a)));
        o.Set("ringSize", Napi::Number::New(env, double(uint64_t(1) << e.b)));
        o.Set("errno", Napi::Number::New(env, e.err));
      } else {
        o.Set("toFd", Napi::Number::New(env, double(e.a)));
        o.Set("toRing", Napi::Number::New(env, double(e.b)));
        o.Set("stalls", Napi::Number::New(env, e.stalls));
      }
      break;
    case PumpEvent::kFdEof:
    case PumpEvent::kRingEof:
      o.Set("link", Napi::Number::New(env, e.id));
      break;
    case PumpEvent::kEnd:
      o.Set("link", Napi::Number::New(env, e.id));
      o.Set("reason", Napi::String::New(env, e.code));
      o.Set("errno", Napi::Number::New(env, e.err));
      if (e.err) {
        const char* n = e.err == -EBADMSG ? "ERR_SOCKGATE_RING_CORRUPT" : strerrorname_np(-e.err);
        o.Set("code", Napi::String::New(env, n ? n : "EUNKNOWN"));
      }
      o.Set("totalToFd", Napi::Number::New(env, double(e.a)));
      o.Set("totalToRing", Napi::Number::New(env, double(e.b)));
      break;
    case PumpEvent::kCorrupt:
      o.Set("region", Napi::Number::New(env, e.id));
      o.Set("code", Napi::String::New(env, "ERR_SOCKGATE_RING_CORRUPT"));
      break;
    case PumpEvent::kHints: {
      o.Set("region", Napi::Number::New(env, e.id));
      Napi::Array a = Napi::Array::New(env, e.slots.size());
      for (size_t i = 0; i < e.slots.size(); i++) a.Set(uint32_t(i), Napi::Number::New(env, e.slots[i]));
      o.Set("slots", a);
      break;
    }
    case PumpEvent::kAttach:
      o.Set("listener", Napi::Number::New(env, e.id));
      o.Set("conn", Napi::Number::New(env, e.conn));
      o.Set("pid", Napi::Number::New(env, e.pid));
      o.Set("uid", Napi::Number::New(env, e.uid));
      o.Set("gid", Napi::Number::New(env, e.gid));
      o.Set("version", Napi::Number::New(env, e.version));
      o.Set("flags", Napi::Number::New(env, e.flags));
      o.Set("token", Napi::Buffer<char>::Copy(env, e.token.data(), e.token.size()));
      break;
    case PumpEvent::kConnClosed:
      o.Set("listener", Napi::Number::New(env, e.id));
      o.Set("conn", Napi::Number::New(env, e.conn));
      o.Set("errno", Napi::Number::New(env, e.err));
      break;
  }
  return o;
}

// spinUs: a number of µs in [0, MAX_SPIN_US]; undefined keeps *out.
bool SpinArg(Napi::Env env, Napi::Value v, uint32_t* out) {
  if (v.IsUndefined()) return true;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= MAX_SPIN_US)) {
    Napi::RangeError::New(env, "spinUs must be a number of µs in [0, " + std::to_string(MAX_SPIN_US) + "]").ThrowAsJavaScriptException();
    return false;
  }
  *out = uint32_t(d);
  return true;
}

}  // namespace

Napi::Function PumpWrap::Init(Napi::Env env) {
  return DefineClass(env, "Pump",
                     {InstanceMethod<&PumpWrap::Ref>("ref"), InstanceMethod<&PumpWrap::Unref>("unref"),
                      InstanceMethod<&PumpWrap::Watch>("watch"), InstanceMethod<&PumpWrap::Unwatch>("unwatch"),
                      InstanceAccessor<&PumpWrap::Links>("activeLinks"), InstanceAccessor<&PumpWrap::Closed>("closed"),
                      InstanceMethod<&PumpWrap::SetSpin>("setSpin"), InstanceMethod<&PumpWrap::Stats>("stats"),
                      InstanceMethod<&PumpWrap::Close>("close")});
}

PumpWrap::PumpWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PumpWrap>(info) {
  Napi::Env env = info.Env();
  if (!info.IsConstructCall()) { ThrowType(env, "Pump must be constructed with new"); return; }
  if (info.Length() < 1 || !info[0].IsFunction()) { ThrowType(env, "Pump(onEvents: function, options?)"); return; }
  PumpOptions o;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object opts = info[1].As<Napi::Object>();
    if (!SpinArg(env, opts.Get("spinUs"), &o.spin_us)) return;
    Napi::Value s = opts.Get("shrinkIdleMs");
    if (!s.IsUndefined()) {
      if (!s.IsNumber() || !(s.As<Napi::Number>().DoubleValue() >= 0 && s.As<Napi::Number>().DoubleValue() <= 3600000)) {
        ThrowType(env, "shrinkIdleMs must be a number of ms in [0, 3600000]");
        return;
      }
      o.shrink_idle_ms = uint32_t(s.As<Napi::Number>().DoubleValue());
    }
  }
  tsfn_ = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "sockgate-pump", 0, 1);
  auto state = std::make_shared<SinkState>();
  Napi::ThreadSafeFunction tsfn = tsfn_;
  EventSink sink = [state, tsfn](std::vector<PumpEvent>&& batch) mutable {
    std::lock_guard<std::mutex> g(state->mu);
    for (auto& e : batch) state->pending.push_back(std::move(e));
    if (state->scheduled) return;  // one call in flight carries everything
    state->scheduled = true;
    tsfn.NonBlockingCall([state](Napi::Env env, Napi::Function cb) {
      std::vector<PumpEvent> events;
      {
        std::lock_guard<std::mutex> g(state->mu);
        events.swap(state->pending);
        state->scheduled = false;
      }
      if (events.empty() || env == nullptr) return;
      Napi::Array a = Napi::Array::New(env, events.size());
      for (size_t i = 0; i < events.size(); i++) a.Set(uint32_t(i), EventToJs(env, events[i]));
      cb.Call({a});
    });
  };
  std::unique_ptr<Pump> p;
  int err = Pump::create(o, std::move(sink), &p);
  if (err) {
    tsfn_.Release();
    ThrowErrno(env, err, "pump create");
    return;
  }
  core_ = std::shared_ptr<Pump>(std::move(p));
  teardown_.Arm(env, [this] { Shut(); });
  info.This().As<Napi::Object>().TypeTag(&kPumpTag);
}

void PumpWrap::Shut() {
  if (!core_) return;
  teardown_.Disarm();
  core_->stop();  // joins the thread: no sink call after this
  core_.reset();
  tsfn_.Release();
}

bool PumpWrap::Live(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kPumpTag, "Pump")) return false;
  if (!core_) { ThrowErrno(info.Env(), EBADF, "pump is closed"); return false; }
  return true;
}

Napi::Value PumpWrap::Ref(const Napi::CallbackInfo& info) {
  if (Live(info)) tsfn_.Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value PumpWrap::Unref(const Napi::CallbackInfo& info) {
  if (Live(info)) tsfn_.Unref(info.Env());
  return info.Env().Undefined();
}

Napi::Value PumpWrap::Watch(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kRegionTag))
    return ThrowType(info.Env(), "watch(region: Region)");
  auto r = RegionWrap::Unwrap(info[0].As<Napi::Object>())->core();
  if (!r) return ThrowErrno(info.Env(), EBADF, "region is closed");
  int err = core_->watch(r);
  if (err) return ThrowErrno(info.Env(), err, "watch (set the region's doorbells first)");
  return info.Env().Undefined();
}

Napi::Value PumpWrap::Unwatch(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kRegionTag))
    return ThrowType(info.Env(), "unwatch(region: Region)");
  auto r = RegionWrap::Unwrap(info[0].As<Napi::Object>())->core();
  if (r) core_->unwatch(r->id());
  return info.Env().Undefined();
}

Napi::Value PumpWrap::Links(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), core_->live_links());
}

Napi::Value PumpWrap::Closed(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kPumpTag, "Pump")) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), !core_);
}

// setSpin(us): the spin setting from now on (a client learns its gateway's).
Napi::Value PumpWrap::SetSpin(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  uint32_t us = 0;
  if (info.Length() < 1 || info[0].IsUndefined()) return ThrowType(info.Env(), "setSpin(us: number)");
  if (!SpinArg(info.Env(), info[0], &us)) return info.Env().Undefined();
  core_->set_spin_us(us);
  return info.Env().Undefined();
}

// stats(): what the I/O thread did so far (PumpStats).
Napi::Value PumpWrap::Stats(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  PumpStats s = core_->stats();
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("wakeups", Napi::Number::New(env, double(s.wakeups)));
  o.Set("spins", Napi::Number::New(env, double(s.spins)));
  o.Set("spinHits", Napi::Number::New(env, double(s.spin_hits)));
  o.Set("doorbells", Napi::Number::New(env, double(s.doorbells)));
  o.Set("fdReads", Napi::Number::New(env, double(s.fd_reads)));
  o.Set("fdWrites", Napi::Number::New(env, double(s.fd_writes)));
  o.Set("shrinks", Napi::Number::New(env, double(s.shrinks)));
  o.Set("spinBudgetUs", Napi::Number::New(env, s.spin_budget_us));
  o.Set("spinUs", Napi::Number::New(env, s.spin_max_us));
  return o;
}

Napi::Value PumpWrap::Close(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kPumpTag, "Pump")) return info.Env().Undefined();
  if (!core_) return info.Env().Undefined();
  if (core_->live_links() || core_->live_watches() || listeners_ > 0)
    return ThrowErrno(info.Env(), EBUSY, "pump close (links, watches or listeners still open)");
  Shut();
  return info.Env().Undefined();
}

namespace {

// ---- PumpLink ---------------------------------------------------------------

class LinkWrap : public Napi::ObjectWrap<LinkWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "PumpLink",
                       {InstanceAccessor<&LinkWrap::Id>("id"), InstanceMethod<&LinkWrap::Resize>("resize"),
                        InstanceMethod<&LinkWrap::SetHostSockopt>("setHostSockopt"),
                        InstanceMethod<&LinkWrap::GetHostSockopt>("getHostSockopt"),
                        InstanceMethod<&LinkWrap::ShutdownRead>("shutdownRead"),
                        InstanceMethod<&LinkWrap::ShutdownHost>("shutdownHost"),
                        InstanceMethod<&LinkWrap::Totals>("totals"), InstanceMethod<&LinkWrap::Mute>("mute"),
                        InstanceMethod<&LinkWrap::Close>("close")});
  }
  // new PumpLink(pump, region, slot, fd, prefix?: Uint8Array[]): takes
  // ownership of fd on success (closed when the link ends).
  LinkWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LinkWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "PumpLink must be constructed with new"); return; }
    if (info.Length() < 4 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kPumpTag) ||
        !info[1].IsObject() || !info[1].As<Napi::Object>().CheckTypeTag(&kRegionTag)) {
      ThrowType(env, "PumpLink(pump: Pump, region: Region, slot: number, fd: number, prefix?: Buffer[])");
      return;
    }
    uint32_t slot;
    int64_t fd;
    if (!GetU32(info, 2, "slot", &slot) || !GetInt(info, 3, "fd", 0, INT32_MAX, &fd)) return;
    std::string prefix;
    if (!GetPrefix(info, 4, "prefix", &prefix)) return;
    PumpWrap* pw = PumpWrap::Unwrap(info[0].As<Napi::Object>());
    auto region = RegionWrap::Unwrap(info[1].As<Napi::Object>())->core();
    if (pw->closed()) { ThrowErrno(env, EBADF, "pump is closed"); return; }
    if (!region) { ThrowErrno(env, EBADF, "region is closed"); return; }
    pump_ = pw->core();
    int err = pump_->add_link(region, slot, int(fd), std::move(prefix), &id_, &fd_);
    if (err) {
      pump_.reset();
      ThrowErrno(env, err, "PumpLink");
      return;
    }
    info.This().As<Napi::Object>().TypeTag(&kLinkTag);
  }

 private:
  Napi::Value Id(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), id_);
  }
  Napi::Value Resize(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    uint32_t dir, size, log2;
    if (!GetU32(info, 0, "dir", &dir) || !GetU32(info, 1, "ringSize", &size)) return info.Env().Undefined();
    if (dir > 1) return ThrowErrno(info.Env(), EINVAL, "dir");
    if (!SizeToLog2(info.Env(), size, &log2)) return info.Env().Undefined();
    if (!pump_) return ThrowErrno(info.Env(), EBADF, "link is closed");
    pump_->resize_link(id_, dir, log2);
    return info.Env().Undefined();
  }
  // setsockopt/getsockopt(int) on the descriptor the link owns; EBADF once the link ended.
  Napi::Value SetHostSockopt(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    int64_t level, name, value;
    if (!GetInt(info, 0, "level", 0, INT32_MAX, &level) || !GetInt(info, 1, "name", 0, INT32_MAX, &name) ||
        !GetInt(info, 2, "value", INT32_MIN, INT32_MAX, &value))
      return info.Env().Undefined();
    int err = fd_ ? fd_->set_opt(int(level), int(name), int(value)) : -EBADF;
    if (err) return ThrowErrno(info.Env(), err, err == -EBADF ? "setsockopt (the link has ended)" : "setsockopt");
    return info.Env().Undefined();
  }
  Napi::Value GetHostSockopt(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    int64_t level, name;
    if (!GetInt(info, 0, "level", 0, INT32_MAX, &level) || !GetInt(info, 1, "name", 0, INT32_MAX, &name)) return info.Env().Undefined();
    int v = 0;
    int err = fd_ ? fd_->get_opt(int(level), int(name), &v) : -EBADF;
    if (err) return ThrowErrno(info.Env(), err, err == -EBADF ? "getsockopt (the link has ended)" : "getsockopt");
    return Napi::Number::New(info.Env(), v);
  }
  // [bytes ring->fd, bytes fd->ring] as of the I/O thread's last round.
  Napi::Value Totals(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    Napi::Array a = Napi::Array::New(info.Env(), 2);
    a.Set(0u, Napi::Number::New(info.Env(), fd_ ? double(fd_->total_to_fd.load()) : 0));
    a.Set(1u, Napi::Number::New(info.Env(), fd_ ? double(fd_->total_to_ring.load()) : 0));
    return a;
  }
  // No more progress events for this link: JS reads totals() on demand.
  Napi::Value Mute(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    if (fd_) fd_->quiet.store(true);
    return info.Env().Undefined();
  }
  // Stop reading the fd: the peer gets EOF after the bytes already in the
  // ring, the other direction drains until its own EOF (a graceful close).
  Napi::Value ShutdownRead(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    if (!pump_) return ThrowErrno(info.Env(), EBADF, "link is closed");
    pump_->shutdown_host(id_, true, false);
    return info.Env().Undefined();
  }
  // shutdown(2) of the fd in order with the rings: `write` sends FIN after the
  // bytes the inbound ring holds (later ones are dropped); `read` = ShutdownRead.
  Napi::Value ShutdownHost(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    if (info.Length() < 2 || !info[0].IsBoolean() || !info[1].IsBoolean()) return ThrowType(info.Env(), "shutdownHost(read: boolean, write: boolean)");
    if (!pump_) return ThrowErrno(info.Env(), EBADF, "link is closed");
    pump_->shutdown_host(id_, info[0].As<Napi::Boolean>().Value(), info[1].As<Napi::Boolean>().Value());
    return info.Env().Undefined();
  }
  // close(reset = false): abort; the pump reports its end ("aborted") with an
  // event. With reset the fd's peer sees RST, else FIN. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kLinkTag, "PumpLink")) return info.Env().Undefined();
    bool reset = false;
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      if (!info[0].IsBoolean()) return ThrowType(info.Env(), "close(reset?: boolean)");
      reset = info[0].As<Napi::Boolean>().Value();
    }
    if (pump_) {
      pump_->close_link(id_, reset);
      pump_.reset();
    }
    return info.Env().Undefined();
  }
  std::shared_ptr<LinkFd> fd_;  // the descriptor as JS may touch it (socket options)
  std::shared_ptr<Pump> pump_;
  uint32_t id_ = 0;
};

}  // namespace

Napi::Function InitPumpLink(Napi::Env env) { return LinkWrap::Init(env); }

}  // namespace js
}  // namespace sg

// pump_access.h: the Pump behind a JS Pump object (null if not one, or closed).
std::shared_ptr<sg::Pump> sg::PumpOf(Napi::Value v) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&js::kPumpTag)) return nullptr;
  return js::PumpWrap::Unwrap(v.As<Napi::Object>())->core();
}

// pump_access.h: a Listener opened or closed on this Pump.
void sg::AdjustPumpListeners(Napi::Object pump, int delta) {
  if (!pump.CheckTypeTag(&js::kPumpTag)) return;
  js::PumpWrap* pw = js::PumpWrap::Unwrap(pump);
  if (pw) pw->listeners_ += delta;
}

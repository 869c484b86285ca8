// sockgate native addon: a thin N-API surface over the shm region, eventfds,
// the pump (links, listener) and the client attach. Primitives only; every
// decision lives in TypeScript (native/index.ts is the one loader).
//
// One JS class per OS resource, each owning one handle, each in its own file:
// Region (wrap_region.cc: memfd + mapping), Eventfd (wrap_eventfd.cc),
// SpliceLink (wrap_splice.cc: a client fd and a host fd relayed through pipes),
// Listener (wrap_listener.cc: Unix socket), and here Pump (epoll thread) and
// PumpLink (host fd); plain functions in js_attach.cc and js_fd.cc, shared
// argument checks in js_util.h. close() is the rule and refuses while the
// resource is in use; the destructor is the safety net. This file also
// builds the exports (Init).
#include <napi.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attach.h"
#include "js_functions.h"
#include "js_util.h"
#include "pump.h"
#include "pump_access.h"
#include "region.h"
#include "ring.h"
#include "vsock.h"
#include "wrap_eventfd.h"
#include "wrap_listener.h"
#include "wrap_region.h"
#include "wrap_splice.h"
#ifdef SG_WITH_RDMA
#include "rdma_addon.h"
#endif

using namespace sg;
using namespace sg::js;

namespace {

// ---- Pump -----------------------------------------------------------------

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
      } else if (e.name == "failed" || e.name == "closed") {
        o.Set("code", Napi::String::New(env, e.code));
        o.Set("errno", Napi::Number::New(env, e.err));
        o.Set("message", Napi::String::New(env, e.detail));
      } else if (e.name == "bind") {
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("token", Napi::Buffer<char>::Copy(env, e.token.data(), e.token.size()));
      } else if (e.name == "progress") {
        o.Set("slot", Napi::Number::New(env, e.slot));
        o.Set("toFd", Napi::Number::New(env, double(e.a)));
        o.Set("toPeer", Napi::Number::New(env, double(e.b)));
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
      if (e.code == "resize") {
        o.Set("type", Napi::String::New(env, "resized"));
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

class PumpWrap : public Napi::ObjectWrap<PumpWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Pump",
                       {InstanceMethod<&PumpWrap::Ref>("ref"), InstanceMethod<&PumpWrap::Unref>("unref"),
                        InstanceMethod<&PumpWrap::Watch>("watch"), InstanceMethod<&PumpWrap::Unwatch>("unwatch"),
                        InstanceAccessor<&PumpWrap::Links>("activeLinks"), InstanceAccessor<&PumpWrap::Closed>("closed"),
                        InstanceMethod<&PumpWrap::Close>("close")});
  }
  PumpWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PumpWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "Pump must be constructed with new"); return; }
    if (info.Length() < 1 || !info[0].IsFunction()) { ThrowType(env, "Pump(onEvents: function, options?)"); return; }
    PumpOptions o;
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Value s = info[1].As<Napi::Object>().Get("spinUs");
      if (!s.IsUndefined()) {
        if (!s.IsNumber()) { ThrowType(env, "spinUs must be a number"); return; }
        double d = s.As<Napi::Number>().DoubleValue();
        o.spin_us = d > 0 && d < 1e6 ? uint32_t(d) : 0;
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
    info.This().As<Napi::Object>().TypeTag(&kPumpTag);
  }
  ~PumpWrap() override { Shut(); }
  std::shared_ptr<Pump> core() const { return core_; }
  bool closed() const { return !core_; }

 private:
  void Shut() {
    if (!core_) return;
    core_->stop();  // joins the thread: no sink call after this
    core_.reset();
    tsfn_.Release();
  }
  bool Live(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kPumpTag, "Pump")) return false;
    if (!core_) { ThrowErrno(info.Env(), EBADF, "pump is closed"); return false; }
    return true;
  }
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (Live(info)) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (Live(info)) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kRegionTag))
      return ThrowType(info.Env(), "watch(region: Region)");
    auto r = RegionWrap::Unwrap(info[0].As<Napi::Object>())->core();
    if (!r) return ThrowErrno(info.Env(), EBADF, "region is closed");
    int err = core_->watch(r);
    if (err) return ThrowErrno(info.Env(), err, "watch (set the region's doorbells first)");
    return info.Env().Undefined();
  }
  Napi::Value Unwatch(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kRegionTag))
      return ThrowType(info.Env(), "unwatch(region: Region)");
    auto r = RegionWrap::Unwrap(info[0].As<Napi::Object>())->core();
    if (r) core_->unwatch(r->id());
    return info.Env().Undefined();
  }
  Napi::Value Links(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), core_->live_links());
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kPumpTag, "Pump")) return info.Env().Undefined();
    return Napi::Boolean::New(info.Env(), !core_);
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kPumpTag, "Pump")) return info.Env().Undefined();
    if (!core_) return info.Env().Undefined();
    if (core_->live_links() || core_->live_watches() || listeners_ > 0)
      return ThrowErrno(info.Env(), EBUSY, "pump close (links, watches or listeners still open)");
    Shut();
    return info.Env().Undefined();
  }

 public:
  int listeners_ = 0;

 private:
  std::shared_ptr<Pump> core_;
  Napi::ThreadSafeFunction tsfn_;
};

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

// The verbs layer (rdma_addon.cc) when binding.gyp found the rdma-core headers.
Napi::Object Rdma(Napi::Env env) {
#ifdef SG_WITH_RDMA
  return sg::rdma::Exports(env);
#else
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", Napi::Boolean::New(env, false));
  o.Set("available", Napi::Boolean::New(env, false));
  o.Set("reason", Napi::String::New(env,
                                    "built without rdma-core headers: apt-get install libibverbs-dev librdmacm-dev, "
                                    "then npm run build:native"));
  return o;
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 2));
#ifdef SOCKGATE_TEST_HOOKS
  exports.Set("testHooks", Napi::Boolean::New(env, true));  // the test build (binding.gyp sockgate_native_test)
#else
  exports.Set("testHooks", Napi::Boolean::New(env, false));
#endif
  exports.Set("Region", RegionWrap::Init(env));
  exports.Set("Eventfd", EventfdWrap::Init(env));
  exports.Set("Pump", PumpWrap::Init(env));
  exports.Set("PumpLink", LinkWrap::Init(env));
  exports.Set("SpliceLink", SpliceWrap::Init(env));
  exports.Set("Listener", ListenerWrap::Init(env));
  exports.Set("attach", Napi::Function::New(env, Attach, "attach"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("setsockoptInt", Napi::Function::New(env, SetSockOptInt, "setsockoptInt"));
  exports.Set("getsockoptInt", Napi::Function::New(env, GetSockOptInt, "getsockoptInt"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("setGatewayRingLimit", Napi::Function::New(env, SetGatewayRingLimit, "setGatewayRingLimit"));
  exports.Set("gatewayRingBytes", Napi::Function::New(env, GatewayRingBytes, "gatewayRingBytes"));
  exports.Set("rdma", Rdma(env));
  exports.Set("vsock", vsock::Exports(env));
  Napi::Object c = Napi::Object::New(env);
  c.Set("SOL_SOCKET", Napi::Number::New(env, SOL_SOCKET));
  c.Set("SO_SNDBUF", Napi::Number::New(env, SO_SNDBUF));
  c.Set("SO_RCVBUF", Napi::Number::New(env, SO_RCVBUF));
  c.Set("SO_KEEPALIVE", Napi::Number::New(env, SO_KEEPALIVE));
  c.Set("IPPROTO_TCP", Napi::Number::New(env, IPPROTO_TCP));
  c.Set("TCP_NODELAY", Napi::Number::New(env, TCP_NODELAY));
  c.Set("TCP_KEEPIDLE", Napi::Number::New(env, TCP_KEEPIDLE));
  c.Set("TCP_KEEPINTVL", Napi::Number::New(env, TCP_KEEPINTVL));
  c.Set("TCP_KEEPCNT", Napi::Number::New(env, TCP_KEEPCNT));
  c.Set("PIPE_MAX_SIZE", Napi::Number::New(env, pipe_max_size()));
  c.Set("DIR_C2G", Napi::Number::New(env, shm::kDirC2G));
  c.Set("DIR_G2C", Napi::Number::New(env, shm::kDirG2C));
  c.Set("MIN_RING_SIZE", Napi::Number::New(env, double(1u << shm::kMinRingLog2)));
  c.Set("MAX_RING_SIZE", Napi::Number::New(env, double(1u << shm::kMaxRingLog2)));
  c.Set("MAX_SLOTS", Napi::Number::New(env, shm::kMaxSlots));
  c.Set("ATTACH_VERSION", Napi::Number::New(env, attach::kVersion));
  c.Set("ATTACH_STATUS_PROTOCOL", Napi::Number::New(env, attach::kStatusProtocol));
  c.Set("ATTACH_STATUS_VERSION", Napi::Number::New(env, attach::kStatusVersion));
  c.Set("ATTACH_STATUS_TIMEOUT", Napi::Number::New(env, attach::kStatusTimeout));
  exports.Set("constants", c);
  return exports;
}

}  // namespace

// pump_access.h: the Pump behind a JS Pump object (null if not one, or closed).
std::shared_ptr<Pump> sg::PumpOf(Napi::Value v) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kPumpTag)) return nullptr;
  return PumpWrap::Unwrap(v.As<Napi::Object>())->core();
}

// pump_access.h: a Listener opened or closed on this Pump.
void sg::AdjustPumpListeners(Napi::Object pump, int delta) {
  if (!pump.CheckTypeTag(&kPumpTag)) return;
  PumpWrap* pw = PumpWrap::Unwrap(pump);
  if (pw) pw->listeners_ += delta;
}

NODE_API_MODULE(sockgate_native, Init)

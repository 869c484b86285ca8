// sockgate native addon: a thin N-API surface over the shm region, eventfds,
// the pump (links, listener) and the client attach. Primitives only; every
// decision lives in TypeScript (native/index.ts is the one loader).
//
// One JS class per OS resource, each owning one handle: Region (memfd +
// mapping), Eventfd, Pump (epoll thread), PumpLink (host fd), SpliceLink (a
// client fd and a host fd relayed through pipes), Listener (Unix socket). close() is the rule and refuses while the resource is in use; the
// destructor is the safety net.
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
#include "pump.h"
#include "region.h"
#include "ring.h"
#include "vsock.h"
#ifdef SG_WITH_RDMA
#include "rdma_addon.h"
#endif

using namespace sg;

namespace {

constexpr napi_type_tag kRegionTag = {0x73676b7265676e31ull, 0x1a2b3c4d5e6f7081ull};
constexpr napi_type_tag kEventfdTag = {0x73676b6576656e74ull, 0x1a2b3c4d5e6f7082ull};
constexpr napi_type_tag kPumpTag = {0x73676b70756d7031ull, 0x1a2b3c4d5e6f7083ull};
constexpr napi_type_tag kLinkTag = {0x73676b6c696e6b31ull, 0x1a2b3c4d5e6f7084ull};
constexpr napi_type_tag kListenerTag = {0x73676b6c69737431ull, 0x1a2b3c4d5e6f7085ull};
constexpr napi_type_tag kSpliceTag = {0x73676b73706c6331ull, 0x1a2b3c4d5e6f7086ull};

std::atomic<uint32_t> g_next_listener{1};

Napi::Value ThrowErrno(Napi::Env env, int err, const std::string& what) {
  int e = err < 0 ? -err : err;
  const char* name = strerrorname_np(e);
  std::string code = e == EBADMSG ? "ERR_SOCKGATE_RING_CORRUPT" : (name ? name : "EUNKNOWN");
  std::string msg = e == EBADMSG ? what + ": shared ring failed validation (peer corrupted it)" : what + ": " + strerror(e);
  Napi::Error x = Napi::Error::New(env, msg);
  x.Set("code", Napi::String::New(env, code));
  x.Set("errno", Napi::Number::New(env, -e));
  x.Set("syscall", Napi::String::New(env, what));
  x.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool CheckThis(const Napi::CallbackInfo& info, const napi_type_tag& t, const char* cls) {
  Napi::Value th = info.This();
  if (!th.IsObject() || !th.As<Napi::Object>().CheckTypeTag(&t)) {
    ThrowType(info.Env(), std::string("receiver is not a ") + cls);
    return false;
  }
  return true;
}

bool GetU32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowType(info.Env(), std::string(name) + " must be a number");
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || std::floor(d) != d) {
    Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer in [0, 2^32)").ThrowAsJavaScriptException();
    return false;
  }
  *out = uint32_t(d);
  return true;
}

bool GetInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi, int64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowType(info.Env(), std::string(name) + " must be a number");
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= double(lo) && d <= double(hi)) || std::floor(d) != d) {
    Napi::RangeError::New(info.Env(), std::string(name) + " is out of range").ThrowAsJavaScriptException();
    return false;
  }
  *out = int64_t(d);
  return true;
}

bool GetBytes(const Napi::CallbackInfo& info, size_t i, const char* name, uint8_t** data, size_t* len) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), std::string(name) + " must be a Buffer or Uint8Array");
    return false;
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  *data = a.Data();
  *len = a.ByteLength();
  return true;
}

// Optional (offset, length) window into a byte argument.
bool Window(const Napi::CallbackInfo& info, size_t i, uint8_t** data, size_t* len) {
  int64_t off = 0, n = int64_t(*len);
  if (info.Length() > i && !info[i].IsUndefined()) {
    if (!GetInt(info, i, "offset", 0, int64_t(*len), &off)) return false;
    n = int64_t(*len) - off;
  }
  if (info.Length() > i + 1 && !info[i + 1].IsUndefined()) {
    if (!GetInt(info, i + 1, "length", 0, int64_t(*len) - off, &n)) return false;
  }
  *data += off;
  *len = size_t(n);
  return true;
}

// An optional array of Uint8Arrays, concatenated (prefix bytes for a link).
bool GetPrefix(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  if (info.Length() <= i || info[i].IsUndefined()) return true;
  if (!info[i].IsArray()) {
    ThrowType(info.Env(), std::string(name) + " must be an array of Buffers");
    return false;
  }
  Napi::Array a = info[i].As<Napi::Array>();
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      ThrowType(info.Env(), std::string(name) + " must be an array of Buffers");
      return false;
    }
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    out->append(reinterpret_cast<const char*>(b.Data()), b.ByteLength());
  }
  return true;
}

bool SizeToLog2(Napi::Env env, uint32_t size, uint32_t* log2) {
  if (size == 0 || (size & (size - 1)) != 0) {
    Napi::RangeError::New(env, "ring size must be a power of two").ThrowAsJavaScriptException();
    return false;
  }
  *log2 = uint32_t(__builtin_ctz(size));
  return true;
}

// ---- Eventfd --------------------------------------------------------------

class EventfdWrap : public Napi::ObjectWrap<EventfdWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Eventfd",
                       {InstanceAccessor<&EventfdWrap::Fd>("fd"), InstanceAccessor<&EventfdWrap::Closed>("closed"),
                        InstanceMethod<&EventfdWrap::Signal>("signal"), InstanceMethod<&EventfdWrap::Drain>("drain"),
                        InstanceMethod<&EventfdWrap::Close>("close")});
  }
  EventfdWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventfdWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "Eventfd must be constructed with new"); return; }
    int err;
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      int64_t fd;
      if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return;
      err = EventFd::adopt(int(fd), &core_);
    } else {
      err = EventFd::create(&core_);
    }
    if (err) { ThrowErrno(env, err, "eventfd"); return; }
    info.This().As<Napi::Object>().TypeTag(&kEventfdTag);
  }
  std::shared_ptr<EventFd> core() const { return core_; }

 private:
  bool Live(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kEventfdTag, "Eventfd")) return false;
    if (!core_) { ThrowErrno(info.Env(), EBADF, "eventfd is closed"); return false; }
    return true;
  }
  Napi::Value Fd(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), core_->fd());
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kEventfdTag, "Eventfd")) return info.Env().Undefined();
    return Napi::Boolean::New(info.Env(), !core_);
  }
  Napi::Value Signal(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    int err = core_->signal();
    if (err) return ThrowErrno(info.Env(), err, "eventfd write");
    return info.Env().Undefined();
  }
  Napi::Value Drain(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    int64_t v = core_->drain();
    if (v < 0) return ThrowErrno(info.Env(), int(v), "eventfd read");
    return Napi::Number::New(info.Env(), double(v));
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kEventfdTag, "Eventfd")) return info.Env().Undefined();
    if (!core_) return info.Env().Undefined();  // idempotent
    if (core_.use_count() > 1) return ThrowErrno(info.Env(), EBUSY, "eventfd close (still used by a region or pump)");
    core_.reset();
    return info.Env().Undefined();
  }
  std::shared_ptr<EventFd> core_;
};

// ---- Region ---------------------------------------------------------------

class RegionWrap : public Napi::ObjectWrap<RegionWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    std::vector<PropertyDescriptor> props = {
         InstanceAccessor<&RegionWrap::Id>("id"), InstanceAccessor<&RegionWrap::Fd>("fd"),
         InstanceAccessor<&RegionWrap::Size>("size"), InstanceAccessor<&RegionWrap::Slots>("slotCount"),
         InstanceAccessor<&RegionWrap::MaxRing>("maxRingSize"), InstanceAccessor<&RegionWrap::RoleName>("role"),
         InstanceAccessor<&RegionWrap::Closed>("closed"), InstanceAccessor<&RegionWrap::Corrupt>("corrupt"),
         InstanceAccessor<&RegionWrap::Granted>("grantedBytes"), InstanceAccessor<&RegionWrap::Layout>("layout"),
         InstanceMethod<&RegionWrap::SetDoorbells>("setDoorbells"), InstanceMethod<&RegionWrap::OpenSlot>("openSlot"),
         InstanceMethod<&RegionWrap::CloseSlot>("closeSlot"), InstanceMethod<&RegionWrap::Resize>("requestResize"),
         InstanceMethod<&RegionWrap::SlotInfo>("slotInfo"), InstanceMethod<&RegionWrap::Write>("write"),
         InstanceMethod<&RegionWrap::Read>("read"), InstanceMethod<&RegionWrap::Shutdown>("shutdown"),
         InstanceMethod<&RegionWrap::ArmRead>("armRead"), InstanceMethod<&RegionWrap::ArmWrite>("armWrite"),
         InstanceMethod<&RegionWrap::Lend>("lend"), InstanceMethod<&RegionWrap::Release>("release"),
         InstanceMethod<&RegionWrap::TakeHints>("takeHints"), InstanceMethod<&RegionWrap::PrepareSleep>("prepareSleep"),
         InstanceMethod<&RegionWrap::ClearSleeping>("clearSleeping"),
         InstanceMethod<&RegionWrap::Peek>("unsafePeek64"),
         InstanceMethod<&RegionWrap::Close>("close")};
#ifdef SOCKGATE_TEST_HOOKS
    props.push_back(InstanceMethod<&RegionWrap::Poke>("unsafePoke64"));
#endif
    return DefineClass(env, "Region", props);
  }

  RegionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RegionWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "Region must be constructed with new"); return; }
    int err;
    if (info.Length() > 0 && info[0].IsNumber()) {
      int64_t fd;
      if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return;
      err = Region::attach(int(fd), &core_);  // owns fd from here, even on failure
      if (err) { ThrowErrno(env, err, "region attach"); return; }
    } else if (info.Length() > 0 && info[0].IsObject()) {
      Napi::Object o = info[0].As<Napi::Object>();
      RegionParams p;
      Napi::Value slots = o.Get("slots"), maxRing = o.Get("maxRingSize"), limit = o.Get("byteLimit");
      if (!slots.IsNumber() || !maxRing.IsNumber()) { ThrowType(env, "slots and maxRingSize must be numbers"); return; }
      double s = slots.As<Napi::Number>().DoubleValue(), m = maxRing.As<Napi::Number>().DoubleValue();
      if (!(s >= 1 && s <= shm::kMaxSlots) || std::floor(s) != s) {
        Napi::RangeError::New(env, "slots out of range").ThrowAsJavaScriptException();
        return;
      }
      if (!(m >= 1 && m <= double(1u << shm::kMaxRingLog2))) {
        Napi::RangeError::New(env, "maxRingSize out of range").ThrowAsJavaScriptException();
        return;
      }
      p.slots = uint32_t(s);
      if (!SizeToLog2(env, uint32_t(m), &p.max_ring_log2)) return;
      if (!limit.IsUndefined()) {
        if (!limit.IsNumber() || !(limit.As<Napi::Number>().DoubleValue() >= 0)) { ThrowType(env, "byteLimit must be a number"); return; }
        p.byte_limit = uint64_t(limit.As<Napi::Number>().DoubleValue());
      }
      err = Region::create(p, &core_);
      if (err) { ThrowErrno(env, err, "region create"); return; }
    } else {
      ThrowType(env, "Region takes { slots, maxRingSize, byteLimit? } or a memfd number");
      return;
    }
    info.This().As<Napi::Object>().TypeTag(&kRegionTag);
  }
  ~RegionWrap() override {
    // Safety net: loans point into the mapping; they were detached by close()
    // or are unreachable now (the references die with us).
    loans_.clear();
  }
  std::shared_ptr<Region> core() const { return core_; }

 private:
  struct Loan {
    Napi::Reference<Napi::ArrayBuffer> ref;
    size_t len;
  };

  bool Live(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kRegionTag, "Region")) return false;
    if (!core_) { ThrowErrno(info.Env(), EBADF, "region is closed"); return false; }
    return true;
  }
  Napi::Value Id(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), core_->id()) : info.Env().Undefined(); }
  Napi::Value Fd(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), core_->fd()) : info.Env().Undefined(); }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), double(core_->size())) : info.Env().Undefined(); }
  Napi::Value Slots(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), core_->slot_count()) : info.Env().Undefined(); }
  Napi::Value MaxRing(const Napi::CallbackInfo& info) {
    return Live(info) ? Napi::Number::New(info.Env(), double(uint64_t(1) << core_->max_ring_log2())) : info.Env().Undefined();
  }
  Napi::Value RoleName(const Napi::CallbackInfo& info) {
    return Live(info) ? Napi::String::New(info.Env(), core_->role() == Role::Gateway ? "gateway" : "client") : info.Env().Undefined();
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kRegionTag, "Region")) return info.Env().Undefined();
    return Napi::Boolean::New(info.Env(), !core_);
  }
  Napi::Value Corrupt(const Napi::CallbackInfo& info) {
    return Live(info) ? Napi::Boolean::New(info.Env(), core_->corrupt.load()) : info.Env().Undefined();
  }
  Napi::Value Granted(const Napi::CallbackInfo& info) {
    return Live(info) ? Napi::Number::New(info.Env(), double(core_->granted_bytes())) : info.Env().Undefined();
  }
  Napi::Value Layout(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    Napi::Env env = info.Env();
    const shm::Geometry& g = core_->geometry();
    Napi::Object o = Napi::Object::New(env);
    o.Set("headerSize", Napi::Number::New(env, double(sizeof(shm::RegionHeader))));
    o.Set("slotTableOffset", Napi::Number::New(env, double(g.slot_table_off)));
    o.Set("slotSize", Napi::Number::New(env, double(sizeof(shm::SlotCtl))));
    o.Set("ringCtlSize", Napi::Number::New(env, double(sizeof(shm::RingCtl))));
    o.Set("notifyOffset", Napi::Number::New(env, double(g.notify_off)));
    o.Set("notifyBytes", Napi::Number::New(env, double(g.notify_bytes)));
    o.Set("ringAreaOffset", Napi::Number::New(env, double(g.ring_area_off)));
    return o;
  }
  Napi::Value SetDoorbells(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject() ||
        !info[0].As<Napi::Object>().CheckTypeTag(&kEventfdTag) || !info[1].As<Napi::Object>().CheckTypeTag(&kEventfdTag))
      return ThrowType(info.Env(), "setDoorbells(local: Eventfd, peer: Eventfd)");
    auto local = EventfdWrap::Unwrap(info[0].As<Napi::Object>())->core();
    auto peer = EventfdWrap::Unwrap(info[1].As<Napi::Object>())->core();
    if (!local || !peer) return ThrowErrno(info.Env(), EBADF, "eventfd is closed");
    if (core_.use_count() > 1) return ThrowErrno(info.Env(), EBUSY, "setDoorbells (region in use by a pump)");
    core_->set_doorbells(local, peer);
    return info.Env().Undefined();
  }
  Napi::Value OpenSlot(const Napi::CallbackInfo& info) {
    uint32_t slot, size, log2;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot) || !GetU32(info, 1, "ringSize", &size)) return info.Env().Undefined();
    if (!SizeToLog2(info.Env(), size, &log2)) return info.Env().Undefined();
    int err = core_->open_slot(slot, log2);
    if (err) return ThrowErrno(info.Env(), err, "openSlot");
    return info.Env().Undefined();
  }
  Napi::Value CloseSlot(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
    int err = core_->close_slot(slot);
    if (err) return ThrowErrno(info.Env(), err, "closeSlot");
    return info.Env().Undefined();
  }
  Napi::Value Resize(const Napi::CallbackInfo& info) {
    uint32_t slot, dir, size, log2;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot) || !GetU32(info, 1, "dir", &dir) || !GetU32(info, 2, "ringSize", &size))
      return info.Env().Undefined();
    if (!SizeToLog2(info.Env(), size, &log2)) return info.Env().Undefined();
    if (core_->claimed(slot)) return ThrowErrno(info.Env(), EBUSY, "requestResize (slot is pumped: use PumpLink.resize)");
    int err = core_->request_resize(slot, dir, log2);
    if (err) return ThrowErrno(info.Env(), err, "requestResize");
    return info.Env().Undefined();
  }
  Napi::Value SlotInfo(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
    Napi::Env env = info.Env();
    if (slot >= core_->slot_count()) return ThrowErrno(env, ERANGE, "slotInfo");
    Napi::Object o = Napi::Object::New(env);
    o.Set("claimed", Napi::Boolean::New(env, core_->claimed(slot)));
    bool busy = core_->claimed(slot);
    RingView* p = busy ? nullptr : core_->producer(slot);
    RingView* c = busy ? nullptr : core_->consumer(slot);
    o.Set("open", Napi::Boolean::New(env, p != nullptr));
    if (p && c) {
      o.Set("outSize", Napi::Number::New(env, double(p->size())));
      o.Set("inSize", Napi::Number::New(env, double(c->size())));
      o.Set("outPending", Napi::Boolean::New(env, p->resize_pending()));
      o.Set("inPending", Napi::Boolean::New(env, c->resize_pending()));
    }
    return o;
  }

  // Ring ops from JS need the slot unclaimed by the pump; they claim it for
  // the duration of the call.
  RingView* Begin(const Napi::CallbackInfo& info, uint32_t slot, bool produce) {
    if (core_->corrupt.load()) { ThrowErrno(info.Env(), EBADMSG, "region"); return nullptr; }
    if (slot >= core_->slot_count()) { ThrowErrno(info.Env(), ERANGE, "slot"); return nullptr; }
    if (!core_->claim(slot)) { ThrowErrno(info.Env(), EBUSY, "slot is in use (pump link or loan)"); return nullptr; }
    RingView* v = produce ? core_->producer(slot) : core_->consumer(slot);
    if (!v) {
      core_->unclaim(slot);
      ThrowErrno(info.Env(), ENOTCONN, "slot is not open");
      return nullptr;
    }
    return v;
  }
  Napi::Value Fail(const Napi::CallbackInfo& info, uint32_t slot, int err, const char* what) {
    core_->unclaim(slot);
    return ThrowErrno(info.Env(), err, what);
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    uint32_t slot;
    uint8_t* data;
    size_t len;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot) || !GetBytes(info, 1, "data", &data, &len) || !Window(info, 2, &data, &len))
      return info.Env().Undefined();
    RingView* v = Begin(info, slot, true);
    if (!v) return info.Env().Undefined();
    if (v->eof) return Fail(info, slot, EPIPE, "write after shutdown");
    int64_t n = prod_write(*v, data, len);  // the one copy: caller's Buffer -> ring
    if (n < 0) return Fail(info, slot, int(n), "ring write");
    int err = n > 0 && prod_should_notify(*v) ? core_->notify_peer(slot) : 0;
    core_->unclaim(slot);
    if (err) return ThrowErrno(info.Env(), err, "doorbell");
    return Napi::Number::New(info.Env(), double(n));
  }
  Napi::Value Read(const Napi::CallbackInfo& info) {
    uint32_t slot;
    uint8_t* data;
    size_t len;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot) || !GetBytes(info, 1, "target", &data, &len) || !Window(info, 2, &data, &len))
      return info.Env().Undefined();
    RingView* v = Begin(info, slot, false);
    if (!v) return info.Env().Undefined();
    int64_t n = len ? cons_read(*v, data, len) : 0;
    if (n < 0) return Fail(info, slot, int(n), "ring read");
    if (n == 0) {
      int e = cons_check_eof(*v);
      if (e < 0) return Fail(info, slot, e, "ring read");
      core_->unclaim(slot);
      return Napi::Number::New(info.Env(), e == 1 ? -1 : 0);
    }
    int err = cons_should_notify(*v) ? core_->notify_peer(slot) : 0;
    core_->unclaim(slot);
    if (err) return ThrowErrno(info.Env(), err, "doorbell");
    return Napi::Number::New(info.Env(), double(n));
  }
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
    RingView* v = Begin(info, slot, true);
    if (!v) return info.Env().Undefined();
    int err = 0;
    if (!v->eof) {
      prod_set_eof(*v);
      full_barrier();
      if (exchange(&v->ctl->need_data, 0u) != 0) err = core_->notify_peer(slot);
    }
    core_->unclaim(slot);
    if (err) return ThrowErrno(info.Env(), err, "doorbell");
    return info.Env().Undefined();
  }
  Napi::Value ArmRead(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
    RingView* v = Begin(info, slot, false);
    if (!v) return info.Env().Undefined();
    bool ready = cons_arm_data(*v);
    if (v->err) return Fail(info, slot, v->err, "armRead");
    core_->unclaim(slot);
    return Napi::Boolean::New(info.Env(), ready);
  }
  Napi::Value ArmWrite(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
    RingView* v = Begin(info, slot, true);
    if (!v) return info.Env().Undefined();
    bool ready = prod_arm_space(*v);
    if (v->err) return Fail(info, slot, v->err, "armWrite");
    core_->unclaim(slot);
    return Napi::Boolean::New(info.Env(), ready);
  }
  // Zero-copy read: an ArrayBuffer over the readable bytes (the contiguous
  // part), valid until release(); then it is detached, so stale views read as
  // empty instead of into reused ring memory. The slot stays claimed meanwhile.
  Napi::Value Lend(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
    Napi::Env env = info.Env();
    RingView* v = Begin(info, slot, false);
    if (!v) return env.Undefined();
    struct iovec iov[2];
    int64_t n = cons_peek(*v, iov);
    if (n < 0) return Fail(info, slot, int(n), "lend");
    if (n == 0) {
      int e = cons_check_eof(*v);
      core_->unclaim(slot);
      if (e < 0) return ThrowErrno(env, e, "lend");
      return e == 1 ? Napi::Value(Napi::Boolean::New(env, false)) : env.Null();
    }
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, iov[0].iov_base, iov[0].iov_len);
    Loan& l = loans_[slot];
    l.ref = Napi::Persistent(ab);
    l.len = iov[0].iov_len;
    return ab;  // slot stays claimed until release
  }
  Napi::Value Release(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArrayBuffer()) return ThrowType(env, "release(loan: ArrayBuffer, consumed: number)");
    Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
    uint32_t consumed;
    if (!GetU32(info, 1, "consumed", &consumed)) return env.Undefined();
    for (auto it = loans_.begin(); it != loans_.end(); ++it) {
      if (!it->second.ref.Value().StrictEquals(ab)) continue;
      if (consumed > it->second.len) return ThrowErrno(env, ERANGE, "release (consumed more than lent)");
      uint32_t slot = it->first;
      ab.Detach();
      loans_.erase(it);
      RingView* v = core_->consumer(slot);
      int err = 0;
      if (v && consumed) {
        cons_release(*v, consumed);
        if (cons_should_notify(*v)) err = core_->notify_peer(slot);
      }
      core_->unclaim(slot);
      if (err) return ThrowErrno(env, err, "doorbell");
      return env.Undefined();
    }
    return ThrowErrno(env, EINVAL, "release (not an outstanding loan of this region)");
  }
  Napi::Value TakeHints(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    std::vector<uint32_t> slots;
    core_->take_hints([&](uint32_t s) { slots.push_back(s); });
    Napi::Array a = Napi::Array::New(info.Env(), slots.size());
    for (size_t i = 0; i < slots.size(); i++) a.Set(uint32_t(i), Napi::Number::New(info.Env(), slots[i]));
    return a;
  }
  Napi::Value PrepareSleep(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    return Napi::Boolean::New(info.Env(), core_->prepare_sleep());
  }
  Napi::Value ClearSleeping(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    core_->clear_sleeping();
    return info.Env().Undefined();
  }
#ifdef SOCKGATE_TEST_HOOKS
  // Test hook for hostile-peer tests (test build only): write 8 bytes anywhere
  // in our own mapping (bounds-checked). A client can do this with any pointer anyway.
  Napi::Value Poke(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    int64_t off;
    if (!GetInt(info, 0, "offset", 0, int64_t(core_->size()) - 8, &off)) return info.Env().Undefined();
    if (info.Length() < 2 || !info[1].IsBigInt()) return ThrowType(info.Env(), "value must be a bigint");
    bool lossless;
    uint64_t v = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    if (off % 8) return ThrowErrno(info.Env(), EINVAL, "offset must be 8-byte aligned");
    store_relaxed(reinterpret_cast<uint64_t*>(core_->base() + off), v);
    return info.Env().Undefined();
  }
#endif
  Napi::Value Peek(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    int64_t off;
    if (!GetInt(info, 0, "offset", 0, int64_t(core_->size()) - 8, &off)) return info.Env().Undefined();
    if (off % 8) return ThrowErrno(info.Env(), EINVAL, "offset must be 8-byte aligned");
    return Napi::BigInt::New(info.Env(), load_relaxed(reinterpret_cast<uint64_t*>(core_->base() + off)));
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kRegionTag, "Region")) return info.Env().Undefined();
    if (!core_) return info.Env().Undefined();  // idempotent
    if (core_.use_count() > 1) return ThrowErrno(info.Env(), EBUSY, "region close (pump links or watches still use it)");
    for (auto& kv : loans_) {
      if (!kv.second.ref.IsEmpty()) kv.second.ref.Value().Detach();
    }
    loans_.clear();
    core_.reset();  // unmaps and closes the memfd
    return info.Env().Undefined();
  }

  std::shared_ptr<Region> core_;
  std::map<uint32_t, Loan> loans_;
};

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

// ---- SpliceLink -------------------------------------------------------------

class SpliceWrap : public Napi::ObjectWrap<SpliceWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "SpliceLink",
                       {InstanceAccessor<&SpliceWrap::Id>("id"), InstanceAccessor<&SpliceWrap::Closed>("closed"),
                        InstanceAccessor<&SpliceWrap::PipeBytes>("pipeBytes"),
                        InstanceMethod<&SpliceWrap::ShutdownHost>("shutdownHost"),
                        InstanceMethod<&SpliceWrap::Totals>("totals"), InstanceMethod<&SpliceWrap::Mute>("mute"),
                        InstanceMethod<&SpliceWrap::Buffered>("bufferedBytes"),
                        InstanceMethod<&SpliceWrap::SetHostSockopt>("setHostSockopt"),
                        InstanceMethod<&SpliceWrap::GetHostSockopt>("getHostSockopt"),
                        InstanceMethod<&SpliceWrap::Close>("close")});
  }
  // new SpliceLink(pump, clientFd, hostFd, toHostPrefix?, toClientPrefix?,
  // options?: { pipeBytes?, copy? }): takes ownership of both fds on success
  // (closed when the link ends).
  SpliceWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SpliceWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "SpliceLink must be constructed with new"); return; }
    if (info.Length() < 3 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kPumpTag)) {
      ThrowType(env, "SpliceLink(pump: Pump, clientFd: number, hostFd: number, toHostPrefix?: Buffer[], toClientPrefix?: Buffer[], options?)");
      return;
    }
    int64_t cfd, hfd;
    if (!GetInt(info, 1, "clientFd", 0, INT32_MAX, &cfd) || !GetInt(info, 2, "hostFd", 0, INT32_MAX, &hfd)) return;
    std::string to_host, to_client;
    if (!GetPrefix(info, 3, "toHostPrefix", &to_host) || !GetPrefix(info, 4, "toClientPrefix", &to_client)) return;
    uint32_t pipe_bytes = 0;
    bool copy = false;
    if (info.Length() > 5 && !info[5].IsUndefined()) {
      if (!info[5].IsObject()) { ThrowType(env, "options must be an object"); return; }
      Napi::Object o = info[5].As<Napi::Object>();
      Napi::Value pb = o.Get("pipeBytes"), cp = o.Get("copy");
      if (!pb.IsUndefined()) {
        double d = pb.IsNumber() ? pb.As<Napi::Number>().DoubleValue() : -1;
        if (!(d >= 1 && d <= 4294967295.0) || std::floor(d) != d) {
          Napi::RangeError::New(env, "pipeBytes must be a positive integer").ThrowAsJavaScriptException();
          return;
        }
        pipe_bytes = uint32_t(d);
      }
      if (!cp.IsUndefined()) {
        if (!cp.IsBoolean()) { ThrowType(env, "copy must be a boolean"); return; }
        copy = cp.As<Napi::Boolean>().Value();
      }
    }
    PumpWrap* pw = PumpWrap::Unwrap(info[0].As<Napi::Object>());
    if (pw->closed()) { ThrowErrno(env, EBADF, "pump is closed"); return; }
    pump_ = pw->core();
    int err = pump_->add_splice(int(cfd), int(hfd), std::move(to_host), std::move(to_client), pipe_bytes, copy, &id_, &shared_);
    if (err) {
      pump_.reset();
      ThrowErrno(env, err, "SpliceLink");
      return;
    }
    info.This().As<Napi::Object>().TypeTag(&kSpliceTag);
  }

 private:
  bool Live(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return false;
    if (!pump_) { ThrowErrno(info.Env(), EBADF, "splice link is closed"); return false; }
    return true;
  }
  Napi::Value Id(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), id_);
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    return Napi::Boolean::New(info.Env(), !pump_);
  }
  Napi::Value PipeBytes(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), shared_ ? shared_->watermark() : 0);
  }
  // shutdownHost(read, write): ordered with the pipes on the I/O thread.
  // [bytes to the host, bytes to the client] as of the I/O thread's last round.
  Napi::Value Totals(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    Napi::Array a = Napi::Array::New(info.Env(), 2);
    a.Set(0u, Napi::Number::New(info.Env(), shared_ ? double(shared_->total_to_host.load()) : 0));
    a.Set(1u, Napi::Number::New(info.Env(), shared_ ? double(shared_->total_to_client.load()) : 0));
    return a;
  }
  // No more progress events for this link: JS reads totals() on demand.
  Napi::Value Mute(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    if (shared_) shared_->quiet.store(true);
    return info.Env().Undefined();
  }
  Napi::Value ShutdownHost(const Napi::CallbackInfo& info) {
    if (!Live(info)) return info.Env().Undefined();
    if (info.Length() < 2 || !info[0].IsBoolean() || !info[1].IsBoolean()) return ThrowType(info.Env(), "shutdownHost(read: boolean, write: boolean)");
    bool rd = info[0].As<Napi::Boolean>().Value(), wr = info[1].As<Napi::Boolean>().Value();
    if (rd || wr) pump_->shutdown_host(id_, rd, wr);
    return info.Env().Undefined();
  }
  // Bytes in the pipes (FIONREAD) and unwritten prefix/copy bytes; 0 once the link ended.
  Napi::Value Buffered(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), shared_ ? double(shared_->buffered()) : 0);
  }
  Napi::Value SetHostSockopt(const Napi::CallbackInfo& info) {
    int64_t level, name, value;
    if (!Live(info) || !GetInt(info, 0, "level", 0, INT32_MAX, &level) || !GetInt(info, 1, "name", 0, INT32_MAX, &name) ||
        !GetInt(info, 2, "value", INT32_MIN, INT32_MAX, &value))
      return info.Env().Undefined();
    int err = shared_->set_host_opt(int(level), int(name), int(value));
    if (err) return ThrowErrno(info.Env(), err, err == -EBADF ? "setsockopt (the link has ended)" : "setsockopt");
    return info.Env().Undefined();
  }
  Napi::Value GetHostSockopt(const Napi::CallbackInfo& info) {
    int64_t level, name;
    if (!Live(info) || !GetInt(info, 0, "level", 0, INT32_MAX, &level) || !GetInt(info, 1, "name", 0, INT32_MAX, &name))
      return info.Env().Undefined();
    int v = 0;
    int err = shared_->get_host_opt(int(level), int(name), &v);
    if (err) return ThrowErrno(info.Env(), err, err == -EBADF ? "getsockopt (the link has ended)" : "getsockopt");
    return Napi::Number::New(info.Env(), v);
  }
  // close(reset = true): abort; the pump reports the end ("aborted"). With
  // reset both peers see RST, else FIN. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
    bool reset = true;
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
  std::shared_ptr<Pump> pump_;
  std::shared_ptr<SpliceShared> shared_;  // kept after close: bufferedBytes() reads 0 once the fds are gone
  uint32_t id_ = 0;
};

// ---- Listener -------------------------------------------------------------

class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Listener",
                       {InstanceAccessor<&ListenerWrap::Id>("id"), InstanceMethod<&ListenerWrap::Accept>("accept"),
                        InstanceMethod<&ListenerWrap::Reject>("reject"), InstanceMethod<&ListenerWrap::CloseConn>("closeConn"),
                        InstanceMethod<&ListenerWrap::Close>("close")});
  }
  // new Listener(pump, path, backlog?): bind + listen now (errors are
  // immediate); accept() runs on the pump's I/O thread.
  ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "Listener must be constructed with new"); return; }
    if (info.Length() < 2 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kPumpTag) || !info[1].IsString()) {
      ThrowType(env, "Listener(pump: Pump, path: string, backlog?: number)");
      return;
    }
    int64_t backlog = 128;
    if (info.Length() > 2 && !info[2].IsUndefined() && !GetInt(info, 2, "backlog", 1, 65535, &backlog)) return;
    PumpWrap* pw = PumpWrap::Unwrap(info[0].As<Napi::Object>());
    if (pw->closed()) { ThrowErrno(env, EBADF, "pump is closed"); return; }
    int fd;
    int err = attach::listen_unix(info[1].As<Napi::String>().Utf8Value(), int(backlog), &fd);
    if (err) { ThrowErrno(env, err, "listen"); return; }
    pump_ = pw->core();
    owner_ = Napi::Persistent(info[0].As<Napi::Object>());
    pw->listeners_++;
    id_ = g_next_listener.fetch_add(1);
    pump_->add_listener(id_, fd);
    info.This().As<Napi::Object>().TypeTag(&kListenerTag);
  }
  ~ListenerWrap() override {
    // Safety net: the pump owns the fd; tell it to let go.
    if (pump_) pump_->close_listener(id_);
  }

 private:
  bool Live(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "Listener")) return false;
    if (!pump_) { ThrowErrno(info.Env(), EBADF, "listener is closed"); return false; }
    return true;
  }
  Napi::Value Id(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "Listener")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), id_);
  }
  // accept(conn, region, gatewayDoorbell, clientDoorbell): send the fds.
  Napi::Value Accept(const Napi::CallbackInfo& info) {
    uint32_t conn;
    if (!Live(info) || !GetU32(info, 0, "conn", &conn)) return info.Env().Undefined();
    if (info.Length() < 4 || !info[1].IsObject() || !info[1].As<Napi::Object>().CheckTypeTag(&kRegionTag) ||
        !info[2].IsObject() || !info[2].As<Napi::Object>().CheckTypeTag(&kEventfdTag) || !info[3].IsObject() ||
        !info[3].As<Napi::Object>().CheckTypeTag(&kEventfdTag))
      return ThrowType(info.Env(), "accept(conn: number, region: Region, gatewayDoorbell: Eventfd, clientDoorbell: Eventfd)");
    auto r = RegionWrap::Unwrap(info[1].As<Napi::Object>())->core();
    auto g = EventfdWrap::Unwrap(info[2].As<Napi::Object>())->core();
    auto c = EventfdWrap::Unwrap(info[3].As<Napi::Object>())->core();
    if (!r || !g || !c) return ThrowErrno(info.Env(), EBADF, "accept (closed region or eventfd)");
    if (r->role() != Role::Gateway) return ThrowErrno(info.Env(), EINVAL, "accept (not a gateway region)");
    pump_->reply(id_, conn, attach::kStatusOk, r, g, c);
    return info.Env().Undefined();
  }
  Napi::Value Reject(const Napi::CallbackInfo& info) {
    uint32_t conn, status;
    if (!Live(info) || !GetU32(info, 0, "conn", &conn) || !GetU32(info, 1, "status", &status)) return info.Env().Undefined();
    if (status == 0 || status > 0xFFFF) return ThrowErrno(info.Env(), EINVAL, "reject status must be 1..65535");
    pump_->reply(id_, conn, uint16_t(status), nullptr, nullptr, nullptr);
    return info.Env().Undefined();
  }
  Napi::Value CloseConn(const Napi::CallbackInfo& info) {
    uint32_t conn;
    if (!Live(info) || !GetU32(info, 0, "conn", &conn)) return info.Env().Undefined();
    pump_->close_conn(id_, conn);
    return info.Env().Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "Listener")) return info.Env().Undefined();
    if (!pump_) return info.Env().Undefined();
    pump_->close_listener(id_);
    pump_.reset();
    if (!owner_.IsEmpty()) {
      PumpWrap* pw = PumpWrap::Unwrap(owner_.Value());
      if (pw) pw->listeners_--;
      owner_.Reset();
    }
    return info.Env().Undefined();
  }
  std::shared_ptr<Pump> pump_;
  Napi::ObjectReference owner_;
  uint32_t id_ = 0;
};

// ---- client attach (off the JS thread) --------------------------------------

class AttachWorker : public Napi::AsyncWorker {
 public:
  AttachWorker(Napi::Env env, std::string path, attach::Hello hello, int timeout_ms)
      : Napi::AsyncWorker(env, "sockgate-attach"), deferred_(Napi::Promise::Deferred::New(env)),
        path_(std::move(path)), hello_(std::move(hello)), timeout_(timeout_ms) {}
  ~AttachWorker() override {
    // Not handed to JS (error path): close what we received.
    if (!handed_) {
      for (int i = 2; i >= 0; i--) if (res_.fds[i] >= 0) close(res_.fds[i]);
      if (res_.conn >= 0) close(res_.conn);
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = attach::client_attach(path_, hello_, timeout_, &res_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_) {
      int e = -err_;
      const char* name = strerrorname_np(e);
      Napi::Error x = Napi::Error::New(env, std::string("attach ") + path_ + ": " + strerror(e));
      x.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
      x.Set("errno", Napi::Number::New(env, -e));
      deferred_.Reject(x.Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("status", Napi::Number::New(env, res_.reply.status));
    o.Set("version", Napi::Number::New(env, res_.reply.version));
    o.Set("flags", Napi::Number::New(env, res_.reply.flags));
    o.Set("regionSize", Napi::Number::New(env, double(res_.reply.region_size)));
    o.Set("slotCount", Napi::Number::New(env, res_.reply.slot_count));
    o.Set("conn", Napi::Number::New(env, res_.conn));
    o.Set("memfd", Napi::Number::New(env, res_.fds[0]));
    o.Set("gatewayDoorbell", Napi::Number::New(env, res_.fds[1]));
    o.Set("clientDoorbell", Napi::Number::New(env, res_.fds[2]));
    o.Set("peerPid", Napi::Number::New(env, res_.peer_pid));
    o.Set("peerUid", Napi::Number::New(env, res_.peer_uid));
    handed_ = true;
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  attach::Hello hello_;
  int timeout_;
  int err_ = 0;
  attach::ClientResult res_;
  bool handed_ = false;
};

Napi::Value Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString()) return ThrowType(env, "attach(path: string, token: Buffer, timeoutMs?: number)");
  uint8_t* tok;
  size_t tlen;
  if (!GetBytes(info, 1, "token", &tok, &tlen)) return env.Undefined();
  if (tlen == 0 || tlen > attach::kMaxToken) {
    Napi::RangeError::New(env, "token must be 1..256 bytes").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t timeout = 5000;
  if (info.Length() > 2 && !info[2].IsUndefined() && !GetInt(info, 2, "timeoutMs", 1, 600000, &timeout)) return env.Undefined();
  attach::Hello h;
  h.token.assign(reinterpret_cast<const char*>(tok), tlen);
  if (info.Length() > 3 && info[3].IsNumber()) h.version = uint16_t(info[3].As<Napi::Number>().Uint32Value());
  auto* w = new AttachWorker(env, info[0].As<Napi::String>().Utf8Value(), std::move(h), int(timeout));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// ---- fd primitives ----------------------------------------------------------

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  int n = fcntl(int(fd), F_DUPFD_CLOEXEC, 0);
  if (n < 0) return ThrowErrno(info.Env(), errno, "dup");
  return Napi::Number::New(info.Env(), n);
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  if (close(int(fd)) < 0) return ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

Napi::Value SetSockOptInt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name, value;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd) || !GetInt(info, 1, "level", 0, INT32_MAX, &level) ||
      !GetInt(info, 2, "name", 0, INT32_MAX, &name) || !GetInt(info, 3, "value", INT32_MIN, INT32_MAX, &value))
    return info.Env().Undefined();
  int v = int(value);
  if (setsockopt(int(fd), int(level), int(name), &v, sizeof v) < 0) return ThrowErrno(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

Napi::Value GetSockOptInt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd) || !GetInt(info, 1, "level", 0, INT32_MAX, &level) ||
      !GetInt(info, 2, "name", 0, INT32_MAX, &name))
    return info.Env().Undefined();
  int v = 0;
  socklen_t l = sizeof v;
  if (getsockopt(int(fd), int(level), int(name), &v, &l) < 0) return ThrowErrno(info.Env(), errno, "getsockopt");
  return Napi::Number::New(info.Env(), v);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return ThrowErrno(info.Env(), errno, "socketpair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  int pid;
  uint32_t uid, gid;
  int err = attach::peer_cred(int(fd), &pid, &uid, &gid);
  if (err) return ThrowErrno(info.Env(), err, "SO_PEERCRED");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pid", Napi::Number::New(info.Env(), pid));
  o.Set("uid", Napi::Number::New(info.Env(), uid));
  o.Set("gid", Napi::Number::New(info.Env(), gid));
  return o;
}

Napi::Value SetGatewayRingLimit(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowType(info.Env(), "bytes must be a number");
  double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0)) return ThrowType(info.Env(), "bytes must be >= 0");
  set_gateway_ring_limit(std::isinf(d) ? ~uint64_t(0) : uint64_t(d));
  return info.Env().Undefined();
}

Napi::Value GatewayRingBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(gateway_ring_bytes()));
}

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

#ifdef SG_WITH_RDMA
// rdma_addon.h: the Pump behind a JS Pump object (null if not one, or closed).
std::shared_ptr<Pump> sg::PumpOf(Napi::Value v) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kPumpTag)) return nullptr;
  return PumpWrap::Unwrap(v.As<Napi::Object>())->core();
}
#endif

NODE_API_MODULE(sockgate_native, Init)

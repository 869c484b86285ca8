#include "wrap_region.h"

#include <map>
#include <mutex>
#include <vector>

namespace sg {
namespace js {

Napi::Function RegionWrap::Init(Napi::Env env) {
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

RegionWrap::RegionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RegionWrap>(info) {
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

RegionWrap::~RegionWrap() {
  // Safety net: loans point into the mapping; they were detached by close()
  // or are unreachable now (the references die with us).
  loans_.clear();
}

bool RegionWrap::Live(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kRegionTag, "Region")) return false;
  if (!core_) { ThrowErrno(info.Env(), EBADF, "region is closed"); return false; }
  return true;
}

Napi::Value RegionWrap::MaxRing(const Napi::CallbackInfo& info) {
  return Live(info) ? Napi::Number::New(info.Env(), double(uint64_t(1) << core_->max_ring_log2())) : info.Env().Undefined();
}

Napi::Value RegionWrap::RoleName(const Napi::CallbackInfo& info) {
  return Live(info) ? Napi::String::New(info.Env(), core_->role() == Role::Gateway ? "gateway" : "client") : info.Env().Undefined();
}

Napi::Value RegionWrap::Closed(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kRegionTag, "Region")) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), !core_);
}

Napi::Value RegionWrap::Corrupt(const Napi::CallbackInfo& info) {
  return Live(info) ? Napi::Boolean::New(info.Env(), core_->corrupt.load()) : info.Env().Undefined();
}

Napi::Value RegionWrap::Granted(const Napi::CallbackInfo& info) {
  return Live(info) ? Napi::Number::New(info.Env(), double(core_->granted_bytes())) : info.Env().Undefined();
}

Napi::Value RegionWrap::Layout(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::SetDoorbells(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::OpenSlot(const Napi::CallbackInfo& info) {
  uint32_t slot, size, log2;
  if (!Live(info) || !GetU32(info, 0, "slot", &slot) || !GetU32(info, 1, "ringSize", &size)) return info.Env().Undefined();
  if (!SizeToLog2(info.Env(), size, &log2)) return info.Env().Undefined();
  int err = core_->open_slot(slot, log2);
  if (err) return ThrowErrno(info.Env(), err, "openSlot");
  return info.Env().Undefined();
}

Napi::Value RegionWrap::CloseSlot(const Napi::CallbackInfo& info) {
  uint32_t slot;
  if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
  int err = core_->close_slot(slot);
  if (err) return ThrowErrno(info.Env(), err, "closeSlot");
  return info.Env().Undefined();
}

Napi::Value RegionWrap::Resize(const Napi::CallbackInfo& info) {
  uint32_t slot, dir, size, log2;
  if (!Live(info) || !GetU32(info, 0, "slot", &slot) || !GetU32(info, 1, "dir", &dir) || !GetU32(info, 2, "ringSize", &size))
    return info.Env().Undefined();
  if (!SizeToLog2(info.Env(), size, &log2)) return info.Env().Undefined();
  if (core_->claimed(slot)) return ThrowErrno(info.Env(), EBUSY, "requestResize (slot is pumped: use PumpLink.resize)");
  int err = core_->request_resize(slot, dir, log2);
  if (err) return ThrowErrno(info.Env(), err, "requestResize");
  return info.Env().Undefined();
}

Napi::Value RegionWrap::SlotInfo(const Napi::CallbackInfo& info) {
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

RingView* RegionWrap::Begin(const Napi::CallbackInfo& info, uint32_t slot, bool produce) {
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

Napi::Value RegionWrap::Fail(const Napi::CallbackInfo& info, uint32_t slot, int err, const char* what) {
  core_->unclaim(slot);
  return ThrowErrno(info.Env(), err, what);
}

Napi::Value RegionWrap::Write(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::Read(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::Shutdown(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::ArmRead(const Napi::CallbackInfo& info) {
  uint32_t slot;
  if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
  RingView* v = Begin(info, slot, false);
  if (!v) return info.Env().Undefined();
  bool ready = cons_arm_data(*v);
  if (v->err) return Fail(info, slot, v->err, "armRead");
  core_->unclaim(slot);
  return Napi::Boolean::New(info.Env(), ready);
}

Napi::Value RegionWrap::ArmWrite(const Napi::CallbackInfo& info) {
  uint32_t slot;
  if (!Live(info) || !GetU32(info, 0, "slot", &slot)) return info.Env().Undefined();
  RingView* v = Begin(info, slot, true);
  if (!v) return info.Env().Undefined();
  bool ready = prod_arm_space(*v);
  if (v->err) return Fail(info, slot, v->err, "armWrite");
  core_->unclaim(slot);
  return Napi::Boolean::New(info.Env(), ready);
}

Napi::Value RegionWrap::Lend(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::Release(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::TakeHints(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  std::vector<uint32_t> slots;
  core_->take_hints([&](uint32_t s) { slots.push_back(s); });
  Napi::Array a = Napi::Array::New(info.Env(), slots.size());
  for (size_t i = 0; i < slots.size(); i++) a.Set(uint32_t(i), Napi::Number::New(info.Env(), slots[i]));
  return a;
}

Napi::Value RegionWrap::PrepareSleep(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), core_->prepare_sleep());
}

Napi::Value RegionWrap::ClearSleeping(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  core_->clear_sleeping();
  return info.Env().Undefined();
}

#ifdef SOCKGATE_TEST_HOOKS
// The test build only (wrap_region.h).
Napi::Value RegionWrap::Poke(const Napi::CallbackInfo& info) {
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

Napi::Value RegionWrap::Peek(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  int64_t off;
  if (!GetInt(info, 0, "offset", 0, int64_t(core_->size()) - 8, &off)) return info.Env().Undefined();
  if (off % 8) return ThrowErrno(info.Env(), EINVAL, "offset must be 8-byte aligned");
  return Napi::BigInt::New(info.Env(), load_relaxed(reinterpret_cast<uint64_t*>(core_->base() + off)));
}

Napi::Value RegionWrap::Close(const Napi::CallbackInfo& info) {
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

}  // namespace js
}  // namespace sg

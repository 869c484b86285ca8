#include "wrap_listener.h"

#include <atomic>

#include "pump_access.h"

namespace sg {
namespace js {

namespace {
std::atomic<uint32_t> g_next_listener{1};
}  // namespace

Napi::Function ListenerWrap::Init(Napi::Env env) {
  return DefineClass(env, "Listener",
                     {InstanceAccessor<&ListenerWrap::Id>("id"), InstanceMethod<&ListenerWrap::Accept>("accept"),
                      InstanceMethod<&ListenerWrap::Reject>("reject"), InstanceMethod<&ListenerWrap::CloseConn>("closeConn"),
                      InstanceMethod<&ListenerWrap::Close>("close")});
}

ListenerWrap::ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info) {
  Napi::Env env = info.Env();
  if (!info.IsConstructCall()) { ThrowType(env, "Listener must be constructed with new"); return; }
  if (info.Length() < 2 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kPumpTag) || !info[1].IsString()) {
    ThrowType(env, "Listener(pump: Pump, path: string, backlog?: number)");
    return;
  }
  int64_t backlog = 128;
  if (info.Length() > 2 && !info[2].IsUndefined() && !GetInt(info, 2, "backlog", 1, 65535, &backlog)) return;
  std::shared_ptr<Pump> pump = PumpOf(info[0]);
  if (!pump) { ThrowErrno(env, EBADF, "pump is closed"); return; }
  int fd;
  int err = attach::listen_unix(info[1].As<Napi::String>().Utf8Value(), int(backlog), &fd);
  if (err) { ThrowErrno(env, err, "listen"); return; }
  pump_ = pump;
  owner_ = Napi::Persistent(info[0].As<Napi::Object>());
  AdjustPumpListeners(owner_.Value(), +1);
  id_ = g_next_listener.fetch_add(1);
  pump_->add_listener(id_, fd);
  info.This().As<Napi::Object>().TypeTag(&kListenerTag);
}

ListenerWrap::~ListenerWrap() {
  // Safety net: the pump owns the fd; tell it to let go.
  if (pump_) pump_->close_listener(id_);
}

bool ListenerWrap::Live(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kListenerTag, "Listener")) return false;
  if (!pump_) { ThrowErrno(info.Env(), EBADF, "listener is closed"); return false; }
  return true;
}

Napi::Value ListenerWrap::Id(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kListenerTag, "Listener")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), id_);
}

Napi::Value ListenerWrap::Accept(const Napi::CallbackInfo& info) {
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

Napi::Value ListenerWrap::Reject(const Napi::CallbackInfo& info) {
  uint32_t conn, status;
  if (!Live(info) || !GetU32(info, 0, "conn", &conn) || !GetU32(info, 1, "status", &status)) return info.Env().Undefined();
  if (status == 0 || status > 0xFFFF) return ThrowErrno(info.Env(), EINVAL, "reject status must be 1..65535");
  pump_->reply(id_, conn, uint16_t(status), nullptr, nullptr, nullptr);
  return info.Env().Undefined();
}

Napi::Value ListenerWrap::CloseConn(const Napi::CallbackInfo& info) {
  uint32_t conn;
  if (!Live(info) || !GetU32(info, 0, "conn", &conn)) return info.Env().Undefined();
  pump_->close_conn(id_, conn);
  return info.Env().Undefined();
}

Napi::Value ListenerWrap::Close(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kListenerTag, "Listener")) return info.Env().Undefined();
  if (!pump_) return info.Env().Undefined();
  pump_->close_listener(id_);
  pump_.reset();
  if (!owner_.IsEmpty()) {
    AdjustPumpListeners(owner_.Value(), -1);
    owner_.Reset();
  }
  return info.Env().Undefined();
}

}  // namespace js
}  // namespace sg

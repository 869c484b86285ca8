#include "wrap_eventfd.h"

#include <unistd.h>

namespace sg {
namespace js {

Napi::Function EventfdWrap::Init(Napi::Env env) {
  return DefineClass(env, "Eventfd",
                     {InstanceAccessor<&EventfdWrap::Fd>("fd"), InstanceAccessor<&EventfdWrap::Closed>("closed"),
                      InstanceMethod<&EventfdWrap::Signal>("signal"), InstanceMethod<&EventfdWrap::Drain>("drain"),
                      InstanceMethod<&EventfdWrap::Close>("close")});
}

EventfdWrap::EventfdWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventfdWrap>(info) {
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

bool EventfdWrap::Live(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kEventfdTag, "Eventfd")) return false;
  if (!core_) { ThrowErrno(info.Env(), EBADF, "eventfd is closed"); return false; }
  return true;
}

Napi::Value EventfdWrap::Fd(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), core_->fd());
}

Napi::Value EventfdWrap::Closed(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kEventfdTag, "Eventfd")) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), !core_);
}

Napi::Value EventfdWrap::Signal(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  int err = core_->signal();
  if (err) return ThrowErrno(info.Env(), err, "eventfd write");
  return info.Env().Undefined();
}

Napi::Value EventfdWrap::Drain(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  int64_t v = core_->drain();
  if (v < 0) return ThrowErrno(info.Env(), int(v), "eventfd read");
  return Napi::Number::New(info.Env(), double(v));
}

Napi::Value EventfdWrap::Close(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kEventfdTag, "Eventfd")) return info.Env().Undefined();
  if (!core_) return info.Env().Undefined();  // idempotent
  if (core_.use_count() > 1) return ThrowErrno(info.Env(), EBUSY, "eventfd close (still used by a region or pump)");
  core_.reset();
  return info.Env().Undefined();
}

}  // namespace js
}  // namespace sg

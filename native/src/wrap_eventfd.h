// The Eventfd JS class: one eventfd (a doorbell of an shm session).
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "region.h"
#include "js_util.h"

namespace sg {
namespace js {

class EventfdWrap : public Napi::ObjectWrap<EventfdWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  EventfdWrap(const Napi::CallbackInfo& info);
  std::shared_ptr<EventFd> core() const { return core_; }

 private:
  bool Live(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value Signal(const Napi::CallbackInfo& info);
  Napi::Value Drain(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  std::shared_ptr<EventFd> core_;
};

}  // namespace js
}  // namespace sg

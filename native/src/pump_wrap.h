// The Pump and PumpLink ObjectWraps (pump_wrap.cc). The other wraps that take
// a pump (SpliceLink, Listener, the rdma layer) unwrap a Pump through here.
#pragma once

#include <napi.h>

#include <memory>

#include "env_teardown.h"
#include "pump.h"

namespace sg {
namespace js {

class PumpWrap : public Napi::ObjectWrap<PumpWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  PumpWrap(const Napi::CallbackInfo& info);
  ~PumpWrap() override { Shut(); }
  std::shared_ptr<Pump> core() const { return core_; }
  bool closed() const { return !core_; }
  int listeners_ = 0;  // Listener wraps on this pump: close() refuses while any

 private:
  void Shut();
  bool Live(const Napi::CallbackInfo& info);
  Napi::Value Ref(const Napi::CallbackInfo& info);
  Napi::Value Unref(const Napi::CallbackInfo& info);
  Napi::Value Watch(const Napi::CallbackInfo& info);
  Napi::Value Unwatch(const Napi::CallbackInfo& info);
  Napi::Value Links(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value SetSpin(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  std::shared_ptr<Pump> core_;
  Napi::ThreadSafeFunction tsfn_;
  EnvTeardownHook teardown_;  // stops the thread at exit if nobody closed the pump
};

// The PumpLink class (a slot's rings <-> an fd on a pump).
Napi::Function InitPumpLink(Napi::Env env);

}  // namespace js
}  // namespace sg

// The Listener JS class: the gateway's Unix attach socket for shm sessions,
// serviced by the pump (connections become `attach` events).
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "attach.h"
#include "pump.h"
#include "region.h"
#include "wrap_eventfd.h"
#include "wrap_region.h"
#include "js_util.h"

namespace sg {
namespace js {

class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  // new Listener(pump, path, backlog?): bind + listen now (errors are
  // immediate); accept() runs on the pump's I/O thread.
  ListenerWrap(const Napi::CallbackInfo& info);
  ~ListenerWrap() override;

 private:
  bool Live(const Napi::CallbackInfo& info);
  Napi::Value Id(const Napi::CallbackInfo& info);
  // accept(conn, region, gatewayDoorbell, clientDoorbell): send the fds.
  Napi::Value Accept(const Napi::CallbackInfo& info);
  Napi::Value Reject(const Napi::CallbackInfo& info);
  Napi::Value CloseConn(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  std::shared_ptr<Pump> pump_;
  Napi::ObjectReference owner_;
  uint32_t id_ = 0;
};

}  // namespace js
}  // namespace sg

// The SpliceLink JS class: a client fd and a host fd relayed through pipes on
// the pump's I/O thread.
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "pump.h"
#include "splice.h"
#include "js_util.h"

namespace sg {
namespace js {

class SpliceWrap : public Napi::ObjectWrap<SpliceWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  // new SpliceLink(pump, clientFd, hostFd, toHostPrefix?, toClientPrefix?,
  // options?: { pipeBytes?, copy? }): takes ownership of both fds on success
  // (closed when the link ends).
  SpliceWrap(const Napi::CallbackInfo& info);

 private:
  bool Live(const Napi::CallbackInfo& info);
  Napi::Value Id(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value PipeBytes(const Napi::CallbackInfo& info);
  // shutdownHost(read, write): ordered with the pipes on the I/O thread.
  // [bytes to the host, bytes to the client] as of the I/O thread's last round.
  Napi::Value Totals(const Napi::CallbackInfo& info);
  // No more progress events for this link: JS reads totals() on demand.
  Napi::Value Mute(const Napi::CallbackInfo& info);
  Napi::Value ShutdownHost(const Napi::CallbackInfo& info);
  // Bytes in the pipes (FIONREAD) and unwritten prefix/copy bytes; 0 once the link ended.
  Napi::Value Buffered(const Napi::CallbackInfo& info);
  Napi::Value SetHostSockopt(const Napi::CallbackInfo& info);
  Napi::Value GetHostSockopt(const Napi::CallbackInfo& info);
  // close(reset = true): abort; the pump reports the end ("aborted"). With
  // reset both peers see RST, else FIN. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info);
  std::shared_ptr<Pump> pump_;
  std::shared_ptr<SpliceShared> shared_;  // kept after close: bufferedBytes() reads 0 once the fds are gone
  uint32_t id_ = 0;
};

}  // namespace js
}  // namespace sg

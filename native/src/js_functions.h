// The addon's plain functions (no class): the client attach (js_attach.cc)
// and the fd primitives (js_fd.cc).
#pragma once

#include <napi.h>

namespace sg {
namespace js {

// attach(path, token, timeoutMs?, version?): Promise (off the JS thread).
Napi::Value Attach(const Napi::CallbackInfo& info);
Napi::Value DupFd(const Napi::CallbackInfo& info);
Napi::Value CloseFd(const Napi::CallbackInfo& info);
Napi::Value SetSockOptInt(const Napi::CallbackInfo& info);
Napi::Value GetSockOptInt(const Napi::CallbackInfo& info);
Napi::Value SocketPair(const Napi::CallbackInfo& info);
Napi::Value PeerCred(const Napi::CallbackInfo& info);
Napi::Value SetGatewayRingLimit(const Napi::CallbackInfo& info);
Napi::Value GatewayRingBytes(const Napi::CallbackInfo& info);

}  // namespace js
}  // namespace sg

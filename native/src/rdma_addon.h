// N-API surface of the verbs layer (native/index.ts declares its types):
// `rdma` = { built, available, reason, devices(), lifecycle(addr),
// loopback(opts), encodeConnParams(p), decodeConnParams(bytes), burstAdvance(),
// connect(), listen() } (connections and listeners: rdma_wraps.h).
// Only compiled when binding.gyp found the rdma-core headers (SG_WITH_RDMA);
// addon.cc builds the { available: false, reason } object otherwise.
#pragma once

#include <napi.h>

#include <memory>

namespace sg {
class Pump;
namespace rdma {

Napi::Object Exports(Napi::Env env);

}  // namespace rdma

// The Pump behind a JS Pump object (null when it is not one, or closed):
// checked by its type tag. Defined in addon.cc, beside PumpWrap.
std::shared_ptr<Pump> PumpOf(Napi::Value v);

}  // namespace sg

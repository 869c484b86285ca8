// N-API surface of the verbs layer (native/index.ts declares its types):
// `rdma` = { built, available, reason, devices(), lifecycle(addr),
// loopback(opts), encodeConnParams(p), decodeConnParams(bytes), burstAdvance(),
// connect(), listen() } (connections and listeners: rdma_wraps.h).
// Only compiled when binding.gyp found the rdma-core headers (SG_WITH_RDMA);
// addon.cc builds the { available: false, reason } object otherwise.
#pragma once

#include <napi.h>

namespace sg {
namespace rdma {

Napi::Object Exports(Napi::Env env);

}  // namespace rdma
}  // namespace sg

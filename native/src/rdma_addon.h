// N-API surface of the verbs layer (native/index.ts declares its types):
// `rdma` = { built, available, reason, devices(), lifecycle(addr),
// loopback(opts), encodeConnParams(p), decodeConnParams(bytes) }.
// Only compiled when binding.gyp found the rdma-core headers (SG_WITH_RDMA);
// addon.cc builds the { available: false, reason } object otherwise.
#pragma once

#include <napi.h>

#include <memory>

namespace sg {
class Pump;
namespace rdma {

// pump_of: the Pump behind a JS Pump object (null when it is not one or closed).
Napi::Object Exports(Napi::Env env, std::shared_ptr<Pump> (*pump_of)(Napi::Value));

}  // namespace rdma
}  // namespace sg

// Transparent-proxy primitives (nftables redirect/tproxy): original
// destinations, IP_TRANSPARENT, and the transparent UDP socket. Exported as
// `transparent` by addon.cc; see wrap_transparent.cc.
#pragma once

#include <napi.h>

namespace sg {
namespace js {

Napi::Object TransparentExports(Napi::Env env);

}  // namespace js
}  // namespace sg

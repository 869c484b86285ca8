// sockgate native addon: a thin N-API surface over the shm region, eventfds,
// the pump (links, listener) and the client attach. Primitives only; every
// decision lives in TypeScript (native/index.ts is the one loader).
//
// One JS class per OS resource, each owning one handle, each in its own file:
// Region (wrap_region.cc: memfd + mapping), Eventfd (wrap_eventfd.cc),
// SpliceLink (wrap_splice.cc: a client fd and a host fd relayed through pipes),
// Listener (wrap_listener.cc: Unix socket), Pump (epoll thread) and PumpLink
// (host fd) in pump_wrap.cc; plain functions in js_attach.cc and js_fd.cc, shared
// argument checks in js_util.h. close() is the rule and refuses while the
// resource is in use; the destructor is the safety net. This file also
// builds the exports (Init).
#include <napi.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attach.h"
#include "js_functions.h"
#include "js_util.h"
#include "pump.h"
#include "pump_access.h"
#include "pump_wrap.h"
#include "region.h"
#include "ring.h"
#include "smc.h"
#include "vsock.h"
#include "wrap_eventfd.h"
#include "wrap_listener.h"
#include "wrap_region.h"
#include "wrap_splice.h"
#include "wrap_transparent.h"
#ifdef SG_WITH_RDMA
#include "rdma_addon.h"
#endif

using namespace sg;
using namespace sg::js;

namespace {

// The verbs layer (rdma_addon.cc) when binding.gyp found the rdma-core headers.
Napi::Object Rdma(Napi::Env env) {
#ifdef SG_WITH_RDMA
  return sg::rdma::Exports(env);
#else
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", Napi::Boolean::New(env, false));
  o.Set("available", Napi::Boolean::New(env, false));
  o.Set("reason", Napi::String::New(env,
                                    "built without rdma-core headers: apt-get install libibverbs-dev librdmacm-dev, "
                                    "then npm run build:native"));
  return o;
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 2));
#ifdef SOCKGATE_TEST_HOOKS
  exports.Set("testHooks", Napi::Boolean::New(env, true));  // the test build (binding.gyp sockgate_native_test)
#else
  exports.Set("testHooks", Napi::Boolean::New(env, false));
#endif
  exports.Set("Region", RegionWrap::Init(env));
  exports.Set("Eventfd", EventfdWrap::Init(env));
  exports.Set("Pump", PumpWrap::Init(env));
  exports.Set("PumpLink", InitPumpLink(env));
  exports.Set("SpliceLink", SpliceWrap::Init(env));
  exports.Set("Listener", ListenerWrap::Init(env));
  exports.Set("attach", Napi::Function::New(env, Attach, "attach"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("setsockoptInt", Napi::Function::New(env, SetSockOptInt, "setsockoptInt"));
  exports.Set("getsockoptInt", Napi::Function::New(env, GetSockOptInt, "getsockoptInt"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("setGatewayRingLimit", Napi::Function::New(env, SetGatewayRingLimit, "setGatewayRingLimit"));
  exports.Set("gatewayRingBytes", Napi::Function::New(env, GatewayRingBytes, "gatewayRingBytes"));
  exports.Set("rdma", Rdma(env));
  exports.Set("vsock", vsock::Exports(env));
  exports.Set("transparent", TransparentExports(env));
  exports.Set("smc", smc::Exports(env));
  Napi::Object c = Napi::Object::New(env);
  c.Set("SOL_SOCKET", Napi::Number::New(env, SOL_SOCKET));
  c.Set("SO_SNDBUF", Napi::Number::New(env, SO_SNDBUF));
  c.Set("SO_RCVBUF", Napi::Number::New(env, SO_RCVBUF));
  c.Set("SO_KEEPALIVE", Napi::Number::New(env, SO_KEEPALIVE));
  c.Set("IPPROTO_TCP", Napi::Number::New(env, IPPROTO_TCP));
  c.Set("TCP_NODELAY", Napi::Number::New(env, TCP_NODELAY));
  c.Set("TCP_KEEPIDLE", Napi::Number::New(env, TCP_KEEPIDLE));
  c.Set("TCP_KEEPINTVL", Napi::Number::New(env, TCP_KEEPINTVL));
  c.Set("TCP_KEEPCNT", Napi::Number::New(env, TCP_KEEPCNT));
  c.Set("PIPE_MAX_SIZE", Napi::Number::New(env, pipe_max_size()));
  c.Set("DIR_C2G", Napi::Number::New(env, shm::kDirC2G));
  c.Set("DIR_G2C", Napi::Number::New(env, shm::kDirG2C));
  c.Set("MIN_RING_SIZE", Napi::Number::New(env, double(1u << shm::kMinRingLog2)));
  c.Set("MAX_RING_SIZE", Napi::Number::New(env, double(1u << shm::kMaxRingLog2)));
  c.Set("MAX_SLOTS", Napi::Number::New(env, shm::kMaxSlots));
  c.Set("ATTACH_VERSION", Napi::Number::New(env, attach::kVersion));
  c.Set("ATTACH_STATUS_PROTOCOL", Napi::Number::New(env, attach::kStatusProtocol));
  c.Set("ATTACH_STATUS_VERSION", Napi::Number::New(env, attach::kStatusVersion));
  c.Set("ATTACH_STATUS_TIMEOUT", Napi::Number::New(env, attach::kStatusTimeout));
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(sockgate_native, Init)

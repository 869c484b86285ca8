// The fd primitives JS needs beside the classes: dup, close, int socket
// options, socketpair, SO_PEERCRED, and the gateway's ring memory limit.
#include "js_functions.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>

#include "js_util.h"
#include "pump.h"
#include "region.h"

namespace sg {
namespace js {

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  int n = fcntl(int(fd), F_DUPFD_CLOEXEC, 0);
  if (n < 0) return ThrowErrno(info.Env(), errno, "dup");
  return Napi::Number::New(info.Env(), n);
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  // closeFd(fd, true): an abort, RST rather than FIN (SO_LINGER 0; harmless on a non-TCP fd).
  if (info.Length() > 1 && info[1].ToBoolean().Value()) {
    struct linger l = {1, 0};
    setsockopt(int(fd), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  if (close(int(fd)) < 0) return ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

Napi::Value SetSockOptInt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name, value;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd) || !GetInt(info, 1, "level", 0, INT32_MAX, &level) ||
      !GetInt(info, 2, "name", 0, INT32_MAX, &name) || !GetInt(info, 3, "value", INT32_MIN, INT32_MAX, &value))
    return info.Env().Undefined();
  int v = int(value);
  if (setsockopt(int(fd), int(level), int(name), &v, sizeof v) < 0) return ThrowErrno(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

Napi::Value GetSockOptInt(const Napi::CallbackInfo& info) {
  int64_t fd, level, name;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd) || !GetInt(info, 1, "level", 0, INT32_MAX, &level) ||
      !GetInt(info, 2, "name", 0, INT32_MAX, &name))
    return info.Env().Undefined();
  int v = 0;
  socklen_t l = sizeof v;
  if (getsockopt(int(fd), int(level), int(name), &v, &l) < 0) return ThrowErrno(info.Env(), errno, "getsockopt");
  return Napi::Number::New(info.Env(), v);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return ThrowErrno(info.Env(), errno, "socketpair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  int pid;
  uint32_t uid, gid;
  int err = attach::peer_cred(int(fd), &pid, &uid, &gid);
  if (err) return ThrowErrno(info.Env(), err, "SO_PEERCRED");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pid", Napi::Number::New(info.Env(), pid));
  o.Set("uid", Napi::Number::New(info.Env(), uid));
  o.Set("gid", Napi::Number::New(info.Env(), gid));
  return o;
}

Napi::Value SetGatewayRingLimit(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowType(info.Env(), "bytes must be a number");
  double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0)) return ThrowType(info.Env(), "bytes must be >= 0");
  set_gateway_ring_limit(std::isinf(d) ? ~uint64_t(0) : uint64_t(d));
  return info.Env().Undefined();
}

Napi::Value GatewayRingBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(gateway_ring_bytes()));
}

}  // namespace js
}  // namespace sg

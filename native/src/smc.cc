// Kernel SMC sockets and the N-API surface of smc.h.
#include "smc.h"
#include "connect_wait.h"
#include "js_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>

#ifndef AF_SMC
#define AF_SMC 43
#endif

namespace sg::smc {

using js::ErrnoError;

namespace {

constexpr int kSmcProtoSmc = 0, kSmcProtoSmc6 = 1;  // SMCPROTO_SMC / SMCPROTO_SMC6 (AF_SMC protocols)
constexpr int kIpprotoSmc = 256;                      // IPPROTO_SMC (Linux 6.11+)
// The diag dump is copied into JS whole: a bound on what one call may hold (~16k sockets of 256 bytes).
constexpr size_t kMaxDiagBytes = 4u << 20;

int sockaddr_of(int family, const std::string& address, uint16_t port, struct sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof *ss);
  if (family == 4) {
    auto* sa = reinterpret_cast<struct sockaddr_in*>(ss);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (inet_pton(AF_INET, address.c_str(), &sa->sin_addr) != 1) return -EINVAL;
    *len = sizeof *sa;
    return 0;
  }
  if (family == 6) {
    auto* sa = reinterpret_cast<struct sockaddr_in6*>(ss);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(port);
    if (inet_pton(AF_INET6, address.c_str(), &sa->sin6_addr) != 1) return -EINVAL;
    *len = sizeof *sa;
    return 0;
  }
  return -EAFNOSUPPORT;
}

}  // namespace

int make_socket(int family, int* out_fd, Kind* kind) {
  if (family != 4 && family != 6) return -EAFNOSUPPORT;
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, kIpprotoSmc);
  if (fd >= 0) {
    *kind = Kind::kIpprotoSmc;
  } else {
    fd = socket(AF_SMC, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, family == 4 ? kSmcProtoSmc : kSmcProtoSmc6);
    if (fd < 0) return -errno;
    *kind = Kind::kAfSmc;
  }
  *out_fd = fd;
  return 0;
}

int connect_to(int family, const std::string& address, uint16_t port, int timeout_ms, int* out_fd, Kind* kind) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  int err = sockaddr_of(family, address, port, &ss, &len);
  if (err) return err;
  int fd = -1;
  err = make_socket(family, &fd, kind);
  if (err) return err;
  // SMC connects in two steps (TCP, then the CLC handshake in a kernel
  // worker); POLLOUT comes when both are done or the socket fell back.
  err = connect_wait(fd, reinterpret_cast<struct sockaddr*>(&ss), len, timeout_ms);
  if (err) {
    close(fd);
    return err;
  }
  *out_fd = fd;
  return 0;
}

int listen_on(int family, const std::string& address, uint16_t port, int backlog, bool v6only, int* out_fd,
              uint16_t* bound_port, Kind* kind) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  int err = sockaddr_of(family, address, port, &ss, &len);
  if (err) return err;
  int fd = -1;
  err = make_socket(family, &fd, kind);
  if (err) return err;
  int one = 1, v6 = v6only ? 1 : 0;
  // SMC passes these to its internal TCP socket, as Node would set them on a TCP one.
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      (family == 6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) < 0) ||
      bind(fd, reinterpret_cast<struct sockaddr*>(&ss), len) < 0 || listen(fd, backlog) < 0 ||
      getsockname(fd, reinterpret_cast<struct sockaddr*>(&ss), &len) < 0) {
    err = -errno;
    close(fd);
    return err;
  }
  *bound_port = ntohs(family == 4 ? reinterpret_cast<struct sockaddr_in*>(&ss)->sin_port
                                  : reinterpret_cast<struct sockaddr_in6*>(&ss)->sin6_port);
  *out_fd = fd;
  return 0;
}

std::string unavailable_reason() {
  int fd = socket(AF_SMC, SOCK_STREAM | SOCK_CLOEXEC, kSmcProtoSmc);
  if (fd >= 0) {
    close(fd);
    return "";
  }
  int e = errno;
  if (e == EAFNOSUPPORT)
    return "this kernel has no SMC (AF_SMC): load the smc module (modprobe smc; CONFIG_SMC), and smc_diag for status";
  return std::string("socket(AF_SMC): ") + strerror(e);
}

namespace {

const char* KindName(Kind k) { return k == Kind::kIpprotoSmc ? "ipproto_smc" : "af_smc"; }

// Reads (family, address, port) from info[0..2]; throws and returns false on bad input.
bool GetTarget(const Napi::CallbackInfo& info, int* family, std::string* address, uint16_t* port) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "expected (family: 4|6, address: string, port: number, ...)").ThrowAsJavaScriptException();
    return false;
  }
  double f = info[0].As<Napi::Number>().DoubleValue(), p = info[2].As<Napi::Number>().DoubleValue();
  if ((f != 4 && f != 6) || !(p >= 0 && p <= 65535) || std::floor(p) != p) {
    Napi::RangeError::New(env, "family must be 4 or 6 and port 0..65535").ThrowAsJavaScriptException();
    return false;
  }
  *family = int(f);
  *address = info[1].As<Napi::String>().Utf8Value();
  *port = uint16_t(p);
  return true;
}

class ConnectWorker : public Napi::AsyncWorker {
 public:
  ConnectWorker(Napi::Env env, int family, std::string address, uint16_t port, int timeout_ms)
      : Napi::AsyncWorker(env, "sockgate-smc-connect"), deferred_(Napi::Promise::Deferred::New(env)), family_(family),
        address_(std::move(address)), port_(port), timeout_(timeout_ms) {}
  ~ConnectWorker() override {
    if (fd_ >= 0 && !handed_) close(fd_);  // not handed to JS: ours to close
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = connect_to(family_, address_, port_, timeout_, &fd_, &kind_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_) {
      deferred_.Reject(ErrnoError(env, err_, "smc connect " + address_ + ":" + std::to_string(port_)).Value());
      return;
    }
    handed_ = true;
    Napi::Object o = Napi::Object::New(env);
    o.Set("fd", Napi::Number::New(env, fd_));
    o.Set("kind", Napi::String::New(env, KindName(kind_)));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int family_;
  std::string address_;
  uint16_t port_;
  int timeout_;
  int err_ = 0;
  int fd_ = -1;
  Kind kind_ = Kind::kAfSmc;
  bool handed_ = false;
};

// connect(family, address, port, timeoutMs): Promise<{ fd, kind }>; the caller owns the fd.
Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  uint16_t port;
  if (!GetTarget(info, &family, &address, &port)) return env.Undefined();
  double t = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 10000;
  if (!(t >= 1 && t <= 600000)) {
    Napi::RangeError::New(env, "timeoutMs must be 1..600000").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* w = new ConnectWorker(env, family, address, port, int(t));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// listen(family, address, port, backlog, v6only): { fd, port, kind }; the caller owns the fd.
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family;
  std::string address;
  uint16_t port;
  if (!GetTarget(info, &family, &address, &port)) return env.Undefined();
  double backlog = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 511;
  if (!(backlog >= 1 && backlog <= 65535)) {
    Napi::RangeError::New(env, "backlog must be 1..65535").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool v6only = info.Length() > 4 && info[4].ToBoolean().Value();
  int fd = -1;
  uint16_t bound = 0;
  Kind kind = Kind::kAfSmc;
  int err = listen_on(family, address, port, int(backlog), v6only, &fd, &bound, &kind);
  if (err) {
    ErrnoError(env, err, "smc listen " + address + ":" + std::to_string(port)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", Napi::Number::New(env, fd));
  o.Set("port", Napi::Number::New(env, bound));
  o.Set("kind", Napi::String::New(env, KindName(kind)));
  return o;
}

// diagDump(): Buffer of raw netlink messages (native/smc-diag.ts parses them).
Napi::Value DiagDump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> out;
  int err = diag_dump(&out, kMaxDiagBytes);
  if (err) {
    ErrnoError(env, err, err == -ENOENT ? "smc diag dump (is the smc_diag module loaded?)" : "smc diag dump")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

Napi::Value AddUeid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "addUeid(ueid: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string u = info[0].As<Napi::String>().Utf8Value();
  int err = add_ueid(u);
  if (err) ErrnoError(env, err, "smc add ueid " + u).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value AddPnet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "addPnet(pnetid, eth, ib, ibPort)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string id = info[0].As<Napi::String>().Utf8Value();
  double port = info[3].As<Napi::Number>().DoubleValue();
  if (!(port >= 1 && port <= 255)) {
    Napi::RangeError::New(env, "ibPort must be 1..255").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int err = add_pnet(id, info[1].As<Napi::String>().Utf8Value(), info[2].As<Napi::String>().Utf8Value(), uint8_t(port));
  if (err) ErrnoError(env, err, "smc add pnet " + id).ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

Napi::Object Exports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  std::string reason = unavailable_reason();
  o.Set("available", Napi::Boolean::New(env, reason.empty()));
  o.Set("reason", Napi::String::New(env, reason));
  o.Set("connect", Napi::Function::New(env, Connect, "connect"));
  o.Set("listen", Napi::Function::New(env, Listen, "listen"));
  o.Set("diagDump", Napi::Function::New(env, DiagDump, "diagDump"));
  o.Set("addUeid", Napi::Function::New(env, AddUeid, "addUeid"));
  o.Set("addPnet", Napi::Function::New(env, AddPnet, "addPnet"));
  return o;
}

}  // namespace sg::smc

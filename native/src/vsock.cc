// AF_VSOCK primitives and their N-API surface (see vsock.h).
//
// JS classes: VsockListener (one listening socket and the thread that accepts
// on it; accepted descriptors reach JS through one ThreadSafeFunction). The
// connect is a promise-returning function run on a libuv worker.
#include "vsock.h"

#include "connect_wait.h"
#include "env_teardown.h"
#include "js_util.h"

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>

#if SG_HAVE_VSOCK
#include <linux/vm_sockets.h>
#endif

namespace sg::vsock {

using js::ErrnoError;
using js::ThrowType;

namespace {

constexpr napi_type_tag kVsockListenerTag = {0x73676b76736f636bull, 0x1a2b3c4d5e6f7090ull};
// After an accept error that is not about the one connection (EMFILE, ENOBUFS):
// wait this long before accepting again, so the thread does not spin.
constexpr int kAcceptBackoffMs = 100;

bool GetU32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowType(info.Env(), std::string(name) + " must be a number");
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || std::floor(d) != d) {
    Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer in [0, 2^32)").ThrowAsJavaScriptException();
    return false;
  }
  *out = uint32_t(d);
  return true;
}

}  // namespace

#if SG_HAVE_VSOCK

int connect_to(uint32_t cid, uint32_t port, int timeout_ms, int* out_fd) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_vm sa;
  memset(&sa, 0, sizeof sa);
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  int err = connect_wait(fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa, timeout_ms);
  if (err) {
    close(fd);
    return err;
  }
  *out_fd = fd;
  return 0;
}

int listen_on(uint32_t cid, uint32_t port, int backlog, int* out_fd, uint32_t* bound_port) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_vm sa;
  memset(&sa, 0, sizeof sa);
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  int err = 0;
  socklen_t l = sizeof sa;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) < 0 || listen(fd, backlog) < 0 ||
      getsockname(fd, reinterpret_cast<struct sockaddr*>(&sa), &l) < 0)
    err = -errno;
  if (err) {
    close(fd);
    return err;
  }
  *out_fd = fd;
  *bound_port = sa.svm_port;
  return 0;
}

int local_cid(uint32_t* cid) {
  int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  unsigned int c = 0;
  int err = ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &c) < 0 ? -errno : 0;
  close(fd);
  if (!err) *cid = c;
  return err;
}

const char* unavailable_reason() {
  static const std::string reason = [] {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      close(fd);
      return std::string();
    }
    int e = errno;
    if (e == EAFNOSUPPORT)
      return std::string("this kernel has no AF_VSOCK (load the vsock module and a transport: "
                         "vmw_vsock_virtio_transport in a guest, vhost_vsock on a host, vsock_loopback for local tests)");
    return std::string("socket(AF_VSOCK): ") + strerror(e);
  }();
  return reason.c_str();
}

#else

int connect_to(uint32_t, uint32_t, int, int*) { return -EAFNOSUPPORT; }
int listen_on(uint32_t, uint32_t, int, int*, uint32_t*) { return -EAFNOSUPPORT; }
int local_cid(uint32_t*) { return -EAFNOSUPPORT; }
const char* unavailable_reason() {
  return "built without AF_VSOCK support: <linux/vm_sockets.h> was missing (Debian package linux-libc-dev); "
         "install it and rebuild the addon (npm run build:native)";
}

#endif

namespace {

// ---- connect (off the JS thread) ---------------------------------------------

class ConnectWorker : public Napi::AsyncWorker {
 public:
  ConnectWorker(Napi::Env env, uint32_t cid, uint32_t port, int timeout_ms)
      : Napi::AsyncWorker(env, "sockgate-vsock-connect"), deferred_(Napi::Promise::Deferred::New(env)),
        cid_(cid), port_(port), timeout_(timeout_ms) {}
  ~ConnectWorker() override {
    if (fd_ >= 0 && !handed_) close(fd_);  // not handed to JS: ours to close
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = connect_to(cid_, port_, timeout_, &fd_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_) {
      deferred_.Reject(ErrnoError(env, err_, "vsock connect " + std::to_string(cid_) + ":" + std::to_string(port_)).Value());
      return;
    }
    handed_ = true;
    deferred_.Resolve(Napi::Number::New(env, fd_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  uint32_t cid_, port_;
  int timeout_;
  int err_ = 0;
  int fd_ = -1;
  bool handed_ = false;
};

// connect(cid, port, timeoutMs?): Promise<fd>; the caller owns the fd.
Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t cid, port, timeout = 10000;
  if (!GetU32(info, 0, "cid", &cid) || !GetU32(info, 1, "port", &port)) return env.Undefined();
  if (info.Length() > 2 && !info[2].IsUndefined() && !GetU32(info, 2, "timeoutMs", &timeout)) return env.Undefined();
  if (timeout == 0 || timeout > 600000) {
    Napi::RangeError::New(env, "timeoutMs must be 1..600000").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* w = new ConnectWorker(env, cid, port, int(timeout));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value LocalCid(const Napi::CallbackInfo& info) {
  uint32_t cid = 0;
  int err = local_cid(&cid);
  if (err) {
    ErrnoError(info.Env(), err, "vsock local cid").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), cid);
}

// ---- listener ------------------------------------------------------------------

// What the accept thread hands to JS: a connection (fd >= 0) or an error.
struct Accepted {
  int fd = -1;
  uint32_t cid = 0, port = 0;
  int err = 0;
};

// One listening AF_VSOCK socket and the thread that accepts on it. Owns the
// listening fd, the wake eventfd and the thread; accepted fds belong to JS
// once delivered (closed here if they cannot be).
class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "VsockListener",
                       {InstanceAccessor<&ListenerWrap::Port>("port"), InstanceAccessor<&ListenerWrap::Closed>("closed"),
                        InstanceMethod<&ListenerWrap::Ref>("ref"), InstanceMethod<&ListenerWrap::Unref>("unref"),
                        InstanceMethod<&ListenerWrap::Close>("close")});
  }
  // new VsockListener(cid, port, backlog, onAccept(err, fd, peerCid, peerPort)):
  // bind + listen now (errors are immediate); accepts run on a thread.
  ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) { ThrowType(env, "VsockListener must be constructed with new"); return; }
    uint32_t cid, port, backlog;
    if (!GetU32(info, 0, "cid", &cid) || !GetU32(info, 1, "port", &port) || !GetU32(info, 2, "backlog", &backlog)) return;
    if (info.Length() < 4 || !info[3].IsFunction()) { ThrowType(env, "VsockListener(cid, port, backlog, onAccept: Function)"); return; }
    if (backlog == 0 || backlog > 65535) { Napi::RangeError::New(env, "backlog must be 1..65535").ThrowAsJavaScriptException(); return; }
    int err = listen_on(cid, port, int(backlog), &fd_, &port_);
    if (err) { ErrnoError(env, err, "vsock listen " + std::to_string(cid) + ":" + std::to_string(port)).ThrowAsJavaScriptException(); return; }
    wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_ < 0) {
      err = -errno;
      close(fd_);
      fd_ = -1;
      ErrnoError(env, err, "eventfd").ThrowAsJavaScriptException();
      return;
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[3].As<Napi::Function>(), "sockgate-vsock-accept", 0, 1);
    thread_ = std::thread([this] { run(); });
    teardown_.Arm(env, [this] { shutdown(); });
    info.This().As<Napi::Object>().TypeTag(&kVsockListenerTag);
  }
  ~ListenerWrap() override { shutdown(); }  // safety net; close() is the rule

 private:
  bool Check(const Napi::CallbackInfo& info) {
    Napi::Value th = info.This();
    if (!th.IsObject() || !th.As<Napi::Object>().CheckTypeTag(&kVsockListenerTag)) {
      ThrowType(info.Env(), "receiver is not a VsockListener");
      return false;
    }
    return true;
  }
  Napi::Value Port(const Napi::CallbackInfo& info) {
    return Check(info) ? Napi::Number::New(info.Env(), port_) : info.Env().Undefined();
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) {
    return Check(info) ? Napi::Boolean::New(info.Env(), fd_ < 0) : info.Env().Undefined();
  }
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (Check(info) && fd_ >= 0) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (Check(info) && fd_ >= 0) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }
  // Stop accepting and close the listening socket. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (Check(info)) shutdown();
    return info.Env().Undefined();
  }

  // The one cleanup path, in reverse order of creation: thread, fds, TSFN.
  void shutdown() {
    if (fd_ < 0) return;
    teardown_.Disarm();
    stop_.store(true);
    uint64_t one = 1;
    ssize_t n = write(wake_, &one, sizeof one);
    (void)n;
    if (thread_.joinable()) thread_.join();
    close(fd_);
    close(wake_);
    fd_ = wake_ = -1;
    tsfn_.Release();
  }

  static void Deliver(Napi::Env env, Napi::Function fn, Accepted* a) {
    if (!env) {  // the environment is going away: nobody will own the fd
      if (a->fd >= 0) close(a->fd);
      delete a;
      return;
    }
    if (a->err) {
      fn.Call({ErrnoError(env, a->err, "vsock accept").Value()});
    } else {
      fn.Call({env.Null(), Napi::Number::New(env, a->fd), Napi::Number::New(env, a->cid), Napi::Number::New(env, a->port)});
    }
    delete a;
  }

  void hand(Accepted* a) {
    if (tsfn_.NonBlockingCall(a, Deliver) != napi_ok) {
      if (a->fd >= 0) close(a->fd);
      delete a;
    }
  }

  // The accept thread: poll the listening socket and the wake eventfd.
  void run() {
    while (!stop_.load()) {
      struct pollfd p[2] = {{fd_, POLLIN, 0}, {wake_, POLLIN, 0}};
      int n = poll(p, 2, -1);
      if (n < 0 && errno == EINTR) continue;
      if (stop_.load() || (n > 0 && p[1].revents)) break;
      if (n <= 0) continue;
#if SG_HAVE_VSOCK
      for (;;) {
        struct sockaddr_vm sa;
        socklen_t l = sizeof sa;
        memset(&sa, 0, sizeof sa);
        int c = accept4(fd_, reinterpret_cast<struct sockaddr*>(&sa), &l, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) {
          hand(new Accepted{c, sa.svm_cid, sa.svm_port, 0});
          continue;
        }
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED) break;
        hand(new Accepted{-1, 0, 0, -e});
        struct pollfd w = {wake_, POLLIN, 0};
        poll(&w, 1, kAcceptBackoffMs);
        break;
      }
#endif
    }
  }

  int fd_ = -1;    // the listening socket; -1 once closed
  int wake_ = -1;  // eventfd that stops the thread
  uint32_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
  js::EnvTeardownHook teardown_;  // stops the thread at exit if nobody closed the listener
};

}  // namespace

Napi::Object Exports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  const char* why = unavailable_reason();
  o.Set("available", Napi::Boolean::New(env, SG_HAVE_VSOCK && why[0] == '\0'));
  o.Set("reason", Napi::String::New(env, why));
  o.Set("connect", Napi::Function::New(env, Connect, "connect"));
  o.Set("localCid", Napi::Function::New(env, LocalCid, "localCid"));
  o.Set("Listener", ListenerWrap::Init(env));
#if SG_HAVE_VSOCK
  o.Set("CID_ANY", Napi::Number::New(env, VMADDR_CID_ANY));
  o.Set("CID_LOCAL", Napi::Number::New(env, 1));
  o.Set("CID_HOST", Napi::Number::New(env, VMADDR_CID_HOST));
  o.Set("PORT_ANY", Napi::Number::New(env, VMADDR_PORT_ANY));
#else
  o.Set("CID_ANY", Napi::Number::New(env, 0xFFFFFFFFu));
  o.Set("CID_LOCAL", Napi::Number::New(env, 1));
  o.Set("CID_HOST", Napi::Number::New(env, 2));
  o.Set("PORT_ANY", Napi::Number::New(env, 0xFFFFFFFFu));
#endif
  return o;
}

}  // namespace sg::vsock

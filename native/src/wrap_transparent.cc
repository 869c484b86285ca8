// Transparent-proxy primitives (issue 15): what Node's net and dgram cannot do.
// - originalDst(fd): a redirected TCP connection's original destination
//   (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST from conntrack), else the socket's
//   local address (under tproxy the local address *is* the original one).
// - setTransparent(fd): IP_TRANSPARENT / IPV6_TRANSPARENT on a listener, so
//   nftables `tproxy` may hand it connections addressed elsewhere.
// - TransparentUdp: a transparent UDP socket with IP_RECVORIGDSTADDR, read on
//   the JS loop with uv_poll; each datagram reaches JS with its source and
//   original destination.
// - udpReplySocket(addr, port) + udpSendTo(fd, ...): a socket bound (with
//   IP_TRANSPARENT) to a foreign address, so replies leave from the address the
//   client sent to.
// Bytes and sockets here; every decision (flows, limits, policy) is in TS
// (clients/proxy/transparent*.ts).
#include "wrap_transparent.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cstring>
#include <string>
#include <vector>

#include "js_util.h"

namespace sg {
namespace js {
namespace {

// Datagrams read per readable event before yielding to the loop: one busy flow
// must not starve the rest of the JS loop.
constexpr int kMaxBatch = 64;
// Largest UDP payload (IPv4/IPv6 without jumbograms).
constexpr size_t kMaxDatagram = 65535;

constexpr napi_type_tag kTransparentUdpTag = {0x73676b7470726f78ull, 0x1a2b3c4d5e6f7091ull};

// sockaddr -> {address, port, family}.
Napi::Object AddrObject(Napi::Env env, const sockaddr_storage& ss) {
  Napi::Object o = Napi::Object::New(env);
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    o.Set("port", Napi::Number::New(env, ntohs(a->sin_port)));
    o.Set("family", Napi::Number::New(env, 4));
  } else {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: give them as IPv4.
    bool mapped = IN6_IS_ADDR_V4MAPPED(&a->sin6_addr);
    if (mapped) inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], buf, sizeof buf);
    else inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    o.Set("port", Napi::Number::New(env, ntohs(a->sin6_port)));
    o.Set("family", Napi::Number::New(env, mapped ? 4 : 6));
  }
  o.Set("address", Napi::String::New(env, buf));
  return o;
}

// Parse (address, port) arguments at i, i+1 into a sockaddr; throws on bad input.
bool GetSockaddr(const Napi::CallbackInfo& info, size_t i, sockaddr_storage* ss, socklen_t* len) {
  if (info.Length() <= i || !info[i].IsString()) {
    ThrowType(info.Env(), "address must be a string (an IPv4 or IPv6 literal)");
    return false;
  }
  int64_t port;
  if (!GetInt(info, i + 1, "port", 0, 65535, &port)) return false;
  std::string a = info[i].As<Napi::String>().Utf8Value();
  std::memset(ss, 0, sizeof *ss);
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET, a.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(uint16_t(port));
    *len = sizeof *v4;
    return true;
  }
  if (inet_pton(AF_INET6, a.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(uint16_t(port));
    *len = sizeof *v6;
    return true;
  }
  ThrowType(info.Env(), "address is not an IPv4 or IPv6 literal: " + a);
  return false;
}

// IP_TRANSPARENT for the family of `fd` (IPv6 sockets get both: a dual-stack
// socket may carry IPv4-mapped traffic).
int SetTransparentFd(int fd, int family) {
  int one = 1;
  if (family == AF_INET) return setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one) < 0 ? -errno : 0;
  if (setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one) < 0) return -errno;
  setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one);  // best effort for v4-mapped
  return 0;
}

int FamilyOf(int fd) {
  sockaddr_storage ss{};
  socklen_t l = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &l) < 0) return -errno;
  return ss.ss_family;
}

}  // namespace

Napi::Value OriginalDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return env.Undefined();
  sockaddr_storage local{};
  socklen_t l = sizeof local;
  if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &l) < 0) return ThrowErrno(env, errno, "getsockname");
  sockaddr_storage orig{};
  socklen_t ol = sizeof orig;
  // IPv4 traffic on a dual-stack socket has an IPv4 conntrack entry: ask SOL_IP.
  bool v6 = local.ss_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
  int rc = v6 ? getsockopt(int(fd), SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &ol) : getsockopt(int(fd), SOL_IP, SO_ORIGINAL_DST, &orig, &ol);
  Napi::Object o;
  if (rc == 0) {
    o = AddrObject(env, orig);
    o.Set("source", Napi::String::New(env, "conntrack"));
  } else if (errno == ENOENT || errno == ENOPROTOOPT) {
    // No conntrack entry (tproxy, or a direct connection): the local address.
    o = AddrObject(env, local);
    o.Set("source", Napi::String::New(env, "local"));
  } else {
    return ThrowErrno(env, errno, v6 ? "getsockopt(IP6T_SO_ORIGINAL_DST)" : "getsockopt(SO_ORIGINAL_DST)");
  }
  return o;
}

Napi::Value SetTransparent(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return info.Env().Undefined();
  int family = FamilyOf(int(fd));
  if (family < 0) return ThrowErrno(info.Env(), -family, "getsockname");
  int rc = SetTransparentFd(int(fd), family);
  if (rc < 0) return ThrowErrno(info.Env(), -rc, "setsockopt(IP_TRANSPARENT)");
  return info.Env().Undefined();
}

Napi::Value UdpReplySocket(const Napi::CallbackInfo& info) {
  sockaddr_storage ss;
  socklen_t len;
  if (!GetSockaddr(info, 0, &ss, &len)) return info.Env().Undefined();
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(info.Env(), errno, "socket");
  int one = 1;
  int rc = SetTransparentFd(fd, ss.ss_family);
  // Several clients may talk to one destination: each flow binds the same address.
  if (rc == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) rc = -errno;
  if (rc == 0 && bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) rc = -errno;
  if (rc < 0) {
    close(fd);
    return ThrowErrno(info.Env(), -rc, "udp reply socket");
  }
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value UdpSendTo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!GetInt(info, 0, "fd", 0, INT32_MAX, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsTypedArray()) return ThrowType(env, "data must be a Uint8Array");
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
  sockaddr_storage ss;
  socklen_t len;
  if (!GetSockaddr(info, 2, &ss, &len)) return env.Undefined();
  ssize_t n = sendto(int(fd), data.Data(), data.ByteLength(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), len);
  if (n < 0) return ThrowErrno(env, errno, "sendto");
  return Napi::Number::New(env, double(n));
}

// One transparent UDP socket read on the JS loop. Owns the fd and the poll handle.
class TransparentUdpWrap : public Napi::ObjectWrap<TransparentUdpWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "TransparentUdp",
                       {InstanceAccessor<&TransparentUdpWrap::Port>("port"), InstanceAccessor<&TransparentUdpWrap::Fd>("fd"),
                        InstanceMethod<&TransparentUdpWrap::Ref>("ref"), InstanceMethod<&TransparentUdpWrap::Unref>("unref"),
                        InstanceMethod<&TransparentUdpWrap::Close>("close")});
  }

  // new TransparentUdp(address, port, onMessage(data, from, to)): socket +
  // IP_TRANSPARENT + IP_RECVORIGDSTADDR + bind now (errors are immediate).
  TransparentUdpWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TransparentUdpWrap>(info) {
    Napi::Env env = info.Env();
    sockaddr_storage ss;
    socklen_t len;
    if (!GetSockaddr(info, 0, &ss, &len)) return;
    if (info.Length() < 3 || !info[2].IsFunction()) {
      ThrowType(env, "TransparentUdp(address, port, onMessage: Function)");
      return;
    }
    int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ThrowErrno(env, errno, "socket");
      return;
    }
    int one = 1;
    int rc = SetTransparentFd(fd, ss.ss_family);
    if (rc == 0 && setsockopt(fd, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof one) < 0 && ss.ss_family == AF_INET) rc = -errno;
    if (rc == 0 && ss.ss_family == AF_INET6 && setsockopt(fd, SOL_IPV6, IPV6_RECVORIGDSTADDR, &one, sizeof one) < 0) rc = -errno;
    if (rc == 0 && bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) rc = -errno;
    if (rc < 0) {
      close(fd);
      ThrowErrno(env, -rc, "transparent udp socket");
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
      close(fd);
      ThrowType(env, "no libuv loop");
      return;
    }
    poll_ = new uv_poll_t;
    if (uv_poll_init(loop, poll_, fd) != 0) {
      delete poll_;
      poll_ = nullptr;
      close(fd);
      ThrowType(env, "uv_poll_init failed");
      return;
    }
    fd_ = fd;
    poll_->data = this;
    cb_ = Napi::Persistent(info[2].As<Napi::Function>());
    self_ = Napi::Persistent(info.This().As<Napi::Object>());  // alive while open
    info.This().As<Napi::Object>().TypeTag(&kTransparentUdpTag);
    buf_.resize(kMaxDatagram);
    uv_poll_start(poll_, UV_READABLE, OnReadable);
  }
  ~TransparentUdpWrap() override { Shutdown(); }

 private:
  static void OnReadable(uv_poll_t* h, int status, int) {
    auto* self = static_cast<TransparentUdpWrap*>(h->data);
    if (!self || self->fd_ < 0) return;
    Napi::Env env = self->cb_.Env();
    Napi::HandleScope scope(env);
    if (status < 0) return;
    for (int i = 0; i < kMaxBatch && self->fd_ >= 0; i++) {
      sockaddr_storage from{};
      char ctrl[256];
      iovec iov = {self->buf_.data(), self->buf_.size()};
      msghdr m{};
      m.msg_name = &from;
      m.msg_namelen = sizeof from;
      m.msg_iov = &iov;
      m.msg_iovlen = 1;
      m.msg_control = ctrl;
      m.msg_controllen = sizeof ctrl;
      ssize_t n = recvmsg(self->fd_, &m, MSG_DONTWAIT);
      if (n < 0) break;  // EAGAIN, or an ICMP error queued on the socket: next event
      sockaddr_storage to{};
      bool have_to = false;
      for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
            (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR)) {
          size_t l = c->cmsg_len - CMSG_LEN(0);
          std::memcpy(&to, CMSG_DATA(c), l < sizeof to ? l : sizeof to);
          have_to = true;
        }
      }
      if (!have_to) continue;  // not a tproxied datagram: nothing to forward it to
      Napi::Buffer<uint8_t> data = Napi::Buffer<uint8_t>::Copy(env, self->buf_.data(), size_t(n));
      self->cb_.MakeCallback(self->self_.Value(), {data, AddrObject(env, from), AddrObject(env, to)}, nullptr);
      if (env.IsExceptionPending()) break;
    }
  }

  Napi::Value Port(const Napi::CallbackInfo& info) {
    if (fd_ < 0) return Napi::Number::New(info.Env(), 0);
    sockaddr_storage ss{};
    socklen_t l = sizeof ss;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &l);
    return AddrObject(info.Env(), ss).Get("port");
  }
  Napi::Value Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kTransparentUdpTag, "TransparentUdp")) return info.Env().Undefined();
    Shutdown();
    if (!self_.IsEmpty()) self_.Reset();
    return info.Env().Undefined();
  }
  void Shutdown() {
    if (poll_) {
      uv_poll_stop(poll_);
      poll_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
  }

  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference cb_;
  Napi::ObjectReference self_;
  std::vector<uint8_t> buf_;
};

Napi::Object TransparentExports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("originalDst", Napi::Function::New(env, OriginalDst, "originalDst"));
  o.Set("setTransparent", Napi::Function::New(env, SetTransparent, "setTransparent"));
  o.Set("udpReplySocket", Napi::Function::New(env, UdpReplySocket, "udpReplySocket"));
  o.Set("udpSendTo", Napi::Function::New(env, UdpSendTo, "udpSendTo"));
  o.Set("TransparentUdp", TransparentUdpWrap::Init(env));
  return o;
}

}  // namespace js
}  // namespace sg

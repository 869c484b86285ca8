#include "rdma_wraps.h"

#include <array>
#include <memory>
#include <string>

#include "pump.h"
#include "pump_access.h"
#include "rdma_addon.h"
#include "rdma_conn.h"
#include "rdma_napi.h"

namespace sg {
namespace rdma {

namespace {

constexpr napi_type_tag kConnTag = {0x73676b72636f6e31ull, 0x1a2b3c4d5e6f7090ull};
constexpr napi_type_tag kListenerTag = {0x73676b726c736e31ull, 0x1a2b3c4d5e6f7091ull};
// On the External a constructor takes: only this file makes one.
constexpr napi_type_tag kInitTag = {0x73676b72696e6974ull, 0x1a2b3c4d5e6f7092ull};

// The two constructors, per environment (freed with it).
struct Ctors {
  Napi::FunctionReference conn, listener;
};

bool CheckThis(const Napi::CallbackInfo& info, const napi_type_tag& t, const char* cls) {
  Napi::Value th = info.This();
  if (!th.IsObject() || !th.As<Napi::Object>().CheckTypeTag(&t)) {
    ThrowTypeError(info.Env(), std::string("receiver is not an ") + cls);
    return false;
  }
  return true;
}

// What a constructor gets through its tagged External.
template <typename T>
T* InitArg(const Napi::CallbackInfo& info, const char* made_by) {
  if (info.Length() < 1 || !info[0].IsExternal() || !info[0].As<Napi::Object>().CheckTypeTag(&kInitTag)) {
    ThrowTypeError(info.Env(), made_by);
    return nullptr;
  }
  return info[0].As<Napi::External<T>>().Data();
}

template <typename T>
Napi::Object Make(Napi::Env env, Napi::FunctionReference& ctor, T* init) {
  Napi::External<T> ext = Napi::External<T>::New(env, init);
  ext.TypeTag(&kInitTag);
  return ctor.New({ext});
}

std::shared_ptr<Pump> PumpArg(const Napi::CallbackInfo& info) {
  std::shared_ptr<Pump> pump = PumpOf(info[0]);
  if (!pump) ThrowTypeError(info.Env(), "pump must be an open Pump");
  return pump;
}

class ConnWrap : public Napi::ObjectWrap<ConnWrap> {
 public:
  struct Init {
    std::shared_ptr<Pump> pump;
    std::shared_ptr<PumpSource> conn;
    uint32_t id;
  };
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RdmaConn",
                       {InstanceAccessor<&ConnWrap::Id>("id"), InstanceMethod<&ConnWrap::Link>("link"),
                        InstanceMethod<&ConnWrap::CloseSlot>("closeSlot"), InstanceMethod<&ConnWrap::ShutdownSlot>("shutdownSlot"),
                        InstanceMethod<&ConnWrap::SetSlotSockopt>("setSlotSockopt"), InstanceMethod<&ConnWrap::Close>("close")});
  }
  ConnWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ConnWrap>(info) {
    Init* in = InitArg<Init>(info, "an RdmaConn is made by rdma.connect() or a listener's accept()");
    if (!in) return;
    pump_ = in->pump;
    conn_ = in->conn;
    id_ = in->id;
    info.This().As<Napi::Object>().TypeTag(&kConnTag);
  }

 private:
  Napi::Value Id(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kConnTag, "RdmaConn")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), id_);
  }
  // link(slot, fd, token?, resume?): resume = { position, acked?, sent?, outBase? (bigints), bytes?: Buffer }
  Napi::Value Link(const Napi::CallbackInfo& info) {
    Napi::Env e = info.Env();
    uint32_t slot;
    if (!CheckThis(info, kConnTag, "RdmaConn") || !GetSlot(info, &slot)) return e.Undefined();
    if (!info[1].IsNumber()) return ThrowTypeError(e, "fd must be a number");
    int fd = info[1].As<Napi::Number>().Int32Value();
    if (fd < 0) return Napi::RangeError::New(e, "bad fd").ThrowAsJavaScriptException(), e.Undefined();
    bool with_token = info.Length() > 2 && !info[2].IsUndefined();
    std::array<uint8_t, kTokenBytes> tok{};
    if (with_token && !GetToken(info, info[2], tok.data())) return e.Undefined();
    auto r = std::make_shared<LinkResume>();
    bool with_resume = info.Length() > 3 && !info[3].IsUndefined();
    if (with_resume && !GetLinkResume(info, info[3], r.get())) return e.Undefined();
    pump_->run_on_source(id_, [slot, fd, with_token, tok, with_resume, r](PumpSource* s) {
      conn_link(s, slot, fd, with_token ? tok.data() : nullptr, with_resume ? r.get() : nullptr);
    });
    return e.Undefined();
  }
  // closeSlot(slot, reset?)
  Napi::Value CloseSlot(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!CheckThis(info, kConnTag, "RdmaConn") || !GetSlot(info, &slot)) return info.Env().Undefined();
    bool reset = info.Length() > 1 && info[1].ToBoolean().Value();
    pump_->run_on_source(id_, [slot, reset](PumpSource* s) { conn_close_slot(s, slot, reset); });
    return info.Env().Undefined();
  }
  // shutdownSlot(slot, read, write)
  Napi::Value ShutdownSlot(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!CheckThis(info, kConnTag, "RdmaConn") || !GetSlot(info, &slot)) return info.Env().Undefined();
    bool rd = info[1].ToBoolean().Value(), wr = info[2].ToBoolean().Value();
    pump_->run_on_source(id_, [slot, rd, wr](PumpSource* s) { conn_shutdown_slot(s, slot, rd, wr); });
    return info.Env().Undefined();
  }
  // setSlotSockopt(slot, level, name, value): boolean
  Napi::Value SetSlotSockopt(const Napi::CallbackInfo& info) {
    uint32_t slot;
    if (!CheckThis(info, kConnTag, "RdmaConn") || !GetSlot(info, &slot)) return info.Env().Undefined();
    int level = info[1].ToNumber().Int32Value(), name = info[2].ToNumber().Int32Value(), value = info[3].ToNumber().Int32Value();
    return Napi::Boolean::New(info.Env(), conn_set_sockopt(conn_, slot, level, name, value));
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kConnTag, "RdmaConn")) return info.Env().Undefined();
    // close(true): fail the connection (ERR_SOCKGATE_RDMA_DISCONNECTED) rather than end it: a resumable
    // connection's open slots suspend (live failover: the peer resumes them on another path).
    if (info.Length() > 0 && info[0].ToBoolean().Value()) {
      pump_->run_on_source(id_, [](PumpSource* s) {
        if (s) conn_async_fail(s, "ERR_SOCKGATE_RDMA_DISCONNECTED", "the peer resumes its sockets on another path");
      });
      return info.Env().Undefined();
    }
    pump_->run_on_source(id_, [](PumpSource* s) { conn_close(s); });
    return info.Env().Undefined();
  }

  std::shared_ptr<Pump> pump_;
  std::shared_ptr<PumpSource> conn_;
  uint32_t id_ = 0;
};

class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  struct Init {
    std::shared_ptr<Pump> pump;
    uint32_t id;
    uint16_t port;
    RegionOpts defaults;
    Ctors* ctors;
  };
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RdmaListener",
                       {InstanceAccessor<&ListenerWrap::Id>("id"), InstanceAccessor<&ListenerWrap::Port>("port"),
                        InstanceMethod<&ListenerWrap::Accept>("accept"), InstanceMethod<&ListenerWrap::Reject>("reject"),
                        InstanceMethod<&ListenerWrap::Close>("close")});
  }
  ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info) {
    Init* in = InitArg<Init>(info, "an RdmaListener is made by rdma.listen()");
    if (!in) return;
    init_ = *in;
    info.This().As<Napi::Object>().TypeTag(&kListenerTag);
  }

 private:
  Napi::Value Id(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "RdmaListener")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), init_.id);
  }
  Napi::Value Port(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "RdmaListener")) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), init_.port);
  }
  // accept(conn, regionOpts?): RdmaConn
  Napi::Value Accept(const Napi::CallbackInfo& info) {
    Napi::Env e = info.Env();
    if (!CheckThis(info, kListenerTag, "RdmaListener")) return e.Undefined();
    if (!info[0].IsNumber()) return ThrowTypeError(e, "conn must be a number");
    uint32_t conn = info[0].As<Napi::Number>().Uint32Value();
    RegionOpts ro = init_.defaults;
    if (info.Length() > 1 && !GetRegion(info, info[1], &ro)) return e.Undefined();
    std::shared_ptr<PumpSource> c = make_server_conn(ro);
    std::shared_ptr<Pump> pump = init_.pump;
    pump->run_on_source(init_.id, [pump, conn, c](PumpSource* s) {
      if (s) listener_accept(*pump, s, conn, c);
    });
    ConnWrap::Init ci{pump, c, conn};
    return Make(e, init_.ctors->conn, &ci);
  }
  Napi::Value Reject(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "RdmaListener")) return info.Env().Undefined();
    if (!info[0].IsNumber()) return ThrowTypeError(info.Env(), "conn must be a number");
    uint32_t conn = info[0].As<Napi::Number>().Uint32Value();
    init_.pump->run_on_source(init_.id, [conn](PumpSource* s) {
      if (s) listener_reject(s, conn);
    });
    return info.Env().Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!CheckThis(info, kListenerTag, "RdmaListener")) return info.Env().Undefined();
    init_.pump->remove_source(init_.id);
    return info.Env().Undefined();
  }

  Init init_;
};

// connect(pump, { addr, port, token, ringLog2?, slots?, credits?, keepaliveMs?, timeoutMs?, trace? }): RdmaConn
Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Ctors* ctors = static_cast<Ctors*>(info.Data());
  std::shared_ptr<Pump> pump = PumpArg(info);
  if (!pump) return env.Undefined();
  if (!info[1].IsObject()) return ThrowTypeError(env, "options must be an object");
  Napi::Object opts = info[1].As<Napi::Object>();
  ConnectOpts o;
  uint32_t port = 0;
  if (!GetString(info, opts.Get("addr"), "addr", &o.addr) || !GetUint(info, opts, "port", 1, 65535, &port) ||
      !GetUint(info, opts, "timeoutMs", 1, 600000, &o.timeout_ms) || !SG_GET_HOSTILE(info, opts, 5, &o.hostile) ||
      !GetToken(info, opts.Get("token"), o.token) || !GetRegion(info, opts, &o.region))
    return env.Undefined();
  if (opts.Get("port").IsUndefined()) return ThrowTypeError(env, "port is required");
  o.port = uint16_t(port);
  std::shared_ptr<PumpSource> conn = make_client(o);
  uint32_t id = 0;
  int err = pump->add_source(conn, &id);
  if (err) return Throw(env, err, "rdma connect: " + err_str(err));
  ConnWrap::Init ci{pump, conn, id};
  return Make(env, ctors->conn, &ci);
}

// listen(pump, { addr, port?, backlog?, ringLog2?, slots?, credits?, keepaliveMs?, trace? }): RdmaListener
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Ctors* ctors = static_cast<Ctors*>(info.Data());
  std::shared_ptr<Pump> pump = PumpArg(info);
  if (!pump) return env.Undefined();
  if (!info[1].IsObject()) return ThrowTypeError(env, "options must be an object");
  Napi::Object opts = info[1].As<Napi::Object>();
  ListenOpts o;
  uint32_t port = 0, backlog = 64;
  if (!GetString(info, opts.Get("addr"), "addr", &o.addr) || !GetUint(info, opts, "port", 0, 65535, &port) ||
      !GetUint(info, opts, "backlog", 1, 4096, &backlog) || !GetRegion(info, opts, &o.region))
    return env.Undefined();
  o.port = uint16_t(port);
  o.backlog = int(backlog);
  std::shared_ptr<PumpSource> l;
  uint16_t bound = 0;
  std::string why;
  int err = make_listener(o, &l, &bound, &why);
  if (err) return Throw(env, err, "rdma listen: " + why);
  uint32_t id = 0;
  err = pump->add_source(l, &id);
  if (err) return Throw(env, err, "rdma listen: " + err_str(err));
  ListenerWrap::Init li{pump, id, bound, o.region, ctors};
  return Make(env, ctors->listener, &li);
}

}  // namespace

void ExportWraps(Napi::Env env, Napi::Object exports) {
  Ctors* ctors = new Ctors();
  Napi::Function conn = ConnWrap::Define(env), listener = ListenerWrap::Define(env);
  ctors->conn = Napi::Persistent(conn);
  ctors->listener = Napi::Persistent(listener);
  env.AddCleanupHook([ctors]() { delete ctors; });
  exports.Set("RdmaConn", conn);
  exports.Set("RdmaListener", listener);
  exports.Set("connect", Napi::Function::New(env, Connect, "connect", ctors));
  exports.Set("listen", Napi::Function::New(env, Listen, "listen", ctors));
}

}  // namespace rdma
}  // namespace sg

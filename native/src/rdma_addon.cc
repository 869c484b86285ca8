#include "rdma_addon.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "pump.h"
#include "rdma.h"
#include "rdma_conn.h"
#include "rdma_loopback.h"

namespace sg {
namespace rdma {

namespace {

Napi::Value Throw(Napi::Env env, int err, const std::string& msg) {
  int e = err < 0 ? -err : err;
  const char* name = strerrorname_np(e);
  Napi::Error x = Napi::Error::New(env, msg);
  x.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  x.Set("errno", Napi::Number::New(env, -e));
  x.ThrowAsJavaScriptException();
  return env.Undefined();
}

std::shared_ptr<Pump> (*g_pump_of)(Napi::Value) = nullptr;

Napi::Array Strings(Napi::Env env, const std::vector<std::string>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) a.Set(uint32_t(i), Napi::String::New(env, v[i]));
  return a;
}

Napi::Value Devices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<DeviceInfo> list;
  int err = list_devices(&list);
  if (err) return Throw(env, err, "ibv_get_device_list: " + err_str(err));
  Napi::Array out = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); i++) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", list[i].name);
    d.Set("nodeGuid", list[i].node_guid);
    Napi::Array ports = Napi::Array::New(env, list[i].ports.size());
    for (size_t j = 0; j < list[i].ports.size(); j++) {
      const PortInfo& p = list[i].ports[j];
      Napi::Object o = Napi::Object::New(env);
      o.Set("port", Napi::Number::New(env, p.num));
      o.Set("state", p.state);
      o.Set("active", Napi::Boolean::New(env, p.active));
      o.Set("mtu", Napi::Number::New(env, p.active_mtu));
      o.Set("linkLayer", p.link_layer);
      o.Set("gids", Strings(env, p.gids));
      ports.Set(uint32_t(j), o);
    }
    d.Set("ports", ports);
    out.Set(uint32_t(i), d);
  }
  return out;
}

bool GetString(const Napi::CallbackInfo& info, Napi::Value v, const char* what, std::string* out) {
  if (!v.IsString()) {
    Napi::TypeError::New(info.Env(), std::string(what) + " must be a string").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool GetUint(const Napi::CallbackInfo& info, Napi::Object o, const char* key, uint32_t lo, uint32_t hi, uint32_t* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return true;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= lo && d <= hi) || d != double(uint64_t(d))) {
    Napi::RangeError::New(info.Env(), std::string(key) + " must be an integer in [" + std::to_string(lo) + ", " +
                                          std::to_string(hi) + "]")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = uint32_t(d);
  return true;
}

// lifecycle(addr): creates one of each resource on addr's device, tears them
// down; returns the trace ("+pd", ..., "-pd").
Napi::Value Lifecycle(const Napi::CallbackInfo& info) {
  std::string addr;
  if (!GetString(info, info[0], "addr", &addr)) return info.Env().Undefined();
  std::vector<std::string> trace;
  std::string error;
  int err = run_lifecycle(addr, &trace, &error);
  if (err) return Throw(info.Env(), err, "rdma lifecycle: " + error + " (trace: " + std::to_string(trace.size()) + " steps)");
  return Strings(info.Env(), trace);
}

class LoopbackWorker : public Napi::AsyncWorker {
 public:
  LoopbackWorker(Napi::Env env, LoopbackOptions o)
      : Napi::AsyncWorker(env, "sockgate:rdma-loopback"), o_(std::move(o)), d_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return d_.Promise(); }
  void Execute() override { run_loopback(o_, &r_); }
  void OnOK() override { Settle(Env(), d_, r_); }
  static void Settle(Napi::Env env, Napi::Promise::Deferred& d_, LoopbackResult& r_) {
    Napi::Object o = Napi::Object::New(env);
    if (r_.err) {
      int e = -r_.err;
      const char* name = strerrorname_np(e);
      Napi::Error x = Napi::Error::New(env, "rdma loopback: " + r_.error);
      x.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
      x.Set("errno", Napi::Number::New(env, r_.err));
      x.Set("cmEvents", Strings(env, r_.cm_events));
      x.Set("trace", Strings(env, r_.trace));
      d_.Reject(x.Value());
      return;
    }
    o.Set("data", Napi::Buffer<char>::Copy(env, r_.received.data(), r_.received.size()));
    o.Set("ioThread", Napi::String::New(env, r_.io_thread));
    o.Set("cmEvents", Strings(env, r_.cm_events));
    o.Set("trace", Strings(env, r_.trace));
    o.Set("clientCqEvents", Napi::Number::New(env, double(r_.client_cq_events)));
    o.Set("serverCqEvents", Napi::Number::New(env, double(r_.server_cq_events)));
    o.Set("writes", Napi::Number::New(env, double(r_.writes)));
    o.Set("wraps", Napi::Number::New(env, double(r_.wraps)));
    o.Set("imms", Napi::Number::New(env, double(r_.imms)));
    o.Set("updates", Napi::Number::New(env, double(r_.updates)));
    o.Set("blocked", Napi::Number::New(env, double(r_.blocked)));
    o.Set("creditMsgs", Napi::Number::New(env, double(r_.credit_msgs)));
    d_.Resolve(o);
  }

 private:
  LoopbackOptions o_;
  LoopbackResult r_;
  Napi::Promise::Deferred d_;
};

// loopback({ addr, port?, data, ringLog2?, chunk?, credits?, timeoutMs? }): Promise<result>
Napi::Value Loopback(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) {
    Napi::TypeError::New(env, "options must be an object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object opts = info[0].As<Napi::Object>();
  LoopbackOptions o;
  if (!GetString(info, opts.Get("addr"), "addr", &o.addr)) return env.Undefined();
  Napi::Value data = opts.Get("data");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, "data must be a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array u = data.As<Napi::Uint8Array>();
  o.data.assign(reinterpret_cast<const char*>(u.Data()), u.ByteLength());
  uint32_t port = 0;
  if (!GetUint(info, opts, "port", 0, 65535, &port) || !GetUint(info, opts, "ringLog2", kMinRingLog2, 26, &o.ring_log2) ||
      !GetUint(info, opts, "chunk", 1, 1u << 24, &o.chunk) || !GetUint(info, opts, "credits", 4, 1024, &o.credits) ||
      !GetUint(info, opts, "timeoutMs", 1, 600000, &o.timeout_ms) || !GetUint(info, opts, "hostile", 0, 3, &o.hostile))
    return env.Undefined();
  o.port = uint16_t(port);
  Napi::Value pv = opts.Get("pump");
  if (!pv.IsUndefined()) {
    // On the pump's I/O thread: the result comes back through a TSFN.
    std::shared_ptr<Pump> pump = g_pump_of ? g_pump_of(pv) : nullptr;
    if (!pump) {
      Napi::TypeError::New(env, "pump must be an open Pump").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    LoopbackResult bad;
    if (check_loopback_options(o, &bad)) return Throw(env, bad.err, "rdma loopback: " + bad.error);
    struct Ctx {
      Napi::Promise::Deferred d;
      Napi::ThreadSafeFunction tsfn;
    };
    auto* ctx = new Ctx{Napi::Promise::Deferred::New(env), {}};
    Napi::Promise promise = ctx->d.Promise();
    ctx->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                              "sockgate:rdma-loopback", 0, 1);
    auto done = [ctx](LoopbackResult&& res) {
      auto* r = new LoopbackResult(std::move(res));
      napi_status st = ctx->tsfn.NonBlockingCall(r, [ctx](Napi::Env e, Napi::Function, LoopbackResult* rr) {
        if (e != nullptr) LoopbackWorker::Settle(e, ctx->d, *rr);
        delete rr;
        ctx->tsfn.Release();
        delete ctx;
      });
      if (st != napi_ok) delete r;  // the environment is going away
    };
    uint32_t id = 0;
    int err = pump->add_source(make_loopback_source(std::move(o), std::move(done)), &id);
    if (err) return Throw(env, err, "rdma loopback: pump add_source: " + err_str(err));
    return promise;
  }
  LoopbackWorker* w = new LoopbackWorker(env, std::move(o));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value EncodeConnParams(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) {
    Napi::TypeError::New(env, "params must be an object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  ConnParams p;
  uint32_t v = kVersion, flags = 0, rkey = 0, log2 = kMinRingLog2, slots = 1, credits = 2, keepalive = 0;
  if (!GetUint(info, o, "version", 0, 65535, &v) || !GetUint(info, o, "flags", 0, 65535, &flags) ||
      !GetUint(info, o, "rkey", 0, UINT32_MAX, &rkey) || !GetUint(info, o, "ringLog2", 0, 255, &log2) ||
      !GetUint(info, o, "slots", 0, 65535, &slots) || !GetUint(info, o, "credits", 0, 65535, &credits) ||
      !GetUint(info, o, "keepaliveMs", 0, UINT32_MAX, &keepalive))
    return env.Undefined();
  Napi::Value addr = o.Get("addr");
  if (addr.IsBigInt()) {
    bool lossless;
    p.addr = addr.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  Napi::Value tok = o.Get("token");
  if (tok.IsTypedArray() && tok.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
    Napi::Uint8Array t = tok.As<Napi::Uint8Array>();
    memcpy(p.token, t.Data(), t.ByteLength() < kTokenBytes ? t.ByteLength() : kTokenBytes);
  }
  p.version = uint16_t(v);
  p.flags = uint16_t(flags);
  p.rkey = rkey;
  p.ring_log2 = log2;
  p.slots = uint16_t(slots);
  p.credits = uint16_t(credits);
  p.keepalive_ms = keepalive;
  Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(env, ConnParams::kBytes);
  p.encode(b.Data());
  return b;
}

Napi::Value DecodeConnParams(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    {
    Napi::TypeError::New(env, "bytes must be a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array u = info[0].As<Napi::Uint8Array>();
  ConnParams p;
  int err = ConnParams::decode(u.Data(), u.ByteLength(), &p);
  if (err) return Throw(env, err, "rdma connection parameters rejected: " + err_str(err));
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", Napi::Number::New(env, p.version));
  o.Set("flags", Napi::Number::New(env, p.flags));
  o.Set("addr", Napi::BigInt::New(env, p.addr));
  o.Set("rkey", Napi::Number::New(env, p.rkey));
  o.Set("ringLog2", Napi::Number::New(env, p.ring_log2));
  o.Set("slots", Napi::Number::New(env, p.slots));
  o.Set("credits", Napi::Number::New(env, p.credits));
  o.Set("keepaliveMs", Napi::Number::New(env, p.keepalive_ms));
  o.Set("token", Napi::Buffer<uint8_t>::Copy(env, p.token, kTokenBytes));
  return o;
}

// burstAdvance(prod, cons, ringSize, flags, byteLen): how far a burst moves the
// producer cursor (rdma.h burst_advance), or throws EBADMSG saying why.
Napi::Value BurstAdvance(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t v[5];
  for (int i = 0; i < 5; i++) {
    double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= 9007199254740991.0) || d != double(uint64_t(d))) {
      Napi::TypeError::New(env, "burstAdvance takes five non-negative integers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    v[i] = uint64_t(d);
  }
  uint64_t size = v[2];
  if (size < 2 || (size & (size - 1)) || v[0] < v[1] || v[0] - v[1] > size || v[3] > 0xFFFF || v[4] > UINT32_MAX) {
    Napi::RangeError::New(env, "burstAdvance: ringSize must be a power of two and cons <= prod <= cons + ringSize").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t adv = 0;
  const char* why = "";
  int err = burst_advance(v[0], v[1], size, uint32_t(v[3]), uint32_t(v[4]), &adv, &why);
  if (err) return Throw(env, err, std::string("rdma burst refused: ") + why);
  return Napi::Number::New(env, double(adv));
}

// ---- connections -----------------------------------------------------------------

bool GetRegion(const Napi::CallbackInfo& info, Napi::Value v, RegionOpts* o) {
  if (v.IsUndefined()) return true;
  if (!v.IsObject()) {
    Napi::TypeError::New(info.Env(), "options must be an object").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Object opts = v.As<Napi::Object>();
  if (!GetUint(info, opts, "ringLog2", kMinRingLog2, 26, &o->ring_log2) || !GetUint(info, opts, "slots", 1, kMaxSlots, &o->slots) ||
      !GetUint(info, opts, "credits", 4, 1024, &o->credits) || !GetUint(info, opts, "keepaliveMs", 0, 3600000, &o->keepalive_ms))
    return false;
  std::string why;
  if (check_region(*o, &why)) {
    Napi::RangeError::New(info.Env(), why).ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool GetToken(const Napi::CallbackInfo& info, Napi::Value v, uint8_t out[kTokenBytes]) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      v.As<Napi::Uint8Array>().ByteLength() != kTokenBytes) {
    Napi::TypeError::New(info.Env(), "token must be a Uint8Array of 16 bytes").ThrowAsJavaScriptException();
    return false;
  }
  memcpy(out, v.As<Napi::Uint8Array>().Data(), kTokenBytes);
  return true;
}

bool GetSlot(const Napi::CallbackInfo& info, uint32_t* slot) {
  if (!info[0].IsNumber()) {
    Napi::TypeError::New(info.Env(), "slot must be a number").ThrowAsJavaScriptException();
    return false;
  }
  double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d < kMaxSlots) || d != double(uint32_t(d))) {
    Napi::RangeError::New(info.Env(), "slot out of range").ThrowAsJavaScriptException();
    return false;
  }
  *slot = uint32_t(d);
  return true;
}

// The JS face of a connection: methods post commands to the pump's I/O thread.
Napi::Object ConnObject(Napi::Env env, std::shared_ptr<Pump> pump, std::shared_ptr<PumpSource> conn, uint32_t id) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, id));
  o.Set("link", Napi::Function::New(env, [pump, id](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env e = info.Env();
    uint32_t slot;
    if (!GetSlot(info, &slot)) return e.Undefined();
    if (!info[1].IsNumber()) return Napi::TypeError::New(e, "fd must be a number").ThrowAsJavaScriptException(), e.Undefined();
    int fd = info[1].As<Napi::Number>().Int32Value();
    if (fd < 0) return Napi::RangeError::New(e, "bad fd").ThrowAsJavaScriptException(), e.Undefined();
    bool with_token = info.Length() > 2 && !info[2].IsUndefined();
    std::array<uint8_t, kTokenBytes> tok{};
    if (with_token && !GetToken(info, info[2], tok.data())) return e.Undefined();
    pump->run_on_source(id, [slot, fd, with_token, tok](PumpSource* s) { conn_link(s, slot, fd, with_token ? tok.data() : nullptr); });
    return e.Undefined();
  }, "link"));
  o.Set("closeSlot", Napi::Function::New(env, [pump, id](const Napi::CallbackInfo& info) -> Napi::Value {
    uint32_t slot;
    if (!GetSlot(info, &slot)) return info.Env().Undefined();
    bool reset = info.Length() > 1 && info[1].ToBoolean().Value();
    pump->run_on_source(id, [slot, reset](PumpSource* s) { conn_close_slot(s, slot, reset); });
    return info.Env().Undefined();
  }, "closeSlot"));
  o.Set("shutdownSlot", Napi::Function::New(env, [pump, id](const Napi::CallbackInfo& info) -> Napi::Value {
    uint32_t slot;
    if (!GetSlot(info, &slot)) return info.Env().Undefined();
    bool rd = info[1].ToBoolean().Value(), wr = info[2].ToBoolean().Value();
    pump->run_on_source(id, [slot, rd, wr](PumpSource* s) { conn_shutdown_slot(s, slot, rd, wr); });
    return info.Env().Undefined();
  }, "shutdownSlot"));
  o.Set("setSlotSockopt", Napi::Function::New(env, [conn](const Napi::CallbackInfo& info) -> Napi::Value {
    uint32_t slot;
    if (!GetSlot(info, &slot)) return info.Env().Undefined();
    int level = info[1].ToNumber().Int32Value(), name = info[2].ToNumber().Int32Value(), value = info[3].ToNumber().Int32Value();
    return Napi::Boolean::New(info.Env(), conn_set_sockopt(conn, slot, level, name, value));
  }, "setSlotSockopt"));
  o.Set("close", Napi::Function::New(env, [pump, id](const Napi::CallbackInfo& info) -> Napi::Value {
    pump->run_on_source(id, [](PumpSource* s) { conn_close(s); });
    return info.Env().Undefined();
  }, "close"));
  return o;
}

std::shared_ptr<Pump> PumpArg(const Napi::CallbackInfo& info) {
  std::shared_ptr<Pump> pump = g_pump_of ? g_pump_of(info[0]) : nullptr;
  if (!pump) Napi::TypeError::New(info.Env(), "pump must be an open Pump").ThrowAsJavaScriptException();
  return pump;
}

// connect(pump, { addr, port, token, ringLog2?, slots?, credits?, keepaliveMs?, timeoutMs? }): RawRdmaConn
Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Pump> pump = PumpArg(info);
  if (!pump) return env.Undefined();
  if (!info[1].IsObject()) return Napi::TypeError::New(env, "options must be an object").ThrowAsJavaScriptException(), env.Undefined();
  Napi::Object opts = info[1].As<Napi::Object>();
  ConnectOpts o;
  uint32_t port = 0;
  if (!GetString(info, opts.Get("addr"), "addr", &o.addr) || !GetUint(info, opts, "port", 1, 65535, &port) ||
      !GetUint(info, opts, "timeoutMs", 1, 600000, &o.timeout_ms) || !GetUint(info, opts, "hostile", 0, 4, &o.hostile) ||
      !GetToken(info, opts.Get("token"), o.token) ||
      !GetRegion(info, opts, &o.region))
    return env.Undefined();
  if (opts.Get("port").IsUndefined()) return Napi::TypeError::New(env, "port is required").ThrowAsJavaScriptException(), env.Undefined();
  o.port = uint16_t(port);
  std::shared_ptr<PumpSource> conn = make_client(o);
  uint32_t id = 0;
  int err = pump->add_source(conn, &id);
  if (err) return Throw(env, err, "rdma connect: " + err_str(err));
  return ConnObject(env, pump, conn, id);
}

// listen(pump, { addr, port?, backlog?, ringLog2?, slots?, credits?, keepaliveMs? }): RawRdmaListener
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Pump> pump = PumpArg(info);
  if (!pump) return env.Undefined();
  if (!info[1].IsObject()) return Napi::TypeError::New(env, "options must be an object").ThrowAsJavaScriptException(), env.Undefined();
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
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", Napi::Number::New(env, id));
  out.Set("port", Napi::Number::New(env, bound));
  RegionOpts defaults = o.region;
  out.Set("accept", Napi::Function::New(env, [pump, id, defaults](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env e = info.Env();
    if (!info[0].IsNumber()) return Napi::TypeError::New(e, "conn must be a number").ThrowAsJavaScriptException(), e.Undefined();
    uint32_t conn = info[0].As<Napi::Number>().Uint32Value();
    RegionOpts ro = defaults;
    if (info.Length() > 1 && !GetRegion(info, info[1], &ro)) return e.Undefined();
    std::shared_ptr<PumpSource> c = make_server_conn(ro);
    pump->run_on_source(id, [pump, conn, c](PumpSource* s) {
      if (s) listener_accept(*pump, s, conn, c);
    });
    return ConnObject(e, pump, c, conn);
  }, "accept"));
  out.Set("reject", Napi::Function::New(env, [pump, id](const Napi::CallbackInfo& info) -> Napi::Value {
    if (!info[0].IsNumber()) return Napi::TypeError::New(info.Env(), "conn must be a number").ThrowAsJavaScriptException(), info.Env().Undefined();
    uint32_t conn = info[0].As<Napi::Number>().Uint32Value();
    pump->run_on_source(id, [conn](PumpSource* s) {
      if (s) listener_reject(s, conn);
    });
    return info.Env().Undefined();
  }, "reject"));
  out.Set("close", Napi::Function::New(env, [pump, id](const Napi::CallbackInfo& info) -> Napi::Value {
    pump->remove_source(id);
    return info.Env().Undefined();
  }, "close"));
  return out;
}

}  // namespace

Napi::Object Exports(Napi::Env env, std::shared_ptr<Pump> (*pump_of)(Napi::Value)) {
  g_pump_of = pump_of;
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", Napi::Boolean::New(env, true));
  std::vector<DeviceInfo> list;
  int err = list_devices(&list);
  bool any_active = false;
  for (const DeviceInfo& d : list)
    for (const PortInfo& p : d.ports) any_active = any_active || p.active;
  std::string reason;
  if (err) {
    reason = "no RDMA device: listing verbs devices failed: " + err_str(err);
  } else if (list.empty()) {
    reason = "no RDMA device: ibv_get_device_list found none (load a provider, e.g. modprobe rdma_rxe && rdma link add rxe0 type rxe netdev eth0)";
  } else if (!any_active) {
    reason = "no RDMA device with an active port (" + std::to_string(list.size()) + " device(s), all ports down)";
  }
  o.Set("available", Napi::Boolean::New(env, reason.empty()));
  o.Set("reason", Napi::String::New(env, reason));
  o.Set("devices", Napi::Function::New(env, Devices, "devices"));
  o.Set("lifecycle", Napi::Function::New(env, Lifecycle, "lifecycle"));
  o.Set("loopback", Napi::Function::New(env, Loopback, "loopback"));
  o.Set("encodeConnParams", Napi::Function::New(env, EncodeConnParams, "encodeConnParams"));
  o.Set("decodeConnParams", Napi::Function::New(env, DecodeConnParams, "decodeConnParams"));
  o.Set("burstAdvance", Napi::Function::New(env, BurstAdvance, "burstAdvance"));
  o.Set("listen", Napi::Function::New(env, Listen, "listen"));
  o.Set("connect", Napi::Function::New(env, Connect, "connect"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("VERSION", Napi::Number::New(env, kVersion));
  c.Set("CONN_PARAMS_BYTES", Napi::Number::New(env, double(ConnParams::kBytes)));
  c.Set("MIN_RING_LOG2", Napi::Number::New(env, kMinRingLog2));
  c.Set("MAX_RING_LOG2", Napi::Number::New(env, kMaxRingLog2));
  c.Set("MAX_SLOTS", Napi::Number::New(env, kMaxSlots));
  c.Set("FLAG_ACCEPT", Napi::Number::New(env, ConnParams::kFlagAccept));
  c.Set("IMM_BLOCKED", Napi::Number::New(env, kImmBlocked));
  c.Set("IMM_WRAP", Napi::Number::New(env, kImmWrap));
  o.Set("constants", c);
  return o;
}

}  // namespace rdma
}  // namespace sg

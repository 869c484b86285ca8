#include "rdma_addon.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "pump.h"
#include "pump_access.h"
#include "rdma.h"
#include "rdma_conn.h"
#include "rdma_lifecycle.h"
#include "rdma_loopback.h"
#include "rdma_napi.h"
#include "rdma_wraps.h"

namespace sg {
namespace rdma {

namespace {

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
      !GetUint(info, opts, "timeoutMs", 1, 600000, &o.timeout_ms) || !SG_GET_HOSTILE(info, opts, 3, &o.hostile))
    return env.Undefined();
  o.port = uint16_t(port);
  Napi::Value pv = opts.Get("pump");
  if (!pv.IsUndefined()) {
    // On the pump's I/O thread: the result comes back through a TSFN.
    std::shared_ptr<Pump> pump = PumpOf(pv);
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

}  // namespace

Napi::Object Exports(Napi::Env env) {
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
  ExportWraps(env, o);
  Napi::Object c = Napi::Object::New(env);
  c.Set("VERSION", Napi::Number::New(env, kVersion));
  c.Set("CONN_PARAMS_BYTES", Napi::Number::New(env, double(ConnParams::kBytes)));
  c.Set("MIN_RING_LOG2", Napi::Number::New(env, kMinRingLog2));
  c.Set("MAX_RING_LOG2", Napi::Number::New(env, kMaxRingLog2));
  c.Set("MAX_SLOTS", Napi::Number::New(env, kMaxSlots));
  c.Set("FLAG_ACCEPT", Napi::Number::New(env, ConnParams::kFlagAccept));
  c.Set("FLAG_RESUME", Napi::Number::New(env, ConnParams::kFlagResume));
  c.Set("IMM_BLOCKED", Napi::Number::New(env, kImmBlocked));
  c.Set("IMM_WRAP", Napi::Number::New(env, kImmWrap));
  o.Set("constants", c);
  return o;
}

}  // namespace rdma
}  // namespace sg

// attach(): a client's attach to the gateway's Unix socket, off the JS thread
// (an AsyncWorker); resolves with the region and doorbells it receives.
#include "js_functions.h"

#include <unistd.h>

#include <memory>
#include <string>

#include "attach.h"
#include "js_util.h"
#include "region.h"
#include "wrap_eventfd.h"
#include "wrap_region.h"

namespace sg {
namespace js {

namespace {

class AttachWorker : public Napi::AsyncWorker {
 public:
  AttachWorker(Napi::Env env, std::string path, attach::Hello hello, int timeout_ms)
      : Napi::AsyncWorker(env, "sockgate-attach"), deferred_(Napi::Promise::Deferred::New(env)),
        path_(std::move(path)), hello_(std::move(hello)), timeout_(timeout_ms) {}
  ~AttachWorker() override {
    // Not handed to JS (error path): close what we received.
    if (!handed_) {
      for (int i = 2; i >= 0; i--) if (res_.fds[i] >= 0) close(res_.fds[i]);
      if (res_.conn >= 0) close(res_.conn);
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = attach::client_attach(path_, hello_, timeout_, &res_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_) {
      int e = -err_;
      const char* name = strerrorname_np(e);
      Napi::Error x = Napi::Error::New(env, std::string("attach ") + path_ + ": " + strerror(e));
      x.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
      x.Set("errno", Napi::Number::New(env, -e));
      deferred_.Reject(x.Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("status", Napi::Number::New(env, res_.reply.status));
    o.Set("version", Napi::Number::New(env, res_.reply.version));
    o.Set("flags", Napi::Number::New(env, res_.reply.flags));
    o.Set("regionSize", Napi::Number::New(env, double(res_.reply.region_size)));
    o.Set("slotCount", Napi::Number::New(env, res_.reply.slot_count));
    o.Set("conn", Napi::Number::New(env, res_.conn));
    o.Set("memfd", Napi::Number::New(env, res_.fds[0]));
    o.Set("gatewayDoorbell", Napi::Number::New(env, res_.fds[1]));
    o.Set("clientDoorbell", Napi::Number::New(env, res_.fds[2]));
    o.Set("peerPid", Napi::Number::New(env, res_.peer_pid));
    o.Set("peerUid", Napi::Number::New(env, res_.peer_uid));
    handed_ = true;
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  attach::Hello hello_;
  int timeout_;
  int err_ = 0;
  attach::ClientResult res_;
  bool handed_ = false;
};

}  // namespace

Napi::Value Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString()) return ThrowType(env, "attach(path: string, token: Buffer, timeoutMs?: number)");
  uint8_t* tok;
  size_t tlen;
  if (!GetBytes(info, 1, "token", &tok, &tlen)) return env.Undefined();
  if (tlen == 0 || tlen > attach::kMaxToken) {
    Napi::RangeError::New(env, "token must be 1..256 bytes").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t timeout = 5000;
  if (info.Length() > 2 && !info[2].IsUndefined() && !GetInt(info, 2, "timeoutMs", 1, 600000, &timeout)) return env.Undefined();
  attach::Hello h;
  h.token.assign(reinterpret_cast<const char*>(tok), tlen);
  if (info.Length() > 3 && info[3].IsNumber()) h.version = uint16_t(info[3].As<Napi::Number>().Uint32Value());
  auto* w = new AttachWorker(env, info[0].As<Napi::String>().Utf8Value(), std::move(h), int(timeout));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace js
}  // namespace sg

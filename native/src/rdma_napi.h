// Argument checking and errors shared by the rdma layer's N-API files
// (rdma_addon.cc: devices, loopback, codecs; rdma_wraps.cc: connections and
// listeners). Compiled only with the rdma-core headers (SG_WITH_RDMA).
#pragma once

#include <napi.h>

#include <cstring>
#include <string>
#include <vector>

#include "rdma.h"
#include "rdma_conn.h"

namespace sg {
namespace rdma {

// A JS Error with the errno's name as `code` and -errno as `errno`.
inline Napi::Value Throw(Napi::Env env, int err, const std::string& msg) {
  int e = err < 0 ? -err : err;
  const char* name = strerrorname_np(e);
  Napi::Error x = Napi::Error::New(env, msg);
  x.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  x.Set("errno", Napi::Number::New(env, -e));
  x.ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value ThrowTypeError(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Array Strings(Napi::Env env, const std::vector<std::string>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) a.Set(uint32_t(i), Napi::String::New(env, v[i]));
  return a;
}

inline bool GetString(const Napi::CallbackInfo& info, Napi::Value v, const char* what, std::string* out) {
  if (!v.IsString()) {
    Napi::TypeError::New(info.Env(), std::string(what) + " must be a string").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

// o[key] when present: an integer in [lo, hi] (absent: *out unchanged).
inline bool GetUint(const Napi::CallbackInfo& info, Napi::Object o, const char* key, uint32_t lo, uint32_t hi, uint32_t* out) {
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

// A connection's region options (and `trace`) from an options object.
inline bool GetRegion(const Napi::CallbackInfo& info, Napi::Value v, RegionOpts* o) {
  if (v.IsUndefined()) return true;
  if (!v.IsObject()) {
    Napi::TypeError::New(info.Env(), "options must be an object").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Object opts = v.As<Napi::Object>();
  if (!GetUint(info, opts, "ringLog2", kMinRingLog2, 26, &o->ring_log2) || !GetUint(info, opts, "slots", 1, kMaxSlots, &o->slots) ||
      !GetUint(info, opts, "credits", 4, 1024, &o->credits) || !GetUint(info, opts, "keepaliveMs", 0, 3600000, &o->keepalive_ms) ||
      !GetUint(info, opts, "pollUs", 0, kMaxPollUs, &o->poll_us))
    return false;
  Napi::Value trace = opts.Get("trace");
  if (!trace.IsUndefined()) o->trace = trace.ToBoolean().Value();
  Napi::Value resume = opts.Get("resume");
  if (!resume.IsUndefined()) o->resume = resume.ToBoolean().Value();
  Napi::Value move = opts.Get("move");
  if (!move.IsUndefined()) o->move = move.ToBoolean().Value();
  std::string why;
  if (check_region(*o, &why)) {
    Napi::RangeError::New(info.Env(), why).ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// link()'s resume options (a moved socket, rdma_conn.h LinkResume).
inline bool GetLinkResume(const Napi::CallbackInfo& info, Napi::Value v, LinkResume* r) {
  Napi::Env env = info.Env();
  if (!v.IsObject()) return Napi::TypeError::New(env, "resume must be an object").ThrowAsJavaScriptException(), false;
  Napi::Object o = v.As<Napi::Object>();
  const char* keys[] = {"position", "acked", "sent", "outBase"};
  uint64_t* dst[] = {&r->position, &r->acked, &r->sent, &r->out_base};
  for (int i = 0; i < 4; i++) {
    Napi::Value x = o.Get(keys[i]);
    if (x.IsUndefined() && i > 0) continue;
    bool lossless = false;
    if (!x.IsBigInt() || (*dst[i] = x.As<Napi::BigInt>().Uint64Value(&lossless), !lossless))
      return Napi::TypeError::New(env, std::string("resume.") + keys[i] + " must be a non-negative bigint").ThrowAsJavaScriptException(), false;
  }
  Napi::Value b = o.Get("bytes");
  if (!b.IsUndefined()) {
    if (!b.IsBuffer()) return Napi::TypeError::New(env, "resume.bytes must be a Buffer").ThrowAsJavaScriptException(), false;
    Napi::Buffer<char> buf = b.As<Napi::Buffer<char>>();
    if (buf.Length() > (size_t(1) << 30)) return Napi::RangeError::New(env, "resume.bytes is larger than any ring").ThrowAsJavaScriptException(), false;
    r->bytes.assign(buf.Data(), buf.Length());
  }
  if (r->acked > r->sent) return Napi::RangeError::New(env, "resume.acked must not exceed resume.sent").ThrowAsJavaScriptException(), false;
  return true;
}

// An option only the test build (SOCKGATE_TEST_HOOKS) has: the product
// build refuses it loudly, so a test can never pass without its hook.
inline bool RefuseTestHook(const Napi::CallbackInfo& info, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || (v.IsNumber() && v.As<Napi::Number>().DoubleValue() == 0)) return true;
  Napi::TypeError::New(info.Env(), std::string(key) + " is a test hook: only the test build of the addon has it (SOCKGATE_NATIVE_BUILD=test)")
      .ThrowAsJavaScriptException();
  return false;
}

// The hostile mode of a test build (0..hi); refused by the product build.
#ifdef SOCKGATE_TEST_HOOKS
#define SG_GET_HOSTILE(info, opts, hi, out) GetUint(info, opts, "hostile", 0, hi, out)
#else
#define SG_GET_HOSTILE(info, opts, hi, out) RefuseTestHook(info, opts, "hostile")
#endif

inline bool GetToken(const Napi::CallbackInfo& info, Napi::Value v, uint8_t out[kTokenBytes]) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      v.As<Napi::Uint8Array>().ByteLength() != kTokenBytes) {
    Napi::TypeError::New(info.Env(), "token must be a Uint8Array of 16 bytes").ThrowAsJavaScriptException();
    return false;
  }
  memcpy(out, v.As<Napi::Uint8Array>().Data(), kTokenBytes);
  return true;
}

inline bool GetSlot(const Napi::CallbackInfo& info, uint32_t* slot) {
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

}  // namespace rdma
}  // namespace sg

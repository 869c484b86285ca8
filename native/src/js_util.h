// Shared by the addon's JS classes and functions (addon.cc and the wrap_*.cc,
// js_*.cc files): the type tags of every class (checked on `this` and on
// arguments), errno errors, and argument checking.
#pragma once

#include <napi.h>

#include <string.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <string>

namespace sg {
namespace js {

inline constexpr napi_type_tag kRegionTag = {0x73676b7265676e31ull, 0x1a2b3c4d5e6f7081ull};
inline constexpr napi_type_tag kEventfdTag = {0x73676b6576656e74ull, 0x1a2b3c4d5e6f7082ull};
inline constexpr napi_type_tag kPumpTag = {0x73676b70756d7031ull, 0x1a2b3c4d5e6f7083ull};
inline constexpr napi_type_tag kLinkTag = {0x73676b6c696e6b31ull, 0x1a2b3c4d5e6f7084ull};
inline constexpr napi_type_tag kListenerTag = {0x73676b6c69737431ull, 0x1a2b3c4d5e6f7085ull};
inline constexpr napi_type_tag kSpliceTag = {0x73676b73706c6331ull, 0x1a2b3c4d5e6f7086ull};


// A JS Error for a -errno: the errno's name as `code`, -errno as `errno`, `what` as `syscall`.
inline Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what) {
  int e = err < 0 ? -err : err;
  const char* name = strerrorname_np(e);
  Napi::Error x = Napi::Error::New(env, what + ": " + strerror(e));
  x.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  x.Set("errno", Napi::Number::New(env, -e));
  x.Set("syscall", Napi::String::New(env, what));
  return x;
}

// Throws ErrnoError; EBADMSG from a ring check is ERR_SOCKGATE_RING_CORRUPT.
inline Napi::Value ThrowErrno(Napi::Env env, int err, const std::string& what) {
  int e = err < 0 ? -err : err;
  if (e != EBADMSG) {
    ErrnoError(env, err, what).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Error x = Napi::Error::New(env, what + ": shared ring failed validation (peer corrupted it)");
  x.Set("code", Napi::String::New(env, "ERR_SOCKGATE_RING_CORRUPT"));
  x.Set("errno", Napi::Number::New(env, -e));
  x.Set("syscall", Napi::String::New(env, what));
  x.ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value ThrowType(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline bool CheckThis(const Napi::CallbackInfo& info, const napi_type_tag& t, const char* cls) {
  Napi::Value th = info.This();
  if (!th.IsObject() || !th.As<Napi::Object>().CheckTypeTag(&t)) {
    ThrowType(info.Env(), std::string("receiver is not a ") + cls);
    return false;
  }
  return true;
}

inline bool GetU32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t* out) {
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

inline bool GetInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi, int64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowType(info.Env(), std::string(name) + " must be a number");
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= double(lo) && d <= double(hi)) || std::floor(d) != d) {
    Napi::RangeError::New(info.Env(), std::string(name) + " is out of range").ThrowAsJavaScriptException();
    return false;
  }
  *out = int64_t(d);
  return true;
}

inline bool GetBytes(const Napi::CallbackInfo& info, size_t i, const char* name, uint8_t** data, size_t* len) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), std::string(name) + " must be a Buffer or Uint8Array");
    return false;
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  *data = a.Data();
  *len = a.ByteLength();
  return true;
}

// Optional (offset, length) window into a byte argument.
inline bool Window(const Napi::CallbackInfo& info, size_t i, uint8_t** data, size_t* len) {
  int64_t off = 0, n = int64_t(*len);
  if (info.Length() > i && !info[i].IsUndefined()) {
    if (!GetInt(info, i, "offset", 0, int64_t(*len), &off)) return false;
    n = int64_t(*len) - off;
  }
  if (info.Length() > i + 1 && !info[i + 1].IsUndefined()) {
    if (!GetInt(info, i + 1, "length", 0, int64_t(*len) - off, &n)) return false;
  }
  *data += off;
  *len = size_t(n);
  return true;
}

// An optional array of Uint8Arrays, concatenated (prefix bytes for a link).
inline bool GetPrefix(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  if (info.Length() <= i || info[i].IsUndefined()) return true;
  if (!info[i].IsArray()) {
    ThrowType(info.Env(), std::string(name) + " must be an array of Buffers");
    return false;
  }
  Napi::Array a = info[i].As<Napi::Array>();
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      ThrowType(info.Env(), std::string(name) + " must be an array of Buffers");
      return false;
    }
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    out->append(reinterpret_cast<const char*>(b.Data()), b.ByteLength());
  }
  return true;
}

inline bool SizeToLog2(Napi::Env env, uint32_t size, uint32_t* log2) {
  if (size == 0 || (size & (size - 1)) != 0) {
    Napi::RangeError::New(env, "ring size must be a power of two").ThrowAsJavaScriptException();
    return false;
  }
  *log2 = uint32_t(__builtin_ctz(size));
  return true;
}

}  // namespace js
}  // namespace sg

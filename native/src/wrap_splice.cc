#include "wrap_splice.h"

#include <sys/socket.h>
#include <vector>

#include "pump_access.h"

namespace sg {
namespace js {

Napi::Function SpliceWrap::Init(Napi::Env env) {
  return DefineClass(env, "SpliceLink",
                     {InstanceAccessor<&SpliceWrap::Id>("id"), InstanceAccessor<&SpliceWrap::Closed>("closed"),
                      InstanceAccessor<&SpliceWrap::PipeBytes>("pipeBytes"),
                      InstanceMethod<&SpliceWrap::ShutdownHost>("shutdownHost"),
                      InstanceMethod<&SpliceWrap::Totals>("totals"), InstanceMethod<&SpliceWrap::Mute>("mute"),
                      InstanceMethod<&SpliceWrap::Buffered>("bufferedBytes"),
                      InstanceMethod<&SpliceWrap::SetHostSockopt>("setHostSockopt"),
                      InstanceMethod<&SpliceWrap::GetHostSockopt>("getHostSockopt"),
                      InstanceMethod<&SpliceWrap::Close>("close")});
}

SpliceWrap::SpliceWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SpliceWrap>(info) {
  Napi::Env env = info.Env();
  if (!info.IsConstructCall()) { ThrowType(env, "SpliceLink must be constructed with new"); return; }
  if (info.Length() < 3 || !info[0].IsObject() || !info[0].As<Napi::Object>().CheckTypeTag(&kPumpTag)) {
    ThrowType(env, "SpliceLink(pump: Pump, clientFd: number, hostFd: number, toHostPrefix?: Buffer[], toClientPrefix?: Buffer[], options?)");
    return;
  }
  int64_t cfd, hfd;
  if (!GetInt(info, 1, "clientFd", 0, INT32_MAX, &cfd) || !GetInt(info, 2, "hostFd", 0, INT32_MAX, &hfd)) return;
  std::string to_host, to_client;
  if (!GetPrefix(info, 3, "toHostPrefix", &to_host) || !GetPrefix(info, 4, "toClientPrefix", &to_client)) return;
  uint32_t pipe_bytes = 0;
  bool copy = false;
  if (info.Length() > 5 && !info[5].IsUndefined()) {
    if (!info[5].IsObject()) { ThrowType(env, "options must be an object"); return; }
    Napi::Object o = info[5].As<Napi::Object>();
    Napi::Value pb = o.Get("pipeBytes"), cp = o.Get("copy");
    if (!pb.IsUndefined()) {
      double d = pb.IsNumber() ? pb.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 1 && d <= 4294967295.0) || std::floor(d) != d) {
        Napi::RangeError::New(env, "pipeBytes must be a positive integer").ThrowAsJavaScriptException();
        return;
      }
      pipe_bytes = uint32_t(d);
    }
    if (!cp.IsUndefined()) {
      if (!cp.IsBoolean()) { ThrowType(env, "copy must be a boolean"); return; }
      copy = cp.As<Napi::Boolean>().Value();
    }
  }
  pump_ = PumpOf(info[0]);
  if (!pump_) { ThrowErrno(env, EBADF, "pump is closed"); return; }
  int err = pump_->add_splice(int(cfd), int(hfd), std::move(to_host), std::move(to_client), pipe_bytes, copy, &id_, &shared_);
  if (err) {
    pump_.reset();
    ThrowErrno(env, err, "SpliceLink");
    return;
  }
  info.This().As<Napi::Object>().TypeTag(&kSpliceTag);
}

bool SpliceWrap::Live(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return false;
  if (!pump_) { ThrowErrno(info.Env(), EBADF, "splice link is closed"); return false; }
  return true;
}

Napi::Value SpliceWrap::Id(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), id_);
}

Napi::Value SpliceWrap::Closed(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), !pump_);
}

Napi::Value SpliceWrap::PipeBytes(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), shared_ ? shared_->watermark() : 0);
}

Napi::Value SpliceWrap::Totals(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), shared_ ? double(shared_->total_to_host.load()) : 0));
  a.Set(1u, Napi::Number::New(info.Env(), shared_ ? double(shared_->total_to_client.load()) : 0));
  return a;
}

Napi::Value SpliceWrap::Mute(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  if (shared_) shared_->quiet.store(true);
  return info.Env().Undefined();
}

Napi::Value SpliceWrap::ShutdownHost(const Napi::CallbackInfo& info) {
  if (!Live(info)) return info.Env().Undefined();
  if (info.Length() < 2 || !info[0].IsBoolean() || !info[1].IsBoolean()) return ThrowType(info.Env(), "shutdownHost(read: boolean, write: boolean)");
  bool rd = info[0].As<Napi::Boolean>().Value(), wr = info[1].As<Napi::Boolean>().Value();
  if (rd || wr) pump_->shutdown_host(id_, rd, wr);
  return info.Env().Undefined();
}

Napi::Value SpliceWrap::Buffered(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), shared_ ? double(shared_->buffered()) : 0);
}

Napi::Value SpliceWrap::SetHostSockopt(const Napi::CallbackInfo& info) {
  int64_t level, name, value;
  if (!Live(info) || !GetInt(info, 0, "level", 0, INT32_MAX, &level) || !GetInt(info, 1, "name", 0, INT32_MAX, &name) ||
      !GetInt(info, 2, "value", INT32_MIN, INT32_MAX, &value))
    return info.Env().Undefined();
  int err = shared_->set_host_opt(int(level), int(name), int(value));
  if (err) return ThrowErrno(info.Env(), err, err == -EBADF ? "setsockopt (the link has ended)" : "setsockopt");
  return info.Env().Undefined();
}

Napi::Value SpliceWrap::GetHostSockopt(const Napi::CallbackInfo& info) {
  int64_t level, name;
  if (!Live(info) || !GetInt(info, 0, "level", 0, INT32_MAX, &level) || !GetInt(info, 1, "name", 0, INT32_MAX, &name))
    return info.Env().Undefined();
  int v = 0;
  int err = shared_->get_host_opt(int(level), int(name), &v);
  if (err) return ThrowErrno(info.Env(), err, err == -EBADF ? "getsockopt (the link has ended)" : "getsockopt");
  return Napi::Number::New(info.Env(), v);
}

Napi::Value SpliceWrap::Close(const Napi::CallbackInfo& info) {
  if (!CheckThis(info, kSpliceTag, "SpliceLink")) return info.Env().Undefined();
  bool reset = true;
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsBoolean()) return ThrowType(info.Env(), "close(reset?: boolean)");
    reset = info[0].As<Napi::Boolean>().Value();
  }
  if (pump_) {
    pump_->close_link(id_, reset);
    pump_.reset();
  }
  return info.Env().Undefined();
}

}  // namespace js
}  // namespace sg

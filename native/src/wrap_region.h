// The Region JS class: one shm region (memfd + mapping), its slots and rings,
// zero-copy loans of its bytes, and its doorbells.
#pragma once

#include <napi.h>

#include <map>
#include <memory>
#include <string>

#include "region.h"
#include "ring.h"
#include "wrap_eventfd.h"
#include "js_util.h"

namespace sg {
namespace js {

class RegionWrap : public Napi::ObjectWrap<RegionWrap> {
 public:
  static Napi::Function Init(Napi::Env env);

  RegionWrap(const Napi::CallbackInfo& info);
  ~RegionWrap() override;
  std::shared_ptr<Region> core() const { return core_; }

 private:
  struct Loan {
    Napi::Reference<Napi::ArrayBuffer> ref;
    size_t len;
  };

  bool Live(const Napi::CallbackInfo& info);
  Napi::Value Id(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), core_->id()) : info.Env().Undefined(); }
  Napi::Value Fd(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), core_->fd()) : info.Env().Undefined(); }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), double(core_->size())) : info.Env().Undefined(); }
  Napi::Value Slots(const Napi::CallbackInfo& info) { return Live(info) ? Napi::Number::New(info.Env(), core_->slot_count()) : info.Env().Undefined(); }
  Napi::Value MaxRing(const Napi::CallbackInfo& info);
  Napi::Value RoleName(const Napi::CallbackInfo& info);
  Napi::Value Closed(const Napi::CallbackInfo& info);
  Napi::Value Corrupt(const Napi::CallbackInfo& info);
  Napi::Value Granted(const Napi::CallbackInfo& info);
  Napi::Value Layout(const Napi::CallbackInfo& info);
  Napi::Value SetDoorbells(const Napi::CallbackInfo& info);
  Napi::Value OpenSlot(const Napi::CallbackInfo& info);
  Napi::Value CloseSlot(const Napi::CallbackInfo& info);
  Napi::Value Resize(const Napi::CallbackInfo& info);
  Napi::Value SlotInfo(const Napi::CallbackInfo& info);

  // Ring ops from JS need the slot unclaimed by the pump; they claim it for
  // the duration of the call.
  RingView* Begin(const Napi::CallbackInfo& info, uint32_t slot, bool produce);
  Napi::Value Fail(const Napi::CallbackInfo& info, uint32_t slot, int err, const char* what);

  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Shutdown(const Napi::CallbackInfo& info);
  Napi::Value ArmRead(const Napi::CallbackInfo& info);
  Napi::Value ArmWrite(const Napi::CallbackInfo& info);
  // Zero-copy read: an ArrayBuffer over the readable bytes (the contiguous
  // part), valid until release(); then it is detached, so stale views read as
  // empty instead of into reused ring memory. The slot stays claimed meanwhile.
  Napi::Value Lend(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value TakeHints(const Napi::CallbackInfo& info);
  Napi::Value PrepareSleep(const Napi::CallbackInfo& info);
  Napi::Value ClearSleeping(const Napi::CallbackInfo& info);
#ifdef SOCKGATE_TEST_HOOKS
  // Test hook for hostile-peer tests (test build only): write 8 bytes anywhere
  // in our own mapping (bounds-checked). A client can do this with any pointer anyway.
  Napi::Value Poke(const Napi::CallbackInfo& info);
#endif
  Napi::Value Peek(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<Region> core_;
  std::map<uint32_t, Loan> loans_;
};

}  // namespace js
}  // namespace sg

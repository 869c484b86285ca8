// A wrap with its own thread and a thread-safe function must stop that thread
// before Node tears the TSFN down at exit. Node runs environment cleanup hooks
// last-registered first and finalizes ObjectWraps after all of them, so a wrap
// still open at exit (a process-wide pump nobody closed) would otherwise call
// napi_release_threadsafe_function on a freed TSFN from its finalizer: abort.
// Arm this right after creating the TSFN; disarm it when the wrap shuts itself.
#pragma once

#include <node_api.h>

#include <functional>
#include <utility>

namespace sg {
namespace js {

class EnvTeardownHook {
 public:
  EnvTeardownHook() = default;
  EnvTeardownHook(const EnvTeardownHook&) = delete;
  EnvTeardownHook& operator=(const EnvTeardownHook&) = delete;
  ~EnvTeardownHook() { Disarm(); }

  // `stop` runs once, at environment teardown, unless Disarm() came first.
  void Arm(napi_env env, std::function<void()> stop) {
    Disarm();
    if (napi_add_env_cleanup_hook(env, &Run, this) != napi_ok) return;
    env_ = env;
    stop_ = std::move(stop);
  }

  void Disarm() {
    if (!env_) return;
    napi_remove_env_cleanup_hook(env_, &Run, this);
    env_ = nullptr;
  }

 private:
  static void Run(void* arg) {
    auto* self = static_cast<EnvTeardownHook*>(arg);
    self->env_ = nullptr;  // Node drops the hook after running it
    std::function<void()> stop = std::move(self->stop_);
    if (stop) stop();
  }

  napi_env env_ = nullptr;
  std::function<void()> stop_;
};

}  // namespace js
}  // namespace sg

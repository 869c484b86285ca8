// What the JS classes outside addon.cc need of a JS Pump (PumpWrap lives in
// addon.cc): its core, found by the Pump's type tag, and its count of attach
// listeners (a Pump refuses to close while one is open). Defined in addon.cc.
#pragma once

#include <napi.h>

#include <memory>

namespace sg {
class Pump;

// The Pump behind a JS Pump object; null when it is not one, or closed.
std::shared_ptr<Pump> PumpOf(Napi::Value v);

// A Listener opened (+1) or closed (-1) on the JS Pump `pump`.
void AdjustPumpListeners(Napi::Object pump, int delta);

}  // namespace sg

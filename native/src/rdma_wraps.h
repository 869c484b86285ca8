// The JS classes of rdma connections and listeners (RdmaConn, RdmaListener):
// ObjectWraps with type tags, made only by rdma.connect(), rdma.listen() and a
// listener's accept(). Their methods post commands to the pump's I/O thread.
#pragma once

#include <napi.h>

namespace sg {
namespace rdma {

// Adds connect() and listen() (and the two classes) to the rdma exports.
void ExportWraps(Napi::Env env, Napi::Object exports);

}  // namespace rdma
}  // namespace sg

// The verbs resource lifecycle check behind rdma.lifecycle(): create and
// release one of each resource the data path uses, in order, on a device.
#pragma once

#include <string>
#include <vector>

namespace sg {
namespace rdma {

// Creates and destroys, on the device that owns `addr`, one of each resource
// (event channel, cm id, PD, completion channel, CQ, QP, memory, MR) and
// records the order. -errno on failure (the trace shows how far it got).
int run_lifecycle(const std::string& addr, std::vector<std::string>* trace, std::string* error);

}  // namespace rdma
}  // namespace sg

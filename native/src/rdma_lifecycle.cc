// rdma.lifecycle(): one of each verbs resource, created in order and released
// in reverse by their RAII owners (rdma.h), tracing each step.
#include "rdma_lifecycle.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>

#include "rdma.h"

namespace sg {
namespace rdma {

int run_lifecycle(const std::string& addr, std::vector<std::string>* trace, std::string* error) {
  EventChannel ch;
  CmId id;
  ProtectionDomain pd;
  CompletionChannel cc;
  CompletionQueue cq;
  QueuePair qp;
  Mapping mem;
  MemoryRegion mr;
  int err;
  auto failed = [&](int e, const char* what) {
    *error = std::string(what) + ": " + err_str(e);
    return e;
  };
  if ((err = ch.open(trace))) return failed(err, "rdma_create_event_channel");
  if ((err = id.create(ch, nullptr, trace))) return failed(err, "rdma_create_id");
  sockaddr_in sa = {};
  sa.sin_family = AF_INET;
  if (inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) return failed(-EINVAL, "address");
  // Binding to a local address resolves the device at once (no event).
  if (rdma_bind_addr(id.get(), reinterpret_cast<sockaddr*>(&sa)) != 0) return failed(-errno, "rdma_bind_addr");
  if (!id.verbs()) return failed(-ENODEV, "no verbs device behind that address");
  if ((err = pd.open(id.verbs(), trace))) return failed(err, "ibv_alloc_pd");
  if ((err = cc.open(id.verbs(), trace))) return failed(err, "ibv_create_comp_channel");
  if ((err = cq.open(id.verbs(), cc, 64, trace))) return failed(err, "ibv_create_cq");
  if ((err = qp.open(id, pd, cq, QueuePair::Caps(), trace))) return failed(err, "rdma_create_qp");
  if ((err = mem.open(1 << 16, trace))) return failed(err, "mmap");
  if ((err = mr.open(pd, mem.data(), mem.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, trace)))
    return failed(err, "ibv_reg_mr");
  return 0;  // destructors run in reverse: mr, memory, qp, cq, comp_channel, pd, cm_id, event_channel
}

}  // namespace rdma
}  // namespace sg

// AF_VSOCK primitives: connect (bounded, for a worker thread), listen, accept,
// and the N-API surface over them (exported as `vsock` by addon.cc).
//
// Why native: libuv wraps only INET, INET6 and Unix stream descriptors, so
// Node cannot own an AF_VSOCK socket. The addon connects or accepts one and
// hands back the bare descriptor; TypeScript bridges it to a Unix socketpair
// end that Node can wrap, with a splice link on the pump relaying between the
// two (clients/sdk/vsock.ts).
//
// Built only where <linux/vm_sockets.h> exists (Debian: linux-libc-dev);
// elsewhere `vsock.available` is false with the reason. Internals return
// -errno.
#pragma once

#include <napi.h>

#include <cstdint>

#if __has_include(<linux/vm_sockets.h>)
#define SG_HAVE_VSOCK 1
#else
#define SG_HAVE_VSOCK 0
#endif

namespace sg::vsock {

// connect(2) to (cid, port) with a deadline: a non-blocking connect completed
// with poll(2), so it blocks the calling thread (a worker) for at most
// `timeout_ms`. On success *out_fd is the connected, non-blocking, close-on-exec
// socket (the caller owns it). Errors: -ECONNRESET/-ECONNREFUSED (nothing
// listens: vsock transports answer with a reset), -ETIMEDOUT, -ENODEV (no
// transport reaches `cid`), -EAFNOSUPPORT (no AF_VSOCK in this kernel).
int connect_to(uint32_t cid, uint32_t port, int timeout_ms, int* out_fd);

// socket + bind(cid, port) + listen; non-blocking, close-on-exec. `port`
// 0xFFFFFFFF (VMADDR_PORT_ANY) lets the kernel choose; *bound_port says which.
int listen_on(uint32_t cid, uint32_t port, int backlog, int* out_fd, uint32_t* bound_port);

// This machine's context id (IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock).
int local_cid(uint32_t* cid);

// Whether AF_VSOCK sockets can be created here; "" when they can, else why not.
const char* unavailable_reason();

// The `vsock` export: { available, reason, connect(), localCid(), Listener }.
Napi::Object Exports(Napi::Env env);

}  // namespace sg::vsock

// Kernel SMC (net/smc) sockets and their netlink side, for the gateway's host
// sockets and data port (exported as `smc` by addon.cc).
//
// Why native: Node cannot create an AF_SMC (or IPPROTO_SMC) socket. The addon
// creates, connects or binds+listens one and hands the descriptor to Node,
// which wraps it as TCP: an SMC socket's getsockname() answers with its
// internal TCP socket's AF_INET/AF_INET6 address, so libuv takes it for one.
// The kernel decides SMC-R, SMC-D or a fallback to TCP inside the socket; the
// mode and the fallback reason come from SMC_DIAG over NETLINK_SOCK_DIAG (the
// raw dump goes to TypeScript, native/smc-diag.ts parses it). UEID and PNET
// table entries are set over generic netlink (needs CAP_NET_ADMIN).
//
// Built from the kernel's uapi headers (linux-libc-dev); no rdma-core needed.
// Internals return -errno.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sg::smc {

// How a socket was made: AF_SMC with SMCPROTO_SMC/SMC6, or AF_INET/6 with IPPROTO_SMC (Linux 6.11+).
enum class Kind { kAfSmc = 0, kIpprotoSmc = 1 };

// A non-blocking, close-on-exec SMC stream socket for `family` (4 or 6).
// Prefers IPPROTO_SMC when the kernel has it, else AF_SMC.
int make_socket(int family, int* out_fd, Kind* kind);

// connect(2) with a deadline (poll on the calling thread: run it on a worker).
int connect_to(int family, const std::string& address, uint16_t port, int timeout_ms, int* out_fd, Kind* kind);

// socket + SO_REUSEADDR + bind + listen; *bound_port says which port.
int listen_on(int family, const std::string& address, uint16_t port, int backlog, bool v6only, int* out_fd,
              uint16_t* bound_port, Kind* kind);

// "" when SMC sockets can be created here, else why not.
std::string unavailable_reason();

// The SMC_DIAG dump of every SMC socket (NLM_F_DUMP; the kernel has no
// single-socket query): the raw netlink messages, concatenated, at most
// `max_bytes`. -ENOENT: no smc_diag module.
int diag_dump(std::vector<uint8_t>* out, size_t max_bytes);

// Generic netlink: add a user EID (SMC_GEN_NETLINK / SMC_NETLINK_ADD_UEID) and
// a PNET table entry (SMC_PNETID / SMC_PNETID_ADD). -EEXIST when already there.
int add_ueid(const std::string& ueid);
int add_pnet(const std::string& pnetid, const std::string& eth, const std::string& ib, uint8_t ib_port);

// The `smc` export: { available, reason, connect(), listen(), diagDump(), addUeid(), addPnet() }.
Napi::Object Exports(Napi::Env env);

}  // namespace sg::smc

// The attach handshake on the gateway's Unix socket (see native/SHM.md).
// Every field is little-endian, encoded and decoded byte by byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sg::attach {

constexpr uint32_t kHelloMagic = 0x54414753;  // bytes "SGAT"
constexpr uint32_t kReplyMagic = 0x52414753;  // bytes "SGAR"
constexpr uint16_t kVersion = 1;
constexpr size_t kHelloFixed = 16;
constexpr size_t kMaxToken = 256;
constexpr size_t kReplySize = 32;
constexpr uint16_t kFdCount = 3;  // memfd, gateway doorbell, client doorbell

// Reply status codes (0 = attached). Others are set by TS policy.
constexpr uint16_t kStatusOk = 0;
constexpr uint16_t kStatusProtocol = 1;   // malformed hello
constexpr uint16_t kStatusVersion = 2;    // unsupported version or flags
constexpr uint16_t kStatusTimeout = 3;    // hello did not arrive in time

inline void put16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); }
inline void put32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = uint8_t(v >> (8 * i)); }
inline void put64(uint8_t* p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = uint8_t(v >> (8 * i)); }
inline uint16_t get16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t get64(const uint8_t* p) { return uint64_t(get32(p)) | (uint64_t(get32(p + 4)) << 32); }

struct Hello {
  uint16_t version = kVersion;
  uint16_t flags = 0;
  std::string token;
};

// Hello: magic u32 | version u16 | flags u16 | token_len u16 | reserved u16 |
//        reserved u32 | token[token_len]
inline std::string encode_hello(const Hello& h) {
  std::string out(kHelloFixed + h.token.size(), '\0');
  uint8_t* p = reinterpret_cast<uint8_t*>(&out[0]);
  put32(p, kHelloMagic);
  put16(p + 4, h.version);
  put16(p + 6, h.flags);
  put16(p + 8, uint16_t(h.token.size()));
  out.replace(kHelloFixed, h.token.size(), h.token);
  return out;
}

// Returns bytes needed in total (> len: read more), or 0 when `h` is filled,
// or a negative status when malformed.
inline int decode_hello(const uint8_t* p, size_t len, Hello* h, size_t* total) {
  if (len < kHelloFixed) { *total = kHelloFixed; return 1; }
  if (get32(p) != kHelloMagic) return -int(kStatusProtocol);
  uint16_t tlen = get16(p + 8);
  if (tlen == 0 || tlen > kMaxToken || get16(p + 10) != 0 || get32(p + 12) != 0) return -int(kStatusProtocol);
  *total = kHelloFixed + tlen;
  if (len < *total) return 1;
  h->version = get16(p + 4);
  h->flags = get16(p + 6);
  h->token.assign(reinterpret_cast<const char*>(p + kHelloFixed), tlen);
  return 0;
}

struct Reply {
  uint16_t version = kVersion;
  uint16_t status = kStatusOk;
  uint16_t fd_count = 0;
  uint32_t flags = 0;
  uint64_t region_size = 0;
  uint32_t slot_count = 0;
};

// Reply: magic u32 | version u16 | status u16 | fd_count u16 | reserved u16 |
//        flags u32 | region_size u64 | slot_count u32 | reserved u32
inline void encode_reply(const Reply& r, uint8_t out[kReplySize]) {
  for (size_t i = 0; i < kReplySize; i++) out[i] = 0;
  put32(out, kReplyMagic);
  put16(out + 4, r.version);
  put16(out + 6, r.status);
  put16(out + 8, r.fd_count);
  put32(out + 12, r.flags);
  put64(out + 16, r.region_size);
  put32(out + 24, r.slot_count);
}

inline bool decode_reply(const uint8_t in[kReplySize], Reply* r) {
  if (get32(in) != kReplyMagic) return false;
  r->version = get16(in + 4);
  r->status = get16(in + 6);
  r->fd_count = get16(in + 8);
  r->flags = get32(in + 12);
  r->region_size = get64(in + 16);
  r->slot_count = get32(in + 24);
  return get16(in + 10) == 0 && get32(in + 28) == 0;
}

// Client side, blocking with a deadline (run it off the JS thread): connect,
// send the hello, receive the reply and its fds. On success fds[0..2] hold
// memfd, gateway doorbell, client doorbell and *conn the connected socket.
struct ClientResult {
  int conn = -1;
  int fds[3] = {-1, -1, -1};
  Reply reply;
  int peer_pid = 0;
  uint32_t peer_uid = 0, peer_gid = 0;
};
int client_attach(const std::string& path, const Hello& hello, int timeout_ms, ClientResult* out);

// Gateway side helpers.
int listen_unix(const std::string& path, int backlog, int* out_fd);
int send_reply(int fd, const Reply& r, const int* fds, int nfds);
int peer_cred(int fd, int* pid, uint32_t* uid, uint32_t* gid);

}  // namespace sg::attach

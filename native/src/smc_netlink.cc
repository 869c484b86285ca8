// The netlink side of kernel SMC (see smc.h): the SMC_DIAG dump over
// NETLINK_SOCK_DIAG and generic-netlink UEID / PNET configuration.
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>
#include <vector>

#include "smc.h"

#ifndef AF_SMC
#define AF_SMC 43
#endif

namespace sg::smc {

namespace {

// uapi values (linux/smc.h, linux/smc_diag.h), spelled here so the build needs no
// particular header version.
constexpr uint16_t kSmcNetlinkAddUeid = 10;      // SMC_NETLINK_ADD_UEID
constexpr uint16_t kSmcNlaEidTableEntry = 1;     // SMC_NLA_EID_TABLE_ENTRY
constexpr size_t kSmcMaxEidLen = 32;             // SMC_MAX_EID_LEN: the kernel wants exactly 32 chars + NUL
constexpr uint8_t kSmcPnetidAdd = 2;             // SMC_PNETID_ADD
constexpr uint16_t kPnetName = 1, kPnetEth = 2, kPnetIb = 3, kPnetIbPort = 4;  // SMC_PNETID_* attributes
constexpr uint8_t kSmcDiagExtAll = 0x1f;         // CONNINFO..FALLBACK bits of smc_diag_req.diag_ext
// A reply that does not come within this long means the kernel is stuck (never normal).
constexpr int kNetlinkTimeoutMs = 5000;

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

int open_netlink(int proto, Fd* s) {
  s->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
  if (s->fd < 0) return -errno;
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  if (bind(s->fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof sa) < 0) return -errno;
  return 0;
}

// A netlink message under construction: header, fixed part, attributes.
class Msg {
 public:
  Msg(uint16_t type, uint16_t flags) {
    buf_.resize(NLMSG_HDRLEN);
    hdr()->nlmsg_type = type;
    hdr()->nlmsg_flags = flags;
    hdr()->nlmsg_seq = 1;
  }
  void put(const void* p, size_t n) {
    size_t at = buf_.size();
    buf_.resize(at + NLMSG_ALIGN(n));
    memcpy(&buf_[at], p, n);
  }
  void attr(uint16_t type, const void* p, size_t n) {
    struct nlattr a;
    a.nla_len = uint16_t(NLA_HDRLEN + n);
    a.nla_type = type;
    size_t at = buf_.size();
    buf_.resize(at + NLA_ALIGN(NLA_HDRLEN + n));
    memcpy(&buf_[at], &a, sizeof a);
    memcpy(&buf_[at + NLA_HDRLEN], p, n);
  }
  void str(uint16_t type, const std::string& s) { attr(type, s.c_str(), s.size() + 1); }
  const std::vector<uint8_t>& done() {
    hdr()->nlmsg_len = uint32_t(buf_.size());
    return buf_;
  }

 private:
  struct nlmsghdr* hdr() { return reinterpret_cast<struct nlmsghdr*>(buf_.data()); }
  std::vector<uint8_t> buf_;
};

int send_msg(int fd, const std::vector<uint8_t>& m) {
  struct sockaddr_nl to;
  memset(&to, 0, sizeof to);
  to.nl_family = AF_NETLINK;
  ssize_t n = sendto(fd, m.data(), m.size(), 0, reinterpret_cast<struct sockaddr*>(&to), sizeof to);
  if (n < 0) return -errno;
  return 0;
}

// One datagram from the kernel into `buf` (bounded wait).
int recv_some(int fd, std::vector<uint8_t>* buf, size_t* len) {
  struct pollfd p = {fd, POLLIN, 0};
  int n;
  do n = poll(&p, 1, kNetlinkTimeoutMs);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (n == 0) return -ETIMEDOUT;
  ssize_t r = recv(fd, buf->data(), buf->size(), 0);
  if (r < 0) return -errno;
  *len = size_t(r);
  return 0;
}

// Reads until the ACK (NLMSG_ERROR) of a request; each other message goes to `each`.
template <typename F>
int wait_ack(int fd, F each) {
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    size_t len = 0;
    int err = recv_some(fd, &buf, &len);
    if (err) return err;
    for (auto* h = reinterpret_cast<struct nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return -EPROTO;
        return reinterpret_cast<struct nlmsgerr*>(NLMSG_DATA(h))->error;
      }
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      each(h);
    }
  }
}

// The id of generic netlink family `name`; -ENOENT when the kernel has none (module not loaded).
int genl_family(int fd, const char* name, uint16_t* id) {
  Msg m(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK);
  struct genlmsghdr g = {CTRL_CMD_GETFAMILY, 1, 0};
  m.put(&g, sizeof g);
  m.str(CTRL_ATTR_FAMILY_NAME, name);
  int err = send_msg(fd, m.done());
  if (err) return err;
  int found = -ENOENT;
  err = wait_ack(fd, [&](struct nlmsghdr* h) {
    if (h->nlmsg_type != GENL_ID_CTRL) return;
    size_t off = NLMSG_HDRLEN + GENL_HDRLEN;
    const uint8_t* base = reinterpret_cast<const uint8_t*>(h);
    while (off + NLA_HDRLEN <= h->nlmsg_len) {
      const auto* a = reinterpret_cast<const struct nlattr*>(base + off);
      if (a->nla_len < NLA_HDRLEN || off + a->nla_len > h->nlmsg_len) break;
      if ((a->nla_type & NLA_TYPE_MASK) == CTRL_ATTR_FAMILY_ID && a->nla_len >= NLA_HDRLEN + 2) {
        memcpy(id, base + off + NLA_HDRLEN, 2);
        found = 0;
      }
      off += NLA_ALIGN(a->nla_len);
    }
  });
  return err ? err : found;
}

int genl_call(const char* family, uint8_t cmd, const std::function<void(Msg&)>& attrs) {
  Fd s;
  int err = open_netlink(NETLINK_GENERIC, &s);
  if (err) return err;
  uint16_t id = 0;
  err = genl_family(s.fd, family, &id);
  if (err) return err;
  Msg m(id, NLM_F_REQUEST | NLM_F_ACK);
  struct genlmsghdr g = {cmd, 1, 0};
  m.put(&g, sizeof g);
  attrs(m);
  err = send_msg(s.fd, m.done());
  if (err) return err;
  return wait_ack(s.fd, [](struct nlmsghdr*) {});
}

}  // namespace

int diag_dump(std::vector<uint8_t>* out, size_t max_bytes) {
  Fd s;
  int err = open_netlink(NETLINK_SOCK_DIAG, &s);
  if (err) return err;
  Msg m(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP);
  uint8_t req[52];  // struct smc_diag_req: family, pad[2], diag_ext, inet_diag_sockid (48)
  memset(req, 0, sizeof req);
  req[0] = AF_SMC;
  req[3] = kSmcDiagExtAll;
  m.put(req, sizeof req);
  err = send_msg(s.fd, m.done());
  if (err) return err;
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    size_t len = 0;
    err = recv_some(s.fd, &buf, &len);
    if (err) return err;
    for (auto* h = reinterpret_cast<struct nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return -EPROTO;
        int e = reinterpret_cast<struct nlmsgerr*>(NLMSG_DATA(h))->error;
        return e ? e : 0;
      }
      if (out->size() + h->nlmsg_len > max_bytes) return -ENOBUFS;
      const uint8_t* p = reinterpret_cast<const uint8_t*>(h);
      out->insert(out->end(), p, p + NLMSG_ALIGN(h->nlmsg_len));
    }
  }
}

int add_ueid(const std::string& ueid) {
  if (ueid.empty() || ueid.size() > kSmcMaxEidLen) return -EINVAL;
  std::string padded = ueid + std::string(kSmcMaxEidLen - ueid.size(), ' ');  // blank-padded, as smc-tools sends it
  return genl_call("SMC_GEN_NETLINK", kSmcNetlinkAddUeid, [&](Msg& m) { m.str(kSmcNlaEidTableEntry, padded); });
}

int add_pnet(const std::string& pnetid, const std::string& eth, const std::string& ib, uint8_t ib_port) {
  return genl_call("SMC_PNETID", kSmcPnetidAdd, [&](Msg& m) {
    m.str(kPnetName, pnetid);
    if (!eth.empty()) m.str(kPnetEth, eth);
    if (!ib.empty()) {
      m.str(kPnetIb, ib);
      m.attr(kPnetIbPort, &ib_port, 1);
    }
  });
}

}  // namespace sg::smc

// The fd <-> fd relay behind a splice link: two stream sockets (the client's
// data connection and the host socket) and bytes moved both ways through one
// pipe per direction with splice(2), so the payload never leaves the kernel
// (no user-space copy, no allocation per read).
//
//   client fd --splice--> pipe[c2h] --splice--> host fd
//   client fd <--splice-- pipe[h2c] <--splice-- host fd
//
// Backpressure: a direction reads into its pipe only while the pipe holds
// fewer than `cap` bytes (the watermark); a full pipe stops reading that side
// until the destination drains it. Half-close passes through: EOF on one side
// becomes shutdown(other, SHUT_WR) once its pipe is empty. Where splice(2) is
// refused (EINVAL: a descriptor type without splice support, or a failed pipe)
// the direction falls back to read/write through one reused buffer.
//
// Threading: everything but SpliceShared runs on the pump's I/O thread. The
// relay owns both sockets and both pipes; close_all() is the one cleanup path
// (the destructor calls it as a safety net).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sg {

// One pipe: owns both ends.
class Pipe {
 public:
  Pipe() = default;
  ~Pipe() { reset(); }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  // Non-blocking, close-on-exec; sized to `want` bytes when the kernel allows
  // (F_SETPIPE_SZ), else left at its default. *got = the resulting size.
  int open(uint32_t want, uint32_t* got);
  void reset();
  bool ok() const { return rd_ >= 0; }
  int rd() const { return rd_; }
  int wr() const { return wr_; }

 private:
  int rd_ = -1, wr_ = -1;
};

// The part of a relay the JS thread may touch: it reads pipe occupancy
// (FIONREAD) and sets host socket options. The I/O thread publishes and
// closes descriptors only under `mu`, so a JS-side call never reaches a
// closed (or already reused) descriptor number.
class SpliceShared {
 public:
  // Bytes held by the link: in both pipes (FIONREAD) plus prefix and copy
  // buffer bytes not yet written. 0 once the link has closed its descriptors.
  uint64_t buffered();
  // setsockopt/getsockopt(int) on the host socket; -EBADF once closed.
  int set_host_opt(int level, int name, int value);
  int get_host_opt(int level, int name, int* value);
  // The per-direction watermark in bytes (the pipe size asked for).
  uint32_t watermark() const { return cap_; }
  // Byte totals (to host, to client), stored by the I/O thread once per round.
  std::atomic<uint64_t> total_to_host{0}, total_to_client{0};
  // Set by JS: no progress events for this link (its counters are read on demand).
  std::atomic<bool> quiet{false};

 private:
  friend class SpliceRelay;
  std::mutex mu;
  int host = -1;                // guarded by mu
  int pipe_rd[2] = {-1, -1};    // guarded by mu; read end of each direction's pipe
  std::atomic<uint64_t> held{0};  // prefix + copy-buffer bytes not yet written
  uint32_t cap_ = 0;              // set before the relay is shared, then constant
};

// What one run() did, for the pump's events.
struct SpliceStep {
  uint64_t to_host = 0, to_client = 0;  // bytes written to each socket
  uint32_t stalls = 0;                  // times a full pipe (or buffer) stopped a read
  bool host_eof = false, client_eof = false;  // EOF read in this run
  bool more = false;                    // stopped by the budget, not by the kernel
  int err_side = -1;                    // with an error: the side (kClient, kHost) that failed
};

class SpliceRelay {
 public:
  enum Side { kClient = 0, kHost = 1 };
  enum Dir { kC2H = 0, kH2C = 1 };
  static constexpr uint32_t kDefaultPipeBytes = 1u << 20;
  static constexpr uint32_t kMinPipeBytes = 4096;
  static constexpr uint32_t kMaxCopyBuffer = 256u << 10;

  // Takes ownership of both fds on success only. They must be stream sockets;
  // they are made non-blocking. `pipe_bytes` is clamped to
  // [kMinPipeBytes, /proc/sys/fs/pipe-max-size]. `copy` forces the read/write
  // fallback (fds that cannot splice; tests).
  static int create(int client_fd, int host_fd, std::string to_host_prefix, std::string to_client_prefix,
                    uint32_t pipe_bytes, bool copy, std::unique_ptr<SpliceRelay>* out);
  ~SpliceRelay();

  int fd(Side s) const { return fd_[s]; }
  const std::shared_ptr<SpliceShared>& shared() const { return shared_; }
  SpliceShared& shared_ref() const { return *shared_; }
  uint32_t cap() const { return cap_; }

  // Edge-triggered readiness from epoll for one side.
  void on_events(Side s, uint32_t events);
  // Move bytes both ways, at most `budget` per direction. Returns 1 when both
  // directions are finished (EOF passed through both ways), 0 to wait for
  // events (or to run again if step->more), or -errno (step->err_side says
  // which socket failed).
  int run(uint64_t budget, SpliceStep* step);
  // shutdown(2) on the host socket, coordinated with the pipes: `write` sends
  // FIN to the host after the bytes already read from the client are written
  // (later client bytes are read and dropped); `read` stops passing host bytes
  // on (they are read and dropped), and the client gets FIN after what was
  // already read.
  void shutdown_host(bool read, bool write);
  // The one cleanup path: closes the pipes and both sockets; a side whose bit
  // is set in `rst_mask` (1 << Side) is closed abortively (SO_LINGER 0: the
  // peer sees a reset, not a FIN). Idempotent.
  void close_all(uint32_t rst_mask);

 private:
  struct Direction {
    Side src, dst;
    std::string prefix;  // written to dst before anything from the pipe
    size_t prefix_off = 0;
    Pipe pipe;
    uint64_t fill = 0;      // bytes in the pipe (we put them there)
    bool pipe_full = false; // a read found the pipe full: retry after a drain
    bool copy = false;      // read/write fallback through buf
    std::vector<uint8_t> buf;
    size_t boff = 0, blen = 0;
    bool src_eof = false;   // EOF read from src
    bool discard = false;   // drop src bytes; dst gets FIN once drained
    bool dst_shut = false;  // shutdown(dst, SHUT_WR) done
    bool empty() const { return prefix_off >= prefix.size() && fill == 0 && blen == boff; }
    bool done() const { return src_eof && dst_shut; }
  };

  SpliceRelay() = default;
  int pump_dir(Direction& d, uint64_t budget, SpliceStep* st);
  int flush(Direction& d, uint64_t* moved, SpliceStep* st, bool* progress);
  int fill(Direction& d, uint64_t* moved, SpliceStep* st, bool* progress);
  int to_copy_mode(Direction& d);
  int check_error(Side s);
  void publish_pipe(Direction& d);

  int fd_[2] = {-1, -1};
  bool readable_[2] = {true, true};
  bool writable_[2] = {true, true};
  bool err_seen_[2] = {false, false};
  Direction dir_[2];
  uint32_t cap_ = kDefaultPipeBytes;
  std::shared_ptr<SpliceShared> shared_;
};

// /proc/sys/fs/pipe-max-size, read once (1 MiB if unreadable).
uint32_t pipe_max_size();

}  // namespace sg

// The I/O thread's adaptive spin before sleeping (native/SHM.md, "Spin").
// Like KVM's halt polling: the budget grows while the thread is woken soon
// after it started waiting (a spin that long would have caught the news
// without a sleep and a wake-up), and halves each time it waited longer than
// the setting (idle: the budget falls to 0, so idle links cost no CPU; a pump
// that is never woken never spins at all). Pure logic: the loop measures.
#pragma once

#include <cstdint>

namespace sg {

// The first budget after a quick wake-up: a round trip through the kernel
// (epoll + eventfd) costs a few µs, shorter spins win nothing.
constexpr uint32_t SPIN_START_US = 4;

class SpinPolicy {
 public:
  explicit SpinPolicy(uint32_t max_us = 0) { set_max(max_us); }
  // The setting (µs; 0 = never spin). The budget starts at it: the first
  // waits tell whether spinning pays.
  void set_max(uint32_t us) {
    if (us == max_us_) return;
    max_us_ = us;
    cur_us_ = us;
  }
  uint32_t max_us() const { return max_us_; }
  // How long to spin before the next sleep (0: sleep at once).
  uint32_t budget() const { return cur_us_; }
  // The spin found work: the budget is right, keep it.
  void hit() {}
  // The thread slept and woke `waited_us` after it started waiting (spin
  // included); `timed_out`: the wake-up was the loop's own timer, not news.
  void woke(uint64_t waited_us, bool timed_out) {
    if (max_us_ == 0) {
      cur_us_ = 0;
      return;
    }
    if (!timed_out && waited_us <= max_us_) {
      // News came within the setting: a longer spin would have caught it.
      uint32_t next = cur_us_ == 0 ? SPIN_START_US : cur_us_ * 2;
      cur_us_ = next < max_us_ ? next : max_us_;
    } else {
      // Waited longer than we may spin: back off (to 0 once below the start).
      cur_us_ /= 2;
      if (cur_us_ < SPIN_START_US) cur_us_ = 0;
    }
  }

 private:
  uint32_t max_us_ = 0;
  uint32_t cur_us_ = 0;
};

}  // namespace sg

#pragma once
// How many streams a whole daemon may have open at once, shared by all its channels (and threads).
// Each stream holds descriptors (its local socket, and in splice mode two pipes); the budget
// keeps enough of them free for new channels and for the streams that matter, so that running
// out is a clear refusal of one stream and never a failure somewhere else.

#include <atomic>
#include <cstddef>

namespace nbdtunnel::tunnel {

class StreamBudget {
 public:
  explicit StreamBudget(std::size_t limit) : limit_(limit) {}
  StreamBudget(const StreamBudget&) = delete;
  StreamBudget& operator=(const StreamBudget&) = delete;

  // Takes one stream from the budget; false (and nothing taken) when it is used up.
  bool try_acquire() {
    std::size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (used >= limit_) return false;
    } while (!used_.compare_exchange_weak(used, used + 1, std::memory_order_relaxed));
    return true;
  }
  void release() { used_.fetch_sub(1, std::memory_order_relaxed); }
  std::size_t limit() const { return limit_; }
  std::size_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  const std::size_t limit_;
  std::atomic<std::size_t> used_{0};
};

}  // namespace nbdtunnel::tunnel

#pragma once
// A relay's surroundings for the copy micro-benchmark: a TCP loopback connection and a UNIX
// socket pair, a producer thread feeding the relay's input and a consumer thread draining its
// output. The relay itself is whoever calls relay_in()/relay_out() (the benchmark thread).

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace bench {

enum class Direction { tcp_to_unix, unix_to_tcp };

class SocketRig {
 public:
  explicit SocketRig(Direction d);
  ~SocketRig();
  SocketRig(const SocketRig&) = delete;
  SocketRig& operator=(const SocketRig&) = delete;

  int relay_in() const { return relay_in_; }
  int relay_out() const { return relay_out_; }

  // Asks the producer for n more bytes; returns at once.
  void produce(std::uint64_t n);
  // Blocks until the consumer has received `total` bytes since construction.
  void wait_consumed(std::uint64_t total);
  // CPU seconds used so far by the producer and consumer threads together.
  double helper_cpu_seconds() const;

 private:
  void producer_loop();
  void consumer_loop();

  int relay_in_ = -1, relay_out_ = -1;  // the relay's two ends
  int producer_fd_ = -1, consumer_fd_ = -1;

  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t requested_ = 0;    // guarded by mu_
  bool stop_ = false;              // guarded by mu_
  std::uint64_t wait_target_ = 0;  // guarded by mu_
  std::atomic<std::uint64_t> consumed_{0};

  std::thread producer_, consumer_;
};

// CPU seconds of the whole process (every thread, including io_uring's io-wq workers).
double process_cpu_seconds();

}  // namespace bench

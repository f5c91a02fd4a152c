#pragma once
// An io_uring instance whose completions are delivered on a Boost.Asio io_context: the ring
// signals an eventfd, Asio waits on it, and one handler drains every ready completion.

#include <liburing.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <functional>

#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

// One in-flight io_uring operation. Its owner keeps it alive until busy() is false.
class Op {
 public:
  using Handler = std::function<void(int res, std::uint32_t flags)>;
  Op() = default;
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;
  void set_handler(Handler h) { handler_ = std::move(h); }
  bool busy() const { return busy_; }

 private:
  friend class Ring;
  Handler handler_;
  bool busy_ = false;
};

class Ring {
 public:
  // Throws std::system_error if io_uring cannot be set up (e.g. disabled by sysctl).
  Ring(boost::asio::io_context& io, unsigned entries = 1024);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Returns an SQE whose completion goes to op; the caller fills it in. When the submission
  // queue is full it submits first; if the kernel takes nothing, the SQE handed out is a scratch
  // one and op completes (from a posted handler) with -EBUSY instead, so the failure reaches
  // op's owner through its usual error path.
  io_uring_sqe* prepare(Op& op);
  // Asks the kernel to cancel op if it is in flight; op still gets its (cancelled) completion.
  void cancel(Op& op);
  // Number of operations whose completion has not been delivered yet.
  std::size_t in_flight() const { return in_flight_; }
  // Submissions that failed (and were retried) since the ring was created.
  std::uint64_t submit_failures() const { return submit_failures_; }

 private:
  io_uring_sqe* get_sqe();
  void fail_later(Op& op, int res);
  void schedule_submit();
  void submit();
  void wait_for_completions();
  void drain();

  boost::asio::io_context& io_;
  io_uring ring_{};
  unique_fd event_fd_;
  boost::asio::posix::stream_descriptor event_desc_;
  std::uint64_t event_count_ = 0;  // what a read of the eventfd returns; not used
  boost::asio::steady_timer retry_timer_;
  io_uring_sqe scratch_{};  // handed out when no SQE can be had; never submitted
  std::size_t in_flight_ = 0;
  std::uint64_t submit_failures_ = 0;
  bool submit_scheduled_ = false;
  bool retry_armed_ = false;
  bool draining_ = false;
};

}  // namespace nbdtunnel::tunnel

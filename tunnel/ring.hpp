#pragma once
// An io_uring instance and the loop that delivers its completions, next to a Boost.Asio
// io_context (timers, acceptors, TLS handshakes, QMP, the control socket). Two ways to run them:
//  * Driver::asio: whoever runs the io_context delivers the completions too: the ring signals
//    an eventfd, Asio waits on it, and one handler drains every ready completion. Any
//    io.run*() works; tests and the short-lived helpers use this.
//  * Driver::self: run_once() waits in io_uring_enter (submitting what is queued in the same
//    call) and runs the io_context's ready handlers when the ring reports that Asio's reactor
//    has something (its epoll descriptor is polled from the ring). A completion batch then costs
//    one system call instead of three (epoll_wait, read of the eventfd, io_uring_enter); the
//    daemon's threads run this way. Nothing else may run that io_context.
// Either way, work deferred with defer() runs after the completions being delivered, on the
// ring's thread, before the loop waits again.

#include <liburing.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

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
  enum class Driver { asio, self };

  // Throws std::system_error if io_uring cannot be set up (e.g. disabled by sysctl).
  explicit Ring(boost::asio::io_context& io, unsigned entries = 1024, Driver driver = Driver::asio);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Returns an SQE whose completion goes to op; the caller fills it in. When the submission
  // queue is full it submits first; if the kernel takes nothing, the SQE handed out is a scratch
  // one and op completes (from deferred work) with -EBUSY instead, so the failure reaches op's
  // owner through its usual error path.
  io_uring_sqe* prepare(Op& op);
  // Asks the kernel to cancel op if it is in flight; op still gets its (cancelled) completion.
  void cancel(Op& op);
  // Runs f on this thread after the handler running now (and the completions delivered with
  // it), before the loop waits again. Only from the ring's own thread.
  void defer(std::function<void()> f);

  // Driver::self: one turn of the loop: submits what is queued, waits (at most max_wait) until
  // a completion, deferred work or an Asio handler is ready, and runs them.
  void run_once(std::chrono::milliseconds max_wait);

  // Number of operations whose completion has not been delivered yet.
  std::size_t in_flight() const { return in_flight_; }
  // Submissions that failed (and were retried) since the ring was created.
  std::uint64_t submit_failures() const { return submit_failures_; }
  // Driver::self: turns that waited all of max_wait with nothing arriving.
  std::uint64_t idle_turns() const { return idle_turns_; }

 private:
  io_uring_sqe* get_sqe();
  void fail_later(Op& op, int res);
  void schedule_submit();
  void schedule_drain();
  void submit();
  void submit_failed(int rc);
  void wait_for_completions();
  void drain();
  void run_deferred();
  void arm_asio_poll();
  void poll_asio();

  boost::asio::io_context& io_;
  const Driver driver_;
  io_uring ring_{};
  // Driver::asio: the eventfd the ring signals and Asio reads.
  unique_fd event_fd_;
  boost::asio::posix::stream_descriptor event_desc_;
  std::uint64_t event_count_ = 0;  // what a read of the eventfd returns; not used
  // Driver::self: a poll of Asio's epoll descriptor (not counted as in flight), and whether it
  // fired (or Asio may have work for another reason) since Asio last ran.
  int asio_fd_ = -1;
  Op asio_poll_;
  bool asio_ready_ = true;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;

  boost::asio::steady_timer retry_timer_;
  io_uring_sqe scratch_{};  // handed out when no SQE can be had; never submitted
  std::vector<std::function<void()>> deferred_, running_;
  std::size_t in_flight_ = 0;
  std::uint64_t submit_failures_ = 0;
  std::uint64_t idle_turns_ = 0;
  bool submit_scheduled_ = false;
  bool drain_scheduled_ = false;
  bool retry_armed_ = false;
  bool draining_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace nbdtunnel::tunnel

#include "tunnel/ring.hpp"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/scheduler.hpp>
#include <boost/asio/post.hpp>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

#if !defined(BOOST_ASIO_HAS_EPOLL) || defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#error "Ring::Driver::self polls Asio's epoll reactor: build Asio with its epoll backend"
#endif

namespace nbdtunnel::tunnel {

namespace {
// user_data of operations nobody waits for (cancel requests).
constexpr std::uint64_t kUntracked = 0;
// io_uring_submit interrupted by a signal is retried at once, at most this often.
constexpr int kSubmitRetries = 8;
// A submission the kernel refused (-EBUSY, -EAGAIN: completions must be reaped first, or memory
// is short) is retried after this long, or after the next completion batch, whichever is first.
constexpr auto kSubmitBackoff = std::chrono::milliseconds(1);

// Driver::self needs two things Asio keeps private: its reactor's epoll descriptor, to poll it
// from the ring, and its scheduler's note that the reactor is not waiting, to clear it (below).
// An explicit instantiation may name a private member ([temp.spec.general]/6): each one below
// defines member(Tag) to return that member's pointer. The #error above pins the reactor to epoll.
using Reactor = boost::asio::detail::epoll_reactor;
using Scheduler = boost::asio::detail::scheduler;
using SchedulerMutex = boost::asio::detail::conditionally_enabled_mutex;
template <class Tag, auto Member>
struct Expose {
  friend auto member(Tag) { return Member; }
};
struct EpollFd {};
struct TaskInterrupted {};
struct SchedulerLock {};
auto member(EpollFd);
auto member(TaskInterrupted);
auto member(SchedulerLock);
template struct Expose<EpollFd, &Reactor::epoll_fd_>;
template struct Expose<TaskInterrupted, &Scheduler::task_interrupted_>;
template struct Expose<SchedulerLock, &Scheduler::mutex_>;

int asio_epoll_fd(boost::asio::io_context& io) {
  return boost::asio::use_service<Reactor>(io).*member(EpollFd{});
}

// Asio interrupts its reactor (makes its epoll descriptor readable) when a handler is queued from
// outside its own loop — a socket operation a ring handler started finished at once, a post from
// another thread — but only while it believes the reactor is blocked waiting; after a poll it
// believes the opposite. Here the ring waits on the reactor's behalf, so after each poll the
// belief is set back to "waiting", under the scheduler's lock as Asio itself does it. (A post
// from another thread just before that is not noticed at once: see run_once.)
void reactor_waits(boost::asio::io_context& io) {
  Scheduler& scheduler = boost::asio::use_service<Scheduler>(io);
  SchedulerMutex::scoped_lock lock(scheduler.*member(SchedulerLock{}));
  scheduler.*member(TaskInterrupted{}) = false;
}
}  // namespace

Ring::Ring(boost::asio::io_context& io, unsigned entries, Driver driver)
    : io_(io), driver_(driver), event_desc_(io), retry_timer_(io) {
  io_uring_params params{};
  params.flags = IORING_SETUP_CLAMP;
  if (int rc = io_uring_queue_init_params(entries, &ring_, &params); rc < 0) {
    throw std::system_error(-rc, std::generic_category(), "io_uring_queue_init");
  }
  if (driver_ == Driver::self) {
    asio_fd_ = asio_epoll_fd(io_);
    work_.emplace(boost::asio::make_work_guard(io_));  // run_once may find Asio with no work
    return;  // the first turn polls Asio (asio_ready_), which may have work queued already
  }
  event_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event_fd_) {
    const int err = errno;
    io_uring_queue_exit(&ring_);
    throw std::system_error(err, std::generic_category(), "eventfd");
  }
  if (int rc = io_uring_register_eventfd(&ring_, event_fd_.get()); rc < 0) {
    io_uring_queue_exit(&ring_);
    throw std::system_error(-rc, std::generic_category(), "io_uring_register_eventfd");
  }
  event_desc_.assign(::dup(event_fd_.get()));
  wait_for_completions();
}

Ring::~Ring() {
  if (in_flight_ != 0) spdlog::debug("ring destroyed with {} operations in flight", in_flight_);
  boost::system::error_code ec;
  event_desc_.close(ec);
  retry_timer_.cancel();
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // Submission queue full: hand what is queued to the kernel and try once more.
    submit();
    sqe = io_uring_get_sqe(&ring_);
  }
  if (sqe != nullptr) schedule_submit();
  return sqe;
}

io_uring_sqe* Ring::prepare(Op& op) {
  assert(!op.busy_ && "an Op carries one operation at a time");
  op.busy_ = true;
  ++in_flight_;
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) {
    spdlog::error(
        "io_uring submission queue full and the kernel takes no more; failing an "
        "operation with EBUSY");
    fail_later(op, -EBUSY);
    scratch_ = io_uring_sqe{};
    return &scratch_;
  }
  io_uring_sqe_set_data(sqe, &op);
  return sqe;
}

// Completes op with res from deferred work, as the kernel would have.
void Ring::fail_later(Op& op, int res) {
  defer([this, &op, res] {
    op.busy_ = false;
    --in_flight_;
    if (op.handler_) op.handler_(res, 0);
  });
}

void Ring::cancel(Op& op) {
  if (!op.busy_) return;
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return;  // it completes on its own: every cancelled op's socket is shut down
  io_uring_prep_cancel(sqe, &op, 0);
  io_uring_sqe_set_data64(sqe, kUntracked);
}

void Ring::defer(std::function<void()> f) {
  deferred_.push_back(std::move(f));
  // Driver::self runs it before waiting again; a drain under way runs it at its end.
  if (driver_ == Driver::self || draining_) return;
  schedule_drain();
}

// Driver::asio: a drain after the handler running now (and any Asio has queued before it).
void Ring::schedule_drain() {
  if (drain_scheduled_) return;
  drain_scheduled_ = true;
  boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
    if (alive.expired()) return;
    drain_scheduled_ = false;
    drain();
  });
}

void Ring::schedule_submit() {
  // Driver::self submits before it waits. While draining, the drain submits once at its end;
  // otherwise batch until the handler returns.
  if (driver_ == Driver::self || submit_scheduled_ || draining_) return;
  submit_scheduled_ = true;
  boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
    if (!alive.expired()) submit();
  });
}

void Ring::submit() {
  submit_scheduled_ = false;
  if (io_uring_sq_ready(&ring_) == 0) return;
  int rc = 0;
  for (int i = 0; i < kSubmitRetries; ++i) {
    rc = io_uring_submit(&ring_);
    if (rc != -EINTR) break;
  }
  if (rc < 0) submit_failed(rc);
}

// What was not taken stays queued: retried after a pause, or after the next drain (which reaps
// the completions the kernel may be waiting for us to take).
void Ring::submit_failed(int rc) {
  ++submit_failures_;
  spdlog::warn("io_uring_submit failed: {}; retrying", std::strerror(-rc));
  if (driver_ == Driver::self) {
    std::this_thread::sleep_for(kSubmitBackoff);  // the next turn submits again
    return;
  }
  if (retry_armed_) return;
  retry_armed_ = true;
  retry_timer_.expires_after(kSubmitBackoff);
  retry_timer_.async_wait(
      [this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
        if (alive.expired()) return;
        retry_armed_ = false;
        if (!ec) submit();
      });
}

// A read of the eventfd rather than a wait for it: Asio tries a read at once (completions often
// arrived while the last batch ran, and then no epoll round trip is needed), and when it would
// block leaves the descriptor's edge-triggered registration as it is; an async_wait re-arms it
// with an epoll_ctl every time (measured: one per completion batch).
void Ring::wait_for_completions() {
  event_desc_.async_read_some(boost::asio::buffer(&event_count_, sizeof event_count_),
                              [this](const boost::system::error_code& ec, std::size_t) {
                                if (ec) return;  // descriptor closed: the ring is going away
                                drain();
                                wait_for_completions();
                              });
}

// The poll of Asio's epoll descriptor (Driver::self), not counted as in flight.
void Ring::arm_asio_poll() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    submit();
    sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      asio_ready_ = true;  // poll Asio every turn until the poll can be armed
      return;
    }
  }
  io_uring_prep_poll_add(sqe, asio_fd_, POLLIN);
  io_uring_sqe_set_data(sqe, &asio_poll_);
  asio_poll_.busy_ = true;
}

void Ring::poll_asio() {
  asio_ready_ = false;
  io_.poll();
  reactor_waits(io_);
}

void Ring::drain() {
  draining_ = true;
  for (;;) {
    io_uring_cqe* cqes[64];
    const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 64);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) {
      const std::uint64_t data = io_uring_cqe_get_data64(cqes[i]);
      const int res = cqes[i]->res;
      const std::uint32_t flags = cqes[i]->flags;
      io_uring_cqe_seen(&ring_, cqes[i]);
      if (data == kUntracked) continue;
      auto* op = reinterpret_cast<Op*>(data);
      if (op == &asio_poll_) {
        asio_poll_.busy_ = false;
        asio_ready_ = true;  // also on an error: then Asio is polled every turn, never missed
        continue;
      }
      if (!(flags & IORING_CQE_F_MORE)) {
        op->busy_ = false;
        --in_flight_;
      }
      if (op->handler_) op->handler_(res, flags);
    }
  }
  run_deferred();
  draining_ = false;
  if (driver_ == Driver::self) return;
  // Deferred work that deferred more (a reader yielding) runs after Asio's other handlers.
  if (!deferred_.empty()) schedule_drain();
  if (io_uring_sq_ready(&ring_) > 0) submit();
}

// What was deferred before this call; what it defers in turn runs on the next one.
void Ring::run_deferred() {
  assert(running_.empty());
  running_.swap(deferred_);
  for (auto& f : running_) f();
  running_.clear();
}

void Ring::run_once(std::chrono::milliseconds max_wait) {
  assert(driver_ == Driver::self);
  if (asio_ready_) poll_asio();
  if (!asio_poll_.busy_) arm_asio_poll();
  int rc;
  if (asio_ready_ || !deferred_.empty() || io_uring_cq_ready(&ring_) > 0) {
    rc = io_uring_submit(&ring_);  // no system call when nothing is queued
  } else {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(max_wait).count();
    __kernel_timespec ts{.tv_sec = ns / 1'000'000'000, .tv_nsec = ns % 1'000'000'000};
    io_uring_cqe* cqe = nullptr;
    rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  }
  if (rc < 0 && rc != -ETIME && rc != -EINTR) submit_failed(rc);
  // A post from another thread between the end of the last poll and reactor_waits() interrupts
  // nothing; a turn that waited in vain polls Asio, so such a post waits at most max_wait.
  if (rc == -ETIME) {
    ++idle_turns_;
    asio_ready_ = true;
  }
  drain();
  if (asio_ready_) poll_asio();
}

}  // namespace nbdtunnel::tunnel

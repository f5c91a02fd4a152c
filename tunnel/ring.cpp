#include "tunnel/ring.hpp"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/post.hpp>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace nbdtunnel::tunnel {

namespace {
// user_data of operations nobody waits for (cancel requests).
constexpr std::uint64_t kUntracked = 0;
// io_uring_submit interrupted by a signal is retried at once, at most this often.
constexpr int kSubmitRetries = 8;
// A submission the kernel refused (-EBUSY, -EAGAIN: completions must be reaped first, or memory
// is short) is retried after this long, or after the next completion batch, whichever is first.
constexpr auto kSubmitBackoff = std::chrono::milliseconds(1);
}  // namespace

Ring::Ring(boost::asio::io_context& io, unsigned entries)
    : io_(io), event_desc_(io), retry_timer_(io) {
  io_uring_params params{};
  params.flags = IORING_SETUP_CLAMP;
  if (int rc = io_uring_queue_init_params(entries, &ring_, &params); rc < 0) {
    throw std::system_error(-rc, std::generic_category(), "io_uring_queue_init");
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

// Completes op with res from a posted handler, as the kernel would have.
void Ring::fail_later(Op& op, int res) {
  boost::asio::post(io_, [this, &op, res] {
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

void Ring::schedule_submit() {
  // While draining, the drain submits once at its end; otherwise batch until the handler returns.
  if (submit_scheduled_ || draining_) return;
  submit_scheduled_ = true;
  boost::asio::post(io_, [this] { submit(); });
}

void Ring::submit() {
  submit_scheduled_ = false;
  if (io_uring_sq_ready(&ring_) == 0) return;
  int rc = 0;
  for (int i = 0; i < kSubmitRetries; ++i) {
    rc = io_uring_submit(&ring_);
    if (rc != -EINTR) break;
  }
  if (rc >= 0) return;
  // What was not taken stays queued: retry after a pause, or after the next drain (which reaps
  // the completions the kernel may be waiting for us to take).
  ++submit_failures_;
  spdlog::warn("io_uring_submit failed: {}; retrying", std::strerror(-rc));
  if (retry_armed_) return;
  retry_armed_ = true;
  retry_timer_.expires_after(kSubmitBackoff);
  retry_timer_.async_wait([this](const boost::system::error_code& ec) {
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
      if (!(flags & IORING_CQE_F_MORE)) {
        op->busy_ = false;
        --in_flight_;
      }
      if (op->handler_) op->handler_(res, flags);
    }
  }
  draining_ = false;
  if (io_uring_sq_ready(&ring_) > 0) submit();
}

}  // namespace nbdtunnel::tunnel

#pragma once
// The initiator's RESUME on a new connection, before the channel takes the connection over:
// writes the call, then reads exactly its reply and nothing past it (what follows belongs to the
// channel's byte stream), bounded by a timeout. done gets the connection and how many bytes of
// the channel the responder has received; or an error: permission_denied when the responder
// refused (its message says why: it no longer has the channel, the secret is wrong), anything
// else when the connection failed (worth another attempt).

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tunnel/poster.hpp"
#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/transport.hpp"

namespace nbdtunnel::tunnel {

// An initiator stops trying to resume a lost channel once connecting has been refused for this
// long: nothing listens on the destination port, so the daemon that held the channel is gone (a
// restarted one would refuse the RESUME anyway).
inline constexpr std::chrono::seconds kRefusedGiveUp{3};

// Connection attempts refused in a row, as an initiator of a lost channel counts them.
class RefusedStreak {
 public:
  // Records one attempt; true once attempts have been refused without a break for
  // kRefusedGiveUp.
  bool too_long(bool refused) {
    const auto now = std::chrono::steady_clock::now();
    if (!refused) {
      since_.reset();
      return false;
    }
    if (!since_) since_ = now;
    return now - *since_ >= kRefusedGiveUp;
  }

 private:
  std::optional<std::chrono::steady_clock::time_point> since_;
};

// Why an initiator closes a lost channel: the responder refused the RESUME (its message), or
// connecting has been refused for kRefusedGiveUp (the last attempt's failure).
std::string resume_refused_reason(const std::string& message);
std::string daemon_gone_reason(const std::string& failure);

class ResumeExchange {
 public:
  struct Resumed {
    std::unique_ptr<Transport> transport;
    std::uint64_t peer_received = 0;
  };
  using Done = std::function<void(Result<Resumed>)>;
  // The largest RESUME reply accepted (an ERROR with its message).
  static constexpr std::size_t kMaxReply = 8192;

  ResumeExchange(boost::asio::io_context& io, Ring& ring, std::unique_ptr<Transport> transport,
                 const ResumeRequest& request, std::chrono::milliseconds timeout, Done done);
  // Only once done has been called (or before start()).
  ~ResumeExchange() = default;
  ResumeExchange(const ResumeExchange&) = delete;
  ResumeExchange& operator=(const ResumeExchange&) = delete;

  void start();
  // done follows with an operation_canceled error, unless it is already on its way.
  void cancel();

 private:
  void step();
  void on_wait(int res);
  Result<Resumed> decode_reply() const;
  void finish(Result<Resumed> r);
  void report_when_idle();

  Ring& ring_;
  Poster poster_;
  std::unique_ptr<Transport> transport_;
  std::vector<std::uint8_t> call_;
  std::size_t written_ = 0;
  std::vector<std::uint8_t> reply_;
  std::size_t read_ = 0;
  std::chrono::milliseconds timeout_;
  Done done_;
  boost::asio::steady_timer timer_;
  Op op_;
  bool finished_ = false;
  bool reported_ = false;
  std::optional<Result<Resumed>> outcome_;
};

}  // namespace nbdtunnel::tunnel

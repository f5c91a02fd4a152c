#include "tunnel/resume_exchange.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {

namespace {
constexpr std::uint32_t kResumeSerial = 1;
}  // namespace

std::string resume_refused_reason(const std::string& message) {
  return "connection lost and not resumed: the destination refused: " + message;
}

std::string daemon_gone_reason(const std::string& failure) {
  return fmt::format(
      "connection lost and not resumed: the destination daemon is not running ({} for {} s), so "
      "it cannot have kept the channel",
      failure, kRefusedGiveUp.count());
}

ResumeExchange::ResumeExchange(boost::asio::io_context& io, Ring& ring,
                               std::unique_ptr<Transport> transport, const ResumeRequest& request,
                               std::chrono::milliseconds timeout, Done done)
    : ring_(ring),
      poster_(ring),
      transport_(std::move(transport)),
      reply_(kLengthSize),
      timeout_(timeout),
      done_(std::move(done)),
      timer_(io) {
  std::vector<std::uint8_t> body;
  encode_resume_request(body, request);
  call_ = make_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::resume),
                                  PacketType::call, kResumeSerial, PacketStatus::ok),
                      body);
  op_.set_handler([this](int res, std::uint32_t) { on_wait(res); });
}

void ResumeExchange::start() {
  timer_.expires_after(timeout_);
  timer_.async_wait([this, alive = poster_.liveness()](const boost::system::error_code& ec) {
    if (ec || alive.expired() || finished_) return;
    finish(Error{std::make_error_code(std::errc::timed_out),
                 fmt::format("no RESUME reply within {} s", timeout_.count() / 1000.0)});
  });
  step();
}

void ResumeExchange::cancel() {
  finish(Error{std::make_error_code(std::errc::operation_canceled), "resume cancelled"});
}

void ResumeExchange::on_wait(int res) {
  if (finished_) return report_when_idle();
  if (res < 0) return finish(system_error(-res, "waiting on the connection failed"));
  step();
}

// Writes what is left of the call (and whatever the transport holds of it), then reads the
// reply: its length word, then exactly the rest.
void ResumeExchange::step() {
  while (!finished_) {
    Result<std::size_t> n = std::size_t{0};
    const bool writing = written_ < call_.size() || transport_->has_pending_output();
    if (written_ < call_.size()) {
      const iovec v{call_.data() + written_, call_.size() - written_};
      n = transport_->write(std::span(&v, 1), false);
    } else if (writing) {
      n = transport_->flush_pending();
    } else {
      n = transport_->read(std::span(reply_).subspan(read_));
    }
    if (!n) {
      if (!would_block(n.error())) return finish(n.error());
      if (writing) {
        transport_->wait_writable(op_);
      } else {
        transport_->wait_readable(op_);
      }
      return;
    }
    if (writing) {
      written_ = std::min(call_.size(), written_ + *n);
      continue;
    }
    if (*n == 0) {
      return finish(system_error(ECONNRESET, "the destination closed the connection"));
    }
    read_ += *n;
    if (read_ < reply_.size()) continue;
    if (reply_.size() == kLengthSize) {
      std::uint32_t length = 0;
      std::memcpy(&length, reply_.data(), sizeof length);
      length = ntohl(length);
      if (length < kPrefixSize || length > kMaxReply) {
        return finish(input_error(fmt::format(
            "the destination answered RESUME with a packet of {} bytes (not an nbdtunnel dest?)",
            length)));
      }
      reply_.resize(length);
      continue;
    }
    return finish(decode_reply());
  }
}

Result<ResumeExchange::Resumed> ResumeExchange::decode_reply() const {
  Result<std::optional<Frame>> frame = decode_packet(reply_, kMaxReply);
  if (!frame || !*frame) return input_error("the RESUME reply is malformed");
  const PacketHeader& h = (*frame)->header;
  if (h.program != kProgram || h.type != static_cast<std::uint32_t>(PacketType::reply) ||
      h.procedure != static_cast<std::uint32_t>(Proc::resume) || h.serial != kResumeSerial) {
    return input_error(fmt::format("the destination answered RESUME with {} {}", type_name(h.type),
                                   procedure_name(h.program, h.procedure)));
  }
  if (h.status != static_cast<std::uint32_t>(PacketStatus::ok)) {
    Result<RemoteError> e = decode_remote_error((*frame)->body);
    return Error{std::make_error_code(std::errc::permission_denied),
                 e ? e->message.value_or("no reason given") : e.error().message};
  }
  Result<std::uint64_t> received = decode_received((*frame)->body);
  if (!received) return received.error();
  // The transport goes with the outcome; finish() moves it in.
  return Resumed{nullptr, *received};
}

void ResumeExchange::finish(Result<Resumed> r) {
  if (finished_) return;
  finished_ = true;
  timer_.cancel();
  if (r) {
    r->transport = std::move(transport_);
  } else if (op_.busy()) {
    transport_->shutdown();  // completes the wait in flight
  }
  outcome_.emplace(std::move(r));
  report_when_idle();
}

void ResumeExchange::report_when_idle() {
  if (op_.busy() || reported_) return;
  reported_ = true;
  poster_.post([this] {
    transport_.reset();  // a failed exchange closes its connection now
    Result<Resumed> r = std::move(*outcome_);
    outcome_.reset();
    Done done = std::move(done_);
    done(std::move(r));
  });
}

}  // namespace nbdtunnel::tunnel

#include "tunnel/frame_reader.hpp"

#include <fmt/format.h>
#include <poll.h>

#include <cstring>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {

FrameReader::FrameReader(Transport& transport, Ring& ring, Poster& poster, FrameSink& sink,
                         bool splice)
    : transport_(&transport),
      ring_(ring),
      poster_(poster),
      sink_(sink),
      splice_(splice),
      buf_(kHandshakeMaxPacket),
      last_read_(std::chrono::steady_clock::now()) {
  op_.set_handler([this](int res, std::uint32_t) { on_wait_done(res); });
}

void FrameReader::start() {
  last_read_ = std::chrono::steady_clock::now();
  pump();
}

void FrameReader::stop() {
  stopped_ = true;
  ring_.cancel(op_);
}

void FrameReader::attach(Transport& transport) {
  transport_ = &transport;
  stopped_ = false;
  waiting_on_ = 0;
  start();
}

void FrameReader::stream_released(std::uint32_t serial) {
  if (waiting_on_ == serial && op_.busy()) ring_.cancel(op_);
}

void FrameReader::on_wait_done(int res) {
  waiting_on_ = 0;
  if (stopped_) {
    if (on_idle_) on_idle_();
    return;
  }
  if (res < 0 && res != -ECANCELED) {
    end(Error{std::error_code(-res, std::system_category()),
              fmt::format("waiting for data failed: {}", std::strerror(-res))});
    return;
  }
  pump();
}

namespace {
// A framing error: the peer's byte stream can no longer be trusted.
Error malformed(const Error& e) {
  return Error{e.code, "malformed data from peer: " + e.message};
}
}  // namespace

Error FrameReader::framing_error(const Error& e) const {
  // A TLS record (handshake 0x16, version 3.x) where the first packet should be: say so, rather
  // than report its first bytes as an absurd packet length.
  if (!packets_ && buf_.size() >= 2 && buf_[0] == 0x16 && buf_[1] == 0x03) {
    return Error{e.code,
                 "the peer speaks TLS and this side runs without it: give both sides --tls-dir "
                 "(or neither)"};
  }
  return malformed(e);
}

void FrameReader::end(const Status& why) {
  stopped_ = true;
  sink_.on_read_ended(why);
}

void FrameReader::end_malformed(const Error& why) {
  stopped_ = true;
  sink_.on_malformed(why);
}

void FrameReader::pump() {
  for (int i = 0; i < kBudget; ++i) {
    if (stopped_) return;
    if (!(splice_ ? read_spliced() : read_copy())) return;
  }
  // Budget spent: let the rest of this thread's work run, then go on.
  poster_.post([this] {
    if (!stopped_) pump();
  });
}

bool FrameReader::settle(const Result<std::size_t>& r, int pipe) {
  if (r && *r > 0) {
    received_ += *r;
    last_read_ = std::chrono::steady_clock::now();
    return true;
  }
  if (r) {
    end({});  // the peer closed the connection
    return false;
  }
  if (!would_block(r.error())) {
    end(r.error());
    return false;
  }
  // Splicing, the call blocks if the socket is empty or the stream's pipe is full: wait for the
  // one that is the cause.
  pollfd p{pipe, POLLOUT, 0};
  if (pipe >= 0 && ::poll(&p, 1, 0) == 0) {
    waiting_on_ = steps_.header().serial;
    io_uring_prep_poll_add(ring_.prepare(op_), pipe, POLLOUT);
  } else {
    transport_->wait_readable(op_);
  }
  return false;
}

// Copy mode: read what fits, then hand over every whole packet in the buffer.
bool FrameReader::read_copy() {
  const Result<std::size_t> r = transport_->read(std::span(buf_).subspan(end_));
  if (!settle(r, -1)) return false;
  end_ += *r;
  deliver_buffered();
  if (stopped_) return false;
  if (start_ == end_) {
    start_ = end_ = 0;
  } else if (buf_.size() - end_ < max_packet_) {
    std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  // A full buffer means more is waiting: once full packets are allowed, read in large pieces.
  if (end_ == buf_.size() && max_packet_ > buf_.size()) reserve(kBufferSize);
  return true;
}

void FrameReader::reserve(std::size_t size) {
  if (buf_.size() >= size) return;
  std::vector<std::uint8_t> bigger(size);
  std::memcpy(bigger.data(), buf_.data() + start_, end_ - start_);
  end_ -= start_;
  start_ = 0;
  buf_ = std::move(bigger);
}

void FrameReader::deliver_buffered() {
  while (!stopped_) {
    Result<std::optional<Frame>> d =
        decode_packet(std::span(buf_).subspan(start_, end_ - start_), max_packet_);
    if (!d) {
      end_malformed(framing_error(d.error()));
      return;
    }
    if (!*d) return;
    start_ += (*d)->consumed;
    packets_ = true;
    sink_.on_packet((*d)->header, (*d)->body);
  }
}

// Splice mode: one step of FrameSteps.
bool FrameReader::read_spliced() {
  using Kind = FrameSteps::Kind;
  using Event = FrameSteps::Event;
  const Kind kind = steps_.kind();
  const std::uint32_t serial = steps_.header().serial;
  int pipe = -1;
  Result<std::size_t> r = std::size_t{0};
  switch (kind) {
    case Kind::prefix:
    case Kind::body:
      r = transport_->read(std::span(buf_).subspan(end_, steps_.want()));
      break;
    case Kind::splice:
      pipe = sink_.splice_pipe_rest(serial);
      if (pipe < 0) {
        steps_.abandon_splice();  // the stream went away mid-payload: drop the rest
        return true;
      }
      r = transport_->splice_in(pipe, steps_.want());
      break;
    case Kind::discard:
      r = transport_->read(std::span(buf_).first(std::min(steps_.want(), buf_.size())));
      break;
  }
  if (!settle(r, pipe)) return false;
  const std::size_t n = *r;
  Event event = Event::none;
  switch (kind) {
    case Kind::prefix: {
      end_ += n;
      Result<Event> e = steps_.on_prefix_bytes(std::span(buf_).first(end_));
      if (!e) {
        end_malformed(framing_error(e.error()));
        return false;
      }
      event = *e;
      if (event == Event::header) {
        const PacketHeader& h = steps_.header();
        if (h.length > max_packet_) {
          end_malformed(input_error(
              fmt::format("malformed data from peer: packet length {} exceeds the limit of {}",
                          h.length, max_packet_)));
          return false;
        }
        const bool splice_ok =
            FrameSteps::spliceable(h) && sink_.splice_pipe(h.serial, steps_.body_size()) >= 0;
        event = steps_.choose_body(splice_ok);
        if (steps_.kind() == Kind::splice) end_ = 0;  // the header is kept by steps_
        if (steps_.kind() == Kind::body) reserve(h.length);
      }
      break;
    }
    case Kind::body:
      end_ += n;
      event = steps_.on_bytes(n);
      break;
    case Kind::splice:
      sink_.on_spliced(serial, n);
      event = steps_.on_bytes(n);
      break;
    case Kind::discard:
      event = steps_.on_bytes(n);
      break;
  }
  if (event == Event::packet) {
    end_ = 0;
    packets_ = true;
    sink_.on_packet(steps_.header(), std::span(buf_).subspan(kPrefixSize, steps_.body_size()));
  }
  return !stopped_;
}

}  // namespace nbdtunnel::tunnel

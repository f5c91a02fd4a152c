#include "tunnel/write_queue.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>

namespace nbdtunnel::tunnel {

namespace {
std::size_t item_size(const WriteQueue::Item& item) {
  struct {
    std::size_t operator()(const WriteQueue::ControlPacket& p) const { return p.size(); }
    std::size_t operator()(const BufferLease& l) const { return l.bytes().size(); }
    std::size_t operator()(const PipeLease& l) const { return kPrefixSize + l.payload(); }
  } size;
  return std::visit(size, item);
}
}  // namespace

WriteQueue::WriteQueue(Transport& transport, Poster& poster,
                       std::function<void(const Error&)> on_failed)
    : transport_(&transport), poster_(poster), on_failed_(std::move(on_failed)) {
  iov_.reserve(kMaxIov);
  op_.set_handler([this](int res, std::uint32_t) { on_writable(res); });
}

Status WriteQueue::push(ControlPacket packet) {
  if (closed_) return {};
  if (control_bytes_ + packet.size() > kMaxControlBytes) {
    return Error{std::make_error_code(std::errc::no_buffer_space),
                 "peer is not reading: too many control packets queued"};
  }
  control_bytes_ += packet.size();
  enqueue(std::move(packet));
  return {};
}

void WriteQueue::push(BufferLease lease) {
  enqueue(std::move(lease));
}

void WriteQueue::push(PipeLease lease) {
  assert(transport_->can_splice() && !retain_);
  enqueue(std::move(lease));
}

void WriteQueue::enqueue(Item item) {
  if (closed_) return;  // the lease returns as item goes out of scope
  items_.push_back(std::move(item));
  // A flush in progress picks the item up; a wait for room flushes when it completes; a
  // detached queue flushes once it has a transport again.
  if (flushing_ || flush_posted_ || op_.busy() || detached_) return;
  flush_posted_ = true;
  poster_.post([this] { flush(); });
}

void WriteQueue::flush() {
  flush_posted_ = false;
  flushing_ = true;
  while (!closed_ && !detached_ &&
         (!first_.empty() || !items_.empty() || transport_->has_pending_output())) {
    // With nothing queued, what is left is the transport's own (bytes it accepted earlier).
    Result<std::size_t> n = !first_.empty()  ? write_first()
                            : items_.empty() ? transport_->flush_pending()
                                             : write_some();
    if (!n) {
      if (would_block(n.error())) {
        transport_->wait_writable(op_);
      } else if (retain_) {
        detached_ = true;  // nothing is lost: the owner may attach a new transport
        on_failed_(n.error());
      } else {
        closed_ = true;
        on_failed_(n.error());
      }
      break;
    }
    if (!first_.empty()) {
      first_sent_ += *n;
      if (first_sent_ == first_.size()) {
        first_.clear();
        first_sent_ = 0;
      }
      continue;
    }
    if (items_.empty() && *n == 0) break;  // a transport that has nothing it can flush
    retire(*n);
  }
  flushing_ = false;
}

Result<std::size_t> WriteQueue::write_first() {
  const iovec v{first_.data() + first_sent_, first_.size() - first_sent_};
  return transport_->write(std::span(&v, 1), !items_.empty());
}

Result<std::size_t> WriteQueue::write_some() {
  if (auto* pipe = std::get_if<PipeLease>(&items_.front())) {
    if (front_sent_ < kPrefixSize) {
      const iovec v{pipe->prefix().data() + front_sent_, kPrefixSize - front_sent_};
      return transport_->write(std::span(&v, 1), true);
    }
    const std::size_t left = kPrefixSize + pipe->payload() - front_sent_;
    return transport_->splice_out(pipe->pipe(), left, items_.size() > 1);
  }
  // Everything up to the next pipe payload, that payload's prefix included, in one write.
  iov_.clear();
  bool ends_at_pipe = false;
  for (std::size_t i = 0; i < items_.size() && iov_.size() < kMaxIov; ++i) {
    const std::size_t skip = i == 0 ? front_sent_ : 0;
    Item& item = items_[i];
    if (auto* pipe = std::get_if<PipeLease>(&item)) {
      iov_.push_back(iovec{pipe->prefix().data() + skip, kPrefixSize - skip});
      ends_at_pipe = true;
      break;
    }
    const std::uint8_t* data = nullptr;
    if (auto* control = std::get_if<ControlPacket>(&item)) data = control->data();
    if (auto* buffer = std::get_if<BufferLease>(&item)) data = buffer->bytes().data();
    iov_.push_back(iovec{const_cast<std::uint8_t*>(data) + skip, item_size(item) - skip});
  }
  // A pipe payload's prefix waits for the payload that follows it.
  return transport_->write(iov_, ends_at_pipe);
}

void WriteQueue::retire(std::size_t n) {
  sent_ += n;
  while (n > 0 && !items_.empty()) {
    const std::size_t size = item_size(items_.front());
    const std::size_t take = std::min(n, size - front_sent_);
    front_sent_ += take;
    n -= take;
    if (front_sent_ < size) break;
    front_sent_ = 0;
    // Taken off the queue before it ends: its owner may queue more as the lease returns.
    Item done = std::move(items_.front());
    items_.pop_front();
    if (retain_) {
      if (retained_.empty()) retained_base_ = sent_ - n - size;
      retained_.push_back(std::move(done));
    } else {
      release(std::move(done));
    }
  }
}

void WriteQueue::release(Item item) {
  if (const auto* control = std::get_if<ControlPacket>(&item)) control_bytes_ -= control->size();
}

void WriteQueue::on_writable(int res) {
  if (closed_ || detached_) {
    if (on_idle_) on_idle_();
    return;
  }
  if (res < 0) {
    if (retain_) {
      detached_ = true;
    } else {
      closed_ = true;
    }
    on_failed_(system_error(-res, "send failed"));
    return;
  }
  flush();
}

void WriteQueue::close() {
  closed_ = true;
  // Leases return as the items go, oldest first; their owners may try to queue more, which is
  // refused.
  std::deque<Item> retained = std::move(retained_);
  retained_.clear();
  std::deque<Item> items = std::move(items_);
  items_.clear();
  front_sent_ = 0;
  control_bytes_ = 0;
  retained.clear();
  items.clear();
}

void WriteQueue::retain() {
  retain_ = true;
  floor_ = sent_ - front_sent_;
}

Status WriteQueue::ack(std::uint64_t received) {
  if (received > sent_) {
    return input_error(fmt::format(
        "peer acknowledged {} bytes of the channel, but only {} were sent", received, sent_));
  }
  floor_ = std::max(floor_, received);
  while (!retained_.empty() && retained_base_ + item_size(retained_.front()) <= received) {
    retained_base_ += item_size(retained_.front());
    Item done = std::move(retained_.front());
    retained_.pop_front();
    release(std::move(done));
  }
  return {};
}

void WriteQueue::detach() {
  detached_ = true;
}

Status WriteQueue::attach(Transport& transport, std::uint64_t received, ControlPacket first) {
  if (closed_) return input_error("the channel is closed");
  if (received < floor_ || received > sent_) {
    return input_error(fmt::format(
        "peer has received {} bytes of the channel; this side can send again from {} to {}",
        received, floor_, sent_));
  }
  const std::uint64_t front_start = sent_ - front_sent_;
  if (received < front_start && (retained_.empty() || retained_base_ > received)) {
    return input_error(fmt::format("bytes from {} of the channel are no longer kept", received));
  }
  if (Status s = ack(received); !s) return s;
  if (received >= front_start) {
    front_sent_ = static_cast<std::size_t>(received - front_start);
  } else {
    // Everything from the first retained item on goes out again, starting inside it.
    front_sent_ = static_cast<std::size_t>(received - retained_base_);
    while (!retained_.empty()) {
      items_.push_front(std::move(retained_.back()));
      retained_.pop_back();
    }
  }
  sent_ = received;
  transport_ = &transport;
  first_ = std::move(first);
  first_sent_ = 0;
  detached_ = false;
  if (!flush_posted_) {
    flush_posted_ = true;
    poster_.post([this] { flush(); });
  }
  return {};
}

}  // namespace nbdtunnel::tunnel

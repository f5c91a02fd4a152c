#pragma once
// Move-only leases: a stream lends the write queue the bytes of one outgoing packet until it has
// been sent (or dropped because the channel closed), then gets them back. The owner outlives
// every lease it gave out (a stream is reaped only once it is idle).

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "tunnel/protocol.hpp"

namespace nbdtunnel::tunnel {

// What a lease returns to when it ends.
class TxOwner {
 public:
  // The buffer lent as `id` is free again.
  virtual void buffer_returned(std::uint32_t id) = 0;
  // A packet of n payload bytes taken from the owner's pipe was sent or dropped.
  virtual void pipe_returned(std::size_t n) = 0;

 protected:
  ~TxOwner() = default;
};

// A whole packet (prefix and payload) in one of the owner's transmit buffers.
class BufferLease {
 public:
  BufferLease(TxOwner& owner, std::uint32_t index, std::span<const std::uint8_t> packet)
      : owner_(&owner), index_(index), packet_(packet) {}
  BufferLease(BufferLease&& o) noexcept
      : owner_(std::exchange(o.owner_, nullptr)), index_(o.index_), packet_(o.packet_) {}
  BufferLease& operator=(BufferLease&& o) noexcept {
    if (this != &o) {
      end();
      owner_ = std::exchange(o.owner_, nullptr);
      index_ = o.index_;
      packet_ = o.packet_;
    }
    return *this;
  }
  ~BufferLease() { end(); }

  std::span<const std::uint8_t> bytes() const { return packet_; }

 private:
  void end() {
    if (auto* o = std::exchange(owner_, nullptr)) o->buffer_returned(index_);
  }
  TxOwner* owner_;
  std::uint32_t index_;
  std::span<const std::uint8_t> packet_;
};

// A packet whose prefix is held here and whose payload waits in the owner's pipe; it leaves by
// splice, so it can only be queued on a transport that splices.
class PipeLease {
 public:
  PipeLease(TxOwner& owner, int pipe, std::size_t payload)
      : owner_(&owner), pipe_(pipe), payload_(payload) {}
  PipeLease(PipeLease&& o) noexcept
      : owner_(std::exchange(o.owner_, nullptr)),
        pipe_(o.pipe_),
        payload_(o.payload_),
        prefix_(o.prefix_) {}
  PipeLease& operator=(PipeLease&& o) noexcept {
    if (this != &o) {
      end();
      owner_ = std::exchange(o.owner_, nullptr);
      pipe_ = o.pipe_;
      payload_ = o.payload_;
      prefix_ = o.prefix_;
    }
    return *this;
  }
  ~PipeLease() { end(); }

  std::array<std::uint8_t, kPrefixSize>& prefix() { return prefix_; }
  const std::array<std::uint8_t, kPrefixSize>& prefix() const { return prefix_; }
  int pipe() const { return pipe_; }
  std::size_t payload() const { return payload_; }

 private:
  void end() {
    if (auto* o = std::exchange(owner_, nullptr)) o->pipe_returned(payload_);
  }
  TxOwner* owner_;
  int pipe_;
  std::size_t payload_;
  std::array<std::uint8_t, kPrefixSize> prefix_{};
};

}  // namespace nbdtunnel::tunnel

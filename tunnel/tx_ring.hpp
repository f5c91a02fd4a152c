#pragma once
// A stream's transmit memory in copy mode: the packets (prefix and payload) it has read from its
// local socket and lent to the write queue, one record each, in a ring of bytes. Records are
// taken in order and may come back in any order; space is reclaimed from the oldest record on.
// A record never wraps: when the end of the ring is too short, the next one starts at 0.
// A resumable channel keeps each record until the peer acknowledges it, so the ring is sized
// for the peer's window and what may wait for an acknowledgement. The peer may grow its window
// (by granting more credit than it drained), so the ring may grow too, up to a limit fixed at
// construction: its memory is reserved for that limit on first use, and pages are touched only
// as records reach them.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>

namespace nbdtunnel::tunnel {

class TxRing {
 public:
  explicit TxRing(std::size_t capacity) : TxRing(capacity, capacity) {}
  TxRing(std::size_t capacity, std::size_t max_capacity)
      : capacity_(std::min(capacity, max_capacity)), max_capacity_(max_capacity) {}
  TxRing(const TxRing&) = delete;
  TxRing& operator=(const TxRing&) = delete;

  std::size_t capacity() const { return capacity_; }
  std::size_t max_capacity() const { return max_capacity_; }
  // Lets records reach up to `capacity` bytes (at most max_capacity()); never shrinks.
  void grow(std::size_t capacity) {
    capacity_ = std::max(capacity_, std::min(capacity, max_capacity_));
  }
  // A contiguous region of up to `want` bytes, at least `min`, for the next record; empty when
  // there is not that much room now. One reservation at a time; commit or cancel it.
  std::span<std::uint8_t> reserve(std::size_t want, std::size_t min);
  // The first `size` bytes of the reservation become a record; returns its id for release().
  std::uint32_t commit(std::size_t size);
  void cancel() { reserved_ = false; }
  // The record is no longer lent out.
  void release(std::uint32_t id);
  // No record is lent out.
  bool empty() const { return records_.empty(); }
  std::size_t records() const { return records_.size(); }

 private:
  struct Record {
    std::size_t offset;
    std::size_t size;
    bool released;
  };

  std::size_t capacity_;
  const std::size_t max_capacity_;
  std::unique_ptr<std::uint8_t[]> bytes_;
  std::deque<Record> records_;  // oldest first
  std::uint32_t first_id_ = 0;  // the id of records_.front()
  std::size_t head_ = 0;        // where the next record goes, unless it wraps
  std::size_t reserved_at_ = 0;
  bool reserved_ = false;
};

}  // namespace nbdtunnel::tunnel

#include "tunnel/tx_ring.hpp"

#include <algorithm>
#include <cassert>

namespace nbdtunnel::tunnel {

std::span<std::uint8_t> TxRing::reserve(std::size_t want, std::size_t min) {
  assert(!reserved_ && min <= want);
  if (!bytes_) bytes_.reset(new std::uint8_t[max_capacity_]);  // not zeroed: touched as used
  if (records_.empty()) head_ = 0;
  std::size_t at = head_;
  std::size_t room = 0;
  if (records_.empty()) {
    room = capacity_;
  } else if (const std::size_t tail = records_.front().offset; head_ > tail) {
    // Free: from head_ to the end, and from 0 to the oldest record.
    room = capacity_ - head_;
    if (room < min && tail >= min) {
      at = 0;
      room = tail;
    }
  } else {
    room = tail - head_;  // wrapped: free up to the oldest record
  }
  if (room < min) return {};
  reserved_ = true;
  reserved_at_ = at;
  return std::span(bytes_.get() + at, std::min(want, room));
}

std::uint32_t TxRing::commit(std::size_t size) {
  assert(reserved_ && size > 0);
  reserved_ = false;
  records_.push_back(Record{reserved_at_, size, false});
  head_ = reserved_at_ + size;
  return first_id_ + static_cast<std::uint32_t>(records_.size() - 1);
}

void TxRing::release(std::uint32_t id) {
  const std::uint32_t index = id - first_id_;
  assert(index < records_.size());
  records_[index].released = true;
  while (!records_.empty() && records_.front().released) {
    records_.pop_front();
    ++first_id_;
  }
}

}  // namespace nbdtunnel::tunnel

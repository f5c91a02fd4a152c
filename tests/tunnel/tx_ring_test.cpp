// TxRing: records in order, released in any order, space reclaimed from the oldest on, never a
// record across the end of the ring.

#include "tunnel/tx_ring.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::tunnel {
namespace {

TEST(TxRing, RecordsFillTheRingThenWaitForTheOldest) {
  TxRing ring(100);
  std::span<std::uint8_t> a = ring.reserve(40, 10);
  ASSERT_EQ(a.size(), 40u);
  const std::uint32_t ia = ring.commit(40);
  std::span<std::uint8_t> b = ring.reserve(40, 10);
  ASSERT_EQ(b.size(), 40u);
  EXPECT_EQ(b.data(), a.data() + 40);
  const std::uint32_t ib = ring.commit(40);
  // 20 bytes left at the end: enough for the minimum, not for the wish.
  std::span<std::uint8_t> c = ring.reserve(40, 10);
  ASSERT_EQ(c.size(), 20u);
  ring.commit(20);
  EXPECT_TRUE(ring.reserve(40, 10).empty()) << "the ring is full";
  // Releasing the second record frees nothing: the oldest still holds the start.
  ring.release(ib);
  EXPECT_TRUE(ring.reserve(40, 10).empty());
  ring.release(ia);
  std::span<std::uint8_t> d = ring.reserve(40, 10);
  ASSERT_EQ(d.size(), 40u);
  EXPECT_EQ(d.data(), a.data()) << "the next record wraps to the start";
}

TEST(TxRing, ARecordNeverCrossesTheEnd) {
  TxRing ring(100);
  ASSERT_EQ(ring.reserve(90, 90).size(), 90u);
  ring.release(ring.commit(90));
  // Empty again: the ring starts over at 0 rather than leave 10 bytes at the end.
  std::span<std::uint8_t> b = ring.reserve(50, 50);
  ASSERT_EQ(b.size(), 50u);
  const std::uint32_t ib = ring.commit(50);
  std::span<std::uint8_t> c = ring.reserve(50, 30);
  ASSERT_EQ(c.size(), 50u);
  ring.commit(50);
  ring.release(ib);
  // 50 free at the start, none at the end: a record of at least 30 goes at 0.
  std::span<std::uint8_t> d = ring.reserve(60, 30);
  ASSERT_EQ(d.size(), 50u);
  EXPECT_EQ(d.data(), b.data());
}

TEST(TxRing, CancelGivesTheReservationBack) {
  TxRing ring(64);
  ASSERT_FALSE(ring.reserve(64, 64).empty());
  ring.cancel();
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.reserve(64, 64).size(), 64u);
}

}  // namespace
}  // namespace nbdtunnel::tunnel

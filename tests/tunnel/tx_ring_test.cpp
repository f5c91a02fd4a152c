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

// A peer that grows its window lets the ring grow, up to its limit.
TEST(TxRing, GrowsUpToItsLimitAndNeverShrinks) {
  TxRing ring(100, 250);
  const std::uint32_t ia = ring.commit(ring.reserve(60, 60).size());
  ring.commit(ring.reserve(40, 40).size());
  EXPECT_TRUE(ring.reserve(10, 10).empty()) << "full at its first capacity";
  ring.grow(200);
  EXPECT_EQ(ring.capacity(), 200u);
  std::span<std::uint8_t> c = ring.reserve(150, 10);
  ASSERT_EQ(c.size(), 100u) << "the new room is after the old end";
  ring.commit(100);
  ring.release(ia);
  ring.grow(1000);
  EXPECT_EQ(ring.capacity(), 250u) << "capped at the limit";
  ring.grow(10);
  EXPECT_EQ(ring.capacity(), 250u) << "never shrinks";
  // 60 bytes free at the start, 50 at the end of the grown ring: the end first.
  std::span<std::uint8_t> d = ring.reserve(100, 50);
  ASSERT_EQ(d.size(), 50u);
  EXPECT_EQ(d.data(), c.data() + 100);
}

}  // namespace
}  // namespace nbdtunnel::tunnel

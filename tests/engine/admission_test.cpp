#include "engine/admission.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <vector>

namespace nbdtunnel::engine {
namespace {

AdmissionLimits limits(std::size_t channels, std::size_t handshakes, std::size_t per_address) {
  AdmissionLimits l;
  l.max_channels = channels;
  l.max_handshakes = handshakes;
  l.max_handshakes_per_address = per_address;
  return l;
}

TEST(Admission, HandshakesPerAddressAreCappedButOtherAddressesGetIn) {
  Admission a(limits(10, 10, 2));
  auto t1 = a.admit("10.0.0.1");
  auto t2 = a.admit("10.0.0.1");
  ASSERT_TRUE(t1 && t2);
  auto t3 = a.admit("10.0.0.1");
  ASSERT_FALSE(t3);
  EXPECT_NE(t3.error().message.find("from this address"), std::string::npos);
  EXPECT_TRUE(a.admit("10.0.0.2"));
  // Once through its handshake, a connection no longer counts against the handshake limits.
  t1->authenticated();
  EXPECT_TRUE(a.admit("10.0.0.1"));
}

TEST(Admission, TotalHandshakesAreCapped) {
  Admission a(limits(10, 2, 5));
  auto t1 = a.admit("10.0.0.1");
  auto t2 = a.admit("10.0.0.2");
  ASSERT_TRUE(t1 && t2);
  auto t3 = a.admit("10.0.0.3");
  ASSERT_FALSE(t3);
  EXPECT_NE(t3.error().message.find("--max-handshakes"), std::string::npos);
}

TEST(Admission, ChannelsAreCappedAndPlacesComeBackWhenTicketsGo) {
  Admission a(limits(2, 10, 10));
  std::optional<Admission::Ticket> first;
  {
    auto t = a.admit("10.0.0.1");
    ASSERT_TRUE(t);
    t->authenticated();
    first = std::move(*t);
  }
  auto second = a.admit("10.0.0.1");
  ASSERT_TRUE(second);
  EXPECT_EQ(a.channels(), 2u);
  auto third = a.admit("10.0.0.1");
  ASSERT_FALSE(third);
  EXPECT_NE(third.error().message.find("--max-channels"), std::string::npos);
  first.reset();
  EXPECT_EQ(a.channels(), 1u);
  EXPECT_TRUE(a.admit("10.0.0.1"));
}

TEST(Admission, AMovedTicketIsGivenBackOnce) {
  Admission a(limits(1, 1, 1));
  {
    auto t = a.admit("10.0.0.1");
    ASSERT_TRUE(t);
    Admission::Ticket moved = std::move(*t);
    Admission::Ticket again;
    again = std::move(moved);
  }
  EXPECT_EQ(a.channels(), 0u);
  EXPECT_TRUE(a.admit("10.0.0.1"));
}

TEST(Admission, ARefusalSaysWhichLimitForTheMetrics) {
  Admission a(limits(3, 2, 1));
  RefusalLimit limit{};
  auto t1 = a.admit("10.0.0.1", &limit);
  ASSERT_TRUE(t1);
  EXPECT_FALSE(a.admit("10.0.0.1", &limit));
  EXPECT_EQ(limit, RefusalLimit::handshakes_per_address);
  auto t2 = a.admit("10.0.0.2", &limit);
  ASSERT_TRUE(t2);
  EXPECT_FALSE(a.admit("10.0.0.3", &limit));
  EXPECT_EQ(limit, RefusalLimit::handshakes);
  t1->authenticated();
  t2->authenticated();
  auto t3 = a.admit("10.0.0.3", &limit);
  ASSERT_TRUE(t3);
  EXPECT_FALSE(a.admit("10.0.0.4", &limit));
  EXPECT_EQ(limit, RefusalLimit::channels);
}

}  // namespace
}  // namespace nbdtunnel::engine

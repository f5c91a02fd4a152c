// The names a migration gives its jobs and nodes in the source QEMU, and the parse back to the
// migration's tag that tells a live run's names from a dead one's.
#include "engine/source_names.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::engine {
namespace {

TEST(SourceNames, CarryTheTagAndTheDiskIndex) {
  const SourceNames n = source_names("first", 2);
  EXPECT_EQ(n.job, "nbdtunnel-mirror-first-2");
  EXPECT_EQ(n.nbd_node, "nbdtunnel-n-first-2");
  EXPECT_EQ(n.view_node, "nbdtunnel-t-first-2");
}

TEST(SourceNames, ALongIdGoesInAsItsHash) {
  EXPECT_EQ(name_tag("short-id.1"), "short-id.1");
  const std::string tag = name_tag("an-id-of-more-than-16-characters");
  EXPECT_EQ(tag.size(), 16U);
  EXPECT_EQ(tag, name_tag("an-id-of-more-than-16-characters"));
  EXPECT_NE(tag, name_tag("an-id-of-more-than-16-characterz"));
  // The longest name still fits QEMU's 31 characters of a node name.
  EXPECT_LE(source_names(tag, 99).nbd_node.size(), 31U);
}

TEST(SourceNames, EachNameParsesBackToItsTag) {
  for (const std::string tag : {"first", "a-b-c", "v1.2-3", "x", "0123456789abcdef", "mirror-t"}) {
    for (std::size_t i : {0U, 7U, 123U}) {
      const SourceNames n = source_names(tag, i);
      EXPECT_EQ(tag_of_source_name(n.job), tag) << n.job;
      EXPECT_EQ(tag_of_source_name(n.nbd_node), tag) << n.nbd_node;
      EXPECT_EQ(tag_of_source_name(n.view_node), tag) << n.view_node;
    }
  }
}

TEST(SourceNames, NamesNotMadeByAMigrationHaveNoTag) {
  for (const char* name :
       {"disk0", "", "nbdtunnel-", "nbdtunnel-mirror-", "nbdtunnel-mirror-0", "nbdtunnel-n--0",
        "nbdtunnel-x-first-0", "nbdtunnel-t-first-", "nbdtunnel-t-first-0a", "nbdtunnel-t-first",
        "nbdtunnel-first-0", "Nbdtunnel-n-first-0", "#block123"}) {
    EXPECT_EQ(tag_of_source_name(name), std::nullopt) << name;
  }
}

}  // namespace
}  // namespace nbdtunnel::engine

#include "engine/channel_security.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace nbdtunnel::engine {
namespace {

class ChannelSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override { std::filesystem::create_directories(dir_); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void touch(const std::vector<std::string>& files) {
    for (const auto& f : files) std::ofstream(dir_ + "/" + f) << "x";
  }
  const std::string dir_ = "/tmp/nbdtunnel-security-test-" + std::to_string(::getpid());
  const std::string none_ = "/tmp/nbdtunnel-security-test-nothing-here";
};

TEST_F(ChannelSecurityTest, PlainIsAllowedOnLoopbackOnly) {
  TlsArgs args;
  for (const char* host : {"127.0.0.1", "127.1.2.3", "::1", "localhost"}) {
    auto s = choose_security(args, TlsSide::dest, host, none_);
    ASSERT_TRUE(s) << host << ": " << s.error().message;
    EXPECT_FALSE(s->tls);
  }
  for (const char* host : {"0.0.0.0", "::", "192.0.2.1", "dest.example"}) {
    auto s = choose_security(args, TlsSide::dest, host, none_);
    ASSERT_FALSE(s) << host;
    EXPECT_NE(s.error().message.find("--tls-dir"), std::string::npos) << s.error().message;
    EXPECT_NE(s.error().message.find("--insecure"), std::string::npos) << s.error().message;
  }
  auto src = choose_security(args, TlsSide::source, "192.0.2.1", none_);
  ASSERT_FALSE(src);
  EXPECT_NE(src.error().message.find("client-cert.pem"), std::string::npos);
}

TEST_F(ChannelSecurityTest, InsecureAllowsPlainOffLoopback) {
  TlsArgs args;
  args.insecure = true;
  auto s = choose_security(args, TlsSide::dest, "0.0.0.0", none_);
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_FALSE(s->tls);
}

TEST_F(ChannelSecurityTest, DefaultDirectoryIsUsedOnlyWhenItHoldsTheSidesFiles) {
  TlsArgs args;
  touch({"ca-cert.pem", "server-cert.pem", "server-key.pem"});
  auto dest = choose_security(args, TlsSide::dest, "0.0.0.0", dir_);
  ASSERT_TRUE(dest) << dest.error().message;
  EXPECT_TRUE(dest->tls);
  EXPECT_TRUE(dest->defaulted);
  EXPECT_EQ(dest->dir, dir_);
  // No client certificate there: the source side stays plain (on loopback).
  auto source = choose_security(args, TlsSide::source, "127.0.0.1", dir_);
  ASSERT_TRUE(source);
  EXPECT_FALSE(source->tls);
  args.no_tls = true;
  auto off = choose_security(args, TlsSide::dest, "127.0.0.1", dir_);
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->tls);
}

TEST_F(ChannelSecurityTest, VerifyHostIsTheDialledHostUnlessOverridden) {
  TlsArgs args;
  args.dir = dir_;
  auto s = choose_security(args, TlsSide::source, "192.0.2.7", none_);
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->tls);
  EXPECT_EQ(s->verify_host, "192.0.2.7");
  args.hostname = "dest.example";
  s = choose_security(args, TlsSide::source, "192.0.2.7", none_);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->verify_host, "dest.example");
}

TEST_F(ChannelSecurityTest, ContradictionsAreUsageErrors) {
  TlsArgs both;
  both.dir = dir_;
  both.no_tls = true;
  EXPECT_FALSE(choose_security(both, TlsSide::dest, "127.0.0.1", none_));
  TlsArgs insecure_tls;
  insecure_tls.dir = dir_;
  insecure_tls.insecure = true;
  EXPECT_FALSE(choose_security(insecure_tls, TlsSide::dest, "127.0.0.1", none_));
  TlsArgs dn_plain;
  dn_plain.allowed_dn = {"CN=*"};
  auto s = choose_security(dn_plain, TlsSide::dest, "127.0.0.1", none_);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("--tls-allowed-dn"), std::string::npos);
}

}  // namespace
}  // namespace nbdtunnel::engine

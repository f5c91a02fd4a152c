#pragma once
// What the TLS tests share: a CA and certificate directories, connected loopback TCP pairs, an
// event loop run until a condition holds, and handshakes run to their outcome.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "test_pki.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/tls_context.hpp"
#include "tunnel/tls_handshake.hpp"
#include "tunnel/transport.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel::tlstest {

using namespace std::chrono_literals;

// A connected pair of TCP sockets on 127.0.0.1: {client, server}.
std::pair<unique_fd, unique_fd> tcp_pair();

// One handshake and what it reported.
struct HandshakeSide {
  std::unique_ptr<TlsHandshake> handshake;
  std::optional<Result<std::unique_ptr<Transport>>> result;
  bool done() const { return result.has_value(); }
  bool ok() const { return result && result->ok(); }
  // The error's message, or "" if it succeeded (or has not finished).
  std::string error() const { return result && !result->ok() ? result->error().message : ""; }
  Transport& transport() { return *result->value(); }
};

class TlsFixture : public ::testing::Test {
 protected:
  static constexpr const char* kClientDn = "C=GB,O=Example,CN=client";

  TlsFixture();
  ~TlsFixture() override;

  std::filesystem::path server_dir() const { return dir_ / "server"; }
  std::filesystem::path client_dir() const { return dir_ / "client"; }
  std::shared_ptr<TlsContext> context(TlsRole role, std::vector<std::string> allowed_dn = {});

  // Runs the loop until done() or the upper bound passes; returns done().
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds bound = 20s);
  // Starts a handshake on fd; its outcome lands in side.
  void start(HandshakeSide& side, unique_fd fd, std::shared_ptr<TlsContext> ctx,
             std::string host = "", std::chrono::milliseconds timeout = 10s);
  // A client (dialling host) and a server handshake over a fresh TCP pair, run to their end.
  void handshake_pair(HandshakeSide& client, HandshakeSide& server, std::string host = "localhost",
                      std::vector<std::string> allowed_dn = {});
  // Reads once something (bytes, end or error) is there, waiting on the ring meanwhile.
  Result<std::size_t> read_once(Transport& t, std::span<std::uint8_t> into);

  boost::asio::io_context io_;
  Ring ring_{io_};
  std::filesystem::path dir_;
  nbdtunnel::testing::TestPki pki_;
};

}  // namespace nbdtunnel::tunnel::tlstest

// TLS handshakes over real loopback TCP with real certificates: mutual success, and each
// refusal, worded by cause on the side that detects it while the other side fails cleanly.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <vector>

#include "tls_fixture.hpp"
#include "tunnel/packet.hpp"
#include "tunnel/protocol.hpp"
#include "tunnel/tls_transport.hpp"

namespace nbdtunnel::tunnel::tlstest {
namespace {

using nbdtunnel::testing::CertOptions;
using nbdtunnel::testing::TestPki;
using ::testing::HasSubstr;

class TlsHandshakeTest : public TlsFixture {
 protected:
  // The client's first read after a handshake the server went on to refuse.
  std::string client_read_error(HandshakeSide& client) {
    EXPECT_TRUE(client.ok()) << client.error();
    if (!client.ok()) return "";
    std::vector<std::uint8_t> buf(4096);
    Result<std::size_t> r = read_once(client.transport(), buf);
    EXPECT_FALSE(r) << "read " << (r ? *r : 0) << " bytes";
    return r ? "" : r.error().message;
  }
  // Reads from a raw socket until n bytes or the end, polling up to an upper bound.
  std::vector<std::uint8_t> read_raw(int fd, std::size_t n) {
    std::vector<std::uint8_t> got;
    for (int i = 0; i < 200 && got.size() < n; ++i) {
      run_until([] { return false; }, 5ms);
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) != 1) continue;
      std::uint8_t buf[4096];
      const ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (k <= 0) break;
      got.insert(got.end(), buf, buf + k);
    }
    return got;
  }
};

TEST_F(TlsHandshakeTest, MutualCertificatesSucceedOnBothSides) {
  HandshakeSide client, server;
  handshake_pair(client, server);
  ASSERT_TRUE(client.ok()) << client.error();
  ASSERT_TRUE(server.ok()) << server.error();
  EXPECT_EQ(server.handshake->peer_dn(), kClientDn);
  EXPECT_EQ(client.handshake->peer_dn(), "O=nbdtunnel test,CN=localhost");
  EXPECT_THAT(client.transport().describe(), HasSubstr("tls1.3 TLS_AES_128_GCM_SHA256"));
  EXPECT_FALSE(client.transport().can_splice());
}

TEST_F(TlsHandshakeTest, ServerCertificateFromAnUnknownCaIsRefusedByTheClient) {
  TestPki other("O=elsewhere,CN=other CA");
  other.write_server_dir(server_dir());
  pki_.write_ca(server_dir());  // the server still trusts the clients' CA
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_THAT(client.error(),
              HasSubstr("the destination's certificate 'O=nbdtunnel test,CN=localhost' "
                        "is not signed by the CA in"));
  EXPECT_THAT(server.error(),
              HasSubstr("the client refused the TLS handshake: TLS alert 'unknown CA'"));
}

TEST_F(TlsHandshakeTest, ClientCertificateFromAnUnknownCaIsRefusedByTheServer) {
  TestPki other("O=elsewhere,CN=other CA");
  CertOptions o;
  o.subject = kClientDn;
  other.write_client_dir(client_dir(), o);
  pki_.write_ca(client_dir());
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_THAT(server.error(),
              HasSubstr("the client's certificate '" + std::string(kClientDn) +
                        "' is not signed by the CA in " + server_dir().string() + "/ca-cert.pem"));
  EXPECT_THAT(
      client_read_error(client),
      HasSubstr("the destination refused this client's certificate: TLS alert 'unknown CA'"));
}

TEST_F(TlsHandshakeTest, ExpiredServerCertificate) {
  CertOptions o;
  o.not_before = -48h;
  o.not_after = -24h;
  pki_.write_server_dir(server_dir(), o);
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_THAT(client.error(), HasSubstr("the destination's certificate"));
  EXPECT_THAT(client.error(), HasSubstr("expired on"));
  EXPECT_THAT(server.error(), HasSubstr("certificate expired"));
}

TEST_F(TlsHandshakeTest, ExpiredClientCertificate) {
  CertOptions o;
  o.subject = kClientDn;
  o.not_before = -48h;
  o.not_after = -1h;
  pki_.write_client_dir(client_dir(), o);
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_THAT(server.error(),
              HasSubstr("the client's certificate 'C=GB,O=Example,CN=client' expired on"));
  EXPECT_THAT(
      client_read_error(client),
      HasSubstr(
          "the destination refused this client's certificate: TLS alert 'certificate expired'"));
}

TEST_F(TlsHandshakeTest, NotYetValidServerCertificate) {
  CertOptions o;
  o.not_before = 24h;
  o.not_after = 48h;
  pki_.write_server_dir(server_dir(), o);
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_THAT(client.error(), HasSubstr("is not valid before"));
  EXPECT_THAT(client.error(), HasSubstr("clocks"));
  EXPECT_THAT(server.error(), HasSubstr("the client refused the TLS handshake"));
}

TEST_F(TlsHandshakeTest, ClientWithoutACertificateIsRefused) {
  auto [c, s] = tcp_pair();
  auto server_ctx = context(TlsRole::server);
  auto client_ctx = context(TlsRole::client);
  // The client offers no certificate when the server asks for one.
  SSL_CTX_set_cert_cb(
      client_ctx->native(),
      [](SSL* ssl, void*) {
        SSL_certs_clear(ssl);
        return 1;
      },
      nullptr);
  HandshakeSide client, server;
  start(server, std::move(s), server_ctx);
  start(client, std::move(c), client_ctx, "localhost");
  ASSERT_TRUE(run_until([&] { return client.done() && server.done(); }));
  EXPECT_THAT(server.error(), HasSubstr("the client sent no certificate"));
  EXPECT_THAT(client_read_error(client),
              HasSubstr("the destination refused this client's certificate"));
}

TEST_F(TlsHandshakeTest, HostnameMismatchNamesBothNamesAndTheOption) {
  HandshakeSide client, server;
  handshake_pair(client, server, "dest.example");
  EXPECT_THAT(client.error(), HasSubstr("does not hold the name dialled, 'dest.example'"));
  EXPECT_THAT(client.error(), HasSubstr("DNS:localhost, IP:127.0.0.1"));
  EXPECT_THAT(client.error(), HasSubstr("--tls-hostname"));
  EXPECT_THAT(server.error(), HasSubstr("the client refused the TLS handshake"));
}

TEST_F(TlsHandshakeTest, IpLiteralIsCheckedAgainstTheIpSans) {
  HandshakeSide client, server;
  handshake_pair(client, server, "127.0.0.1");
  EXPECT_TRUE(client.ok()) << client.error();
  EXPECT_TRUE(server.ok()) << server.error();

  HandshakeSide client2, server2;
  handshake_pair(client2, server2, "127.0.0.2");
  EXPECT_THAT(client2.error(), HasSubstr("does not hold the name dialled, '127.0.0.2'"));
  EXPECT_THAT(client2.error(), HasSubstr("IP:127.0.0.1"));
  EXPECT_FALSE(server2.ok());
}

TEST_F(TlsHandshakeTest, DnNotAllowedIsRefusedWithTheDn) {
  HandshakeSide client, server;
  handshake_pair(client, server, "localhost", {"C=GB,O=Other,CN=*", "CN=client"});
  EXPECT_THAT(server.error(), HasSubstr("the client's certificate DN 'C=GB,O=Example,CN=client' is "
                                        "not allowed by --tls-allowed-dn"));
  EXPECT_THAT(client_read_error(client), HasSubstr("--tls-allowed-dn"));
}

TEST_F(TlsHandshakeTest, DnAllowedByPattern) {
  HandshakeSide client, server;
  handshake_pair(client, server, "localhost", {"C=GB,O=Other,CN=*", "C=GB,O=Example,CN=*"});
  EXPECT_TRUE(client.ok()) << client.error();
  ASSERT_TRUE(server.ok()) << server.error();
  EXPECT_EQ(server.handshake->peer_dn(), kClientDn);
}

TEST_F(TlsHandshakeTest, RevokedClientCertificateIsRefusedThroughTheCrl) {
  CertOptions o;
  o.subject = kClientDn;
  const std::uint64_t serial = pki_.write_client_dir(client_dir(), o);
  pki_.write_crl(server_dir(), {serial});
  ASSERT_TRUE(context(TlsRole::server)->checks_crl());
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_THAT(server.error(), HasSubstr("is revoked by " + server_dir().string() + "/ca-crl.pem"));
  EXPECT_THAT(
      client_read_error(client),
      HasSubstr(
          "the destination refused this client's certificate: TLS alert 'certificate revoked'"));
}

TEST_F(TlsHandshakeTest, CrlRevokingSomethingElseLetsTheClientIn) {
  pki_.write_crl(server_dir(), {12345});
  HandshakeSide client, server;
  handshake_pair(client, server);
  EXPECT_TRUE(client.ok()) << client.error();
  EXPECT_TRUE(server.ok()) << server.error();
}

TEST_F(TlsHandshakeTest, PlainNbdtunnelClientIsToldInPlainThatTlsIsRequired) {
  auto [c, s] = tcp_pair();
  Hello hello;
  hello.host_id = "src";
  hello.window = kMinWindow;
  std::vector<std::uint8_t> body;
  encode_hello(body, hello);
  const auto call = make_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::hello),
                                            PacketType::call, 7, PacketStatus::ok),
                                body);
  ASSERT_EQ(::send(c.get(), call.data(), call.size(), 0), static_cast<ssize_t>(call.size()));
  HandshakeSide server;
  start(server, std::move(s), context(TlsRole::server));
  ASSERT_TRUE(run_until([&] { return server.done(); }));
  EXPECT_EQ(server.error(), "plain (non-TLS) nbdtunnel client; the destination requires TLS");

  const std::vector<std::uint8_t> reply = read_raw(c.get(), 1u << 16);
  Result<std::optional<Frame>> f = decode_packet(reply);
  ASSERT_TRUE(f && *f) << "no whole packet in " << reply.size() << " bytes";
  EXPECT_EQ((*f)->header.type, static_cast<std::uint32_t>(PacketType::reply));
  EXPECT_EQ((*f)->header.status, static_cast<std::uint32_t>(PacketStatus::error));
  EXPECT_EQ((*f)->header.serial, 7u);
  EXPECT_EQ((*f)->header.procedure, static_cast<std::uint32_t>(Proc::hello));
  Result<RemoteError> e = decode_remote_error((*f)->body);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, static_cast<std::int32_t>(ErrorCode::handshake_required));
  EXPECT_THAT(e->message.value_or(""), HasSubstr("requires TLS: give the source --tls-dir"));
}

TEST_F(TlsHandshakeTest, GarbageClientIsNotATlsClient) {
  auto [c, s] = tcp_pair();
  const char garbage[] = "GET / HTTP/1.0\r\n\r\n";
  ASSERT_GT(::send(c.get(), garbage, sizeof garbage - 1, 0), 0);
  ::shutdown(c.get(), SHUT_WR);
  HandshakeSide server;
  start(server, std::move(s), context(TlsRole::server));
  ASSERT_TRUE(run_until([&] { return server.done(); }));
  EXPECT_THAT(server.error(), HasSubstr("not a TLS client (its first bytes: 47 45 54 20"));
}

TEST_F(TlsHandshakeTest, ShortGarbageIsRefusedWithoutWaitingForMore) {
  auto [c, s] = tcp_pair();
  ASSERT_EQ(::send(c.get(), "SSH-", 4, 0), 4);  // and then nothing, the connection open
  HandshakeSide server;
  start(server, std::move(s), context(TlsRole::server), "", 30s);
  ASSERT_TRUE(run_until([&] { return server.done(); }));
  EXPECT_EQ(server.error(), "not a TLS client (its first bytes: 53 53 48 2d)");
}

TEST_F(TlsHandshakeTest, TlsClientToAPlainPeerThatCloses) {
  auto [c, s] = tcp_pair();
  HandshakeSide client;
  start(client, std::move(c), context(TlsRole::client), "localhost");
  // The plain peer reads the ClientHello, finds no packet in it and hangs up.
  EXPECT_FALSE(read_raw(s.get(), 1).empty());
  s.reset();
  ASSERT_TRUE(run_until([&] { return client.done(); }));
  EXPECT_THAT(client.error(), HasSubstr("is the destination running with TLS (--tls-dir)?"));
}

TEST_F(TlsHandshakeTest, SilentPeerTimesOut) {
  auto [c, s] = tcp_pair();
  HandshakeSide server;
  start(server, std::move(s), context(TlsRole::server), "", 200ms);
  ASSERT_TRUE(run_until([&] { return server.done(); }));
  EXPECT_EQ(server.error(), "TLS handshake timed out after 200 ms");

  HandshakeSide client;  // the client waits for a ServerHello that never comes
  auto [c2, s2] = tcp_pair();
  start(client, std::move(c2), context(TlsRole::client), "localhost", 200ms);
  ASSERT_TRUE(run_until([&] { return client.done(); }));
  EXPECT_EQ(client.error(), "TLS handshake timed out after 200 ms");
}

TEST_F(TlsHandshakeTest, CancelReportsOnceAndLetsTheOwnerDestroyIt) {
  auto [c, s] = tcp_pair();
  int calls = 0;
  std::string error;
  std::unique_ptr<TlsHandshake> h;
  h = std::make_unique<TlsHandshake>(io_, ring_, std::move(s), context(TlsRole::server), "", 10s,
                                     [&](Result<std::unique_ptr<Transport>> r) {
                                       ++calls;
                                       error = r ? "" : r.error().message;
                                       h.reset();  // allowed inside done
                                     });
  h->start();
  run_until([] { return false; }, 20ms);
  h->cancel();
  h->cancel();
  ASSERT_TRUE(run_until([&] { return calls > 0; }));
  run_until([] { return false; }, 20ms);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(error, "TLS handshake cancelled");
  EXPECT_FALSE(h);
}

TEST(TlsContextTest, MissingAndDamagedFilesAreNamed) {
  char tmpl[] = "/tmp/nbdtunnel-tlsctx-XXXXXX";
  const std::filesystem::path dir = ::mkdtemp(tmpl);
  TlsOptions o{dir.string(), TlsRole::server, {}};
  Result<std::shared_ptr<TlsContext>> r = TlsContext::load(o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            (dir / "ca-cert.pem").string() + ": missing (looked for it because TLS is on)");
  EXPECT_FALSE(TlsContext::files_present(dir, TlsRole::server));

  TestPki pki;
  pki.write_server_dir(dir);
  EXPECT_TRUE(TlsContext::files_present(dir, TlsRole::server));
  EXPECT_FALSE(TlsContext::files_present(dir, TlsRole::client));
  EXPECT_TRUE(TlsContext::load(o));
  { std::ofstream(dir / "server-cert.pem") << "not a certificate\n"; }
  r = TlsContext::load(o);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("server-cert.pem: is not a PEM certificate"));

  // A key that belongs to another certificate.
  TestPki other;
  other.write_server_dir(dir / "other");
  pki.write_server_dir(dir);
  std::filesystem::copy_file(dir / "other" / "server-key.pem", dir / "server-key.pem",
                             std::filesystem::copy_options::overwrite_existing);
  r = TlsContext::load(o);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("server-key.pem: does not match the certificate in"));
  std::filesystem::remove_all(dir);
}

TEST(TlsContextTest, OffloadSummarySaysWhatRunsTheCrypto) {
  const std::string s = TlsContext::offload_summary();
  EXPECT_THAT(s, HasSubstr("kTLS"));
  // Copy mode with user-space crypto is what runs as long as kTLS itself is not implemented,
  // whatever the kernel offers.
  EXPECT_THAT(s, HasSubstr("user-space crypto"));
}

// What an unauthenticated connection costs the server while its handshake waits for the
// client's last flight: the SSL and the handshake object, a few dozen KiB at most.
TEST_F(TlsHandshakeTest, AHandshakeWaitingForTheClientCostsKilobytes) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "allocation sizes mean nothing under ASan";
#else
  // A real ClientHello, captured once from a client that never gets an answer.
  auto [c0, s0] = tcp_pair();
  HandshakeSide capture;
  start(capture, std::move(c0), context(TlsRole::client), "localhost");
  const std::vector<std::uint8_t> hello = read_raw(s0.get(), 1);
  ASSERT_FALSE(hello.empty());
  capture.handshake->cancel();
  ASSERT_TRUE(run_until([&] { return capture.done(); }));

  constexpr int kConnections = 32;
  auto server_ctx = context(TlsRole::server);
  std::vector<unique_fd> clients;
  std::vector<std::pair<unique_fd, unique_fd>> pairs;
  for (int i = 0; i < kConnections; ++i) pairs.push_back(tcp_pair());
  std::vector<HandshakeSide> servers(kConnections);
  const std::size_t before = mallinfo2().uordblks;
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_EQ(::send(pairs[i].first.get(), hello.data(), hello.size(), 0),
              static_cast<ssize_t>(hello.size()));
    start(servers[i], std::move(pairs[i].second), server_ctx);
  }
  // Every server has answered (ServerHello .. Finished) and now waits for the client.
  for (int i = 0; i < kConnections; ++i) {
    pollfd p{pairs[i].first.get(), POLLIN, 0};
    ASSERT_TRUE(run_until([&] { return ::poll(&p, 1, 0) == 1; }));
  }
  run_until([] { return false; }, 20ms);
  const std::size_t after = mallinfo2().uordblks;
  const std::size_t per_connection = after > before ? (after - before) / kConnections : 0;
  RecordProperty("bytes_per_handshake", static_cast<int>(per_connection));
  EXPECT_LT(per_connection, 64u << 10) << per_connection << " bytes per waiting handshake";
  for (auto& s : servers) EXPECT_FALSE(s.done()) << s.error();
  for (auto& s : servers) s.handshake->cancel();
  ASSERT_TRUE(run_until([&] {
    return std::all_of(servers.begin(), servers.end(), [](auto& s) { return s.done(); });
  }));
#endif
}

}  // namespace
}  // namespace nbdtunnel::tunnel::tlstest

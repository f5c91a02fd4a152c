#include "tls_fixture.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>

namespace nbdtunnel::tunnel::tlstest {

std::pair<unique_fd, unique_fd> tcp_pair() {
  unique_fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::listen(listener.get(), 1), 0);
  EXPECT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  unique_fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  unique_fd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(server);
  return {std::move(client), std::move(server)};
}

TlsFixture::TlsFixture() {
  char tmpl[] = "/tmp/nbdtunnel-tls-XXXXXX";
  dir_ = ::mkdtemp(tmpl);
  pki_.write_server_dir(server_dir());
  nbdtunnel::testing::CertOptions client;
  client.subject = kClientDn;
  client.dns = {"client.example"};
  client.ips = {};
  pki_.write_client_dir(client_dir(), client);
}

TlsFixture::~TlsFixture() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::shared_ptr<TlsContext> TlsFixture::context(TlsRole role, std::vector<std::string> allowed_dn) {
  TlsOptions o;
  o.dir = role == TlsRole::server ? server_dir() : client_dir();
  o.role = role;
  o.allowed_dn = std::move(allowed_dn);
  Result<std::shared_ptr<TlsContext>> ctx = TlsContext::load(o);
  EXPECT_TRUE(ctx) << ctx.error().message;
  return ctx ? *ctx : nullptr;
}

bool TlsFixture::run_until(const std::function<bool()>& done, std::chrono::milliseconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    io_.restart();
    io_.run_for(2ms);
  }
  return done();
}

void TlsFixture::start(HandshakeSide& side, unique_fd fd, std::shared_ptr<TlsContext> ctx,
                       std::string host, std::chrono::milliseconds timeout) {
  side.handshake = std::make_unique<TlsHandshake>(
      io_, ring_, std::move(fd), std::move(ctx), std::move(host), timeout,
      [&side](Result<std::unique_ptr<Transport>> r) { side.result.emplace(std::move(r)); });
  side.handshake->start();
}

void TlsFixture::handshake_pair(HandshakeSide& client, HandshakeSide& server, std::string host,
                                std::vector<std::string> allowed_dn) {
  auto [c, s] = tcp_pair();
  auto server_ctx = context(TlsRole::server, std::move(allowed_dn));
  auto client_ctx = context(TlsRole::client);
  ASSERT_TRUE(server_ctx && client_ctx);
  start(server, std::move(s), server_ctx);
  start(client, std::move(c), client_ctx, std::move(host));
  ASSERT_TRUE(run_until([&] { return client.done() && server.done(); }));
}

Result<std::size_t> TlsFixture::read_once(Transport& t, std::span<std::uint8_t> into) {
  for (int i = 0; i < 10'000; ++i) {
    Result<std::size_t> r = t.read(into);
    if (r || !would_block(r.error())) return r;
    Op op;
    bool fired = false;
    op.set_handler([&](int, std::uint32_t) { fired = true; });
    t.wait_readable(op);
    if (!run_until([&] { return fired; })) {
      t.shutdown();  // completes the wait, so op can go
      run_until([&] { return fired; });
      return Error{std::make_error_code(std::errc::timed_out), "test: nothing to read"};
    }
  }
  return Error{std::make_error_code(std::errc::timed_out), "test: no progress"};
}

}  // namespace nbdtunnel::tunnel::tlstest

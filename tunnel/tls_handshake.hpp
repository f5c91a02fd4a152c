#pragma once
// Runs a TLS 1.3 handshake on a connected TCP socket before any Channel exists, so nothing but
// the handshake is served to an unauthenticated peer and it costs only an SSL and a socket.
// The server first peeks at the first bytes: a plain nbdtunnel client is told in plain that TLS
// is required (an ERROR reply it can show), anything else that is not TLS is refused in words.
// done gets a TlsTransport, or an error naming the cause (the caller adds the peer address).

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tunnel/poster.hpp"
#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/tls_context.hpp"
#include "tunnel/tls_transport.hpp"
#include "tunnel/transport.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

class TlsHandshake {
 public:
  using Done = std::function<void(Result<std::unique_ptr<Transport>>)>;
  // The most a server reads of a peer that turned out not to speak TLS.
  static constexpr std::size_t kMaxProbe = 4096;

  // fd: a connected TCP socket. verify_host: client side, the host or IP literal dialled, which
  // the server certificate's SANs must hold ("" checks only that it chains to the CA); "" on
  // the server.
  TlsHandshake(boost::asio::io_context& io, Ring& ring, unique_fd fd,
               std::shared_ptr<TlsContext> ctx, std::string verify_host,
               std::chrono::milliseconds timeout, Done done);
  // Only once done has been called (or before start()).
  ~TlsHandshake();
  TlsHandshake(const TlsHandshake&) = delete;
  TlsHandshake& operator=(const TlsHandshake&) = delete;

  void start();
  // done follows with an operation_canceled error, unless it is already on its way.
  void cancel();
  // After success: the peer certificate's subject DN, for logs.
  const std::string& peer_dn() const { return peer_dn_; }

 private:
  enum class Phase { idle, sniff, plain_probe, handshake, flush, finished };

  void step();
  void sniff();
  void plain_probe();
  void answer_plain(const std::vector<std::uint8_t>& request);
  void handshake();
  void flush();
  void wait(short events);
  void on_wait(int res);
  void fail(Error e);
  void succeed();
  // Reports the outcome from a posted handler once no Op is busy.
  void finish(Result<std::unique_ptr<Transport>> r);
  void report_when_idle();
  Error handshake_error(int ssl_error);
  static int verify(int ok, X509_STORE_CTX* store);

  Ring& ring_;
  Poster poster_;
  std::shared_ptr<TlsContext> ctx_;
  unique_fd fd_;  // until the session takes it
  std::unique_ptr<TlsSession> session_;
  std::string verify_host_;
  std::chrono::milliseconds timeout_;
  Done done_;
  boost::asio::steady_timer timer_;
  Op op_;
  Phase phase_ = Phase::idle;
  std::vector<std::uint8_t> probe_;  // what a non-TLS peer sent
  std::optional<Result<std::unique_ptr<Transport>>> outcome_;
  bool reported_ = false;
  std::string peer_dn_;
};

}  // namespace nbdtunnel::tunnel

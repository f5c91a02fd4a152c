#pragma once
// TLS 1.3 over a TCP socket, in user space. OpenSSL never touches the socket: a BIO of our own
// receives with non-blocking recv when OpenSSL asks for ciphertext, and collects the ciphertext
// OpenSSL produces in a buffer that we send; the ring only waits for readiness, as for
// SocketTransport. A TlsSession is that pairing (SSL, socket, unsent ciphertext); TlsHandshake
// drives it through the handshake and then hands it to a TlsTransport.

#include <openssl/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tunnel/tls_context.hpp"
#include "tunnel/transport.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

class TlsSession {
 public:
  // A new SSL of ctx over socket (made non-blocking, TCP_NODELAY).
  static Result<std::unique_ptr<TlsSession>> create(std::shared_ptr<TlsContext> ctx,
                                                    unique_fd socket);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  SSL* ssl() const { return ssl_; }
  int fd() const { return socket_.get(); }
  const TlsContext& context() const { return *ctx_; }
  bool is_server() const { return ctx_->role() == TlsRole::server; }
  // "the destination" / "the client": who the peer is, for messages.
  const char* peer_name() const;

  // Sends buffered ciphertext: bytes sent (0: none was buffered), would_block, or an error.
  Result<std::size_t> send_pending();
  std::size_t pending() const { return out_.size() - out_start_; }

  // What the receive side saw, for explaining an OpenSSL failure.
  bool peer_closed() const { return peer_closed_; }
  int recv_errno() const { return recv_errno_; }
  int send_errno() const { return send_errno_; }
  // The last fatal alert the peer sent (0: none) and its text.
  int alert() const { return alert_; }
  const std::string& alert_text() const { return alert_text_; }
  // Set by certificate verification: why the peer's certificate was refused, in words.
  std::string verify_problem;

 private:
  TlsSession(std::shared_ptr<TlsContext> ctx, unique_fd socket, SSL* ssl);
  static int bio_read(BIO* bio, char* buf, int len);
  static int bio_write(BIO* bio, const char* buf, int len);
  static long bio_ctrl(BIO* bio, int cmd, long num, void* ptr);
  static void on_info(const SSL* ssl, int where, int ret);

  std::shared_ptr<TlsContext> ctx_;
  unique_fd socket_;
  SSL* ssl_;
  std::vector<std::uint8_t> out_;  // ciphertext; bytes before out_start_ are sent
  std::size_t out_start_ = 0;
  bool peer_closed_ = false;
  int recv_errno_ = 0;
  int send_errno_ = 0;
  int alert_ = 0;
  std::string alert_text_;
};

// A Transport over an established TlsSession. It cannot splice (payloads are decrypted and
// encrypted in user space): channels over it run in copy mode.
class TlsTransport final : public Transport {
 public:
  // Ciphertext held before write() refuses more: a few dozen records.
  static constexpr std::size_t kMaxPendingCiphertext = 512u << 10;
  // Pieces smaller than this are gathered into one record; larger ones are encrypted in place.
  static constexpr std::size_t kStagingSize = 16u << 10;

  TlsTransport(Ring& ring, std::unique_ptr<TlsSession> session);
  ~TlsTransport() override;

  Result<std::size_t> read(std::span<std::uint8_t> into) override;
  Result<std::size_t> write(std::span<const iovec> iov, bool more) override;
  bool can_splice() const override { return false; }
  Result<std::size_t> splice_in(int pipe_w, std::size_t n) override;
  Result<std::size_t> splice_out(int pipe_r, std::size_t n, bool more) override;
  bool has_pending_output() const override;
  Result<std::size_t> flush_pending() override;
  void wait_readable(Op& op) override;
  void wait_writable(Op& op) override;
  // Sends close_notify (best effort: what the socket takes now), then shuts the socket down.
  void shutdown() override;
  // "tls1.3 TLS_AES_128_GCM_SHA256 (user-space crypto)".
  std::string describe() const override;

  // The peer certificate's subject DN.
  std::string peer_dn() const;

 private:
  // Encrypts the staging buffer (if it holds anything) into ciphertext.
  Status seal_staging();
  Status seal(const std::uint8_t* data, std::size_t n);
  Error read_error(int ssl_error);
  Error write_error(const Error& send_failed);

  Ring& ring_;
  std::unique_ptr<TlsSession> session_;
  std::vector<std::uint8_t> staging_;
  std::optional<Error> read_failed_;  // reported by the read after the one that got bytes
  bool shut_ = false;
};

// Words for an OpenSSL failure of a TLS call on session (handshake, read or write), using
// what the session saw: an alert, a closed connection, a socket error. Clears OpenSSL's queue.
Error tls_failure(const TlsSession& session, int ssl_error, bool handshake_done);

}  // namespace nbdtunnel::tunnel

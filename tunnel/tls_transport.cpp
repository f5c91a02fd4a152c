#include "tunnel/tls_transport.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace nbdtunnel::tunnel {

namespace {

// The BIO that hands OpenSSL our socket's bytes; created once per process.
BIO_METHOD* socket_bio_method(int (*rd)(BIO*, char*, int), int (*wr)(BIO*, const char*, int),
                              long (*ctrl)(BIO*, int, long, void*)) {
  static BIO_METHOD* method = [&] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "nbdtunnel socket");
    BIO_meth_set_read(m, rd);
    BIO_meth_set_write(m, wr);
    BIO_meth_set_ctrl(m, ctrl);
    BIO_meth_set_create(m, [](BIO* b) {
      BIO_set_init(b, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

Error tls_error(std::errc code, std::string message) {
  return Error{std::make_error_code(code), std::move(message)};
}

// Alerts a TLS 1.3 server sends when it refuses the client's certificate; the client, whose
// handshake has already completed, sees them on its first read.
bool refuses_certificate(int alert) {
  switch (alert) {
    case SSL_AD_HANDSHAKE_FAILURE:
    case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE:
    case SSL_AD_CERTIFICATE_REVOKED:
    case SSL_AD_CERTIFICATE_EXPIRED:
    case SSL_AD_CERTIFICATE_UNKNOWN:
    case SSL_AD_UNKNOWN_CA:
    case SSL_AD_ACCESS_DENIED:
    case SSL_AD_CERTIFICATE_REQUIRED:
      return true;
    default:
      return false;
  }
}

// What the client can check when the destination refused its certificate with alert.
std::string refusal_hint(int alert) {
  switch (alert) {
    case SSL_AD_HANDSHAKE_FAILURE:
    case SSL_AD_ACCESS_DENIED:
      return " (is this client's DN in the destination's --tls-allowed-dn?)";
    case SSL_AD_UNKNOWN_CA:
      return " (is it signed by the CA in the destination's ca-cert.pem?)";
    case SSL_AD_CERTIFICATE_REQUIRED:
      return " (the source needs client-cert.pem and client-key.pem in its --tls-dir)";
    default:
      return "";
  }
}

}  // namespace

Error tls_failure(const TlsSession& s, int ssl_error, bool handshake_done) {
  const unsigned long e = ERR_peek_error();
  const char* reason_text = e ? ERR_reason_error_string(e) : nullptr;
  const std::string detail = reason_text ? reason_text : "unknown TLS error";
  ERR_clear_error();
  const std::string peer = s.peer_name();
  if (s.alert() != 0) {
    const std::string alert = "TLS alert '" + s.alert_text() + "'";
    if (!s.is_server() && handshake_done && refuses_certificate(s.alert())) {
      return tls_error(
          std::errc::permission_denied,
          "the destination refused this client's certificate: " + alert + refusal_hint(s.alert()));
    }
    if (!handshake_done) {
      std::string hint;
      if (s.is_server() && s.alert() == SSL_AD_UNKNOWN_CA)
        hint = " (does the source trust the CA that signed this destination's certificate?)";
      return tls_error(std::errc::connection_refused,
                       peer + " refused the TLS handshake: " + alert + hint);
    }
    return tls_error(std::errc::connection_aborted, peer + " ended the TLS connection: " + alert);
  }
  if (s.recv_errno() != 0) {
    Error err = system_error(s.recv_errno(), "receive failed");
    if (!handshake_done && !s.is_server())
      err.message += " during the TLS handshake: is the destination running with TLS (--tls-dir)?";
    return err;
  }
  if (s.send_errno() != 0) return system_error(s.send_errno(), "send failed");
  const bool eof =
      s.peer_closed() || (e && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
  if (eof || (ssl_error == SSL_ERROR_SYSCALL && !e)) {
    if (handshake_done) {
      return tls_error(std::errc::connection_reset,
                       peer +
                           " closed the connection without a TLS close_notify (what it sent "
                           "last may be truncated)");
    }
    return tls_error(
        std::errc::connection_reset,
        peer + " closed the connection during the TLS handshake" +
            (s.is_server() ? "" : ": is the destination running with TLS (--tls-dir)?"));
  }
  if (handshake_done) {
    return tls_error(std::errc::protocol_error, "bad TLS data from " + peer + ": " + detail);
  }
  return tls_error(std::errc::protocol_error, "TLS handshake failed: " + detail);
}

// TlsSession

TlsSession::TlsSession(std::shared_ptr<TlsContext> ctx, unique_fd socket, SSL* ssl)
    : ctx_(std::move(ctx)), socket_(std::move(socket)), ssl_(ssl) {}

TlsSession::~TlsSession() {
  SSL_free(ssl_);
}

Result<std::unique_ptr<TlsSession>> TlsSession::create(std::shared_ptr<TlsContext> ctx,
                                                       unique_fd socket) {
  SSL* ssl = SSL_new(ctx->native());
  if (!ssl) {
    ERR_clear_error();
    return tls_error(std::errc::not_enough_memory, "cannot create a TLS connection");
  }
  std::unique_ptr<TlsSession> s(new TlsSession(std::move(ctx), std::move(socket), ssl));
  set_nonblocking(s->fd());
  const int one = 1;
  ::setsockopt(s->fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  BIO* bio = BIO_new(socket_bio_method(bio_read, bio_write, bio_ctrl));
  if (!bio) {
    ERR_clear_error();
    return tls_error(std::errc::not_enough_memory, "cannot create a TLS connection");
  }
  BIO_set_data(bio, s.get());
  SSL_set_bio(ssl, bio, bio);
  SSL_set_app_data(ssl, s.get());
  SSL_set_info_callback(ssl, on_info);
  // Whole records per recv where the socket holds them, instead of a header then a body.
  SSL_set_read_ahead(ssl, 1);
  return s;
}

const char* TlsSession::peer_name() const {
  return is_server() ? "the client" : "the destination";
}

int TlsSession::bio_read(BIO* bio, char* buf, int len) {
  auto* s = static_cast<TlsSession*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  ssize_t n;
  do {
    n = ::recv(s->fd(), buf, static_cast<std::size_t>(len), MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n > 0) return static_cast<int>(n);
  if (n == 0) {
    s->peer_closed_ = true;
    return 0;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    BIO_set_retry_read(bio);
  } else {
    s->recv_errno_ = errno;
  }
  return -1;
}

int TlsSession::bio_write(BIO* bio, const char* buf, int len) {
  auto* s = static_cast<TlsSession*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  s->out_.insert(s->out_.end(), buf, buf + len);
  return len;
}

long TlsSession::bio_ctrl(BIO*, int cmd, long, void*) {
  // Ciphertext is flushed by send_pending, never from inside OpenSSL.
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

void TlsSession::on_info(const SSL* ssl, int where, int ret) {
  if (!(where & SSL_CB_READ_ALERT)) return;
  auto* s = static_cast<TlsSession*>(SSL_get_app_data(ssl));
  const int desc = ret & 0xff;
  if (desc == SSL_AD_CLOSE_NOTIFY) return;
  s->alert_ = desc;
  s->alert_text_ = SSL_alert_desc_string_long(ret);
}

Result<std::size_t> TlsSession::send_pending() {
  std::size_t sent = 0;
  while (pending() > 0) {
    ssize_t n;
    do {
      n = ::send(fd(), out_.data() + out_start_, pending(), MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      send_errno_ = errno;
      return system_error(errno, "send failed");
    }
    out_start_ += static_cast<std::size_t>(n);
    sent += static_cast<std::size_t>(n);
  }
  if (out_start_ == out_.size()) {
    out_.clear();
    out_start_ = 0;
  } else if (out_start_ >= (64u << 10)) {
    out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(out_start_));
    out_start_ = 0;
  }
  if (sent == 0 && pending() > 0) return would_block_error();
  return sent;
}

// TlsTransport

TlsTransport::TlsTransport(Ring& ring, std::unique_ptr<TlsSession> session)
    : ring_(ring), session_(std::move(session)) {
  staging_.reserve(kStagingSize);
}

TlsTransport::~TlsTransport() = default;

namespace {
Error shut_down_error() {
  return tls_error(std::errc::not_connected, "the TLS connection is shut down");
}
}  // namespace

Result<std::size_t> TlsTransport::read(std::span<std::uint8_t> into) {
  if (shut_) return shut_down_error();
  if (read_failed_) return *read_failed_;
  SSL* ssl = session_->ssl();
  std::size_t total = 0;
  while (total < into.size()) {
    ERR_clear_error();
    std::size_t got = 0;
    const int r = SSL_read_ex(ssl, into.data() + total, into.size() - total, &got);
    if (r == 1) {
      total += got;
      continue;
    }
    const int err = SSL_get_error(ssl, r);
    if (err == SSL_ERROR_WANT_READ) break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      if (total == 0) return std::size_t{0};  // close_notify
      break;
    }
    read_failed_ = tls_failure(*session_, err, true);
    if (total == 0) return *read_failed_;
    break;
  }
  // Reading may have queued records of its own (a KeyUpdate answer): send them if the socket
  // takes them now; otherwise they leave with the next write.
  if (session_->pending() > 0) (void)session_->send_pending();
  if (total == 0) return would_block_error();
  return total;
}

Status TlsTransport::seal(const std::uint8_t* data, std::size_t n) {
  ERR_clear_error();
  std::size_t written = 0;
  const int r = SSL_write_ex(session_->ssl(), data, n, &written);
  if (r == 1 && written == n) return {};
  // Our BIO takes every byte, so a failure is the connection's, not the socket's.
  return tls_failure(*session_, SSL_get_error(session_->ssl(), r), true);
}

Status TlsTransport::seal_staging() {
  if (staging_.empty()) return {};
  Status s = seal(staging_.data(), staging_.size());
  staging_.clear();
  return s;
}

Error TlsTransport::write_error(const Error& send_failed) {
  // A peer that refused us sent an alert before it closed: read it, it says more than EPIPE.
  ERR_clear_error();
  char c;
  std::size_t got = 0;
  (void)SSL_peek_ex(session_->ssl(), &c, 1, &got);
  ERR_clear_error();
  if (session_->alert() != 0) return tls_failure(*session_, SSL_ERROR_SSL, true);
  return send_failed;
}

Result<std::size_t> TlsTransport::write(std::span<const iovec> iov, bool) {
  if (shut_) return shut_down_error();
  if (session_->pending() >= kMaxPendingCiphertext) {
    Result<std::size_t> f = session_->send_pending();
    if (!f && !would_block(f.error())) return write_error(f.error());
    if (session_->pending() >= kMaxPendingCiphertext) return would_block_error();
  }
  std::size_t accepted = 0;
  bool full = false;
  for (const iovec& v : iov) {
    const auto* p = static_cast<const std::uint8_t*>(v.iov_base);
    std::size_t left = v.iov_len;
    while (left > 0) {
      const std::size_t held = session_->pending() + staging_.size();
      if (held >= kMaxPendingCiphertext) {
        full = true;
        break;
      }
      std::size_t n;
      if (left < kStagingSize) {
        // Small pieces share records instead of costing one record (and its tag) each.
        if (staging_.size() == kStagingSize) {
          if (Status s = seal_staging(); !s) return s.error();
          continue;
        }
        n = std::min(left, kStagingSize - staging_.size());
        staging_.insert(staging_.end(), p, p + n);
      } else {
        if (Status s = seal_staging(); !s) return s.error();
        n = std::min(left, kMaxPendingCiphertext - session_->pending());
        if (Status s = seal(p, n); !s) return s.error();
      }
      p += n;
      left -= n;
      accepted += n;
    }
    if (full) break;
  }
  if (Status s = seal_staging(); !s) return s.error();
  Result<std::size_t> f = session_->send_pending();
  if (!f && !would_block(f.error())) return write_error(f.error());
  if (accepted == 0) return would_block_error();
  return accepted;
}

Result<std::size_t> TlsTransport::splice_in(int, std::size_t) {
  return tls_error(std::errc::operation_not_supported, "a TLS transport cannot splice");
}

Result<std::size_t> TlsTransport::splice_out(int, std::size_t, bool) {
  return tls_error(std::errc::operation_not_supported, "a TLS transport cannot splice");
}

bool TlsTransport::has_pending_output() const {
  return !shut_ && session_->pending() > 0;
}

Result<std::size_t> TlsTransport::flush_pending() {
  if (shut_) return shut_down_error();
  Result<std::size_t> f = session_->send_pending();
  if (!f && !would_block(f.error())) return write_error(f.error());
  return f;
}

void TlsTransport::wait_readable(Op& op) {
  io_uring_prep_poll_add(ring_.prepare(op), session_->fd(), POLLIN);
}

void TlsTransport::wait_writable(Op& op) {
  io_uring_prep_poll_add(ring_.prepare(op), session_->fd(), POLLOUT);
}

void TlsTransport::shutdown() {
  if (shut_) return;
  shut_ = true;
  ERR_clear_error();
  (void)SSL_shutdown(session_->ssl());
  ERR_clear_error();
  (void)session_->send_pending();
  // Completes every poll on the socket (POLLHUP); the fd closes with the session.
  ::shutdown(session_->fd(), SHUT_RDWR);
}

std::string TlsTransport::describe() const {
  const char* cipher = SSL_get_cipher_name(session_->ssl());
  return fmt::format("tls1.3 {} (user-space crypto)", cipher ? cipher : "?");
}

std::string TlsTransport::peer_dn() const {
  return subject_dn(SSL_get0_peer_certificate(session_->ssl()));
}

}  // namespace nbdtunnel::tunnel

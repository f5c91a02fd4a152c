#include "tunnel/tls_handshake.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include "tunnel/packet.hpp"
#include "tunnel/protocol.hpp"

namespace nbdtunnel::tunnel {

namespace {

Error hs_error(std::errc code, std::string message) {
  return Error{std::make_error_code(code), std::move(message)};
}

bool is_ip_literal(const std::string& host) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string asn1_time(const ASN1_TIME* t) {
  BIO* bio = BIO_new(BIO_s_mem());
  ASN1_TIME_print(bio, t);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string s = n > 0 ? std::string(data, static_cast<std::size_t>(n)) : "?";
  BIO_free(bio);
  return s;
}

// The names a certificate holds, as "DNS:a, IP:1.2.3.4", for a mismatch message.
std::string subject_names(X509* cert) {
  std::string out;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    std::string one;
    if (n->type == GEN_DNS) {
      one = "DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.dNSName)),
                                 static_cast<std::size_t>(ASN1_STRING_length(n->d.dNSName)));
    } else if (n->type == GEN_IPADD) {
      const int len = ASN1_STRING_length(n->d.iPAddress);
      char text[INET6_ADDRSTRLEN] = "?";
      ::inet_ntop(len == 16 ? AF_INET6 : AF_INET, ASN1_STRING_get0_data(n->d.iPAddress), text,
                  sizeof text);
      one = std::string("IP:") + text;
    }
    if (one.empty()) continue;
    if (!out.empty()) out += ", ";
    out += one;
  }
  GENERAL_NAMES_free(names);
  return out.empty() ? "no subject alternative names" : out;
}

// First bytes of what a non-TLS peer sent, in hex, for the log.
std::string hex_prefix(const std::vector<std::uint8_t>& bytes) {
  std::string out;
  for (std::size_t i = 0; i < bytes.size() && i < 8; ++i)
    out += fmt::format("{}{:02x}", i ? " " : "", bytes[i]);
  return out;
}

}  // namespace

TlsHandshake::TlsHandshake(boost::asio::io_context& io, Ring& ring, unique_fd fd,
                           std::shared_ptr<TlsContext> ctx, std::string verify_host,
                           std::chrono::milliseconds timeout, Done done)
    : ring_(ring),
      poster_(ring),
      ctx_(std::move(ctx)),
      fd_(std::move(fd)),
      verify_host_(std::move(verify_host)),
      timeout_(timeout),
      done_(std::move(done)),
      timer_(io) {
  op_.set_handler([this](int res, std::uint32_t) { on_wait(res); });
}

TlsHandshake::~TlsHandshake() = default;

void TlsHandshake::start() {
  if (phase_ != Phase::idle) return;
  timer_.expires_after(timeout_);
  timer_.async_wait([this, alive = poster_.liveness()](const boost::system::error_code& ec) {
    if (ec || alive.expired() || phase_ == Phase::finished) return;
    fail(hs_error(std::errc::timed_out,
                  fmt::format("TLS handshake timed out after {} ms", timeout_.count())));
  });
  set_nonblocking(fd_.get());
  phase_ = ctx_->role() == TlsRole::server ? Phase::sniff : Phase::handshake;
  if (phase_ == Phase::handshake) {
    Result<std::unique_ptr<TlsSession>> s = TlsSession::create(ctx_, std::move(fd_));
    if (!s) return fail(s.error());
    session_ = std::move(*s);
    SSL* ssl = session_->ssl();
    SSL_set_connect_state(ssl);
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl), verify);
    if (is_ip_literal(verify_host_)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), verify_host_.c_str());
    } else if (!verify_host_.empty()) {
      SSL_set1_host(ssl, verify_host_.c_str());
      SSL_set_tlsext_host_name(ssl, verify_host_.c_str());
    }
  }
  step();
}

void TlsHandshake::cancel() {
  if (phase_ == Phase::finished) return;
  fail(hs_error(std::errc::operation_canceled, "TLS handshake cancelled"));
}

void TlsHandshake::step() {
  switch (phase_) {
    case Phase::sniff:
      return sniff();
    case Phase::plain_probe:
      return plain_probe();
    case Phase::handshake:
      return handshake();
    case Phase::flush:
      return flush();
    case Phase::idle:
    case Phase::finished:
      return;
  }
}

void TlsHandshake::wait(short events) {
  io_uring_prep_poll_add(ring_.prepare(op_), session_ ? session_->fd() : fd_.get(), events);
}

void TlsHandshake::on_wait(int res) {
  if (phase_ == Phase::finished) return report_when_idle();
  if (res < 0) return fail(system_error(-res, "waiting on the socket failed"));
  step();
}

// A TLS client opens with a handshake record: 0x16, then version 0x03 0x0n. Looking without
// taking leaves the bytes for OpenSSL.
void TlsHandshake::sniff() {
  std::uint8_t first[2];
  ssize_t n;
  do {
    n = ::recv(fd_.get(), first, sizeof first, MSG_PEEK | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return wait(POLLIN);
  if (n < 0) return fail(system_error(errno, "receive failed"));
  if (n == 0) {
    return fail(hs_error(std::errc::connection_reset,
                         "the client closed the connection before the TLS handshake"));
  }
  if (first[0] == 0x16 && (n < 2 || first[1] == 0x03)) {
    Result<std::unique_ptr<TlsSession>> s = TlsSession::create(ctx_, std::move(fd_));
    if (!s) return fail(s.error());
    session_ = std::move(*s);
    SSL_set_accept_state(session_->ssl());
    SSL_set_verify(session_->ssl(), SSL_get_verify_mode(session_->ssl()), verify);
    phase_ = Phase::handshake;
    return handshake();
  }
  phase_ = Phase::plain_probe;
  plain_probe();
}

// Not TLS: take (a bounded amount of) what the peer sent, to tell a plain nbdtunnel client,
// which gets an answer it can show, from anything else.
void TlsHandshake::plain_probe() {
  for (;;) {
    std::size_t want = kMaxProbe - probe_.size();
    if (probe_.size() >= kPrefixSize) {
      // Just the packet the client sent (its HELLO), so that closing does not reset the
      // connection under our answer.
      const std::uint32_t len = (std::uint32_t{probe_[0]} << 24) |
                                (std::uint32_t{probe_[1]} << 16) | (std::uint32_t{probe_[2]} << 8) |
                                probe_[3];
      want = len > probe_.size() ? std::min<std::size_t>(len - probe_.size(), want) : 0;
    }
    if (want == 0) break;
    std::uint8_t buf[kMaxProbe];
    ssize_t n;
    do {
      n = ::recv(fd_.get(), buf, want, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Our packets are at most a few MiB, so their length word starts with a zero byte:
      // anything else is refused at once instead of waiting for more.
      if (probe_.size() < kPrefixSize && (probe_.empty() || probe_[0] == 0)) return wait(POLLIN);
      break;  // enough to answer
    }
    if (n <= 0) break;
    probe_.insert(probe_.end(), buf, buf + n);
  }
  Result<std::optional<Frame>> f = decode_prefix(probe_);
  if (f && *f && (*f)->header.program == kProgram &&
      (*f)->header.type == static_cast<std::uint32_t>(PacketType::call)) {
    answer_plain(probe_);
    return fail(hs_error(std::errc::protocol_not_supported,
                         "plain (non-TLS) nbdtunnel client; the destination requires TLS"));
  }
  fail(hs_error(std::errc::protocol_not_supported,
                fmt::format("not a TLS client (its first bytes: {})", hex_prefix(probe_))));
}

void TlsHandshake::answer_plain(const std::vector<std::uint8_t>& request) {
  Result<std::optional<Frame>> f = decode_prefix(request);
  const PacketHeader& call = (*f)->header;
  std::vector<std::uint8_t> body;
  encode_remote_error(body, make_error(ErrorCode::handshake_required,
                                       "this destination requires TLS: give the source --tls-dir"));
  const std::vector<std::uint8_t> reply = make_packet(
      make_header(kProgram, call.procedure, PacketType::reply, call.serial, PacketStatus::error),
      body);
  // A few hundred bytes into an idle socket: it takes them now, or the peer is gone anyway.
  ssize_t n;
  do {
    n = ::send(fd_.get(), reply.data(), reply.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  ::shutdown(fd_.get(), SHUT_WR);
}

void TlsHandshake::handshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(session_->ssl());
  if (r == 1) {
    phase_ = Phase::flush;
    return flush();
  }
  const int err = SSL_get_error(session_->ssl(), r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    // What the handshake wrote must reach the peer before it can answer.
    Result<std::size_t> sent = session_->send_pending();
    if (!sent && !would_block(sent.error())) return fail(handshake_error(SSL_ERROR_SYSCALL));
    return wait(session_->pending() > 0 ? POLLOUT : POLLIN);
  }
  // A refusal we detected goes out as an alert before we close.
  (void)session_->send_pending();
  fail(handshake_error(err));
}

// The handshake is done on our side; its last flight (the client's Finished) must leave before
// the transport is handed over.
void TlsHandshake::flush() {
  Result<std::size_t> sent = session_->send_pending();
  if (!sent && !would_block(sent.error())) return fail(sent.error());
  if (session_->pending() > 0) return wait(POLLOUT);
  succeed();
}

void TlsHandshake::succeed() {
  peer_dn_ = subject_dn(SSL_get0_peer_certificate(session_->ssl()));
  std::unique_ptr<Transport> t = std::make_unique<TlsTransport>(ring_, std::move(session_));
  finish(std::move(t));
}

void TlsHandshake::fail(Error e) {
  finish(std::move(e));
}

void TlsHandshake::finish(Result<std::unique_ptr<Transport>> r) {
  if (phase_ == Phase::finished) return;
  phase_ = Phase::finished;
  outcome_.emplace(std::move(r));
  timer_.cancel();
  if (op_.busy()) ring_.cancel(op_);
  report_when_idle();
}

void TlsHandshake::report_when_idle() {
  if (op_.busy() || reported_) return;
  reported_ = true;
  poster_.post([this] {
    // A failed handshake closes its socket now: the peer sees the end at once.
    session_.reset();
    fd_.reset();
    Result<std::unique_ptr<Transport>> r = std::move(*outcome_);
    outcome_.reset();
    Done done = std::move(done_);
    done(std::move(r));
  });
}

Error TlsHandshake::handshake_error(int ssl_error) {
  if (!session_->verify_problem.empty()) {
    ERR_clear_error();
    return hs_error(std::errc::permission_denied, session_->verify_problem);
  }
  const unsigned long e = ERR_peek_error();
  if (session_->is_server() && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    ERR_clear_error();
    return hs_error(std::errc::permission_denied,
                    "the client sent no certificate: the source needs client-cert.pem and "
                    "client-key.pem in its --tls-dir");
  }
  if (!session_->is_server() && session_->alert() == 0 && !session_->peer_closed() &&
      session_->recv_errno() == 0 && ERR_GET_LIB(e) == ERR_LIB_SSL &&
      (ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER ||
       ERR_GET_REASON(e) == SSL_R_PACKET_LENGTH_TOO_LONG ||
       ERR_GET_REASON(e) == SSL_R_RECORD_LENGTH_MISMATCH)) {
    const char* why = ERR_reason_error_string(e);
    const std::string text = why ? why : "not TLS";
    ERR_clear_error();
    return hs_error(std::errc::protocol_not_supported,
                    "the destination does not answer in TLS (" + text +
                        "): is the destination running with TLS (--tls-dir)?");
  }
  return tls_failure(*session_, ssl_error, false);
}

// Called by OpenSSL for each certificate of the peer's chain, root first. Records why a chain
// fails, in words, and applies the allowed-DN list to a client's certificate.
int TlsHandshake::verify(int ok, X509_STORE_CTX* store) {
  SSL* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* session = static_cast<TlsSession*>(SSL_get_app_data(ssl));
  if (!session || !session->verify_problem.empty()) return ok;
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  const std::string whose =
      session->is_server() ? "the client's certificate" : "the destination's certificate";
  const std::string dn = subject_dn(cert);
  const std::string& dir = session->context().dir();
  if (!ok) {
    const int err = X509_STORE_CTX_get_error(store);
    const std::string named = whose + " '" + dn + "'";
    std::string& p = session->verify_problem;
    switch (err) {
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        p = named + " is not signed by the CA in " + dir + "/ca-cert.pem (" +
            X509_verify_cert_error_string(err) + ")";
        break;
      case X509_V_ERR_CERT_HAS_EXPIRED:
        p = named + " expired on " + asn1_time(X509_get0_notAfter(cert));
        break;
      case X509_V_ERR_CERT_NOT_YET_VALID:
        p = named + " is not valid before " + asn1_time(X509_get0_notBefore(cert)) +
            " (are both hosts' clocks right?)";
        break;
      case X509_V_ERR_CERT_REVOKED:
        p = named + " is revoked by " + dir + "/ca-crl.pem";
        break;
      case X509_V_ERR_HOSTNAME_MISMATCH:
      case X509_V_ERR_IP_ADDRESS_MISMATCH: {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
        std::string checked =
            X509_VERIFY_PARAM_get0_host(param, 0) ? X509_VERIFY_PARAM_get0_host(param, 0) : "";
        if (checked.empty()) {
          char* ip = X509_VERIFY_PARAM_get1_ip_asc(param);
          if (ip) checked = ip;
          OPENSSL_free(ip);
        }
        p = named + " does not hold the name dialled, '" + checked + "': it holds " +
            subject_names(cert) + "; give --tls-hostname with a name it holds";
        break;
      }
      default:
        p = named + " failed verification: " + X509_verify_cert_error_string(err);
        break;
    }
    return 0;
  }
  if (session->is_server() && X509_STORE_CTX_get_error_depth(store) == 0 &&
      !session->context().dn_allowed(dn)) {
    session->verify_problem =
        "the client's certificate DN '" + dn + "' is not allowed by --tls-allowed-dn";
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return 1;
}

}  // namespace nbdtunnel::tunnel

#pragma once
// The TLS configuration of one role: the certificates, key, CA and CRL that libvirt and QEMU keep
// in one directory (ca-cert.pem, server-cert.pem + server-key.pem or client-cert.pem +
// client-key.pem, optional ca-crl.pem), TLS 1.3 only, peers always verified. One context serves
// every connection of a role; connections share it through a shared_ptr.

#include <openssl/types.h>

#include <memory>
#include <string>
#include <vector>

#include "tunnel/result.hpp"

namespace nbdtunnel::tunnel {

enum class TlsRole { server, client };

struct TlsOptions {
  std::string dir;
  TlsRole role = TlsRole::server;
  // Server: fnmatch patterns for the client certificate's subject DN, written in certificate
  // order as "C=GB,O=Example,CN=client" (libvirt's tls_allowed_dn_list form). None: any
  // certificate that chains to the CA.
  std::vector<std::string> allowed_dn;
};

class TlsContext {
 public:
  // Where libvirt and QEMU keep their certificates by default.
  static constexpr const char* kDefaultDir = "/etc/pki/qemu";

  // Reads the directory; an error names the file and what is wrong with it.
  static Result<std::shared_ptr<TlsContext>> load(const TlsOptions& options);
  // Whether dir holds the CA certificate and this role's certificate and key.
  static bool files_present(const std::string& dir, TlsRole role);
  // Whether the kernel could take over the record layer (kTLS), for the start-up log.
  static std::string offload_summary();

  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* native() const { return ctx_; }
  TlsRole role() const { return options_.role; }
  const std::string& dir() const { return options_.dir; }
  bool checks_crl() const { return checks_crl_; }
  // Whether a client certificate's subject DN passes the allowed-DN patterns.
  bool dn_allowed(const std::string& dn) const;

 private:
  TlsContext(SSL_CTX* ctx, TlsOptions options, bool checks_crl);

  SSL_CTX* ctx_;
  TlsOptions options_;
  bool checks_crl_;
};

// A certificate's subject DN in certificate order, RFC 2253 escaping: "C=GB,O=Example,CN=client".
std::string subject_dn(X509* cert);

}  // namespace nbdtunnel::tunnel

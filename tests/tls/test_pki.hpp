#pragma once
// Test certificates made with OpenSSL's C API, written in libvirt's layout (ca-cert.pem,
// server-cert.pem + server-key.pem, client-cert.pem + client-key.pem, ca-crl.pem). Each TestPki
// is one CA with an EC P-256 key; a second TestPki is an unrelated CA. Throws on OpenSSL errors
// (test code only).

#include <openssl/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace nbdtunnel::testing {

struct CertOptions {
  // Subject in certificate order, "C=GB,O=Example,CN=client".
  std::string subject = "O=nbdtunnel test,CN=localhost";
  std::vector<std::string> dns = {"localhost"};
  std::vector<std::string> ips = {"127.0.0.1"};
  // Validity as offsets from now: negative not_after makes an expired certificate, positive
  // not_before one that is not valid yet.
  std::chrono::seconds not_before = -std::chrono::hours(1);
  std::chrono::seconds not_after = std::chrono::hours(24);
};

class TestPki {
 public:
  explicit TestPki(const std::string& ca_subject = "O=nbdtunnel test,CN=nbdtunnel test CA");
  ~TestPki();
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;

  // Writes ca-cert.pem and a server (or client) certificate and key signed by this CA into dir
  // (created if needed). Returns the certificate's serial number (for revoke()).
  std::uint64_t write_server_dir(const std::filesystem::path& dir, const CertOptions& opts = {});
  std::uint64_t write_client_dir(const std::filesystem::path& dir, const CertOptions& opts = {});
  // Writes only ca-cert.pem (this CA), replacing what dir trusted.
  void write_ca(const std::filesystem::path& dir) const;
  // Writes ca-crl.pem into dir: a CRL of this CA revoking the given serials.
  void write_crl(const std::filesystem::path& dir, const std::vector<std::uint64_t>& revoked) const;

 private:
  std::uint64_t write_leaf(const std::filesystem::path& dir, const std::string& prefix,
                           const CertOptions& opts, bool server);

  EVP_PKEY* ca_key_ = nullptr;
  X509* ca_cert_ = nullptr;
  std::uint64_t next_serial_ = 2;
};

}  // namespace nbdtunnel::testing

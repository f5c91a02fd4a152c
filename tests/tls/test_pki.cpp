#include "test_pki.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>

namespace nbdtunnel::testing {

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  ERR_clear_error();
  throw std::runtime_error(std::string("test_pki: ") + what + ": " + buf);
}

EVP_PKEY* new_key() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  check(key != nullptr, "EC key generation");
  return key;
}

// "C=GB,O=Example,CN=client" → an X509_NAME with the entries in that order.
X509_NAME* parse_name(const std::string& dn) {
  X509_NAME* name = X509_NAME_new();
  std::stringstream in(dn);
  std::string part;
  while (std::getline(in, part, ',')) {
    const auto eq = part.find('=');
    check(eq != std::string::npos, "subject part without '='");
    const std::string field = part.substr(0, eq), value = part.substr(eq + 1);
    check(X509_NAME_add_entry_by_txt(name, field.c_str(), MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                     0) == 1,
          "subject entry");
  }
  return name;
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  check(ext != nullptr, "certificate extension");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

X509* new_cert(const std::string& subject, EVP_PKEY* key, std::uint64_t serial,
               std::chrono::seconds not_before, std::chrono::seconds not_after) {
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), static_cast<long>(not_before.count()));
  X509_gmtime_adj(X509_getm_notAfter(cert), static_cast<long>(not_after.count()));
  X509_NAME* name = parse_name(subject);
  X509_set_subject_name(cert, name);
  X509_NAME_free(name);
  X509_set_pubkey(cert, key);
  return cert;
}

void write_file(const std::filesystem::path& path, const std::function<int(BIO*)>& write) {
  BIO* bio = BIO_new_file(path.c_str(), "w");
  check(bio != nullptr, "open for writing");
  const int ok = write(bio);
  BIO_free(bio);
  check(ok == 1, "PEM write");
}

std::uint64_t random_base() {
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 16) | 1;
}

}  // namespace

TestPki::TestPki(const std::string& ca_subject) : next_serial_(random_base()) {
  ca_key_ = new_key();
  ca_cert_ = new_cert(ca_subject, ca_key_, next_serial_++, -std::chrono::hours(2),
                      std::chrono::hours(24 * 365));
  X509_set_issuer_name(ca_cert_, X509_get_subject_name(ca_cert_));
  add_ext(ca_cert_, ca_cert_, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(ca_cert_, ca_cert_, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca_cert_, ca_cert_, NID_subject_key_identifier, "hash");
  check(X509_sign(ca_cert_, ca_key_, EVP_sha256()) > 0, "CA signature");
}

TestPki::~TestPki() {
  X509_free(ca_cert_);
  EVP_PKEY_free(ca_key_);
}

void TestPki::write_ca(const std::filesystem::path& dir) const {
  std::filesystem::create_directories(dir);
  write_file(dir / "ca-cert.pem", [&](BIO* b) { return PEM_write_bio_X509(b, ca_cert_); });
}

std::uint64_t TestPki::write_server_dir(const std::filesystem::path& dir, const CertOptions& opts) {
  return write_leaf(dir, "server", opts, true);
}

std::uint64_t TestPki::write_client_dir(const std::filesystem::path& dir, const CertOptions& opts) {
  return write_leaf(dir, "client", opts, false);
}

std::uint64_t TestPki::write_leaf(const std::filesystem::path& dir, const std::string& prefix,
                                  const CertOptions& opts, bool server) {
  write_ca(dir);
  EVP_PKEY* key = new_key();
  const std::uint64_t serial = next_serial_++;
  X509* cert = new_cert(opts.subject, key, serial, opts.not_before, opts.not_after);
  X509_set_issuer_name(cert, X509_get_subject_name(ca_cert_));
  add_ext(cert, ca_cert_, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert, ca_cert_, NID_key_usage, "critical,digitalSignature,keyEncipherment");
  add_ext(cert, ca_cert_, NID_ext_key_usage, server ? "serverAuth" : "clientAuth");
  add_ext(cert, ca_cert_, NID_subject_key_identifier, "hash");
  add_ext(cert, ca_cert_, NID_authority_key_identifier, "keyid:always");
  std::string san;
  for (const std::string& d : opts.dns) san += (san.empty() ? "DNS:" : ",DNS:") + d;
  for (const std::string& ip : opts.ips) san += (san.empty() ? "IP:" : ",IP:") + ip;
  if (!san.empty()) add_ext(cert, ca_cert_, NID_subject_alt_name, san);
  check(X509_sign(cert, ca_key_, EVP_sha256()) > 0, "certificate signature");
  write_file(dir / (prefix + "-cert.pem"), [&](BIO* b) { return PEM_write_bio_X509(b, cert); });
  write_file(dir / (prefix + "-key.pem"), [&](BIO* b) {
    return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
  X509_free(cert);
  EVP_PKEY_free(key);
  return serial;
}

void TestPki::write_crl(const std::filesystem::path& dir,
                        const std::vector<std::uint64_t>& revoked) const {
  X509_CRL* crl = X509_CRL_new();
  X509_CRL_set_version(crl, 1);
  X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca_cert_));
  ASN1_TIME* now = X509_gmtime_adj(nullptr, -60);
  ASN1_TIME* next = X509_gmtime_adj(nullptr, 24 * 3600);
  X509_CRL_set1_lastUpdate(crl, now);
  X509_CRL_set1_nextUpdate(crl, next);
  for (std::uint64_t serial : revoked) {
    X509_REVOKED* r = X509_REVOKED_new();
    ASN1_INTEGER* n = ASN1_INTEGER_new();
    ASN1_INTEGER_set_uint64(n, serial);
    X509_REVOKED_set_serialNumber(r, n);
    X509_REVOKED_set_revocationDate(r, now);
    X509_CRL_add0_revoked(crl, r);
    ASN1_INTEGER_free(n);
  }
  ASN1_TIME_free(now);
  ASN1_TIME_free(next);
  X509_CRL_sort(crl);
  check(X509_CRL_sign(crl, ca_key_, EVP_sha256()) > 0, "CRL signature");
  std::filesystem::create_directories(dir);
  write_file(dir / "ca-crl.pem", [&](BIO* b) { return PEM_write_bio_X509_CRL(b, crl); });
  X509_CRL_free(crl);
}

}  // namespace nbdtunnel::testing

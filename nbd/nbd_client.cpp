#include "nbd/nbd_client.hpp"

#include <libnbd.h>

#include <stdexcept>
#include <utility>

namespace nbdtunnel::nbd {
namespace {

// Builds the exception text from libnbd's thread-local last error.
std::runtime_error nbd_error(const char* what, const std::string& endpoint) {
  const char* err = nbd_get_error();
  return std::runtime_error(std::string("nbd ") + what + " on " + endpoint + ": " +
                            (err != nullptr ? err : "unknown libnbd error"));
}

nbd_handle* create_handle(const std::string& endpoint) {
  nbd_handle* h = nbd_create();
  if (h == nullptr) throw nbd_error("create", endpoint);
  return h;
}

}  // namespace

NbdClient NbdClient::connect_unix(const std::string& socket_path, const std::string& export_name) {
  std::string endpoint = "unix:" + socket_path + " export '" + export_name + "'";
  nbd_handle* h = create_handle(endpoint);
  if (nbd_set_export_name(h, export_name.c_str()) == -1 ||
      nbd_connect_unix(h, socket_path.c_str()) == -1) {
    auto err = nbd_error("connect", endpoint);
    nbd_close(h);
    throw err;
  }
  return NbdClient(h, std::move(endpoint));
}

NbdClient NbdClient::connect_uri(const std::string& uri) {
  nbd_handle* h = create_handle(uri);
  if (nbd_connect_uri(h, uri.c_str()) == -1) {
    auto err = nbd_error("connect", uri);
    nbd_close(h);
    throw err;
  }
  return NbdClient(h, uri);
}

NbdClient::NbdClient(NbdClient&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), endpoint_(std::move(other.endpoint_)) {}

NbdClient& NbdClient::operator=(NbdClient&& other) noexcept {
  if (this != &other) {
    nbd_close(handle_);
    handle_ = std::exchange(other.handle_, nullptr);
    endpoint_ = std::move(other.endpoint_);
  }
  return *this;
}

NbdClient::~NbdClient() {
  nbd_close(handle_);
}

void NbdClient::fail(const char* what) const {
  throw nbd_error(what, endpoint_);
}

std::uint64_t NbdClient::size() const {
  std::int64_t n = nbd_get_size(handle_);
  if (n < 0) fail("get_size");
  return static_cast<std::uint64_t>(n);
}

void NbdClient::pread(std::span<std::byte> buf, std::uint64_t offset) const {
  if (nbd_pread(handle_, buf.data(), buf.size(), offset, 0) == -1) fail("pread");
}

void NbdClient::pwrite(std::span<const std::byte> buf, std::uint64_t offset) const {
  if (nbd_pwrite(handle_, buf.data(), buf.size(), offset, 0) == -1) fail("pwrite");
}

void NbdClient::flush() const {
  if (nbd_flush(handle_, 0) == -1) fail("flush");
}

void NbdClient::zero(std::uint64_t count, std::uint64_t offset) const {
  if (nbd_zero(handle_, count, offset, 0) == -1) fail("zero");
}

void NbdClient::shutdown() const {
  if (nbd_shutdown(handle_, 0) == -1) fail("shutdown");
}

}  // namespace nbdtunnel::nbd

#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

struct nbd_handle;

namespace nbdtunnel::nbd {

// A connected libnbd handle. Move-only; closes the handle on destruction.
// Every failure throws std::runtime_error carrying libnbd's message and the endpoint.
class NbdClient {
 public:
  // Connects to the NBD server listening on a UNIX socket and opens export_name.
  static NbdClient connect_unix(const std::string& socket_path, const std::string& export_name);
  // Connects using an NBD URI (e.g. "nbd+unix:///disk0?socket=/tmp/s").
  static NbdClient connect_uri(const std::string& uri);

  NbdClient(NbdClient&& other) noexcept;
  NbdClient& operator=(NbdClient&& other) noexcept;
  NbdClient(const NbdClient&) = delete;
  NbdClient& operator=(const NbdClient&) = delete;
  ~NbdClient();

  // Size of the export in bytes.
  std::uint64_t size() const;
  void pread(std::span<std::byte> buf, std::uint64_t offset) const;
  void pwrite(std::span<const std::byte> buf, std::uint64_t offset) const;
  void flush() const;
  // Writes zeroes over [offset, offset + count).
  void zero(std::uint64_t count, std::uint64_t offset) const;
  // Sends NBD_CMD_DISC after in-flight commands; the handle stays valid for close.
  void shutdown() const;

  // Where this client is connected, for messages.
  const std::string& endpoint() const { return endpoint_; }

 private:
  NbdClient(nbd_handle* handle, std::string endpoint)
      : handle_(handle), endpoint_(std::move(endpoint)) {}
  [[noreturn]] void fail(const char* what) const;

  nbd_handle* handle_ = nullptr;
  std::string endpoint_;
};

}  // namespace nbdtunnel::nbd

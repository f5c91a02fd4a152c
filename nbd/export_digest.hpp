#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "nbd/nbd_client.hpp"

namespace nbdtunnel::nbd {

// A streaming 64-bit digest for verification (not security): 8-byte words are mixed one by one,
// so the result depends only on the bytes and never on how they were split into chunks.
class Digest64 {
 public:
  void update(std::span<const std::byte> data);
  std::uint64_t finish() const;

 private:
  void mix(std::uint64_t word);

  std::uint64_t state_ = 0x9e3779b97f4a7c15ULL;
  std::uint64_t length_ = 0;
  std::byte pending_[8] = {};
  std::size_t pending_len_ = 0;
};

// Reads the whole export in large chunks and returns its digest.
std::uint64_t digest_export(const NbdClient& client);

// Digest of a raw file's bytes; equals digest_export() of an export with the same contents.
std::uint64_t digest_file(const std::string& path);

// Digest of an in-memory buffer, same algorithm.
std::uint64_t digest_bytes(std::span<const std::byte> data);

}  // namespace nbdtunnel::nbd

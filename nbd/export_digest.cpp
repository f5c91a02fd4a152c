#include "nbd/export_digest.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace nbdtunnel::nbd {
namespace {

// Large enough to amortise round trips, below every NBD server's 32 MiB request limit.
constexpr std::size_t kChunk = 4 << 20;

constexpr std::uint64_t kPrime1 = 0x9e3779b185ebca87ULL;
constexpr std::uint64_t kPrime2 = 0xc2b2ae3d27d4eb4fULL;

std::uint64_t rotl(std::uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

}  // namespace

void Digest64::mix(std::uint64_t word) {
  state_ ^= rotl(word * kPrime2, 31) * kPrime1;
  state_ = rotl(state_, 27) * kPrime1 + 0x85ebca77c2b2ae63ULL;
}

void Digest64::update(std::span<const std::byte> data) {
  if (data.empty()) return;  // data() may be null, which memcpy must not see
  length_ += data.size();
  std::size_t i = 0;
  if (pending_len_ > 0) {
    std::size_t take = std::min(data.size(), sizeof pending_ - pending_len_);
    std::memcpy(pending_ + pending_len_, data.data(), take);
    pending_len_ += take;
    i = take;
    if (pending_len_ < sizeof pending_) return;
    std::uint64_t w;
    std::memcpy(&w, pending_, sizeof w);
    mix(w);
    pending_len_ = 0;
  }
  for (; i + 8 <= data.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, data.data() + i, sizeof w);
    mix(w);
  }
  pending_len_ = data.size() - i;
  std::memcpy(pending_, data.data() + i, pending_len_);
}

std::uint64_t Digest64::finish() const {
  Digest64 copy = *this;
  if (copy.pending_len_ > 0) {
    std::uint64_t w = 0;
    std::memcpy(&w, copy.pending_, copy.pending_len_);
    copy.mix(w);
  }
  // Fold in the length so trailing zero bytes change the result, then avalanche.
  std::uint64_t h = copy.state_ ^ (length_ * kPrime2);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

std::uint64_t digest_bytes(std::span<const std::byte> data) {
  Digest64 d;
  d.update(data);
  return d.finish();
}

std::uint64_t digest_export(const NbdClient& client) {
  const std::uint64_t size = client.size();
  std::vector<std::byte> buf(kChunk);
  Digest64 d;
  for (std::uint64_t off = 0; off < size;) {
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, size - off));
    client.pread(std::span(buf.data(), n), off);
    d.update(std::span(buf.data(), n));
    off += n;
  }
  return d.finish();
}

std::uint64_t digest_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw std::system_error(errno, std::generic_category(), "digest_file: open " + path);
  }
  std::vector<std::byte> buf(kChunk);
  Digest64 d;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw std::system_error(err, std::generic_category(), "digest_file: read " + path);
    }
    if (n == 0) break;
    d.update(std::span(buf.data(), static_cast<std::size_t>(n)));
  }
  ::close(fd);
  return d.finish();
}

}  // namespace nbdtunnel::nbd

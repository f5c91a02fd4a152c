#include "tests/integration/harness/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace nbdtunnel::testing {
namespace {

constexpr std::size_t kChunk = 4 << 20;

// xoshiro256** by Blackman and Vigna: fast, good enough to defeat compression and dedup.
class Xoshiro {
 public:
  explicit Xoshiro(std::uint64_t seed) {
    for (auto& s : s_) {
      seed += 0x9e3779b97f4a7c15ULL;  // splitmix64 to spread the seed
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      s = z ^ (z >> 31);
    }
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  void fill(std::byte* p, std::size_t n) {
    for (; n >= 8; n -= 8, p += 8) {
      std::uint64_t v = next();
      std::memcpy(p, &v, 8);
    }
    if (n > 0) {
      std::uint64_t v = next();
      std::memcpy(p, &v, n);
    }
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

class Fd {
 public:
  Fd(const std::string& path, int flags) : fd_(::open(path.c_str(), flags | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "open " + path);
  }
  ~Fd() { ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

void write_all(int fd, const std::byte* p, std::size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw std::system_error(errno, std::generic_category(), "write " + path);
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Reads up to n bytes, short only at end of file.
std::size_t read_full(int fd, std::byte* p, std::size_t n, const std::string& path) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::system_error(errno, std::generic_category(), "read " + path);
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  return got;
}

}  // namespace

void make_random_image(const std::string& path, std::uint64_t bytes, std::uint64_t seed) {
  Fd fd(path, O_WRONLY | O_CREAT | O_TRUNC);
  Xoshiro rng(seed);
  std::vector<std::byte> buf(kChunk);
  for (std::uint64_t left = bytes; left > 0;) {
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, kChunk));
    rng.fill(buf.data(), n);
    write_all(fd.get(), buf.data(), n, path);
    left -= n;
  }
}

void make_zero_image(const std::string& path, std::uint64_t bytes) {
  Fd fd(path, O_WRONLY | O_CREAT | O_TRUNC);
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    throw std::system_error(errno, std::generic_category(), "ftruncate " + path);
  }
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
  std::vector<std::byte> out(n);
  Xoshiro(seed).fill(out.data(), n);
  return out;
}

::testing::AssertionResult files_identical(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  if (::stat(a.c_str(), &sa) != 0) return ::testing::AssertionFailure() << "cannot stat " << a;
  if (::stat(b.c_str(), &sb) != 0) return ::testing::AssertionFailure() << "cannot stat " << b;
  if (sa.st_size != sb.st_size) {
    return ::testing::AssertionFailure()
           << a << " is " << sa.st_size << " bytes but " << b << " is " << sb.st_size;
  }
  Fd fa(a, O_RDONLY), fb(b, O_RDONLY);
  std::vector<std::byte> ba(kChunk), bb(kChunk);
  for (std::uint64_t off = 0;;) {
    std::size_t na = read_full(fa.get(), ba.data(), kChunk, a);
    std::size_t nb = read_full(fb.get(), bb.data(), kChunk, b);
    std::size_t n = std::min(na, nb);
    if (std::memcmp(ba.data(), bb.data(), n) != 0 || na != nb) {
      std::size_t i = 0;
      while (i < n && ba[i] == bb[i]) ++i;
      return ::testing::AssertionFailure() << a << " and " << b << " differ at byte offset "
                                           << off + i << " (of " << sa.st_size << ")";
    }
    if (na == 0) break;
    off += na;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult file_has_pattern(const std::string& path, std::uint64_t offset,
                                            std::size_t len, std::byte value) {
  Fd fd(path, O_RDONLY);
  std::vector<std::byte> buf(len);
  ssize_t r = ::pread(fd.get(), buf.data(), len, static_cast<off_t>(offset));
  if (r != static_cast<ssize_t>(len)) {
    return ::testing::AssertionFailure() << "short read of " << path << " at " << offset;
  }
  for (std::size_t i = 0; i < len; ++i) {
    if (buf[i] != value) {
      return ::testing::AssertionFailure()
             << path << " byte " << offset + i << " is 0x" << std::hex << static_cast<int>(buf[i])
             << ", expected 0x" << static_cast<int>(value);
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace nbdtunnel::testing

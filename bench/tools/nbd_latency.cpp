// nbd_latency: 4 KiB random writes at queue depth 1 through one NBD connection, timing each
// request; then (optionally) reads every written block back through a second URI and checks it.
// Prints one JSON object on stdout. Used by the macro bench for workload W4.
//
//   nbd_latency --uri URI [--requests N] [--seconds S] [--warmup N] [--seed N]
//               [--verify-uri URI]

#include <libnbd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr std::uint64_t kBlock = 4096;

struct Options {
  std::string uri;
  std::string verify_uri;
  long requests = 20000;
  double seconds = 30.0;  // time bound: stop early if the requests take longer than this
  long warmup = 200;      // requests sent first and not timed
  std::uint64_t seed = 1;
};

// splitmix64: a small, deterministic generator, so the verifier can recompute every block.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The content of write number i: 512 words derived from (seed, i).
void fill_block(std::uint64_t seed, std::uint64_t i, std::uint8_t* out) {
  for (std::uint64_t w = 0; w < kBlock / 8; ++w) {
    std::uint64_t v = mix(seed ^ (i << 20) ^ w);
    std::memcpy(out + w * 8, &v, 8);
  }
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "nbd_latency: %s: %s\n", what, nbd_get_error());
  std::exit(1);
}

nbd_handle* open_uri(const std::string& uri) {
  nbd_handle* h = nbd_create();
  if (h == nullptr) die("nbd_create");
  // The bench's own URIs name its certificate directory (nbds://...?tls-certificates=DIR), which
  // libnbd refuses unless local file access is allowed, as nbdcopy and nbdinfo allow it.
  if (nbd_set_uri_allow_local_file(h, true) == -1) die("nbd_set_uri_allow_local_file");
  if (nbd_connect_uri(h, uri.c_str()) == -1) die(uri.c_str());
  return h;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "nbd_latency: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--uri")
      o.uri = next();
    else if (a == "--verify-uri")
      o.verify_uri = next();
    else if (a == "--requests")
      o.requests = std::stol(next());
    else if (a == "--seconds")
      o.seconds = std::stod(next());
    else if (a == "--warmup")
      o.warmup = std::stol(next());
    else if (a == "--seed")
      o.seed = std::stoull(next());
    else {
      std::fprintf(stderr,
                   "usage: nbd_latency --uri URI [--requests N] [--seconds S] "
                   "[--warmup N] [--seed N] [--verify-uri URI]\n");
      std::exit(2);
    }
  }
  if (o.uri.empty()) {
    std::fprintf(stderr, "nbd_latency: --uri is required\n");
    std::exit(2);
  }
  return o;
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  auto idx = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(idx, sorted.size() - 1)];
}

// Reads back the last block written at every offset; returns the number of mismatches.
long verify(const Options& o, const std::unordered_map<std::uint64_t, std::uint64_t>& last) {
  nbd_handle* h = open_uri(o.verify_uri);
  std::vector<std::uint8_t> want(kBlock), got(kBlock);
  long bad = 0;
  for (const auto& [off, i] : last) {
    fill_block(o.seed, i, want.data());
    if (nbd_pread(h, got.data(), kBlock, off, 0) == -1) die("verify pread");
    if (want != got) ++bad;
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  nbd_handle* h = open_uri(o.uri);
  std::int64_t size = nbd_get_size(h);
  if (size < static_cast<std::int64_t>(kBlock)) die("export too small");
  const std::uint64_t blocks = static_cast<std::uint64_t>(size) / kBlock;

  std::vector<std::uint8_t> buf(kBlock);
  std::vector<double> lat_us;
  lat_us.reserve(static_cast<std::size_t>(o.requests));
  std::unordered_map<std::uint64_t, std::uint64_t> last;  // offset -> index of its last write

  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::duration<double>(o.seconds);
  clock::time_point t0{};
  const long total = o.warmup + o.requests;
  long timed = 0;
  for (long n = 0; n < total; ++n) {
    const auto i = static_cast<std::uint64_t>(n);
    const std::uint64_t off = (mix(o.seed * 7919 + i) % blocks) * kBlock;
    fill_block(o.seed, i, buf.data());
    if (n == o.warmup) t0 = clock::now();
    const auto s = clock::now();
    if (nbd_pwrite(h, buf.data(), kBlock, off, 0) == -1) die("pwrite");
    const auto e = clock::now();
    last[off] = i;
    if (n >= o.warmup) {
      lat_us.push_back(std::chrono::duration<double, std::micro>(e - s).count());
      ++timed;
      if (e > deadline) break;
    }
  }
  const double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  if (nbd_flush(h, 0) == -1) die("flush");
  nbd_shutdown(h, 0);
  nbd_close(h);

  long bad = o.verify_uri.empty() ? -1 : verify(o, last);

  double mean = 0;
  for (double v : lat_us) mean += v;
  mean /= static_cast<double>(std::max<std::size_t>(lat_us.size(), 1));
  std::sort(lat_us.begin(), lat_us.end());
  std::printf(
      "{\"requests\": %ld, \"elapsed_s\": %.6f, \"iops\": %.1f, \"mean_us\": %.2f, "
      "\"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, \"max_us\": %.2f, "
      "\"verified_blocks\": %zu, \"mismatches\": %ld}\n",
      timed, elapsed, static_cast<double>(timed) / elapsed, mean, percentile(lat_us, 0.50),
      percentile(lat_us, 0.90), percentile(lat_us, 0.99), lat_us.empty() ? 0.0 : lat_us.back(),
      o.verify_uri.empty() ? std::size_t{0} : last.size(), bad);
  return bad > 0 ? 3 : 0;
}

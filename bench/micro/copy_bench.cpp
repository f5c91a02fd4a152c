// Copy methods per direction, standalone: how fast, and at what CPU cost, can one relay thread
// move bytes TCP->UNIX and UNIX->TCP with read/write, splice, io_uring recv/send, io_uring splice?
// A producer and a consumer thread stand in for the peer and QEMU.
//
// Counters (per benchmark, averaged over the iterations):
//   bytes_per_second  wall-clock throughput (UseRealTime)
//   relay_cpu_s_GiB   CPU seconds of the relay per GiB moved: whole-process CPU (so io_uring's
//                     io-wq workers count) minus the producer's and consumer's thread CPU
//   helper_cpu_s_GiB  the producer's and consumer's CPU per GiB, for context
// The "CPU" column Google Benchmark prints is the relay thread alone and misses io-wq work:
// read relay_cpu_s_GiB instead.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "copy_methods.hpp"
#include "socket_rig.hpp"

namespace {

constexpr std::uint64_t kMiB = 1 << 20;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

using Factory = std::function<std::unique_ptr<bench::Copier>()>;

// Moves arg(0) MiB per iteration through `make()`'s copier in direction d.
void run_copy(benchmark::State& state, bench::Direction d, const Factory& make) {
  std::unique_ptr<bench::Copier> copier;
  try {
    copier = make();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  bench::SocketRig rig(d);
  const std::uint64_t chunk = static_cast<std::uint64_t>(state.range(0)) * kMiB;
  std::uint64_t total = 0;

  // Warm-up, not measured: fill socket buffers, fault in pages, let the CPU clock settle.
  const std::uint64_t warm = 128 * kMiB;
  rig.produce(warm);
  if (std::string err = copier->copy(rig.relay_in(), rig.relay_out(), warm); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  total += warm;
  rig.wait_consumed(total);

  const double cpu0 = bench::process_cpu_seconds();
  const double helpers0 = rig.helper_cpu_seconds();
  for (auto _ : state) {
    rig.produce(chunk);
    std::string err = copier->copy(rig.relay_in(), rig.relay_out(), chunk);
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
    total += chunk;
    rig.wait_consumed(total);
  }
  const double helpers = rig.helper_cpu_seconds() - helpers0;
  const double relay = bench::process_cpu_seconds() - cpu0 - helpers;
  const double gib = static_cast<double>(state.iterations()) * static_cast<double>(chunk) / kGiB;
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(chunk));
  if (gib > 0) {
    state.counters["relay_cpu_s_GiB"] = relay / gib;
    state.counters["helper_cpu_s_GiB"] = helpers / gib;
  }
}

void register_all() {
  struct Method {
    const char* name;
    Factory make;
  };
  const Method methods[] = {
      {"read_write_256k", [] { return bench::make_read_write(); }},
      {"splice_pipe_1m", [] { return bench::make_splice(); }},
      {"uring_recv_send_256k", [] { return bench::make_uring_recv_send(); }},
      {"uring_splice_1m", [] { return bench::make_uring_splice(); }},
  };
  const std::pair<const char*, bench::Direction> dirs[] = {
      {"tcp_to_unix", bench::Direction::tcp_to_unix},
      {"unix_to_tcp", bench::Direction::unix_to_tcp},
  };
  for (const auto& [dname, dir] : dirs) {
    for (const auto& m : methods) {
      std::string name = std::string("BM_copy/") + dname + "/" + m.name;
      Factory make = m.make;
      bench::Direction d = dir;
      benchmark::RegisterBenchmark(name.c_str(),
                                   [make, d](benchmark::State& s) { run_copy(s, d, make); })
          ->Arg(256)  // MiB per iteration
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(2.0)
          ->Repetitions(3)
          ->ReportAggregatesOnly(true);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

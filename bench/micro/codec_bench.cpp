// Micro-benchmarks of the wire codecs: packet framing and XDR strings.
// These sit on the data path once per packet, so they must cost nanoseconds, not microseconds.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tunnel/packet.hpp"
#include "tunnel/protocol.hpp"
#include "tunnel/xdr.hpp"

namespace tn = nbdtunnel::tunnel;

namespace {

tn::PacketHeader stream_header(std::uint32_t serial) {
  tn::PacketHeader h;
  h.program = tn::kProgram;
  h.version = tn::kProgramVersion;
  h.procedure = static_cast<std::uint32_t>(tn::Proc::domain_migrate_open_tunnel);
  h.type = static_cast<std::uint32_t>(tn::PacketType::stream);
  h.serial = serial;
  h.status = static_cast<std::uint32_t>(tn::PacketStatus::cont);
  return h;
}

// Decoding the header of one STREAM packet whose payload is arg(0) bytes.
void BM_decode_packet(benchmark::State& state) {
  const auto payload = static_cast<std::size_t>(state.range(0));
  std::vector<std::uint8_t> body(payload, 0x5a);
  const std::vector<std::uint8_t> pkt = tn::make_packet(stream_header(2), body);
  for (auto _ : state) {
    tn::DecodeResult r = tn::decode_packet(pkt);
    benchmark::DoNotOptimize(r.consumed);
    benchmark::DoNotOptimize(r.body.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(pkt.size()));
}
BENCHMARK(BM_decode_packet)->Arg(0)->Arg(4096)->Arg(256 << 10)->Arg(1 << 20);

// Decoding a buffer of back-to-back 64 KiB STREAM packets, as a receiver does after one recv.
void BM_decode_packet_batch(benchmark::State& state) {
  std::vector<std::uint8_t> body(64 << 10, 0x5a);
  std::vector<std::uint8_t> buf;
  for (int i = 0; i < 16; ++i) {
    auto p = tn::make_packet(stream_header(2), body);
    buf.insert(buf.end(), p.begin(), p.end());
  }
  for (auto _ : state) {
    std::span<const std::uint8_t> in(buf);
    while (!in.empty()) {
      tn::DecodeResult r = tn::decode_packet(in);
      if (r.status != tn::DecodeResult::Status::frame) break;
      benchmark::DoNotOptimize(r.body.data());
      in = in.subspan(r.consumed);
    }
  }
  state.SetItemsProcessed(state.iterations() * 16);
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(buf.size()));
}
BENCHMARK(BM_decode_packet_batch);

// Writing the 28-byte prefix in front of a payload that is already in place (the zero-copy path).
void BM_write_prefix(benchmark::State& state) {
  std::uint8_t out[tn::kPrefixSize];
  std::uint32_t serial = 2;
  for (auto _ : state) {
    tn::write_prefix(out, stream_header(serial), 256 << 10);
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
    ++serial;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_write_prefix);

// Building a whole packet (allocation + copy of the body) of arg(0) payload bytes.
void BM_make_packet(benchmark::State& state) {
  std::vector<std::uint8_t> body(static_cast<std::size_t>(state.range(0)), 0x5a);
  for (auto _ : state) {
    auto p = tn::make_packet(stream_header(2), body);
    benchmark::DoNotOptimize(p.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * (state.range(0) + tn::kPrefixSize));
}
BENCHMARK(BM_make_packet)->Arg(0)->Arg(4)->Arg(4096)->Arg(256 << 10);

// XDR string encoding of an arg(0)-byte string (target names, host ids, error messages).
void BM_xdr_string_encode(benchmark::State& state) {
  const std::string s(static_cast<std::size_t>(state.range(0)), 'x');
  std::vector<std::uint8_t> out;
  out.reserve(s.size() + 8);
  for (auto _ : state) {
    out.clear();
    tn::XdrWriter w(out);
    w.string(s);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_xdr_string_encode)->Arg(3)->Arg(64)->Arg(255)->Arg(4096);

// XDR string decoding with its bound check.
void BM_xdr_string_decode(benchmark::State& state) {
  const std::string s(static_cast<std::size_t>(state.range(0)), 'x');
  std::vector<std::uint8_t> in;
  tn::XdrWriter w(in);
  w.string(s);
  for (auto _ : state) {
    tn::XdrReader r(in);
    std::string got = r.string(tn::kMaxStringLen);
    benchmark::DoNotOptimize(got.data());
    if (!r.ok()) state.SkipWithError("decode failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_xdr_string_decode)->Arg(3)->Arg(64)->Arg(255)->Arg(4096);

// A whole HELLO body round trip (encode + decode), the handshake's codec cost.
void BM_hello_roundtrip(benchmark::State& state) {
  tn::Hello h;
  h.host_id = std::string(32, 'a');
  h.hostname = "destination.example.org";
  h.window = 2 << 20;
  h.max_payload = 1 << 20;
  std::vector<std::uint8_t> buf;
  for (auto _ : state) {
    buf.clear();
    tn::encode_hello(buf, h);
    tn::Result<tn::Hello> out = tn::decode_hello(buf);
    if (!out) {
      state.SkipWithError(out.error().message.c_str());
      break;
    }
    benchmark::DoNotOptimize(out->window);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_hello_roundtrip);

}  // namespace

BENCHMARK_MAIN();

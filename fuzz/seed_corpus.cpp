// Writes the seed corpora of the fuzz targets: the golden values of the unit tests (encoded with
// the same encoders, so the bytes are the golden bytes the tests check), plus a few edge cases.
//   build/fuzz/fuzz_seed_corpus fuzz/corpus
// Each file is named after the test or case it comes from. Run it again after changing a wire
// format; files it does not write (inputs kept from fuzzing) are left alone.
#include <fmt/format.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "engine/migration_protocol.hpp"
#include "tunnel/packet.hpp"
#include "tunnel/protocol.hpp"

namespace {

namespace fs = std::filesystem;
using namespace nbdtunnel::tunnel;
using namespace nbdtunnel::engine;
using Bytes = std::vector<std::uint8_t>;

fs::path g_root;

void write(const std::string& target, const std::string& name, const Bytes& bytes) {
  const fs::path dir = g_root / target;
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error(fmt::format("cannot write {}", (dir / name).string()));
}

void write(const std::string& target, const std::string& name, std::string_view text) {
  write(target, name, Bytes(text.begin(), text.end()));
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

template <class T, class Encode>
Bytes encoded(const T& value, Encode encode) {
  Bytes out;
  encode(out, value);
  return out;
}

// The bodies of tests/tunnel/protocol_test.cpp.
Hello hello() {
  Hello h;
  h.host_id = "abc";
  h.hostname = "host-a";
  h.window = 1u << 20;
  h.max_payload = 256u << 10;
  return h;
}
const Bytes kHello = encoded(hello(), encode_hello);
const Bytes kOpenTunnel = encoded(OpenTunnel{"disk0", 0}, encode_open_tunnel);
const Bytes kRemoteError =
    encoded(make_error(ErrorCode::unknown_target, "no"), encode_remote_error);
Bytes remote_error_with_domain() {
  Bytes body = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,   0,   0, 0,
                0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 'v', 'm', 0, 0};
  body.insert(body.end(), 16, 0xab);
  body.insert(body.end(), {0, 0, 0, 3});
  body.insert(body.end(), 4 * 6, 0);
  return body;
}
const Bytes kCredit = {0, 1, 0, 0};

// The bodies of tests/engine/migration_protocol_test.cpp.
Prepare prepare() {
  Prepare p;
  p.migration_id = "m1";
  p.disks.push_back({"d0", 0x100000000ull});
  p.flags = kPrepareCheckOnly;
  return p;
}
PrepareResult prepare_result() {
  PrepareResult r;
  r.qemu_version = "7.2.22";
  r.target = "migration/m1";
  r.disks.push_back({"d0", true, 4096, false});
  return r;
}

Bytes packet(std::uint32_t procedure, PacketType type, std::uint32_t serial, PacketStatus status,
             const Bytes& body = {}) {
  return make_packet(make_header(kProgram, procedure, type, serial, status), body);
}

// One conversation from docs/PROTOCOL.md, initiator side, packet after packet.
Bytes conversation() {
  const auto hello_proc = static_cast<std::uint32_t>(Proc::hello);
  const auto open_proc = static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel);
  const auto credit_proc = static_cast<std::uint32_t>(Proc::stream_credit);
  const Bytes ping =
      make_packet(make_header(kKeepaliveProgram, static_cast<std::uint32_t>(KeepaliveProc::ping),
                              PacketType::message, 0, PacketStatus::ok));
  return cat({packet(hello_proc, PacketType::call, 1, PacketStatus::ok, kHello),
              packet(open_proc, PacketType::call, 2, PacketStatus::ok, kOpenTunnel),
              make_packet(stream_header(2, PacketStatus::cont), Bytes{'h', 'i'}),
              packet(credit_proc, PacketType::message, 2, PacketStatus::ok, kCredit), ping,
              make_packet(stream_header(2, PacketStatus::error), kRemoteError),
              make_packet(stream_header(2, PacketStatus::cont)),
              make_packet(stream_header(2, PacketStatus::ok))});
}

// xdr_fuzz ops: low 3 bits what to read, the rest a limit (31: 4096) or an opaque size.
constexpr std::uint8_t kU32 = 0, kI32 = 1, kU64 = 2, kString = 3 | 31 << 3,
                       kOptString = 5 | 31 << 3, kUuid = 7 | 16 << 3;
Bytes xdr_program(Bytes ops, const Bytes& data) {
  ops.insert(ops.begin(), static_cast<std::uint8_t>(ops.size()));
  return cat({ops, data});
}

void xdr() {
  write("xdr", "hello_body", xdr_program({kU32, kU64, kString, kString, kU32, kU32}, kHello));
  write("xdr", "remote_error_body",
        xdr_program({kI32, kI32, kOptString, kI32, kU32, kOptString, kOptString, kOptString, kI32,
                     kI32, kU32},
                    kRemoteError));
  write("xdr", "remote_error_with_domain",
        xdr_program({kI32, kI32, kOptString, kI32, kU32, kString, kUuid, kI32},
                    remote_error_with_domain()));
  write("xdr", "prepare_body",
        xdr_program({kString, kU32, kString, kU64, kU32}, encoded(prepare(), encode_prepare)));
  // tests/tunnel/xdr_test.cpp
  write("xdr", "integers_are_big_endian",
        xdr_program({kU32, kI32, kU64},
                    {1, 2, 3, 4, 0xff, 0xff, 0xff, 0xfe, 1, 2, 3, 4, 5, 6, 7, 8}));
  write("xdr", "string_padded_to_four",
        xdr_program({kString}, {0, 0, 0, 5, 'a', 'b', 'c', 'd', 'e', 0, 0, 0}));
  write("xdr", "truncated_string", xdr_program({kString}, {0, 0, 0, 8, 'a', 'b'}));
  write("xdr", "oversized_string", xdr_program({kString}, {0xff, 0xff, 0xff, 0xff, 'a'}));
  write("xdr", "optional_flag_two", xdr_program({kOptString}, {0, 0, 0, 2}));
}

void packets() {
  // tests/tunnel/packet_test.cpp: kStreamHi, the keepalive PING, two packets in one buffer.
  const Bytes hi = make_packet(stream_header(7, PacketStatus::cont), Bytes{'h', 'i'});
  const Bytes ping = {0, 0, 0, 0x1c, 0x6b, 0x65, 0x65, 0x70, 0, 0, 0, 1, 0, 0,
                      0, 1, 0, 0,    0,    2,    0,    0,    0, 0, 0, 0, 0, 0};
  write("packet", "stream_hi", hi);
  write("packet", "keepalive_ping", ping);
  write("packet", "two_packets", cat({hi, hi}));
  write("packet", "length_256_MiB", Bytes{0x10, 0, 0, 0});
  write("packet", "conversation", conversation());
}

void protocol() {
  write("protocol", "hello", kHello);
  write("protocol", "open_tunnel_disk0", kOpenTunnel);
  write("protocol", "remote_error_no", kRemoteError);
  write("protocol", "remote_error_with_domain", remote_error_with_domain());
  write("protocol", "credit_64k", kCredit);
}

void migration_protocol() {
  write("migration_protocol", "prepare", encoded(prepare(), encode_prepare));
  write("migration_protocol", "prepare_result", encoded(prepare_result(), encode_prepare_result));
  write("migration_protocol", "finish_abort", encoded(Finish{"m1", kFinishAbort}, encode_finish));
  Prepare many = prepare();
  many.disks.assign(kMaxDisks, PrepareDisk{"disk-with-a-longer-name", 1u << 30});
  write("migration_protocol", "prepare_64_disks", encoded(many, encode_prepare));
}

// frame_steps_fuzz: limit byte (odd: the real kMaxPacket), control bytes, then the stream.
void frame_steps() {
  const Bytes stream = conversation();
  write("frame_steps", "byte_by_byte", cat({{1, 1, 0}, stream}));
  write("frame_steps", "whole_steps_splice", cat({{1, 2, 0xff, 0xff}, stream}));
  write("frame_steps", "pieces_abandon", cat({{1, 4, 0x0d, 0x03, 0x1f, 0x0c}, stream}));
  write("frame_steps", "small_limit_refused", cat({{4, 1, 0xff}, stream}));
}

// json_lines_fuzz: limit byte (1 + b % 64), piece sizes, then the stream; the texts of
// tests/qmp/json_lines_test.cpp and a QMP greeting.
void json_lines() {
  write("json_lines", "several_lines",
        std::string("\x3f\x01\x05", 3) + "{\"a\":1}\n{\"b\":2}\n{\"c\"");
  write("json_lines", "crlf", std::string("\x3f\x02\x07\x01", 4) + "{\"a\":1}\r\n{\"b\":2}\r\n");
  write("json_lines", "blank_lines", std::string("\x3f\x00", 2) + "\n\r\n\n{}\n");
  write("json_lines", "at_limit_with_crlf", std::string("\x03\x02\x04\x01", 4) + "abcd\r\n");
  write("json_lines", "overlong", std::string("\x07\x00", 2) + "{}\n0123456789\n{}\n");
  write(
      "json_lines", "qmp_greeting",
      std::string("\x3f\x01\x10", 3) +
          R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}})"
          "\r\n");
}

// control_command_fuzz: one line each, from tests/engine/control_server_test.cpp.
void control_command() {
  int i = 0;
  for (const char* line :
       {R"({"execute":"qmp_capabilities"})",
        R"({"execute":"cancel","arguments":{"disk":"vda"},"id":"a1"})",
        R"({"execute":"query-progress","id":{"n":[1]}})", R"({"execute":"fail","id":7})",
        "this is not json", "[1,2]", R"({"arguments":{},"id":3})", R"({"execute":5})",
        R"({"execute":"cancel","arguments":[1]})",
        R"({"execute":"x\u00e9\ud83d\ude00","id":1.5e300})"}) {
    write("control_command", fmt::format("line{}", i++), line);
  }
  // An id nested as deep as a 64 KiB line allows: the reply echoes (and serialises) it.
  const std::size_t depth = 32 * 1024 - 16;
  write("control_command", "deep_id",
        R"({"execute":"x","id":)" + std::string(depth, '[') + std::string(depth, ']') + "}");
}

// A file name for a text seed: its letters and digits, '_' for the rest.
std::string file_name(std::string_view text) {
  std::string n(text);
  for (char& c : n) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return n.empty() ? "empty" : n;
}

void cli_values() {
  for (const char* text : {"nbd=/run/nbdtunnel/nbd.sock", "/tmp/a=b.sock=nbd", "drive0=drive1",
                           "drive0", "0600", "nonsense", "=", ""}) {
    write("cli_values", file_name(text), text);
  }
}

void endpoint() {
  int i = 0;
  for (const char* text : {"127.0.0.1:10809", "[::1]:0", "localhost:65535", "noport",
                           "[fe80::1%eth0]:22", "host:65536", "[::1]x:1"}) {
    write("endpoint", fmt::format("endpoint{}", i++), text);
  }
}

void http_request() {
  int i = 0;
  for (const char* text :
       {"GET /metrics HTTP/1.1\r\nHost: localhost:9649\r\nAccept: */*\r\n\r\n",
        "GET /metrics HTTP/1.0\n\n", "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n",
        "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", "GET / HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/2.0\r\n\r\n", "GET /metrics HTTP/1.1\r\nHost\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x"}) {
    write("http_request", fmt::format("http_request{}", i++), text);
  }
}

void dest_state() {
  write("dest_state", "two_exports",
        "nbdtunnel-dest-state 1\nqmp /run/qemu/dst.qmp\n"
        "server m1 /run/nbdtunnel/.qmp-0123456789abcdef/nbd-m1.sock\n"
        "export m1 nbdtunnel-m1-0\nexport m1 nbdtunnel-m1-1\n");
  write("dest_state", "empty_records", "nbdtunnel-dest-state 1\nqmp /q\n");
  write("dest_state", "bad_id", "nbdtunnel-dest-state 1\nqmp /q\nexport ../x nbdtunnel-x\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (normally fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  try {
    xdr();
    packets();
    protocol();
    migration_protocol();
    frame_steps();
    json_lines();
    control_command();
    cli_values();
    endpoint();
    http_request();
    dest_state();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seed_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}

#pragma once
// The nbdtunnel wire protocol in code: constants, limits and message bodies.
// docs/PROTOCOL.md describes the same thing in prose; the golden bytes in
// tests/tunnel/packet_test.cpp and tests/tunnel/protocol_test.cpp tie the two together.
// tunnel/ knows no migration: the engine's procedures (PREPARE, FINISH) live in
// engine/migration_protocol.hpp and reach it through ChannelEvents::on_call.

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tunnel/result.hpp"

namespace nbdtunnel::tunnel {

// Our own RPC program ("NBTU"), not libvirt's remote program 0x20008086.
inline constexpr std::uint32_t kProgram = 0x4e425455;
inline constexpr std::uint32_t kProgramVersion = 1;
// libvirt's keepalive program ("keep") and its procedures, used as libvirt does.
inline constexpr std::uint32_t kKeepaliveProgram = 0x6b656570;
inline constexpr std::uint32_t kKeepaliveVersion = 1;
enum class KeepaliveProc : std::uint32_t { ping = 1, pong = 2 };

// Procedures of kProgram that the channel serves itself. Any other CALL goes to its owner.
enum class Proc : std::uint32_t {
  hello = 1,                       // CALL: version, features, identity, limits. Must come first.
  domain_migrate_open_tunnel = 2,  // CALL: target name; opens a stream on this call's serial.
  stream_credit = 3,               // MESSAGE: the sender may send that many more payload bytes.
  // 4 to 15 are the engine's (engine/migration_protocol.hpp).
  resume = 16,   // CALL: first on a new connection: carry on a lost channel (see ResumeRequest).
  ack = 17,      // MESSAGE: resumable channels: how many channel bytes the sender has received.
  goodbye = 18,  // MESSAGE: resumable channels: the sender is closing the channel on purpose.
};

enum class PacketType : std::uint32_t { call = 0, reply = 1, message = 2, stream = 3 };
enum class PacketStatus : std::uint32_t { ok = 0, error = 1, cont = 2 };

// Length word (4) + header (24).
inline constexpr std::size_t kLengthSize = 4;
inline constexpr std::size_t kHeaderSize = 24;
inline constexpr std::size_t kPrefixSize = kLengthSize + kHeaderSize;

// Protocol limits. A peer that breaks one gets an error; see PROTOCOL.md.
inline constexpr std::size_t kMaxPacket = kPrefixSize + (1u << 20);  // 1 MiB payload + prefix
inline constexpr std::size_t kMaxStreamPayload = 1u << 20;
inline constexpr std::size_t kMaxStringLen = 4096;
inline constexpr std::size_t kMaxTargetNameLen = 255;
inline constexpr std::size_t kMaxHostIdLen = 255;
inline constexpr std::uint32_t kMinWindow = 64 * 1024;
inline constexpr std::uint32_t kMaxWindow = 64u << 20;

// Feature bits advertised in HELLO; unknown bits are ignored. kFeatureResume: the channel
// survives the loss of its connection (HELLO then carries a ResumeTicket; see PROTOCOL.md).
inline constexpr std::uint64_t kFeatureResume = 1;
inline constexpr std::uint64_t kFeatures = 0;
// The most a resume grace period may be: longer is refused in HELLO.
inline constexpr std::uint32_t kMaxResumeTimeoutMs = 24u * 3600 * 1000;

// Error codes carried in remote_error.code.
enum class ErrorCode : std::int32_t {
  protocol = 1,            // malformed or unexpected packet
  unsupported = 2,         // unknown program, procedure or version
  handshake_required = 3,  // a call before HELLO
  unknown_target = 4,      // OPEN_TUNNEL names a target the destination does not have
  target_unavailable = 5,  // the target socket could not be connected
  limit = 6,               // too many streams, window violated, size limits
  stream_io = 7,           // a local socket failed mid-stream
  shutdown = 8,            // the daemon is stopping
  not_resumable = 9,       // RESUME names no channel this side can resume, or the wrong secret
};
// remote_error.domain used for every nbdtunnel error.
inline constexpr std::int32_t kErrorDomain = 0x4e42;  // "NB"
inline constexpr std::int32_t kErrorLevel = 2;        // VIR_ERR_ERROR

struct PacketHeader {
  std::uint32_t length = 0;  // whole packet, including the length word
  std::uint32_t program = 0;
  std::uint32_t version = 0;
  std::uint32_t procedure = 0;
  std::uint32_t type = 0;
  std::uint32_t serial = 0;
  std::uint32_t status = 0;
  friend bool operator==(const PacketHeader&, const PacketHeader&) = default;
};

// What identifies a resumable channel: the responder draws both at random for each channel and
// sends them in its HELLO reply (inside TLS where the channel has it). Only the holder of the
// secret can take the channel's streams over on a new connection.
struct ResumeTicket {
  std::array<std::uint8_t, 16> id{};
  std::array<std::uint8_t, 32> secret{};
  std::uint32_t timeout_ms = 0;  // how long the responder keeps a lost channel
  friend bool operator==(const ResumeTicket&, const ResumeTicket&) = default;
};

// HELLO call and reply bodies have the same shape. With kFeatureResume in features, a ticket
// follows (the initiator's is all zeros: it asks for one).
struct Hello {
  std::uint32_t version = kProgramVersion;
  std::uint64_t features = kFeatures;
  std::string host_id;            // stable machine identity (e.g. /etc/machine-id)
  std::string hostname;           // for messages only
  std::uint32_t window = 0;       // receive window per stream, bytes
  std::uint32_t max_payload = 0;  // largest stream payload the sender will emit
  ResumeTicket ticket;            // only on the wire with kFeatureResume
  friend bool operator==(const Hello&, const Hello&) = default;
};

// RESUME call: the ticket's id and secret and how many bytes of the channel's byte stream the
// caller has received; the reply says the same of the responder. Each side then sends again
// everything past what the other received.
struct ResumeRequest {
  std::array<std::uint8_t, 16> id{};
  std::array<std::uint8_t, 32> secret{};
  std::uint64_t received = 0;
  friend bool operator==(const ResumeRequest&, const ResumeRequest&) = default;
};

struct OpenTunnel {
  std::string target;
  std::uint32_t flags = 0;
  friend bool operator==(const OpenTunnel&, const OpenTunnel&) = default;
};

// Shaped like libvirt's remote_error so that its dissectors read it.
struct RemoteError {
  std::int32_t code = 0;
  std::int32_t domain = kErrorDomain;
  std::optional<std::string> message;
  std::int32_t level = kErrorLevel;
  std::optional<std::string> str1, str2, str3;
  std::int32_t int1 = 0, int2 = 0;
  friend bool operator==(const RemoteError&, const RemoteError&) = default;
};

// Each encode_* appends a body; each decode_* parses a whole body and returns it, or an
// input_error saying what is malformed.
void encode_hello(std::vector<std::uint8_t>& out, const Hello& h);
Result<Hello> decode_hello(std::span<const std::uint8_t> body);
void encode_open_tunnel(std::vector<std::uint8_t>& out, const OpenTunnel& o);
Result<OpenTunnel> decode_open_tunnel(std::span<const std::uint8_t> body);
void encode_credit(std::vector<std::uint8_t>& out, std::uint32_t bytes);
Result<std::uint32_t> decode_credit(std::span<const std::uint8_t> body);
void encode_resume_request(std::vector<std::uint8_t>& out, const ResumeRequest& r);
Result<ResumeRequest> decode_resume_request(std::span<const std::uint8_t> body);
// The RESUME reply and ACK bodies: a byte count.
void encode_received(std::vector<std::uint8_t>& out, std::uint64_t received);
Result<std::uint64_t> decode_received(std::span<const std::uint8_t> body);
void encode_goodbye(std::vector<std::uint8_t>& out, const std::string& reason);
Result<std::string> decode_goodbye(std::span<const std::uint8_t> body);
void encode_remote_error(std::vector<std::uint8_t>& out, const RemoteError& e);
Result<RemoteError> decode_remote_error(std::span<const std::uint8_t> body);

RemoteError make_error(ErrorCode code, std::string message);

}  // namespace nbdtunnel::tunnel

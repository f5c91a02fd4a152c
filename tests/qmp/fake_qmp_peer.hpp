#pragma once

// A scripted QMP server for unit tests: listens on a UNIX socket in a temp dir, accepts one
// client, and runs a script on its own thread. Every wait is bounded, so a broken client
// fails the test instead of hanging it.

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace nbdtunnel::qmp::test {

using namespace std::chrono_literals;

// The server end of one accepted connection, used from the script.
class FakeConnection {
 public:
  explicit FakeConnection(int fd) : fd_(fd) {}
  ~FakeConnection();
  FakeConnection(const FakeConnection&) = delete;
  FakeConnection& operator=(const FakeConnection&) = delete;

  void send_raw(std::string_view bytes);
  void send(const nlohmann::json& message) { send_raw(message.dump() + "\n"); }
  // Next JSON line from the client; nullopt on EOF or timeout.
  std::optional<nlohmann::json> read_message(std::chrono::milliseconds timeout = 5s);
  // Reads one command and throws if it is not `name`.
  nlohmann::json expect_command(const std::string& name);
  void reply(const nlohmann::json& command, const nlohmann::json& value);
  void reply_error(const nlohmann::json& command, const std::string& cls, const std::string& desc);
  void event(const std::string& name, const nlohmann::json& data = nlohmann::json::object());
  // Sends a QEMU-7.2-shaped greeting and answers qmp_capabilities.
  void negotiate();
  // Waits until the client closes its end; false on timeout.
  bool wait_for_eof(std::chrono::milliseconds timeout = 5s);
  void close();

 private:
  int fd_;
  std::string buf_;
};

class FakeQmpPeer {
 public:
  using Script = std::function<void(FakeConnection&)>;

  explicit FakeQmpPeer(Script script);
  ~FakeQmpPeer();
  FakeQmpPeer(const FakeQmpPeer&) = delete;
  FakeQmpPeer& operator=(const FakeQmpPeer&) = delete;

  const std::string& path() const { return path_; }
  // Waits for the script to end; returns what went wrong in it ("" if nothing).
  std::string join();

 private:
  std::string dir_;
  std::string path_;
  int listen_fd_ = -1;
  std::thread thread_;
  std::string failure_;
};

}  // namespace nbdtunnel::qmp::test

#include "engine/control_server.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

namespace nbdtunnel::engine {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  return addr;
}

// A blocking client whose every wait is bounded, so a silent server fails the test.
class LineClient {
 public:
  explicit LineClient(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    const auto addr = unix_address(path);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error("connect " + path + ": " + std::strerror(errno));
    }
  }
  ~LineClient() { ::close(fd_); }

  void send(const std::string& text) {
    for (std::size_t off = 0; off < text.size();) {
      const auto n = ::send(fd_, text.data() + off, text.size() - off, MSG_NOSIGNAL);
      if (n < 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
      off += static_cast<std::size_t>(n);
    }
  }

  // The next line, or nullopt once the server closed the connection.
  std::optional<std::string> read_line() {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (true) {
      if (const auto nl = buf_.find('\n'); nl != std::string::npos) {
        auto line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd pfd{fd_, POLLIN, 0};
      if (left <= 0ms || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) {
        throw std::runtime_error("no line from the control server within 5 s");
      }
      char chunk[4096];
      const auto n = ::read(fd_, chunk, sizeof chunk);
      if (n <= 0) return std::nullopt;
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  json read_json() {
    auto line = read_line();
    if (!line) throw std::runtime_error("the control server closed the connection");
    return json::parse(*line);
  }

  json execute(const std::string& request) {
    send(request + "\n");
    return read_json();
  }

 private:
  int fd_;
  std::string buf_;
};

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nbdtunnel-control-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/control.sock";
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    on_io([&] { server_.reset(); });
    work_.reset();
    thread_.join();
    fs::remove_all(dir_);
  }

  // Runs fn on the io thread (where the server lives) and waits for it.
  template <typename F>
  void on_io(F fn) {
    std::promise<void> done;
    asio::post(io_, [&] {
      try {
        fn();
        done.set_value();
      } catch (...) {
        done.set_exception(std::current_exception());
      }
    });
    auto result = done.get_future();
    if (result.wait_for(10s) != std::future_status::ready) throw std::runtime_error("io stuck");
    result.get();
  }

  // The default handler: echoes its call, fails "fail" with a ControlError and "crash" with
  // another exception. A member coroutine, not a capturing coroutine lambda: see "Coroutines
  // under GCC 12" in docs/DESIGN-NOTES.md.
  asio::awaitable<json> echo(std::string command, json arguments) {
    {
      std::lock_guard lock(mutex_);
      calls_.push_back(command);
    }
    if (command == "fail") throw ControlError("DeviceNotFound", "no disk called vdz");
    if (command == "crash") throw std::runtime_error("broken");
    json reply = {{"command", command}, {"arguments", arguments}};
    co_return reply;
  }

  void start_server(ControlServer::Handler handler = {}) {
    if (!handler) {
      handler = [this](const std::string& command, const json& arguments) {
        return echo(command, arguments);
      };
    }
    on_io([&] {
      server_ = std::make_unique<ControlServer>(io_.get_executor(), path_, std::move(handler));
      server_->start();
    });
  }

  std::size_t clients() {
    std::size_t n = 0;
    on_io([&] { n = server_->clients(); });
    return n;
  }

  // Waits (bounded) until the server counts `n` clients.
  bool wait_clients(std::size_t n) {
    for (auto deadline = std::chrono::steady_clock::now() + 5s;
         std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(10ms)) {
      if (clients() == n) return true;
    }
    return false;
  }

  std::vector<std::string> calls() {
    std::lock_guard lock(mutex_);
    return calls_;
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::thread thread_;
  std::string dir_, path_;
  std::unique_ptr<ControlServer> server_;
  std::mutex mutex_;
  std::vector<std::string> calls_;
};

TEST_F(ControlServerTest, GreetsEachClient) {
  start_server();
  LineClient client(path_);
  EXPECT_EQ(client.read_json(), json::parse(R"({"QMP":{"version":{"nbdtunnel":")" NBDTUNNEL_VERSION
                                            R"("},"capabilities":[]}})"));
  EXPECT_EQ(clients(), 1u);
}

TEST_F(ControlServerTest, SocketIsPrivateToItsOwner) {
  start_server();
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ControlServerTest, DispatchesCommandWithArgumentsAndEchoesId) {
  start_server();
  LineClient client(path_);
  client.read_json();
  EXPECT_EQ(client.execute(R"({"execute":"qmp_capabilities"})"), json::parse(R"({"return":{}})"));
  EXPECT_EQ(client.execute(R"({"execute":"cancel","arguments":{"disk":"vda"},"id":"a1"})"),
            json::parse(R"({"return":{"command":"cancel","arguments":{"disk":"vda"}},"id":"a1"})"));
  EXPECT_EQ(
      client.execute(R"({"execute":"query-progress","id":{"n":[1]}})"),
      json::parse(R"({"return":{"command":"query-progress","arguments":{}},"id":{"n":[1]}})"));
  EXPECT_EQ(calls(), (std::vector<std::string>{"cancel", "query-progress"}))
      << "qmp_capabilities is answered by the server itself";
}

TEST_F(ControlServerTest, HandlerErrorsBecomeErrorReplies) {
  start_server();
  LineClient client(path_);
  client.read_json();
  EXPECT_EQ(
      client.execute(R"({"execute":"fail","id":7})"),
      json::parse(R"({"error":{"class":"DeviceNotFound","desc":"no disk called vdz"},"id":7})"));
  const auto crash = client.execute(R"({"execute":"crash"})");
  EXPECT_EQ(crash["error"]["class"], "GenericError");
  EXPECT_EQ(crash["error"]["desc"], "'crash' failed: broken");
  EXPECT_FALSE(crash.contains("id"));
}

TEST_F(ControlServerTest, MalformedInputGetsGenericErrorAndConnectionStaysOpen) {
  start_server();
  LineClient client(path_);
  client.read_json();
  for (const char* bad : {"this is not json", "[1,2]", R"({"arguments":{},"id":3})",
                          R"({"execute":5})", R"({"execute":"cancel","arguments":[1]})"}) {
    const auto reply = client.execute(bad);
    EXPECT_EQ(reply["error"]["class"], "GenericError") << bad;
    EXPECT_FALSE(reply["error"]["desc"].get<std::string>().empty()) << bad;
  }
  EXPECT_EQ(client.execute(R"({"arguments":{},"id":3})")["id"], 3) << "id echoed on errors";
  EXPECT_TRUE(calls().empty());
  EXPECT_EQ(client.execute(R"({"execute":"ping"})")["return"]["command"], "ping");
}

TEST_F(ControlServerTest, OverlongLineGetsErrorAndClosesConnection) {
  start_server();
  LineClient client(path_);
  client.read_json();
  client.send(std::string(ControlServer::kMaxLine + 4096, 'x'));
  const auto reply = client.read_json();
  EXPECT_EQ(reply["error"]["class"], "GenericError");
  EXPECT_NE(reply["error"]["desc"].get<std::string>().find("65536"), std::string::npos);
  EXPECT_EQ(client.read_line(), std::nullopt);
  EXPECT_TRUE(wait_clients(0));
}

TEST_F(ControlServerTest, CommandsOfOneClientRunInOrder) {
  start_server([](const std::string& command, const json&) -> asio::awaitable<json> {
    if (command == "slow") {
      asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
    co_return command;
  });
  LineClient a(path_), b(path_);
  a.read_json();
  b.read_json();
  EXPECT_EQ(clients(), 2u);
  a.send(R"({"execute":"slow","id":1})"
         "\n"
         R"({"execute":"fast","id":2})"
         "\n");
  EXPECT_EQ(b.execute(R"({"execute":"other"})")["return"], "other") << "b is not held up by a";
  EXPECT_EQ(a.read_json(), json::parse(R"({"return":"slow","id":1})"));
  EXPECT_EQ(a.read_json(), json::parse(R"({"return":"fast","id":2})"));
}

TEST_F(ControlServerTest, StaleSocketIsReplaced) {
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    const auto addr = unix_address(path_);
    ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);  // leaves the socket file behind, with nobody listening
  }
  ASSERT_TRUE(fs::is_socket(path_));
  start_server();
  LineClient client(path_);
  EXPECT_TRUE(client.read_json().contains("QMP"));
}

TEST_F(ControlServerTest, LiveSocketIsRefused) {
  start_server();
  ControlServer second(io_.get_executor(), path_, {});
  try {
    second.start();
    FAIL() << "a second server started on a live socket";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("listening"), std::string::npos) << e.what();
  }
  LineClient client(path_);
  EXPECT_TRUE(client.read_json().contains("QMP")) << "the first server still serves";
}

TEST_F(ControlServerTest, PathThatIsNotASocketIsRefused) {
  std::ofstream(path_) << "precious";
  ControlServer server(io_.get_executor(), path_, {});
  EXPECT_THROW(server.start(), std::runtime_error);
  server.stop();
  EXPECT_TRUE(fs::is_regular_file(path_)) << "never removed";
}

TEST_F(ControlServerTest, StopClosesClientsAndUnlinks) {
  start_server();
  LineClient client(path_);
  client.read_json();
  on_io([&] { server_->stop(); });
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_EQ(client.read_line(), std::nullopt);
  EXPECT_EQ(clients(), 0u);
  on_io([&] { server_->stop(); });  // idempotent
  on_io([&] { server_.reset(); });
}

TEST_F(ControlServerTest, DestructorUnlinks) {
  start_server();
  on_io([&] { server_.reset(); });
  EXPECT_FALSE(fs::exists(path_));
}

}  // namespace
}  // namespace nbdtunnel::engine

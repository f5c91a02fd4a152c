// QmpClient against a scripted fake QMP peer: the handshake, replies, events and faults.

#include "qmp/qmp_client.hpp"

#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <string>

#include "fake_qmp_peer.hpp"
#include "run_bounded.hpp"

namespace nbdtunnel::qmp {
namespace {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;
using nlohmann::json;
using test::FakeConnection;
using test::FakeQmpPeer;
using test::run_bounded;
using Phase = QmpError::Phase;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class QmpClientTest : public ::testing::Test {
 protected:
  // Connects `client` to `peer`, failing the test on error.
  void connect(QmpClient& client, FakeQmpPeer& peer) {
    run_bounded(io, client.connect(peer.path(), 5s));
  }

  // Runs connect() and returns the QmpError it throws (fails the test if none).
  QmpError connect_error(QmpClient& client, const std::string& path, std::chrono::milliseconds t) {
    try {
      run_bounded(io, client.connect(path, t));
    } catch (const QmpError& e) {
      return e;
    }
    ADD_FAILURE() << "connect() to " << path << " did not throw";
    return QmpError(Phase::connect, "none");
  }

  // Runs execute() and returns the QmpError it throws (fails the test if none).
  QmpError execute_error(QmpClient& client, const std::string& command) {
    try {
      run_bounded(io, [](QmpClient& c, std::string cmd) -> asio::awaitable<void> {
        json no_args = json::object();  // see "Coroutines under GCC 12" in docs/DESIGN-NOTES.md
        co_await c.execute(cmd, std::move(no_args));
      }(client, command));
    } catch (const QmpError& e) {
      return e;
    }
    ADD_FAILURE() << "execute(" << command << ") did not throw";
    return QmpError(Phase::execute, "none");
  }

  asio::io_context io;
};

TEST_F(QmpClientTest, ConnectsNegotiatesAndExecutes) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto cmd = c.expect_command("query-status");
    if (cmd.contains("arguments") && !cmd["arguments"].empty()) throw std::runtime_error("args");
    c.reply(cmd, {{"status", "running"}});
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  EXPECT_TRUE(client.is_connected());
  EXPECT_EQ(client.qemu_version(), "7.2.22");
  EXPECT_TRUE(client.greeting().contains("QMP"));
  json reply;
  run_bounded(io, [](QmpClient& c, json& out) -> asio::awaitable<void> {
    json no_args = json::object();
    out = co_await c.execute("query-status", std::move(no_args));
  }(client, reply));
  EXPECT_EQ(reply["status"], "running");
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, NoSocketFailsInConnectPhase) {
  QmpClient client(io.get_executor());
  auto e = connect_error(client, "/nonexistent/nbdtunnel/qmp.sock", 1s);
  EXPECT_EQ(e.phase, Phase::connect);
  EXPECT_TRUE(contains(e.what(), "/nonexistent/nbdtunnel/qmp.sock")) << e.what();
}

TEST_F(QmpClientTest, PeerClosesBeforeGreeting) {
  FakeQmpPeer peer([](FakeConnection& c) { c.close(); });
  QmpClient client(io.get_executor());
  auto e = connect_error(client, peer.path(), 5s);
  EXPECT_EQ(e.phase, Phase::greeting) << e.what();
  EXPECT_TRUE(contains(e.what(), peer.path())) << e.what();
}

TEST_F(QmpClientTest, GarbageGreetingIsNotQmp) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.send_raw("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  auto e = connect_error(client, peer.path(), 5s);
  EXPECT_EQ(e.phase, Phase::greeting);
  EXPECT_TRUE(contains(e.what(), "is not a QMP socket")) << e.what();
  EXPECT_TRUE(contains(e.what(), "SSH-2.0")) << e.what();
}

TEST_F(QmpClientTest, JsonGreetingWithoutQmpKeyIsNotQmp) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.send({{"hello", "world"}});
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  auto e = connect_error(client, peer.path(), 5s);
  EXPECT_EQ(e.phase, Phase::greeting);
  EXPECT_TRUE(contains(e.what(), "is not a QMP socket")) << e.what();
}

TEST_F(QmpClientTest, SilentPeerTimesOutWaitingForGreeting) {
  FakeQmpPeer peer([](FakeConnection& c) { c.wait_for_eof(); });
  QmpClient client(io.get_executor());
  auto e = connect_error(client, peer.path(), 200ms);
  EXPECT_EQ(e.phase, Phase::timeout);
  EXPECT_TRUE(contains(e.what(), "greeting")) << e.what();
}

TEST_F(QmpClientTest, CapabilitiesRefusedFailsNegotiation) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.send(json::parse(R"({"QMP": {"version": {}, "capabilities": []}})"));
    c.reply_error(c.expect_command("qmp_capabilities"), "GenericError", "no thanks");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  auto e = connect_error(client, peer.path(), 5s);
  EXPECT_EQ(e.phase, Phase::negotiation);
  EXPECT_EQ(e.error_class, "GenericError");
  EXPECT_TRUE(contains(e.what(), "no thanks")) << e.what();
}

TEST_F(QmpClientTest, ErrorReplyThrowsExecuteWithClass) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.reply_error(c.expect_command("blockdev-del"), "GenericError", "Node 'x' is busy");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  auto e = execute_error(client, "blockdev-del");
  EXPECT_EQ(e.phase, Phase::execute);
  EXPECT_EQ(e.error_class, "GenericError");
  EXPECT_TRUE(contains(e.what(), "blockdev-del")) << e.what();
  EXPECT_TRUE(contains(e.what(), "Node 'x' is busy")) << e.what();
  EXPECT_TRUE(client.is_connected());  // an error reply does not end the session
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, PeerClosesWithPendingCommand) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.expect_command("query-a");
    c.expect_command("query-b");
    c.close();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  int disconnects = 0;
  auto run_one = [](QmpClient& cl, std::string cmd, int& count) -> asio::awaitable<void> {
    try {
      json no_args = json::object();
      co_await cl.execute(cmd, std::move(no_args));
    } catch (const QmpError& e) {
      if (e.phase == Phase::disconnect && std::string(e.what()).find(cmd) != std::string::npos) {
        ++count;
      }
    }
  };
  run_bounded(io,
              run_one(client, "query-a", disconnects) && run_one(client, "query-b", disconnects));
  EXPECT_EQ(disconnects, 2);
  EXPECT_FALSE(client.is_connected());
  auto e = execute_error(client, "query-c");  // fails fast once disconnected
  EXPECT_EQ(e.phase, Phase::disconnect);
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, RepliesOutOfOrderReachTheirCommands) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto a = c.expect_command("query-a");
    auto b = c.expect_command("query-b");
    c.reply(b, "b");
    c.reply(a, "a");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  json a, b;
  auto run_one = [](QmpClient& cl, std::string cmd, json& out) -> asio::awaitable<void> {
    json no_args = json::object();
    out = co_await cl.execute(cmd, std::move(no_args));
  };
  run_bounded(io, run_one(client, "query-a", a) && run_one(client, "query-b", b));
  EXPECT_EQ(a, "a");
  EXPECT_EQ(b, "b");
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, EventsRoutedToWaitEventWhileCommandRuns) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto cmd = c.expect_command("blockdev-mirror");
    c.event("JOB_STATUS_CHANGE", {{"id", "m0"}, {"status", "created"}});
    c.event("BLOCK_JOB_READY", {{"device", "other"}});
    c.event("BLOCK_JOB_READY", {{"device", "m0"}});
    c.reply(cmd, json::object());
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  int callbacks = 0;
  client.on_event([&](const json&) { ++callbacks; });
  connect(client, peer);
  json ready, reply;
  auto mirror = [](QmpClient& cl, json& out) -> asio::awaitable<void> {
    json no_args = json::object();
    out = co_await cl.execute("blockdev-mirror", std::move(no_args));
  };
  auto wait_ready = [](QmpClient& cl, json& out) -> asio::awaitable<void> {
    QmpClient::EventMatch m0 = [](const json& e) { return e["data"]["device"] == "m0"; };
    out = co_await cl.wait_event("BLOCK_JOB_READY", std::move(m0), 5s);
  };
  run_bounded(io, wait_ready(client, ready) && mirror(client, reply));
  EXPECT_EQ(ready["data"]["device"], "m0");
  EXPECT_EQ(reply, json::object());
  EXPECT_EQ(callbacks, 3);
  auto rest = client.take_events();  // unmatched events stay queued, in order
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0]["event"], "JOB_STATUS_CHANGE");
  EXPECT_EQ(rest[1]["data"]["device"], "other");
  EXPECT_TRUE(client.take_events().empty());
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, WaitEventReturnsAlreadyQueuedEvent) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto cmd = c.expect_command("query-a");
    c.event("SHUTDOWN");
    c.event("STOP");
    c.reply(cmd, json::object());
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  json stop;
  run_bounded(io, [](QmpClient& cl, json& out) -> asio::awaitable<void> {
    json no_args = json::object();
    co_await cl.execute("query-a", std::move(no_args));  // both events are queued before the reply
    QmpClient::EventMatch any;
    out = co_await cl.wait_event("STOP", std::move(any), 1s);
  }(client, stop));
  EXPECT_EQ(stop["event"], "STOP");
  auto rest = client.take_events();
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0]["event"], "SHUTDOWN");
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, WaitEventTimesOut) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.event("STOP");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  std::optional<QmpError> error;
  run_bounded(io, [](QmpClient& cl, std::optional<QmpError>& out) -> asio::awaitable<void> {
    try {
      QmpClient::EventMatch any;
      co_await cl.wait_event("BLOCK_JOB_COMPLETED", std::move(any), 100ms);
    } catch (const QmpError& e) {
      out = e;
    }
  }(client, error));
  ASSERT_TRUE(error);
  EXPECT_EQ(error->phase, Phase::timeout);
  EXPECT_TRUE(contains(error->what(), "BLOCK_JOB_COMPLETED")) << error->what();
  EXPECT_TRUE(client.is_connected());
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, CommandWithoutReplyTimesOutAndLateReplyIsIgnored) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto slow = c.expect_command("query-slow");
    auto fast = c.expect_command("query-fast");
    c.reply(slow, "late");
    c.reply(fast, "fast");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  std::optional<QmpError> error;
  json fast;
  run_bounded(io,
              [](QmpClient& cl, std::optional<QmpError>& err, json& out) -> asio::awaitable<void> {
                try {
                  json no_args = json::object();
                  co_await cl.execute("query-slow", std::move(no_args), 50ms);
                } catch (const QmpError& e) {
                  err = e;
                }
                json no_args = json::object();
                out = co_await cl.execute("query-fast", std::move(no_args));
              }(client, error, fast));
  ASSERT_TRUE(error);
  EXPECT_EQ(error->phase, Phase::timeout);
  EXPECT_TRUE(contains(error->what(), "query-slow")) << error->what();
  EXPECT_EQ(fast, "fast");
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, FullEventQueueDropsOldest) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto cmd = c.expect_command("query-a");
    for (int i = 0; i < 5; ++i) c.event("E", {{"n", i}});
    c.reply(cmd, json::object());
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor(), QmpLimits{.max_queued_events = 2});
  connect(client, peer);
  run_bounded(io, [](QmpClient& cl) -> asio::awaitable<void> {
    json no_args = json::object();
    co_await cl.execute("query-a", std::move(no_args));
  }(client));
  auto events = client.take_events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0]["data"]["n"], 3);
  EXPECT_EQ(events[1]["data"]["n"], 4);
  EXPECT_EQ(client.events_dropped(), 3u);
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, OverlongLineFromPeerDisconnects) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.expect_command("query-a");
    c.send_raw("{\"return\": \"" + std::string(4096, 'x') + "\"}\n");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor(), QmpLimits{.max_line_bytes = 1024});
  connect(client, peer);
  auto e = execute_error(client, "query-a");
  EXPECT_EQ(e.phase, Phase::disconnect);
  EXPECT_TRUE(contains(e.what(), "1024 byte limit")) << e.what();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, NonJsonLineFromPeerDisconnects) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.expect_command("query-a");
    c.send_raw("this is not json\n");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  auto e = execute_error(client, "query-a");
  EXPECT_EQ(e.phase, Phase::disconnect);
  EXPECT_TRUE(contains(e.what(), "this is not json")) << e.what();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, CloseFailsPendingCommandAndIsIdempotent) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.expect_command("query-never");
    c.wait_for_eof();
  });
  QmpClient client(io.get_executor());
  connect(client, peer);
  std::optional<QmpError> error;
  auto pending = [](QmpClient& cl, std::optional<QmpError>& out) -> asio::awaitable<void> {
    try {
      json no_args = json::object();
      co_await cl.execute("query-never", std::move(no_args));
    } catch (const QmpError& e) {
      out = e;
    }
  };
  auto closer = [](QmpClient& cl) -> asio::awaitable<void> {
    asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
    co_await t.async_wait(asio::use_awaitable);
    cl.close();
    cl.close();
  };
  run_bounded(io, pending(client, error) && closer(client));
  ASSERT_TRUE(error);
  EXPECT_EQ(error->phase, Phase::disconnect);
  EXPECT_TRUE(contains(error->what(), "closed by the client")) << error->what();
  client.close();
  EXPECT_EQ(peer.join(), "");
}

TEST_F(QmpClientTest, ClientDestroyedWhileReaderRuns) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.wait_for_eof();
  });
  {
    QmpClient client(io.get_executor());
    connect(client, peer);
  }
  io.restart();
  io.run_for(200ms);  // the background reader unwinds on its own
  EXPECT_EQ(peer.join(), "");
}

}  // namespace
}  // namespace nbdtunnel::qmp

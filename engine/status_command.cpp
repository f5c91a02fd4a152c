#include "engine/status_command.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "qmp/json_lines.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::engine {

using nlohmann::json;

namespace {

// A connection to the control socket that reads and writes lines, each within the deadline.
class StatusConnection {
 public:
  StatusConnection(const std::string& path, std::chrono::milliseconds timeout)
      : path_(path), deadline_(std::chrono::steady_clock::now() + timeout) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) {
      throw std::runtime_error(fmt::format("control socket '{}': not a usable path", path));
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size());
    fd_ = tunnel::unique_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd_ || ::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error(fmt::format(
          "cannot connect to {}: {} (is `nbdtunnel dest --control-socket {}` running, and may "
          "this user open it?)",
          path, std::strerror(errno), path));
    }
  }

  json read_message() {
    for (;;) {
      qmp::JsonLineSplitter::Result next = lines_.next();
      if (next.status == qmp::JsonLineSplitter::Status::line) {
        try {
          return json::parse(next.text);
        } catch (const json::exception& e) {
          throw std::runtime_error(fmt::format("{}: not JSON: {}", path_, e.what()));
        }
      }
      if (next.status == qmp::JsonLineSplitter::Status::error) {
        throw std::runtime_error(fmt::format("{}: {}", path_, next.text));
      }
      wait(POLLIN);
      char buf[16384];
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        throw std::runtime_error(fmt::format("{}: the daemon closed the connection", path_));
      lines_.feed({buf, static_cast<std::size_t>(n)});
    }
  }

  void send_line(const std::string& line) {
    const std::string text = line + "\n";
    for (std::size_t sent = 0; sent < text.size();) {
      wait(POLLOUT);
      const ssize_t n = ::send(fd_.get(), text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        throw std::runtime_error(fmt::format("{}: send failed: {}", path_, std::strerror(errno)));
      sent += static_cast<std::size_t>(n);
    }
  }

 private:
  void wait(short events) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline_ - std::chrono::steady_clock::now());
    pollfd p{fd_.get(), events, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
      throw std::runtime_error(fmt::format("{}: no answer in time", path_));
    }
  }

  std::string path_;
  std::chrono::steady_clock::time_point deadline_;
  tunnel::unique_fd fd_;
  qmp::JsonLineSplitter lines_;
};

std::string bytes(std::uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n) / 1024;
  std::size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

std::string text(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string("-");
}

std::uint64_t count(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

}  // namespace

CLI::App* add_status_command(CLI::App& app, StatusArgs& a) {
  CLI::App* status = app.add_subcommand(
      "status",
      "Show what a running `nbdtunnel dest` carries: its channels and their peers, their "
      "streams with the bytes each way, the migrations in progress, and its counters. Asks the "
      "daemon's control socket (`dest --control-socket`).");
  status->add_option("--control-socket", a.control_socket, "the daemon's control socket")
      ->required();
  status->add_flag("--json", a.json, "print the daemon's answer as one JSON object");
  status->add_option("--timeout", a.timeout, "seconds to wait for the answer")
      ->check(CLI::Range(0.1, 600.0))
      ->capture_default_str();
  return status;
}

int run_status(const StatusArgs& a) {
  try {
    StatusConnection c(a.control_socket,
                       std::chrono::milliseconds(static_cast<long>(a.timeout * 1000)));
    const json greeting = c.read_message();
    if (!greeting.contains("QMP")) {
      throw std::runtime_error(a.control_socket + ": not an nbdtunnel control socket");
    }
    c.send_line(R"({"execute":"query-status"})");
    const json reply = c.read_message();
    if (const auto e = reply.find("error"); e != reply.end()) {
      throw std::runtime_error(fmt::format("{}: {} (is it a `nbdtunnel dest` control socket?)",
                                           a.control_socket, e->value("desc", e->dump())));
    }
    const auto result = reply.find("return");
    if (result == reply.end()) throw std::runtime_error(a.control_socket + ": no answer");
    const std::string out = a.json ? result->dump() + "\n" : format_status(*result);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nbdtunnel status: %s\n", e.what());
    return 1;
  }
}

std::string format_status(const json& status) {
  std::string out;
  auto put = [&out](const std::string& s) { out += s; };
  const json& totals = status.contains("totals") ? status["totals"] : json::object();
  const json& threads = status.contains("threads") ? status["threads"] : json::array();
  std::string listen;
  for (const json& t : threads) {
    if (t.contains("listen") && listen.empty()) listen = text(t, "listen");
  }
  put(fmt::format("nbdtunnel dest {} (pid {}), listening on {}, up {:.0f} s, {} thread(s)\n",
                  text(status, "version"), status.value("pid", 0L), listen.empty() ? "-" : listen,
                  status.value("uptime", 0.0), threads.size()));
  put(fmt::format("channels: {} open, {} since start; streams: {} open, {} since start\n",
                  count(totals, "channels_open"), count(totals, "channels_total"),
                  count(totals, "streams_open"), count(totals, "streams_total")));
  put(fmt::format("bytes: {} received, {} sent; credit stalls: {}\n",
                  bytes(count(totals, "bytes_received")), bytes(count(totals, "bytes_sent")),
                  count(totals, "credit_stalls")));
  std::string failures, refusals;
  if (totals.contains("handshake_failures")) {
    for (const auto& [cause, n] : totals["handshake_failures"].items()) {
      if (n.is_number() && n.get<std::uint64_t>() > 0)
        failures += fmt::format(" {}={}", cause, n.get<std::uint64_t>());
    }
  }
  if (totals.contains("refusals")) {
    for (const auto& [limit, n] : totals["refusals"].items()) {
      if (n.is_number() && n.get<std::uint64_t>() > 0)
        refusals += fmt::format(" {}={}", limit, n.get<std::uint64_t>());
    }
  }
  put(fmt::format("handshake failures:{}; refusals:{}\n", failures.empty() ? " none" : failures,
                  refusals.empty() ? " none" : refusals));
  std::size_t n = 0;
  for (const json& t : threads) {
    if (t.contains("error")) put(fmt::format("(a thread: {})\n", text(t, "error")));
    if (!t.contains("channels")) continue;
    for (const json& ch : t["channels"]) {
      ++n;
      put(fmt::format("\nchannel {}: peer {} (host '{}'), {}, {}, open {:.0f} s\n", n,
                      text(ch, "peer"), text(ch, "host"), text(ch, "state"),
                      ch.value("tls", false) ? "TLS" : "plain", ch.value("age", 0.0)));
      if (ch.contains("migrations")) {
        for (const json& m : ch["migrations"]) {
          put(fmt::format("  migration {} ({})\n", text(m, "id"), text(m, "kind")));
        }
      }
      if (!ch.contains("streams") || ch["streams"].empty()) {
        put("  no streams\n");
        continue;
      }
      put(fmt::format("  {:<8} {:<24} {:<8} {:>12} {:>12}\n", "STREAM", "TARGET", "STATE",
                      "RECEIVED", "SENT"));
      for (const json& s : ch["streams"]) {
        put(fmt::format("  {:<8} {:<24} {:<8} {:>12} {:>12}\n", count(s, "serial"),
                        text(s, "target"), text(s, "state"), bytes(count(s, "bytes_received")),
                        bytes(count(s, "bytes_sent"))));
      }
    }
  }
  if (n == 0) put("\nno channels\n");
  return out;
}

}  // namespace nbdtunnel::engine

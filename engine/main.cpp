// The nbdtunnel command: `dest`, `source` and `migrate`, one function pair (options, run) each.

#include <fmt/format.h>
#include <malloc.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "engine/channel_security.hpp"
#include "engine/cli_values.hpp"
#include "engine/config_file.hpp"
#include "engine/dest_monitor.hpp"
#include "engine/dest_recovery.hpp"
#include "engine/dest_run_dir.hpp"
#include "engine/dest_server.hpp"
#include "engine/domain_xml.hpp"
#include "engine/host_identity.hpp"
#include "engine/libvirt_migration.hpp"
#include "engine/migration.hpp"
#include "engine/migration_protocol.hpp"
#include "engine/source_forwarder.hpp"
#include "engine/status_command.hpp"

namespace {

using namespace nbdtunnel;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

struct CommonOptions {
  std::string log_level = "info";
  double handshake_timeout = 10;
  double keepalive_interval = 5;
  std::uint32_t window = 2u << 20;
  std::uint32_t max_window = 32u << 20;
  std::uint64_t window_budget = 64u << 20;
  std::uint32_t chunk = 256u << 10;
  std::string host_id;
  std::string copy_mode = "splice";
};

// A finite number in [lo, hi]: CLI::Range lets "nan" through (every comparison with it is false).
CLI::Validator number_in(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) {
        std::string error;
        if (!engine::parse_number(text, lo, hi, error)) return error;
        return std::string();
      },
      fmt::format("NUMBER in [{} - {}]", lo, hi));
}

void add_common(CLI::App* cmd, CommonOptions& o) {
  cmd->add_option("--log-level", o.log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
      ->capture_default_str();
  cmd->add_option("--handshake-timeout", o.handshake_timeout,
                  "seconds a new channel may take to exchange HELLO before it is dropped")
      ->check(number_in(0.1, 3600))
      ->capture_default_str();
  cmd->add_option("--keepalive-interval", o.keepalive_interval,
                  "seconds between keepalive PINGs on an idle channel; a peer silent for 6 "
                  "intervals is dropped")
      ->check(number_in(0.1, 3600))
      ->capture_default_str();
  cmd->add_option("--window", o.window,
                  "receive window per stream and direction to begin with, in bytes (in splice "
                  "mode at most half of fs.pipe-max-size)")
      ->check(CLI::Range(tunnel::kMinWindow, tunnel::kMaxWindow))
      ->capture_default_str();
  cmd->add_option("--max-window", o.max_window,
                  "how far a stream's receive window may grow on a long link (a credit round "
                  "trip of 1 ms or more), in bytes; --max-window equal to --window: no growth")
      ->check(CLI::Range(tunnel::kMinWindow, tunnel::kMaxWindow))
      ->capture_default_str();
  cmd->add_option("--window-budget", o.window_budget,
                  "how much all streams of one channel may grow their receive windows by "
                  "together, in bytes (what a channel may hold for slow local sockets, beyond "
                  "each stream's first window)")
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{16} << 30))
      ->capture_default_str();
  cmd->add_option("--chunk", o.chunk, "largest payload of one STREAM packet, in bytes")
      ->check(
          CLI::Range(std::uint32_t{4096}, static_cast<std::uint32_t>(tunnel::kMaxStreamPayload)))
      ->capture_default_str();
  cmd->add_option("--copy-mode", o.copy_mode,
                  "how stream bytes cross this process: splice (socket → pipe → socket in the "
                  "kernel, no copy through user space; on a resumable channel only inbound) or "
                  "copy (recv into a buffer, send from it)")
      ->check(CLI::IsMember({"copy", "splice"}))
      ->capture_default_str();
  cmd->add_option("--host-id", o.host_id, "identity sent to the peer (default: /etc/machine-id)");
}

tunnel::ChannelConfig channel_config(const CommonOptions& o) {
  tunnel::ChannelConfig c;
  c.window = o.window;
  c.max_window = o.max_window;
  c.window_budget = o.window_budget;
  c.chunk = std::min(o.chunk, o.window);
  c.handshake_timeout = std::chrono::milliseconds(static_cast<long>(o.handshake_timeout * 1000));
  c.keepalive_interval = std::chrono::milliseconds(static_cast<long>(o.keepalive_interval * 1000));
  c.host_id = o.host_id.empty() ? engine::machine_id() : o.host_id;
  c.hostname = engine::host_name();
  c.splice = o.copy_mode == "splice";
  // An initiator asks for a resumable channel; `dest --resume-timeout` sets the responder's.
  c.resume_timeout = std::chrono::seconds(30);
  return c;
}

void add_tls_options(CLI::App* cmd, engine::TlsArgs& t, engine::TlsSide side) {
  const bool dest = side == engine::TlsSide::dest;
  cmd->add_option(
      "--tls-dir", t.dir,
      std::string("directory of TLS credentials in libvirt/QEMU's layout: ca-cert.pem, ") +
          (dest ? "server-cert.pem, server-key.pem" : "client-cert.pem, client-key.pem") +
          ", optional ca-crl.pem. The channel is mutual TLS 1.3. Default: " +
          engine::kDefaultTlsDir + " when it holds those files");
  if (dest) {
    cmd->add_option("--tls-allowed-dn", t.allowed_dn,
                    "accept only client certificates whose subject DN matches this wildcard "
                    "pattern, written in certificate order, e.g. 'C=GB,O=Example,CN=*' "
                    "(repeatable; libvirt's tls_allowed_dn_list)");
  } else {
    cmd->add_option("--tls-hostname", t.hostname,
                    "the name the destination's certificate must carry (default: the host "
                    "dialled)");
  }
  cmd->add_flag("--no-tls", t.no_tls, "plain channel even where TLS credentials are found");
  cmd->add_flag("--insecure", t.insecure,
                dest ? "allow plain (unauthenticated, unencrypted) channels on a non-loopback "
                       "--listen address: only where every host that can reach the port is "
                       "trusted"
                     : "allow a plain (unencrypted) channel to a non-loopback destination: only "
                       "where the network between the hosts is trusted");
}

// The TLS context the role runs with (none: plain), after the safe-defaults rule; an error
// message for the user when refused.
tunnel::Result<std::shared_ptr<tunnel::TlsContext>> setup_tls(const engine::TlsArgs& t,
                                                              engine::TlsSide side,
                                                              const std::string& host,
                                                              std::string& verify_host) {
  tunnel::Result<engine::ChannelSecurity> security = engine::choose_security(t, side, host);
  if (!security) return security.error();
  if (!security->tls) {
    if (!tunnel::is_loopback(host)) {
      spdlog::warn("--insecure: channels {} {} are neither authenticated nor encrypted",
                   side == engine::TlsSide::dest ? "accepted on" : "to", host);
    } else {
      spdlog::info("plain channels on loopback (no TLS credentials given or found)");
    }
    return std::shared_ptr<tunnel::TlsContext>();
  }
  tunnel::TlsOptions options;
  options.dir = security->dir;
  options.role = side == engine::TlsSide::dest ? tunnel::TlsRole::server : tunnel::TlsRole::client;
  options.allowed_dn = security->allowed_dn;
  auto ctx = tunnel::TlsContext::load(options);
  if (!ctx) return ctx.error();
  verify_host = security->verify_host;
  spdlog::info("mutual TLS 1.3 with the credentials in {}{}; {}", security->dir,
               security->defaulted ? " (the default directory)" : "",
               tunnel::TlsContext::offload_summary());
  return *ctx;
}

void setup_logging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("nbdtunnel");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::trace);
}

// One thread running one instance of a role on its own io_context and ring.
template <class Role>
struct Worker {
  // One thread runs it: handlers it posts for itself need no lock and no wake-up of its
  // reactor (measured: one epoll_ctl and one extra epoll_wait per completion batch without).
  // The ring runs the loop (Ring::Driver::self), Asio's handlers included.
  boost::asio::io_context io{1};
  std::unique_ptr<tunnel::Ring> ring;
  std::unique_ptr<Role> role;
  std::atomic<bool> stopped{false};
  std::thread thread;
};

// Runs `threads` instances of a role (instance i > 0 gets its options through `adjust`) until
// SIGINT/SIGTERM, then stops each and waits (bounded) for its I/O to finish.
template <class Role, class Options>
int run_role(Options options, unsigned threads,
             std::function<void(Options&, const Role& first)> adjust = {}) {
  std::vector<std::unique_ptr<Worker<Role>>> workers;
  for (unsigned i = 0; i < threads; ++i) {
    auto w = std::make_unique<Worker<Role>>();
    try {
      w->ring = std::make_unique<tunnel::Ring>(w->io, 1024, tunnel::Ring::Driver::self);
    } catch (const std::exception& e) {
      spdlog::error("cannot set up io_uring: {} (is kernel.io_uring_disabled set?)", e.what());
      return kExitFailed;
    }
    Options o = options;
    if (i > 0 && adjust) adjust(o, *workers.front()->role);
    w->role = std::make_unique<Role>(w->io, *w->ring, std::move(o));
    std::string error;
    if (!w->role->start(error)) {
      spdlog::error("{}", error);
      return kExitUsage;
    }
    workers.push_back(std::move(w));
  }
  std::atomic<std::int64_t> deadline{0};
  for (auto& w : workers) {
    w->thread = std::thread([&w = *w, &deadline] {
      for (;;) {
        w.ring->run_once(std::chrono::milliseconds(200));
        if (w.stopped && w.ring->in_flight() == 0) break;
        const std::int64_t d = deadline;
        if (d != 0 && std::chrono::steady_clock::now().time_since_epoch().count() > d) {
          spdlog::warn("shutdown did not finish in 5 s; exiting anyway");
          break;
        }
      }
    });
  }
  boost::asio::io_context main_io;
  boost::asio::signal_set signals(main_io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  });
  main_io.run();
  deadline =
      (std::chrono::steady_clock::now() + std::chrono::seconds(5)).time_since_epoch().count();
  for (auto& w : workers) {
    boost::asio::post(w->io, [&w = *w] { w.role->stop([&w] { w.stopped = true; }); });
  }
  for (auto& w : workers) w->thread.join();
  spdlog::info("stopped");
  return kExitOk;
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "nbdtunnel: %s\nRun with --help for more information.\n", message.c_str());
  return kExitUsage;
}

// `nbdtunnel dest`: what its command line holds.
struct DestArgs {
  CommonOptions common;
  std::string listen;
  std::vector<std::string> targets;
  std::string qmp;
  std::string run_dir;
  unsigned threads = 1;
  engine::AdmissionLimits limits;
  std::size_t max_streams = 0;  // 0: from the descriptor limit
  std::size_t max_channel_streams = 256;
  double idle_timeout = 600;
  double resume_timeout = 30;
  engine::TlsArgs tls;
  bool libvirt = false;
  std::string libvirt_socket;
  std::string qemu_user;
  engine::DestMonitorOptions monitor;
};

// Descriptors each open stream may hold: its local socket and, in splice mode, two pipes.
constexpr std::size_t kFdsPerStream = 5;
// Descriptors kept for everything but streams: listeners, QMP, logs, and the channels.
constexpr std::size_t kFdReserve = 64;

// Raises the soft descriptor limit to the hard one (as a server should) and returns it.
std::size_t raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  return rl.rlim_cur == RLIM_INFINITY ? std::size_t{1} << 20
                                      : static_cast<std::size_t>(rl.rlim_cur);
}

// The daemon-wide stream limit that leaves descriptors for every allowed channel: at most 4096.
std::size_t default_max_streams(std::size_t fd_limit, std::size_t max_channels) {
  const std::size_t reserved = kFdReserve + max_channels;
  if (fd_limit <= reserved + kFdsPerStream) return 1;
  return std::min<std::size_t>(4096, (fd_limit - reserved) / kFdsPerStream);
}

// The owner of run directories: the named user, or libvirt's QEMU user by default.
std::optional<engine::FileOwner> qemu_owner(const std::string& user) {
  if (user.empty()) return engine::default_qemu_owner();
  return engine::lookup_user(user);
}

CLI::App* add_dest_command(CLI::App& app, DestArgs& a) {
  CLI::App* dest = app.add_subcommand(
      "dest",
      "Destination daemon: accept channels on TCP and connect each stream to a named target "
      "socket (e.g. the destination QEMU's NBD server socket).");
  dest->add_option("--listen", a.listen, "HOST:PORT to listen on (port 0 picks a free port)")
      ->required();
  dest->add_option("--control-socket", a.monitor.control_socket,
                   "UNIX socket (mode 0600) that `nbdtunnel status` asks for this daemon's "
                   "channels, streams and migrations");
  dest->add_option("--metrics-listen", a.monitor.metrics_listen,
                   "[HOST:]PORT to serve Prometheus metrics on (GET /metrics); a bare PORT is "
                   "on 127.0.0.1, and any other host only when named here");
  dest->add_option("--target", a.targets,
                   "NAME=PATH: streams opened for NAME are connected to the UNIX socket PATH, "
                   "at the moment they open (PATH may appear later)");
  dest->add_option("--qmp", a.qmp,
                   "QMP socket of the destination QEMU: lets `nbdtunnel migrate` prepare its "
                   "disks (NBD server and exports are created per migration and removed after)");
  dest->add_option("--run-dir", a.run_dir,
                   "directory for the sockets of prepared migrations; with --libvirt the "
                   "rendezvous directory, the same on both hosts, where each migration gets "
                   "RUN_DIR/<id>/ (default: /run/nbdtunnel with --libvirt). With --qmp (and no "
                   "--libvirt) it also holds the record of what the daemon created in its QEMU, "
                   "which the next daemon removes if this one dies; default: one directory per "
                   "QMP socket, /run/nbdtunnel/.qmp-HASH as root, else "
                   "$TMPDIR/nbdtunnel-dest-HASH; one daemon at a time holds it");
  dest->add_flag("--libvirt", a.libvirt,
                 "serve `nbdtunnel migrate --domain`: streams reach this host's libvirt daemon "
                 "and the sockets the destination QEMU creates in RUN_DIR/<id>/. Needs TLS "
                 "(a non-loopback --listen never runs it plain; loopback only with --insecure)");
  dest->add_option("--libvirt-socket", a.libvirt_socket,
                   "the libvirt daemon's socket (default: what qemu:///system uses here, "
                   "/run/libvirt/virtqemud-sock if the modular daemon runs, else "
                   "/run/libvirt/libvirt-sock)");
  dest->add_option("--qemu-user", a.qemu_user,
                   "the user QEMU runs as, who must create its sockets in RUN_DIR/<id>/ "
                   "(default: libvirt-qemu where it exists and this runs as root)");
  dest->add_option("--max-channels", a.limits.max_channels,
                   "channels open at once, authenticated or not; more are closed on accept")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}))
      ->capture_default_str();
  dest->add_option("--max-handshakes", a.limits.max_handshakes,
                   "connections at once that have not finished their handshake (TLS and HELLO)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}))
      ->capture_default_str();
  dest->add_option("--max-handshakes-per-address", a.limits.max_handshakes_per_address,
                   "of those, from one source address")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}))
      ->capture_default_str();
  dest->add_option("--max-streams", a.max_streams,
                   "streams open at once over all channels (default: what the descriptor limit "
                   "allows after reserving some for channels, at most 4096)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  dest->add_option("--max-channel-streams", a.max_channel_streams,
                   "streams open at once on one channel")
      ->check(CLI::Range(std::size_t{1}, std::size_t{65536}))
      ->capture_default_str();
  dest->add_option("--idle-timeout", a.idle_timeout,
                   "seconds a channel may stay open with no stream and no call before it is "
                   "closed (0: never)")
      ->check(number_in(0, 1e6))
      ->capture_default_str();
  dest->add_option("--resume-timeout", a.resume_timeout,
                   "seconds a channel whose connection was lost keeps its streams (and the "
                   "destination QEMU's connections) waiting for the source to reconnect and "
                   "resume it; 0: channels are not resumable and close with their connection")
      ->check(number_in(0, tunnel::kMaxResumeTimeoutMs / 1000.0))
      ->capture_default_str();
  add_tls_options(dest, a.tls, engine::TlsSide::dest);
  dest->add_option("--threads", a.threads,
                   "threads, each with its own io_uring, serving channels (the kernel spreads "
                   "new channels among them)")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  add_common(dest, a.common);
  return dest;
}

// Checks the dest options, then serves until SIGINT/SIGTERM.
int run_dest(DestArgs a) {
  engine::DestOptions o;
  auto ep = tunnel::parse_endpoint(a.listen);
  if (!ep) return usage_error("--listen: " + ep.error().message);
  o.listen = *ep;
  std::string error;
  for (const std::string& t : a.targets) {
    auto kv = engine::parse_target(t, error);
    if (!kv) return usage_error(error);
    if (!o.targets.emplace(kv->first, kv->second).second) {
      return usage_error("--target '" + kv->first + "' is given twice");
    }
  }
  if (o.targets.empty() && a.qmp.empty() && !a.libvirt) {
    return usage_error("dest needs at least one --target NAME=PATH, --qmp PATH or --libvirt");
  }
  o.channel = channel_config(a.common);
  o.channel.max_streams = a.max_channel_streams;
  o.channel.idle_timeout = std::chrono::milliseconds(static_cast<long>(a.idle_timeout * 1000));
  o.channel.resume_timeout = std::chrono::milliseconds(static_cast<long>(a.resume_timeout * 1000));
  o.qmp_path = a.qmp;
  setup_logging(a.common.log_level);
  const std::size_t fd_limit = raise_fd_limit();
  const std::size_t max_streams =
      a.max_streams != 0 ? a.max_streams : default_max_streams(fd_limit, a.limits.max_channels);
  o.channel.stream_budget = std::make_shared<tunnel::StreamBudget>(max_streams);
  o.admission = std::make_shared<engine::Admission>(a.limits);
  std::string unused;
  auto tls = setup_tls(a.tls, engine::TlsSide::dest, o.listen.host, unused);
  if (!tls) {
    spdlog::error("{}", tls.error().message);
    return tls.error().code == std::errc::invalid_argument ? kExitUsage : kExitFailed;
  }
  o.tls = *tls;
  spdlog::info(
      "limits: {} channels, {} in handshake ({} per address), {} streams ({} per "
      "channel), {} descriptors",
      a.limits.max_channels, a.limits.max_handshakes, a.limits.max_handshakes_per_address,
      max_streams, a.max_channel_streams, fd_limit);
  if (a.libvirt) {
    if (!o.tls && !a.tls.insecure) {
      return usage_error(
          "--libvirt hands the destination's libvirt daemon (root on this host) to every "
          "channel: it needs TLS (--tls-dir); on a loopback --listen, --insecure allows plain "
          "channels for local use");
    }
    if (!o.tls && !tunnel::is_loopback(o.listen.host)) {
      return usage_error(
          "--libvirt on a non-loopback --listen needs TLS (--tls-dir); "
          "--insecure is not enough");
    }
    o.libvirt.enabled = true;
    o.libvirt.libvirt_socket =
        a.libvirt_socket.empty() ? engine::default_libvirt_socket() : a.libvirt_socket;
    o.libvirt.run_dir = a.run_dir.empty() ? engine::kDefaultRunDir : a.run_dir;
    // Directories of migrations whose process was killed: no live process holds them.
    engine::RunDir::remove_abandoned(o.libvirt.run_dir);
    auto owner = qemu_owner(a.qemu_user);
    if (!owner) return usage_error("--qemu-user: no user '" + a.qemu_user + "' on this host");
    o.libvirt.owner = *owner;
  } else if (!a.libvirt_socket.empty() || !a.qemu_user.empty()) {
    return usage_error("--libvirt-socket and --qemu-user apply only with --libvirt");
  }
  if (!a.qmp.empty()) {
    // Found again by the next daemon for this QEMU: its records say what a dead one left.
    const std::string qmp = engine::canonical_qmp_path(a.qmp);
    const std::string dir = !a.run_dir.empty() && !a.libvirt
                                ? a.run_dir
                                : engine::default_dest_run_dir(qmp, ::geteuid() == 0);
    auto run_dir = std::make_shared<engine::DestRunDir>();
    if (!run_dir->open(dir, qmp, error)) {
      spdlog::error("{}", error);
      return kExitUsage;
    }
    engine::recover_dest_qemu(a.qmp, *run_dir, std::chrono::seconds(15));
    o.qmp_run_dir = std::move(run_dir);
  }
  engine::DestMonitor monitor(a.monitor);
  if (!monitor.start(error)) {
    spdlog::error("{}", error);
    return kExitUsage;
  }
  o.metrics = monitor.metrics();
  o.status = monitor.board();
  o.reuse_port = a.threads > 1;
  return run_role<engine::DestServer, engine::DestOptions>(
      std::move(o), a.threads, [](engine::DestOptions& next, const engine::DestServer& first) {
        // Every thread listens on the same port; the kernel spreads channels among them.
        if (auto bound = tunnel::parse_endpoint(first.bound())) next.listen.port = bound->port;
      });
}

// `nbdtunnel source`: what its command line holds.
struct SourceArgs {
  CommonOptions common;
  std::string connect;
  std::vector<std::string> forwards;
  std::string socket_mode = "0600";
  engine::TlsArgs tls;
};

CLI::App* add_source_command(CLI::App& app, SourceArgs& a) {
  CLI::App* source = app.add_subcommand(
      "source",
      "Source side: listen on local UNIX sockets and carry every accepted connection as one "
      "stream over a single channel to `nbdtunnel dest`.");
  source->add_option("--connect", a.connect, "HOST:PORT of the destination daemon")->required();
  source
      ->add_option("--forward", a.forwards,
                   "PATH=NAME: listen on the UNIX socket PATH; connections go to target NAME "
                   "on the destination")
      ->required();
  source->add_option("--socket-mode", a.socket_mode, "permissions of the created sockets (octal)")
      ->capture_default_str();
  add_tls_options(source, a.tls, engine::TlsSide::source);
  add_common(source, a.common);
  return source;
}

// Checks the source options, then forwards until SIGINT/SIGTERM.
int run_source(const SourceArgs& a) {
  engine::SourceOptions o;
  auto ep = tunnel::parse_endpoint(a.connect);
  if (!ep) return usage_error("--connect: " + ep.error().message);
  o.connect = *ep;
  std::string error;
  std::map<std::string, bool> seen;
  for (const std::string& f : a.forwards) {
    auto kv = engine::parse_forward(f, error);
    if (!kv) return usage_error(error);
    if (seen[kv->first]) return usage_error("--forward path '" + kv->first + "' is given twice");
    seen[kv->first] = true;
    o.forwards.push_back({kv->first, kv->second});
  }
  auto mode = engine::parse_mode(a.socket_mode, error);
  if (!mode) return usage_error(error);
  o.socket_mode = *mode;
  o.channel = channel_config(a.common);
  setup_logging(a.common.log_level);
  auto tls = setup_tls(a.tls, engine::TlsSide::source, o.connect.host, o.tls_verify_host);
  if (!tls) {
    spdlog::error("{}", tls.error().message);
    return tls.error().code == std::errc::invalid_argument ? kExitUsage : kExitFailed;
  }
  o.tls = *tls;
  return run_role<engine::SourceForwarder, engine::SourceOptions>(std::move(o), 1);
}

// `nbdtunnel migrate`: what its command line holds (most of it straight into MigrateOptions).
struct MigrateArgs {
  CommonOptions common;
  engine::MigrateOptions options;
  std::string dest;
  std::string finish = "complete";
  std::vector<std::string> disks;
  double connect_timeout = 10;
  engine::TlsArgs tls;
  // libvirt mode (--domain)
  engine::LibvirtMigrateOptions lv;
  std::string migrate_disks;
  std::string xml_file;
  std::string qemu_user;
};

CLI::App* add_migrate_command(CLI::App& app, MigrateArgs& a) {
  a.common.log_level = "warn";
  engine::MigrateOptions& mo = a.options;
  CLI::App* migrate = app.add_subcommand(
      "migrate",
      "Run a whole non-shared-disk migration through one channel and leave both hosts clean "
      "whatever happens. QMP mode (--source-qmp): check both sides, have the destination daemon "
      "(started with --qmp) export its disks, mirror every disk, then complete (or stay in "
      "sync). libvirt mode (--domain): check both hosts, then have libvirt migrate the running "
      "domain live, memory and disks, with the destination daemon started with --libvirt.\n"
      "Exit codes: 0 done, 1 migration failed, 2 bad usage or input, 3 checks failed, "
      "130 cancelled.");
  CLI::Option* qmp = migrate->add_option(
      "--source-qmp", mo.source_qmp,
      "QMP mode: the QMP socket of the source QEMU (the destination runs `nbdtunnel dest --qmp`)");
  CLI::Option* domain = migrate->add_option(
      "--domain", a.lv.domain,
      "libvirt mode: the running libvirt domain to migrate live, memory and non-shared disks, "
      "through one channel (the destination runs `nbdtunnel dest --libvirt`)");
  qmp->excludes(domain);
  migrate->add_option("--dest", a.dest, "HOST:PORT of the destination `nbdtunnel dest`")
      ->required();
  migrate->add_option("--disk", a.disks,
                      "QMP mode: NODE[=DESTNODE]: mirror the source node NODE into the "
                      "destination node DESTNODE (default: the same name); repeat for each disk");
  migrate->add_option("--connect", a.lv.connect_uri, "libvirt mode: the source libvirt URI")
      ->capture_default_str();
  migrate->add_flag("--p2p", a.lv.p2p,
                    "libvirt mode: peer-to-peer, the source libvirtd talks to the destination's "
                    "(through the channel) instead of this program driving both");
  migrate
      ->add_option("--run-dir", a.lv.run_dir,
                   "libvirt mode: where each migration's sockets go, RUN_DIR/<id>/; the same "
                   "path as the destination's `--run-dir`")
      ->capture_default_str();
  migrate->add_option("--migrate-disks", a.migrate_disks,
                      "libvirt mode: the disks to copy, by target (vda,vdb); default: every "
                      "writable file or block disk");
  migrate
      ->add_option("--parallel", a.lv.parallel,
                   "libvirt mode: memory over N parallel (multifd) connections")
      ->check(CLI::Range(1u, 255u));
  migrate->add_flag("--persistent", a.lv.persistent,
                    "libvirt mode: define the domain persistently on the destination");
  migrate->add_flag("--undefine-source", a.lv.undefine_source,
                    "libvirt mode: undefine the domain on the source once migrated");
  migrate->add_flag("--compressed", a.lv.compressed, "libvirt mode: compress the memory stream");
  migrate->add_option("--xml", a.xml_file,
                      "libvirt mode: the destination's domain XML (e.g. other disk paths; "
                      "libvirt checks it keeps the guest ABI)");
  migrate->add_option("--dname", a.lv.dname, "libvirt mode: the domain's name on the destination");
  migrate->add_option("--qemu-user", a.qemu_user,
                      "libvirt mode: the user the source QEMU runs as, who must reach the "
                      "sockets in RUN_DIR/<id>/ (default: libvirt-qemu where it exists and this "
                      "runs as root)");
  migrate
      ->add_option("--bandwidth", mo.bandwidth_mib,
                   "limit in MiB/s for all disks together (0 = unlimited; whole MiB/s in "
                   "libvirt mode); changeable live with set-bandwidth on the control socket")
      ->check(number_in(0, 1e6));
  migrate->add_flag("--shallow", mo.shallow,
                    "copy only the top image (sync=top): the backing chain is already present at "
                    "the destination");
  migrate
      ->add_option("--finish", a.finish,
                   "QMP mode: complete: when every disk is in sync, complete the copies and "
                   "finish; sync: stay in sync (for a memory migration) until `finish` or `cancel` "
                   "arrives on the control socket")
      ->check(CLI::IsMember({"complete", "sync"}))
      ->capture_default_str();
  migrate->add_flag("--json", mo.json,
                    "one JSON object per line on stdout (phases, checks, progress, ready, "
                    "errors, summary) and nothing else there");
  migrate->add_flag("--check-only", mo.check_only, "run the pre-migration checks and stop");
  migrate->add_flag("--force", mo.force, "go ahead when checks give only warnings");
  migrate->add_option("--control-socket", mo.control_socket,
                      "UNIX socket speaking QMP-style JSON lines: query-migration, "
                      "set-bandwidth {\"mib-per-sec\": N}, cancel, finish (QMP mode)");
  migrate->add_option("--id", mo.migration_id, "migration id (default: generated)");
  migrate
      ->add_option("--connect-timeout", a.connect_timeout,
                   "seconds to wait for the destination to answer")
      ->check(number_in(0.1, 600))
      ->capture_default_str();
  add_tls_options(migrate, a.tls, engine::TlsSide::source);
  add_common(migrate, a.common);
  return migrate;
}

int run_libvirt_migrate(MigrateArgs a);

// Checks the migrate options, then runs the migration to its end; returns its exit code.
int run_migrate(MigrateArgs a) {
  engine::MigrateOptions& mo = a.options;
  if (mo.source_qmp.empty() && a.lv.domain.empty()) {
    return usage_error("migrate needs --source-qmp (QMP mode) or --domain (libvirt mode)");
  }
  if (!a.lv.domain.empty()) return run_libvirt_migrate(std::move(a));
  if (a.disks.empty()) return usage_error("--source-qmp needs at least one --disk NODE");
  auto ep = tunnel::parse_endpoint(a.dest);
  if (!ep) return usage_error("--dest: " + ep.error().message);
  mo.dest = *ep;
  std::string error;
  std::map<std::string, bool> seen_disk, seen_dest;
  for (const std::string& d : a.disks) {
    auto kv = engine::parse_disk(d, error);
    if (!kv) return usage_error(error);
    if (seen_disk[kv->first]) return usage_error("--disk '" + kv->first + "' is given twice");
    if (seen_dest[kv->second]) {
      return usage_error("--disk: destination node '" + kv->second +
                         "' is the target of two disks");
    }
    seen_disk[kv->first] = seen_dest[kv->second] = true;
    mo.disks.push_back({kv->first, kv->second});
  }
  if (!mo.migration_id.empty() && !engine::valid_migration_id(mo.migration_id)) {
    return usage_error(
        fmt::format("--id '{}': use 1 to {} letters, digits, '.', '_' or '-', starting with a "
                    "letter or digit",
                    mo.migration_id, engine::kMaxMigrationIdLen));
  }
  if (mo.disks.size() > engine::kMaxDisks) {
    return usage_error(fmt::format("at most {} disks per migration", engine::kMaxDisks));
  }
  mo.finish_sync = a.finish == "sync";
  mo.connect_timeout = std::chrono::milliseconds(static_cast<long>(a.connect_timeout * 1000));
  mo.channel = channel_config(a.common);
  setup_logging(a.common.log_level);
  auto tls = setup_tls(a.tls, engine::TlsSide::source, mo.dest.host, mo.tls_verify_host);
  if (!tls) {
    // Before the run starts, so --json has not begun: say it on stderr.
    std::fprintf(stderr, "nbdtunnel: %s\n", tls.error().message.c_str());
    return tls.error().code == std::errc::invalid_argument ? kExitUsage : kExitFailed;
  }
  mo.tls = *tls;
  return engine::run_migration(std::move(mo));
}

// `migrate --domain`: the libvirt mode's checks of its options, then the migration.
int run_libvirt_migrate(MigrateArgs a) {
  engine::MigrateOptions& mo = a.options;
  engine::LibvirtMigrateOptions& lv = a.lv;
  if (!a.disks.empty()) {
    return usage_error(
        "--disk is for --source-qmp; with --domain name disks by target in "
        "--migrate-disks vda,vdb");
  }
  if (a.finish != "complete") return usage_error("--finish sync is for --source-qmp only");
  auto ep = tunnel::parse_endpoint(a.dest);
  if (!ep) return usage_error("--dest: " + ep.error().message);
  lv.link.dest = *ep;
  std::string error;
  for (std::size_t start = 0; start < a.migrate_disks.size();) {
    const std::size_t comma = std::min(a.migrate_disks.find(',', start), a.migrate_disks.size());
    const std::string target = a.migrate_disks.substr(start, comma - start);
    if (target.empty() || target.size() > 64 ||
        target.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") != std::string::npos) {
      return usage_error("--migrate-disks: '" + target + "' is not a disk target like vda");
    }
    lv.migrate_disks.push_back(target);
    start = comma + 1;
  }
  if (!a.xml_file.empty()) {
    std::FILE* f = std::fopen(a.xml_file.c_str(), "rb");
    if (f == nullptr) return usage_error("--xml: cannot read " + a.xml_file);
    char buf[65536];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 &&
           lv.dest_xml.size() <= engine::kMaxLibvirtXml) {
      lv.dest_xml.append(buf, n);
    }
    std::fclose(f);
    if (lv.dest_xml.size() > engine::kMaxLibvirtXml) {
      return usage_error("--xml: the file is larger than 4 MiB");
    }
    if (auto disks = engine::parse_domain_disks(lv.dest_xml); !disks) {
      return usage_error("--xml " + a.xml_file + ": " + disks.error().message);
    }
  }
  if (!mo.migration_id.empty() && !engine::valid_migration_id(mo.migration_id)) {
    return usage_error(
        fmt::format("--id '{}': use 1 to {} letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit",
                    mo.migration_id, engine::kMaxMigrationIdLen));
  }
  if (mo.bandwidth_mib != std::floor(mo.bandwidth_mib)) {
    // libvirt's migration bandwidth is a whole number of MiB/s: say so rather than round.
    return usage_error(
        fmt::format("--bandwidth {}: libvirt mode takes whole MiB/s (libvirt's unit), e.g. {}",
                    mo.bandwidth_mib, std::max(1.0, std::round(mo.bandwidth_mib))));
  }
  auto owner = qemu_owner(a.qemu_user);
  if (!owner) return usage_error("--qemu-user: no user '" + a.qemu_user + "' on this host");
  lv.owner = *owner;
  lv.migration_id = mo.migration_id;
  lv.bandwidth_mib = mo.bandwidth_mib;
  lv.shallow = mo.shallow;
  lv.json = mo.json;
  lv.check_only = mo.check_only;
  lv.force = mo.force;
  lv.control_socket = mo.control_socket;
  lv.link.connect_timeout = std::chrono::milliseconds(static_cast<long>(a.connect_timeout * 1000));
  lv.link.channel = channel_config(a.common);
  setup_logging(a.common.log_level);
  auto tls = setup_tls(a.tls, engine::TlsSide::source, lv.link.dest.host, lv.link.tls_verify_host);
  if (!tls) {
    std::fprintf(stderr, "nbdtunnel: %s\n", tls.error().message.c_str());
    return tls.error().code == std::errc::invalid_argument ? kExitUsage : kExitFailed;
  }
  lv.link.tls = *tls;
  return engine::run_libvirt_migration(std::move(lv));
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  // Large buffers (read buffers, stream windows) come and go with connections: a fixed mmap
  // threshold gives their memory back to the system when they go, instead of glibc raising the
  // threshold after the first free and keeping every later one on the heap.
  ::mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  CLI::App app{
      "nbdtunnel carries QEMU's NBD (disk mirror) and migration connections between two hosts\n"
      "over one multiplexed, flow-controlled channel framed like libvirt's RPC protocol.\n"
      "Run `nbdtunnel dest` on the destination host; on the source host run `nbdtunnel source`\n"
      "(a standing tunnel for QEMU or libvirt) or `nbdtunnel migrate` (a whole storage "
      "migration)."};
  app.set_version_flag("--version", std::string("nbdtunnel ") + NBDTUNNEL_VERSION);
  app.require_subcommand(1);
  app.footer("Run `nbdtunnel COMMAND --help` for the options of one command.");
  DestArgs dest_args;
  SourceArgs source_args;
  MigrateArgs migrate_args;
  CLI::App* dest = add_dest_command(app, dest_args);
  CLI::App* source = add_source_command(app, source_args);
  CLI::App* migrate = add_migrate_command(app, migrate_args);
  engine::StatusArgs status_args;
  CLI::App* status = engine::add_status_command(app, status_args);
  engine::add_config_option(app, {dest, source});
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (dest->parsed()) return run_dest(std::move(dest_args));
  if (source->parsed()) return run_source(source_args);
  if (migrate->parsed()) return run_migrate(std::move(migrate_args));
  if (status->parsed()) return engine::run_status(status_args);
  return usage_error("no command given");
}

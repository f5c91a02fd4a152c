#include "tests/migrate/migrate_harness.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "tests/integration/harness/files.hpp"

namespace nbdtunnel::testing {
namespace {

// Quotes one word for /bin/sh.
std::string sh_quote(const std::string& word) {
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Parses the complete lines of `text`; a line that is not JSON fails the test (once per line).
std::vector<json> parse_lines(const std::string& text, bool report) {
  std::vector<json> out;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    const std::string line = text.substr(start, nl - start);
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      if (report) ADD_FAILURE() << "stdout line is not JSON (" << e.what() << "): " << line;
    }
  }
  return out;
}

}  // namespace

QemuHost start_storage_host(const TempDir& dir, const std::string& name,
                            std::vector<std::string> args, const std::vector<std::string>& prefix) {
  const std::string tool = dir.file(name + "-tool.qmp");
  args.insert(args.begin(), {"--chardev", "socket,path=" + tool + ",server=on,wait=off,id=tool0",
                             "--monitor", "chardev=tool0"});
  // The second monitor exists once the first one greets: both are set up before the main loop.
  return QemuHost{Qemu::storage_daemon(dir, name, args, prefix), tool};
}

QemuHost start_vm_host(const TempDir& dir, const std::string& name, std::vector<std::string> args) {
  const std::string tool = dir.file(name + "-tool.qmp");
  args.insert(args.begin(), {"-chardev", "socket,id=tool0,path=" + tool + ",server=on,wait=off",
                             "-mon", "chardev=tool0,mode=control"});
  return QemuHost{Qemu::system(dir, name, args), tool};
}

std::vector<std::string> raw_disk_args(const std::string& node, const std::string& path,
                                       bool read_only) {
  const std::string ro = read_only ? ",read-only=on" : "";
  return {"--blockdev", "driver=file,node-name=" + node + "-file,filename=" + path + ro,
          "--blockdev", "driver=raw,node-name=" + node + ",file=" + node + "-file" + ro};
}

std::vector<std::string> qcow2_disk_args(const std::string& node, const std::string& path) {
  return {"--blockdev", "driver=file,node-name=" + node + "-file,filename=" + path, "--blockdev",
          "driver=qcow2,node-name=" + node + ",file=" + node + "-file"};
}

TunnelDest start_migration_dest(const TempDir& dir, const QemuHost& host,
                                const std::string& host_id, const std::string& name,
                                const std::vector<std::string>& extra_args, bool default_run_dir) {
  std::vector<std::string> extra{"--qmp", host.tool_qmp};
  if (!default_run_dir) {
    extra.push_back("--run-dir");
    extra.push_back(host.tool_qmp + ".run");
  }
  extra.insert(extra.end(), extra_args.begin(), extra_args.end());
  if (!host_id.empty()) {
    extra.push_back("--host-id");
    extra.push_back(host_id);
  }
  // A default run dir of an unprivileged daemon goes inside `dir` too. TMPDIR is restored at
  // once (the child has forked by then).
  const char* old = std::getenv("TMPDIR");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  ::setenv("TMPDIR", dir.path().c_str(), 1);
  struct Restore {
    const std::optional<std::string>& saved;
    ~Restore() {
      if (saved) {
        ::setenv("TMPDIR", saved->c_str(), 1);
      } else {
        ::unsetenv("TMPDIR");
      }
    }
  } restore{saved};
  return start_dest(dir, {}, extra, 0, name);
}

StorageHosts start_storage_hosts(const TempDir& dir, std::uint64_t size, std::uint64_t seed) {
  make_random_image(dir.file("src0.raw"), size, seed);
  std::filesystem::copy_file(dir.file("src0.raw"), dir.file("src0.orig"));
  make_zero_image(dir.file("dst0.raw"), size);
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  return StorageHosts{std::move(src), std::move(dst)};
}

MigrateRun::MigrateRun(const TempDir& dir, const std::string& name,
                       const std::vector<std::string>& args, const std::vector<std::string>& prefix)
    : err_path_(dir.file(name + ".err")) {
  // Its private dir (the tunnel socket) inside `dir` too, for runs that are killed.
  // Appended piece by piece: GCC 12 at -O3 inlines `"literal" + std::string` into a false
  // -Wrestrict, which broke Release builds.
  std::string cmd = "TMPDIR=";
  cmd += sh_quote(dir.path().string());
  cmd += " exec";
  for (const auto& p : prefix) {
    cmd += ' ';
    cmd += sh_quote(p);
  }
  cmd += ' ';
  cmd += sh_quote(nbdtunnel_binary());
  cmd += " migrate";
  for (const auto& a : args) {
    cmd += ' ';
    cmd += sh_quote(a);
  }
  cmd += " 2>";
  cmd += sh_quote(err_path_);
  process_ = std::make_unique<Process>(name, std::vector<std::string>{"/bin/sh", "-c", cmd},
                                       dir.file(name + ".out"));
}

MigrateRun::~MigrateRun() {
  // The Process prints stdout on failure; stderr is ours to show.
  if (::testing::Test::HasFailure() || std::uncaught_exceptions() > 0) {
    std::cerr << "----- stderr of " << process_->name() << " -----\n"
              << stderr_text() << "----- end -----\n";
  }
}

std::vector<json> MigrateRun::events() const {
  return parse_lines(process_->log(), true);
}

std::optional<json> MigrateRun::wait_event(const std::function<bool(const json&)>& match,
                                           Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const bool alive = process_->running();
    for (const json& e : parse_lines(process_->log(), false)) {
      if (match(e)) return e;
    }
    if (!alive || std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string MigrateRun::stderr_text() const {
  return read_whole(err_path_);
}

void MigrateRun::dump() const {
  std::cerr << "----- " << process_->command_line() << "\nstdout:\n"
            << stdout_text() << "stderr:\n"
            << stderr_text() << "-----\n";
}

MigrateResult run_migrate(const TempDir& dir, const std::string& name,
                          const std::vector<std::string>& args, Seconds timeout,
                          const std::vector<std::string>& prefix) {
  MigrateRun run(dir, name, args, prefix);
  auto code = run.wait_exit(timeout);
  if (!code)
    abort_test_binary(name + ": nbdtunnel migrate did not exit within " +
                      std::to_string(timeout.count()) + " s");
  MigrateResult r;
  r.exit_code = *code;
  r.events = run.events();
  r.stderr_text = run.stderr_text();
  return r;
}

std::vector<std::string> migrate_args(const QemuHost& source, int dest_port,
                                      const std::vector<std::string>& disks,
                                      const std::vector<std::string>& extra) {
  std::vector<std::string> args{"--source-qmp", source.tool_qmp, "--dest",
                                "127.0.0.1:" + std::to_string(dest_port)};
  for (const auto& d : disks) {
    args.push_back("--disk");
    args.push_back(d);
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::vector<json> events_named(const std::vector<json>& events, const std::string& name) {
  std::vector<json> out;
  for (const auto& e : events) {
    if (e.value("event", "") == name) out.push_back(e);
  }
  return out;
}

std::vector<std::string> phases(const std::vector<json>& events) {
  std::vector<std::string> out;
  for (const auto& e : events_named(events, "phase")) out.push_back(e.value("phase", "?"));
  return out;
}

std::optional<json> summary(const std::vector<json>& events) {
  auto s = events_named(events, "summary");
  if (s.empty()) return std::nullopt;
  return s.back();
}

std::optional<json> check_named(const std::vector<json>& events, const std::string& check) {
  for (const auto& e : events_named(events, "check")) {
    if (e.value("name", "") == check) return e;
  }
  return std::nullopt;
}

std::string verdict_of(const std::vector<json>& events, const std::string& check) {
  auto c = check_named(events, check);
  return c ? c->value("verdict", "?") : "absent";
}

std::string describe(const std::vector<json>& events) {
  std::string out;
  for (const auto& e : events) out += e.dump() + "\n";
  return out;
}

ControlClient::ControlClient(const std::string& path, Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    try {
      socket_.emplace(RawSocket::connect_unix(path));
      break;
    } catch (const std::system_error& e) {
      if (std::chrono::steady_clock::now() >= deadline) {
        throw std::runtime_error("control socket " + path + ": " + e.what());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  greeting_ = read_line(timeout);
}

json ControlClient::read_line(Seconds timeout) {
  std::string line;
  for (;;) {
    auto c = socket_->read_exact(1, timeout);
    if (!c) throw std::runtime_error("control socket: no complete line (closed or timed out)");
    if ((*c)[0] == '\n') break;
    line += *c;
  }
  return json::parse(line);
}

json ControlClient::execute(const std::string& command, const json& arguments) {
  json request = {{"execute", command}, {"arguments", arguments}};
  const std::string text = request.dump() + "\n";
  if (!socket_->send_all(std::as_bytes(std::span(text.data(), text.size())))) {
    throw std::runtime_error("control socket: the server has gone");
  }
  return read_line(Seconds(30));
}

::testing::AssertionResult source_is_clean(qmp::BlockingQmp& qmp) {
  const json jobs = qmp.execute("query-block-jobs");
  if (!jobs.empty()) return ::testing::AssertionFailure() << "block jobs left: " << jobs.dump();
  const json nodes = qmp.execute("query-named-block-nodes", {{"flat", true}});
  for (const auto& n : nodes) {
    const std::string name = n.value("node-name", "");
    if (name.rfind("nbdtunnel", 0) == 0) {
      return ::testing::AssertionFailure()
             << "node left behind: " << name << " (" << n.value("drv", "?") << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult has_no_export(qmp::BlockingQmp& qmp) {
  const json exports = qmp.execute("query-block-exports");
  if (!exports.empty()) {
    return ::testing::AssertionFailure() << "block exports left: " << exports.dump();
  }
  return ::testing::AssertionSuccess();
}

int closed_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), "bind 127.0.0.1:0");
  }
  ::close(fd);  // never listened: connecting gets ECONNREFUSED
  return ntohs(addr.sin_port);
}

}  // namespace nbdtunnel::testing
